"""Unpack Kafka records into events; everything that cannot become an event becomes a dead letter.

Envelopes (auto-detected, or fixed per topic with `unpack.envelopes`):
  upload  {"meta": {...}, "data": [{...}, ...]}   one event per data item, meta merged in (item wins)
  logs    {"headers": {"app_id", "log_name"}, "logs": {...}}   one event, event_name "t_<log_name>"
  jsonl   one JSON object per line                one event per non-blank line
  json    a single JSON object                    one event

Auto-detection: a value that parses as one object is `upload` when it has both "meta" and "data",
`logs` when it has both "headers" and "logs", `json` otherwise. A value that does not parse as one
document, has at least two non-blank lines and whose first non-blank line is an object is `jsonl`;
anything else is a DECODE_ERROR for the whole value.

Contract: `Unpacker.unpack*` never raises. Every record ends up as >= 1 event or >= 1 dead letter:
  - message-level problems (EMPTY, DECODE_ERROR, TOO_LARGE value or item count, bad envelope shape,
    bad upload meta) give ONE dead letter for the whole record: index None, payload = whole value.
    A bad meta rejects the whole upload with one dead letter (not one per item): replaying the
    original value after fixing the producer is the natural unit, and the DLQ is not flooded.
  - item-level problems give one dead letter per item with its index; siblings continue:
      upload: payload = {"meta": meta, "data": [item]} (the item alone, in a replayable envelope);
      jsonl:  payload = the line's own bytes (index = 0-based physical line number);
      json/logs: payload = the whole value, index 0.
  - any unexpected exception becomes INTERNAL_ERROR (per item if it happens while building an
    item, else for the whole record, discarding that record's partial output).

Event time (ms): first present of `timestamp`, `time`, `ts` (logs envelope: `mtime` first).
  Numbers (and numeric strings) by magnitude: < 1e11 seconds, < 1e14 ms, < 1e17 µs, else ns.
  Other strings: ISO-8601 via datetime.fromisoformat (e.g. "2020-12-17T13:52:39.5Z",
  "2020-12-17 13:52:39"); no zone means UTC. Absent: the Kafka record timestamp (or ingest time
  when the record has none). Only a time taken from the payload is checked against the skew
  bounds: the broker's timestamp is trusted, so a replay of an old backlog is not rejected.

Native fast path (perf_native, native/ in Rust, built into the venv by `./run.sh setup python`): when it
is installed, not disabled with PERF_NATIVE=0 and `validation.required` names only event keys,
unpack_batch hands the whole batch to it. It builds the events of the common records (upload, json,
headers+logs and JSON Lines envelopes; numeric payload times in any unit that land inside the skew bounds;
nothing to reject: it checks `validation.types` and `required` only to hand a record that fails them back;
a JSON Lines record with one bad line goes back whole) exactly as the code
below would, and leaves every other record to that code at its place in the batch: the dead letters,
reasons and counters all come from this module (tests/test_unpack_native.py compares both paths).
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.coders import Batch
from transforms.common import (
    DECODE_ERROR,
    DLQ_TAG,
    EMPTY,
    INTERNAL_ERROR,
    TOO_LARGE,
    VALIDATION_ERROR,
    ConfigError,
    KafkaRecord,
    dead_letter,
    now_ms,
)
from transforms.event_time import MAX_EVENT_MS as _MAX_EVENT_MS
from transforms.event_time import parse_event_time
from transforms.native import native_available, perf_native

__all__ = [
    "ENVELOPES",
    "METRICS_NAMESPACE",
    "Unpack",
    "UnpackConfig",
    "UnpackFn",
    "Unpacker",
    "ValidationConfig",
    "native_available",
    "parse_event_time",
    "validate_unpack_config",
]

_log = logging.getLogger(__name__)

METRICS_NAMESPACE = "unpack"
ENVELOPES = ("upload", "logs", "jsonl", "json")
DEFAULT_TEXT_FIELDS = (
    "message", "stack", "content", "msg", "log", "error", "exception", "stacktrace", "reason",
)
TIME_KEYS = ("timestamp", "time", "ts")
LOGS_TIME_KEYS = ("mtime",) + TIME_KEYS
# Event keys a `validation.required` entry may name directly (checked non-empty on the event).
_TOP_KEYS = frozenset(("app_id", "event_name", "platform", "device_id", "duration_ms"))
_TIME_KEY_SET = frozenset(LOGS_TIME_KEYS + ("event_time",))
_MS_LO, _MS_HI = 100_000_000_000, 100_000_000_000_000  # integers in this range are milliseconds
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_REASON_VALUE_CHARS = 80  # how much of an offending value a reason quotes


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass but not an integer here


def _is_number(v: Any) -> bool:
    return type(v) is int or type(v) is float


TYPE_CHECKS = {
    "string": lambda v: type(v) is str,
    "integer": _is_int,
    "number": _is_number,
    "boolean": lambda v: type(v) is bool,
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
}
# The same checks as exact-type sets (`type(v) in ...`): no Python call per checked value.
_TYPE_SETS = {
    "string": frozenset((str,)),
    "integer": frozenset((int,)),
    "number": frozenset((int, float)),
    "boolean": frozenset((bool,)),
    "object": frozenset((dict,)),
    "array": frozenset((list,)),
}
# Event id: blake2b of b"<topic>:<partition>:<offset>:<index>". The part before the index is formatted
# once per record; the index part of the first items comes from this table.
_IDX = tuple(str(i).encode() for i in range(256))


# --- Config ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationConfig:
    required: tuple[str, ...] = ()
    types: tuple[tuple[str, str], ...] = ()  # (field, type name), in config order
    max_value_bytes: int = 1 << 20
    max_items: int = 10_000
    max_field_chars: int = 64 << 10
    max_past_skew_s: float | None = 7 * 86400.0  # None disables the check
    max_future_skew_s: float | None = 3600.0


@dataclass(frozen=True)
class UnpackConfig:
    default_envelope: str = "auto"
    # (compiled topic regex, envelope); first full match wins, like Kafka's pattern subscription.
    envelopes: tuple[tuple[re.Pattern, str], ...] = ()
    text_fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def envelope_for(self, topic: str) -> str:
        for pattern, env in self.envelopes:
            if pattern.fullmatch(topic or ""):
                return env
        return self.default_envelope


def _check_keys(section: dict, allowed: Iterable[str], where: str) -> None:
    for k in section:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _pos_int(v: Any, key: str) -> int:
    if type(v) is not int or v <= 0:
        raise ConfigError(key, f"must be a positive integer, got {v!r}")
    return v


def _skew(v: Any, key: str) -> float | None:
    if v is None:
        return None
    if not _is_number(v) or v < 0 or not math.isfinite(v):
        raise ConfigError(key, f"must be a non-negative number of seconds or null (no check), got {v!r}")
    return float(v)


def _str_list(v: Any, key: str) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise ConfigError(key, f"must be a list of strings, got {type(v).__name__}")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s:
            raise ConfigError(f"{key}[{i}]", f"must be a non-empty string, got {s!r}")
    return tuple(v)


def _validate_validation(sec: Any, where: str) -> ValidationConfig:
    if sec is None:
        return ValidationConfig()
    if not isinstance(sec, dict):
        raise ConfigError(where, f"must be a mapping, got {type(sec).__name__}")
    d = ValidationConfig()
    _check_keys(sec, ("required", "types", "max_value_bytes", "max_items", "max_field_chars",
                      "max_past_skew_s", "max_future_skew_s"), where)
    required = _str_list(sec["required"], f"{where}.required") if "required" in sec else d.required
    types: list[tuple[str, str]] = []
    raw_types = sec.get("types") or {}
    if not isinstance(raw_types, dict):
        raise ConfigError(f"{where}.types", "must be a mapping of field -> type")
    for name, tname in raw_types.items():
        if tname not in TYPE_CHECKS:
            raise ConfigError(f"{where}.types.{name}",
                              f"unknown type {tname!r} (allowed: {', '.join(TYPE_CHECKS)})")
        types.append((str(name), tname))
    return ValidationConfig(
        required=required,
        types=tuple(types),
        max_value_bytes=_pos_int(sec.get("max_value_bytes", d.max_value_bytes), f"{where}.max_value_bytes"),
        max_items=_pos_int(sec.get("max_items", d.max_items), f"{where}.max_items"),
        max_field_chars=_pos_int(sec.get("max_field_chars", d.max_field_chars), f"{where}.max_field_chars"),
        max_past_skew_s=_skew(sec.get("max_past_skew_s", d.max_past_skew_s), f"{where}.max_past_skew_s"),
        max_future_skew_s=_skew(sec.get("max_future_skew_s", d.max_future_skew_s),
                                f"{where}.max_future_skew_s"),
    )


def validate_unpack_config(section: dict | None) -> UnpackConfig:
    """The `unpack:` section of the YAML config -> UnpackConfig. Raises ConfigError naming the key."""
    where = "unpack"
    if section is None:
        return UnpackConfig()
    if not isinstance(section, dict):
        raise ConfigError(where, f"must be a mapping, got {type(section).__name__}")
    _check_keys(section, ("default_envelope", "envelopes", "text_fields", "validation"), where)
    default_env = section.get("default_envelope", "auto")
    if default_env not in ("auto",) + ENVELOPES:
        raise ConfigError(f"{where}.default_envelope",
                          f"must be one of auto, {', '.join(ENVELOPES)}; got {default_env!r}")
    envelopes = []
    raw_envs = section.get("envelopes") or []
    if not isinstance(raw_envs, list):
        raise ConfigError(f"{where}.envelopes", "must be a list of {topic, envelope}")
    for i, e in enumerate(raw_envs):
        key = f"{where}.envelopes[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(key, "must be a mapping with keys topic and envelope")
        _check_keys(e, ("topic", "envelope"), key)
        if not isinstance(e.get("topic"), str) or not e["topic"]:
            raise ConfigError(f"{key}.topic", "must be a non-empty regex string")
        try:
            pattern = re.compile(e["topic"])
        except re.error as exc:
            raise ConfigError(f"{key}.topic", f"bad regex: {exc}") from None
        if e.get("envelope") not in ("auto",) + ENVELOPES:
            raise ConfigError(f"{key}.envelope",
                              f"must be one of auto, {', '.join(ENVELOPES)}; got {e.get('envelope')!r}")
        envelopes.append((pattern, e["envelope"]))
    text_fields = (_str_list(section["text_fields"], f"{where}.text_fields")
                   if "text_fields" in section else DEFAULT_TEXT_FIELDS)
    return UnpackConfig(
        default_envelope=default_env,
        envelopes=tuple(envelopes),
        text_fields=text_fields,
        validation=_validate_validation(section.get("validation"), f"{where}.validation"),
    )


# --- Unpacker ------------------------------------------------------------------------------------


class _Reject(Exception):
    """An item fails validation: (code, reason). Internal control flow only."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= _REASON_VALUE_CHARS else r[:_REASON_VALUE_CHARS] + "..."


def _scalar_str(name: str, v: Any) -> str:
    """app_id/platform/device_id/event_name: strings pass, numbers become strings, None is ""."""
    if v is None:
        return ""
    t = type(v)
    if t is str:
        return v
    if t is int or t is float:
        return str(v)
    raise _Reject(VALIDATION_ERROR, f"field '{name}': expected a string or number, got {type(v).__name__}")


class Unpacker:
    """Plain-Python unpacker (no Beam): `unpack(record)` / `unpack_batch(records)` -> (events, dead letters).

    `stats` accumulates counters (records_in, events_out, dead_letters, dlq.<CODE>, uploads.<code>,
    traceparent.invalid) that the Beam DoFn flushes to Beam metrics once per bundle.
    """

    def __init__(self, cfg: UnpackConfig | None = None, native: bool | None = None) -> None:
        """`native`: use the native fast path (None: when `native_available()`). It is used when every
        `validation.required` key is an event key (app_id, event_name, platform, device_id, duration_ms)
        and no text field repeats; records it is not sure about, or that validation would reject, still go
        through the Python code below."""
        self.cfg = cfg = cfg or UnpackConfig()
        v = cfg.validation
        self.stats: defaultdict[str, int] = defaultdict(int)
        # topic -> (envelope, b"<topic>:" for the event id, or None if the topic does not encode)
        self._topics: dict[Any, tuple[str, bytes | None]] = {}
        self._text_fields = cfg.text_fields
        self._text_set = frozenset(cfg.text_fields)
        self._text_in = self._text_set.intersection
        self._types = tuple((k, tname, _TYPE_SETS[tname]) for k, tname in v.types)
        self._required = v.required
        self._required_top = all(k in _TOP_KEYS for k in v.required)
        self._max_value = v.max_value_bytes
        self._max_items = v.max_items
        self._max_chars = v.max_field_chars
        self._past_ms = None if v.max_past_skew_s is None else int(v.max_past_skew_s * 1000)
        self._future_ms = None if v.max_future_skew_s is None else int(v.max_future_skew_s * 1000)
        # Integer payload times in [_t_lo, _t_hi] are milliseconds inside the skew bounds: accepted as
        # they are. Set per batch (they depend on its ingest time); anything else takes the full check.
        self._t_lo = self._t_hi = 0
        if native is None:
            native = native_available()
        self._native = (perf_native.unpack_records
                        if native and perf_native is not None and self._required_top
                        and len(set(cfg.text_fields)) == len(cfg.text_fields) else None)
        # limits as the native code takes them (machine integers), then the validation it checks
        self._native_limits = tuple(min(x, 1 << 62)
                                    for x in (self._max_chars, self._max_items, self._max_value))
        self._native_checks = (list(v.types), list(v.required))

    @property
    def native(self) -> bool:
        """True when unpack_batch runs the native fast path (with the Python code for the other records)."""
        return self._native is not None

    # Public API ---------------------------------------------------------------------------------

    def unpack(self, record: KafkaRecord) -> tuple[list[dict], list[dict]]:
        return self.unpack_batch((record,))

    def unpack_batch(self, records: Iterable[KafkaRecord]) -> tuple[list[dict], list[dict]]:
        events: list[dict] = []
        dls: list[dict] = []
        now = now_ms()  # one ingest time per batch: a batch takes milliseconds
        past, fut = self._past_ms, self._future_ms
        self._t_lo = _MS_LO if past is None else max(_MS_LO, now - past)
        self._t_hi = _MS_HI - 1 if fut is None else min(_MS_HI - 1, now + fut)
        if self._native is not None:
            return self._unpack_native(records, now)
        record = self._record_safe
        n = 0
        for rec in records:
            n += 1
            record(rec, now, events, dls)
        return self._counted(n, events, dls)

    def _record_safe(self, rec: Any, now: int, events: list, dls: list) -> None:
        n_ev = len(events)
        n_dl = len(dls)
        try:
            self._record(rec, now, events, dls)
        except Exception as exc:  # noqa: BLE001 - the contract is: never raise, keep the bytes
            del events[n_ev:]
            del dls[n_dl:]
            dls.append(self._internal_dl(rec, exc))

    def _counted(self, n_records: int, events: list, dls: list) -> tuple[list[dict], list[dict]]:
        stats = self.stats
        stats["records_in"] += n_records
        if events:
            stats["events_out"] += len(events)
        if dls:
            stats["dead_letters"] += len(dls)
            for d in dls:
                stats["dlq." + d["code"]] += 1
        return events, dls

    def _unpack_native(self, records: Iterable[KafkaRecord], now: int) -> tuple[list[dict], list[dict]]:
        """unpack_batch with the native fast path: the common records become events in native code,
        the others go through `_record` at their place in the batch, so the outputs and counters are
        exactly those of the Python path."""
        if type(records) is not list and type(records) is not tuple:
            records = list(records)
        stats = self.stats
        dls: list[dict] = []
        try:
            events, fallbacks, n_up = self._native(
                records, KafkaRecord, self._topics, self._topic_info, now, self._t_lo, self._t_hi,
                self._text_fields, *self._native_limits, *self._native_checks)
        except Exception:  # noqa: BLE001 - a bug there must not lose records: the Python path takes the batch
            _log.exception("unpack: native fast path failed; this batch goes through the Python code")
            events, fallbacks, n_up = [], [(i, 0, 0) for i in range(len(records))], 0
        if fallbacks:
            native_events = events
            events = []
            record = self._record_safe
            done = up_done = 0
            for i, pos, up_before in fallbacks:
                if pos > done:
                    events += native_events[done:pos]
                    done = pos
                if up_before > up_done:  # counted where the Python path counts them: record by record
                    stats["uploads.200"] += up_before - up_done
                    up_done = up_before
                record(records[i], now, events, dls)
            events += native_events[done:]
            n_up -= up_done
        if n_up:
            stats["uploads.200"] += n_up
        return self._counted(len(records), events, dls)

    # Per record ---------------------------------------------------------------------------------

    @staticmethod
    def _internal_dl(rec: Any, exc: Exception) -> dict:
        value = getattr(rec, "value", None)
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
        elif value is not None and not isinstance(value, bytes):
            try:
                value = bytes(value)
            except Exception:  # noqa: BLE001
                value = repr(value).encode("utf-8", "replace")
        headers = getattr(rec, "headers", ())
        return dead_letter(
            INTERNAL_ERROR, f"{type(exc).__name__}: {exc}",
            topic=getattr(rec, "topic", None), partition=getattr(rec, "partition", None),
            offset=getattr(rec, "offset", None), payload=value, key=getattr(rec, "key", None),
            headers=tuple(headers) if isinstance(headers, (tuple, list)) else (),
        )

    def _topic_info(self, topic: Any) -> tuple[str, bytes | None]:
        try:
            id_topic = f"{topic}:".encode()
        except UnicodeEncodeError:  # the per-event fallback in _build raises it again, per item
            id_topic = None
        info = self._topics[topic] = (self.cfg.envelope_for(topic), id_topic)
        return info

    def _msg_dl(self, rec: Any, code: str, reason: str, payload: bytes | None,
                index: int | None = None) -> dict:
        return dead_letter(code, reason, topic=rec.topic, partition=rec.partition, offset=rec.offset,
                           index=index, payload=payload, key=rec.key, headers=rec.headers)

    def _record(self, rec: Any, now: int, events: list, dls: list) -> None:
        value = rec.value
        if value is not None and type(value) is not bytes:
            # bytearray/memoryview from some clients; str from tests or a string deserializer.
            value = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        if not value or value.isspace():
            dls.append(self._msg_dl(rec, EMPTY, "value is null" if value is None else "value is empty",
                                    value))
            return
        if len(value) > self._max_value:
            reason = f"value is {len(value)} bytes > max_value_bytes {self._max_value}"
            dls.append(self._msg_dl(rec, TOO_LARGE, reason, value))
            return
        topic = rec.topic
        info = self._topics.get(topic)
        if info is None:
            info = self._topic_info(topic)
        env, id_topic = info
        # b"<topic>:<partition>:<offset>:", the event id's hash input without the item index
        partition = rec.partition
        offset = rec.offset
        if type(partition) is int and type(offset) is int and id_topic is not None:
            pre = b"%b%d:%d:" % (id_topic, partition, offset)
        elif id_topic is not None:
            pre = f"{topic}:{partition}:{offset}:".encode()
        else:
            pre = None

        tp = None
        headers = rec.headers
        if headers:
            raw = None
            for hk, hv in headers:
                if hk == "traceparent":
                    raw = hv
            if raw is not None:
                tp = self._traceparent(raw)

        if env == "jsonl":
            self._jsonl(rec, value, now, tp, events, dls, pre)
            return
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            if env == "auto" and self._looks_like_jsonl(value):
                self._jsonl(rec, value, now, tp, events, dls, pre)
            else:
                dls.append(self._msg_dl(rec, DECODE_ERROR, f"not JSON: {exc}", value))
            return
        if type(obj) is not dict:
            dls.append(self._msg_dl(rec, VALIDATION_ERROR,
                                    f"value: expected a JSON object, got {type(obj).__name__}", value))
            return
        if env == "auto":
            if "data" in obj and "meta" in obj:
                env = "upload"
            elif "headers" in obj and "logs" in obj:
                env = "logs"
            else:
                env = "json"
        if env == "upload":
            self._upload(rec, value, obj, now, tp, events, dls, pre)
        elif env == "logs":
            self._logs(rec, value, obj, now, tp, events, dls, pre)
        else:
            try:
                events.append(self._build(obj, obj, "json", rec, 0, now, tp, TIME_KEYS, pre))
            except _Reject as r:
                dls.append(self._msg_dl(rec, r.code, r.reason, value, 0))

    def _traceparent(self, raw: Any) -> str | None:
        try:
            s = raw.decode("ascii") if isinstance(raw, (bytes, bytearray)) else str(raw)
        except UnicodeDecodeError:
            s = None
        if s is not None:
            s = s.strip()
            if _TRACEPARENT.fullmatch(s):
                return s
        self.stats["traceparent.invalid"] += 1
        return None

    # Envelopes ----------------------------------------------------------------------------------

    def _upload(self, rec, value: bytes, obj: dict, now: int, tp, events: list, dls: list, pre) -> None:
        stats = self.stats
        meta = obj.get("meta")
        data = obj.get("data")
        if meta is None:
            meta = {}
        problem = None
        if type(meta) is not dict:
            problem = (VALIDATION_ERROR, f"meta: expected an object, got {type(meta).__name__}")
        elif type(data) is not list:
            problem = (VALIDATION_ERROR, f"data: expected an array, got {type(data).__name__}")
        elif not data:
            problem = (VALIDATION_ERROR, "data: empty array, no events")
        elif len(data) > self._max_items:
            problem = (TOO_LARGE, f"data: {len(data)} items > max_items {self._max_items}")
        else:
            # Meta is validated once here; items below only check their own values.
            for k, tname, ok_types in self._types:
                mv = meta.get(k)
                if mv is not None and type(mv) not in ok_types:
                    problem = (VALIDATION_ERROR,
                               f"meta.{k}: expected {tname}, got {type(mv).__name__} {_short(mv)}")
                    break
            if problem is None and not self._text_set.isdisjoint(meta):
                for k in self._text_set.intersection(meta):
                    mv = meta[k]
                    if type(mv) is str and len(mv) > self._max_chars:
                        problem = (TOO_LARGE,
                                   f"meta.{k}: {len(mv)} chars > max_field_chars {self._max_chars}")
                        break
        if problem is not None:
            stats["uploads.400"] += 1
            dls.append(self._msg_dl(rec, problem[0], problem[1], value))
            return

        build = self._build
        ok = 0
        for i, item in enumerate(data):
            try:
                if type(item) is not dict:
                    raise _Reject(VALIDATION_ERROR, f"expected an object, got {type(item).__name__}")
                merged = meta.copy()
                merged.update(item)
                events.append(build(merged, item, "upload", rec, i, now, tp, TIME_KEYS, pre))
                ok += 1
            except _Reject as r:
                dls.append(self._msg_dl(rec, r.code, f"data[{i}]: {r.reason}",
                                        self._item_payload(meta, item), i))
            except Exception as exc:  # noqa: BLE001
                dls.append(self._msg_dl(rec, INTERNAL_ERROR, f"data[{i}]: {type(exc).__name__}: {exc}",
                                        self._item_payload(meta, item), i))
        stats["uploads.200" if ok == len(data) else ("uploads.400" if ok == 0 else "uploads.206")] += 1

    @staticmethod
    def _item_payload(meta: dict, item: Any) -> bytes:
        # The item alone inside its envelope: replaying it re-runs exactly this item with its meta.
        try:
            return orjson.dumps({"meta": meta, "data": [item]})
        except Exception:  # noqa: BLE001 - cannot happen for parsed JSON; keep something replay-able
            return repr(item).encode("utf-8", "replace")

    def _logs(self, rec, value: bytes, obj: dict, now: int, tp, events: list, dls: list, pre) -> None:
        headers = obj.get("headers")
        logs = obj.get("logs")
        if type(headers) is not dict:
            dls.append(self._msg_dl(rec, VALIDATION_ERROR,
                                    f"headers: expected an object, got {type(headers).__name__}", value))
            return
        if type(logs) is not dict:
            dls.append(self._msg_dl(rec, VALIDATION_ERROR,
                                    f"logs: expected an object, got {type(logs).__name__}", value))
            return
        # Extra header keys go to attrs; the log body wins over them, except app_id/log_name,
        # which are the envelope's own routing fields.
        merged = {k: v for k, v in headers.items() if k != "app_id" and k != "log_name"}
        merged.update(logs)
        if "app_id" in headers:
            merged["app_id"] = headers["app_id"]
        try:
            log_name = headers.get("log_name")
            if log_name is not None and log_name != "":
                merged["event_name"] = "t_" + _scalar_str("headers.log_name", log_name)
            events.append(self._build(merged, merged, "logs", rec, 0, now, tp, LOGS_TIME_KEYS, pre))
        except _Reject as r:
            dls.append(self._msg_dl(rec, r.code, r.reason, value, 0))

    @staticmethod
    def _looks_like_jsonl(value: bytes) -> bool:
        """At least two non-blank lines and the first one is a JSON object."""
        first = None
        n = 0
        for ln in value.split(b"\n"):
            if ln.strip():
                n += 1
                if first is None:
                    first = ln
                elif n >= 2:
                    break
        if n < 2:
            return False
        try:
            return type(orjson.loads(first)) is dict
        except orjson.JSONDecodeError:
            return False

    def _jsonl(self, rec, value: bytes, now: int, tp, events: list, dls: list, pre) -> None:
        lines = value.split(b"\n")
        if len(lines) > self._max_items:
            n = sum(1 for ln in lines if ln.strip())
            if n > self._max_items:
                dls.append(self._msg_dl(rec, TOO_LARGE, f"{n} lines > max_items {self._max_items}", value))
                return
        loads = orjson.loads
        build = self._build
        for i, line in enumerate(lines):
            line = line.strip()
            if not line:
                continue
            try:
                try:
                    obj = loads(line)
                except orjson.JSONDecodeError as exc:
                    raise _Reject(DECODE_ERROR, f"not JSON: {exc}") from None
                if type(obj) is not dict:
                    raise _Reject(VALIDATION_ERROR, f"expected a JSON object, got {type(obj).__name__}")
                events.append(build(obj, obj, "jsonl", rec, i, now, tp, TIME_KEYS, pre))
            except _Reject as r:
                dls.append(self._msg_dl(rec, r.code, f"line {i}: {r.reason}", line, i))
            except Exception as exc:  # noqa: BLE001
                reason = f"line {i}: {type(exc).__name__}: {exc}"
                dls.append(self._msg_dl(rec, INTERNAL_ERROR, reason, line, i))

    # One event ------------------------------------------------------------------------------------

    def _build(self, m: dict, own: dict, envelope: str, rec, index: int, now: int, tp, time_keys,
               pre: bytes | None) -> dict:
        """Event from merged dict `m` (consumed: popped keys leave it, the rest becomes attrs).

        `own` holds the values this item brought itself (type checks run on those only: the upload
        meta was checked once per message). `pre` is the record's b"<topic>:<partition>:<offset>:"
        (None when the topic does not encode). Raises _Reject.
        """
        if self._types:
            for k, tname, ok_types in self._types:
                v = own.get(k)
                if v is not None and type(v) not in ok_types:
                    raise _Reject(VALIDATION_ERROR,
                                  f"field '{k}': expected {tname}, got {type(v).__name__} {_short(v)}")
        pop = m.pop

        t = None
        tkey = None
        for tkey in time_keys:
            t = pop(tkey, None)
            if t is not None:
                break
        if t is None:
            ts = rec.timestamp
            event_time = ts if type(ts) is int and ts > 0 else now
        elif type(t) is int and self._t_lo <= t <= self._t_hi:
            event_time = t  # fast path: integer milliseconds inside the skew bounds, the SDKs' format
        else:
            event_time = self._event_time(t, tkey, now)

        v = pop("app_id", None)
        app_id = v if type(v) is str else _scalar_str("app_id", v)
        v = pop("event_name", None)
        if v is None:
            v = pop("name", None)
            if v is None:
                v = pop("type", None)
        event_name = v if type(v) is str else _scalar_str("event_name", v)
        v = pop("platform", None)
        platform = v if type(v) is str else _scalar_str("platform", v)
        v = pop("device_id", None)
        device_id = v if type(v) is str else _scalar_str("device_id", v)
        v = pop("duration_ms", None)
        if v is None:
            duration = None
        elif type(v) is float or type(v) is int:
            duration = float(v)
        else:
            duration = None
            if type(v) is str:
                try:
                    duration = float(v)
                except ValueError:
                    pass
            if duration is None or not math.isfinite(duration):
                raise _Reject(VALIDATION_ERROR, f"field 'duration_ms': expected a number, got {_short(v)}")

        fields = {}
        keys = self._text_in(m)
        if keys:
            if len(keys) > 1:  # in text_fields order, so that `fields` is the same in every process
                keys = [k for k in self._text_fields if k in keys]
            for k in keys:
                v = m[k]
                if type(v) is str:
                    if len(v) > self._max_chars:
                        raise _Reject(TOO_LARGE,
                                      f"field '{k}': {len(v)} chars > max_field_chars {self._max_chars}")
                    fields[k] = v
                    del m[k]

        ev = {
            # == blake2b(b"<topic>:<partition>:<offset>:<index>").hexdigest()[:32], without formatting
            # 128 hex chars to keep 32
            "event_id": blake2b(
                pre + (_IDX[index] if index < 256 else b"%d" % index) if pre is not None
                else f"{rec.topic}:{rec.partition}:{rec.offset}:{index}".encode()).digest()[:16].hex(),
            "event_time": event_time,
            "ingest_time": now,
            "app_id": app_id,
            "event_name": event_name,
            "platform": platform,
            "device_id": device_id,
            "duration_ms": duration,
            "fields": fields,
            "attrs": m,
            "traceparent": tp,
            "src": [rec.topic, rec.partition, rec.offset, index],
            "envelope": envelope,
        }
        if self._required:
            if self._required_top:  # the usual case: only event keys, checked inline
                for k in self._required:
                    if ev[k] is None or ev[k] == "":
                        raise _Reject(VALIDATION_ERROR, f"field '{k}': required but missing")
            else:
                self._check_required(ev, t is not None)
        return ev

    def _event_time(self, t: Any, tkey: str, now: int) -> int:
        """A payload time off the fast path -> ms, checked against the skew bounds. Raises _Reject."""
        event_time = t if type(t) is int and _MS_LO <= t < _MS_HI else parse_event_time(t)
        if event_time is None or not 0 <= event_time <= _MAX_EVENT_MS:
            raise _Reject(VALIDATION_ERROR,
                          f"field '{tkey}': not a time (ms, s or ISO-8601 expected): {_short(t)}")
        past = self._past_ms
        if past is not None and event_time < now - past:
            raise _Reject(VALIDATION_ERROR,
                          f"field '{tkey}': event time {event_time} is {(now - event_time) // 1000} s "
                          f"in the past (max_past_skew_s {past // 1000})")
        fut = self._future_ms
        if fut is not None and event_time > now + fut:
            raise _Reject(VALIDATION_ERROR,
                          f"field '{tkey}': event time {event_time} is {(event_time - now) // 1000} s "
                          f"in the future (max_future_skew_s {fut // 1000})")
        return event_time

    def _check_required(self, ev: dict, time_from_payload: bool) -> None:
        for k in self._required:
            if k in _TOP_KEYS:
                v = ev[k]
                missing = v is None or v == ""
            elif k in _TIME_KEY_SET:
                missing = not time_from_payload
            else:
                missing = k not in ev["fields"] and ev["attrs"].get(k) is None
            if missing:
                raise _Reject(VALIDATION_ERROR, f"field '{k}': required but missing")


# --- Beam ----------------------------------------------------------------------------------------


class UnpackFn(beam.DoFn):
    """KafkaRecord -> events on the main output, dead letters on DLQ_TAG. A list of records -> one list
    of events (so the next stages work list by list too).

    Counters are summed in the Unpacker and flushed to Beam metrics once per bundle, so the
    per-element cost is the unpacking itself.
    """

    def __init__(self, cfg: UnpackConfig | None = None) -> None:
        self._cfg = cfg or UnpackConfig()
        self._unpacker: Unpacker | None = None

    def setup(self) -> None:
        self._unpacker = Unpacker(self._cfg)
        _log.info("unpack: %s", "native fast path (perf_native) + Python for the other records"
                  if self._unpacker.native else "Python path (native fast path not installed, disabled "
                  "with PERF_NATIVE=0, or validation.types/required configured)")

    def process(self, element):
        if type(element) is list:  # a list of records in, ONE list of events out (dead letters one by one)
            events, dls = self._unpacker.unpack_batch(element)
            out = [events] if events else []
        else:
            out, dls = self._unpacker.unpack_batch((element,))
        if dls:
            out.extend(TaggedOutput(DLQ_TAG, d) for d in dls)
        return out

    def finish_bundle(self) -> None:
        stats = self._unpacker.stats
        for name, n in stats.items():
            if n:
                Metrics.counter(METRICS_NAMESPACE, name).inc(n)
        stats.clear()


class Unpack(beam.PTransform):
    """PCollection[KafkaRecord] -> outputs with `.events` (main) and `.dlq` (dead letters)."""

    def __init__(self, cfg: UnpackConfig | None = None, label: str | None = None) -> None:
        super().__init__(label)
        self._cfg = cfg or UnpackConfig()

    def expand(self, pcoll):
        return pcoll | "UnpackFn" >> beam.ParDo(UnpackFn(self._cfg)).with_output_types(Batch).with_outputs(
            DLQ_TAG, main="events")
