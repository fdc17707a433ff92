"""Types and helpers shared by every stage: the Kafka record, dead letters, config errors."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

# Tag of the dead-letter output of every DoFn that can reject input.
DLQ_TAG = "dlq"

# Dead-letter codes. Stable strings: operators filter and replay by them.
DECODE_ERROR = "DECODE_ERROR"  # not UTF-8 / not JSON
VALIDATION_ERROR = "VALIDATION_ERROR"  # wrong shape, missing or mistyped field, skew
TOO_LARGE = "TOO_LARGE"  # value, item count or field over a configured limit
EMPTY = "EMPTY"  # null/empty Kafka value
INTERNAL_ERROR = "INTERNAL_ERROR"  # a bug caught by a stage; the record is kept, not lost
SINK_REJECTED = "SINK_REJECTED"  # a sink refused the row for good (e.g. ClickHouse type error)


class ConfigError(ValueError):
    """A bad configuration value. `key` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error at '{key}': {message}")
        self.key = key
        self.message = message


class KafkaRecord(NamedTuple):
    """One Kafka record as ReadFromKafka emits it."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since epoch (CreateTime or LogAppendTime)
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        """Last value of header `name` (Kafka allows repeats; the last one wins)."""
        found = None
        for k, v in self.headers:
            if k == name:
                found = v
        return found


def now_ms() -> int:
    return int(time.time() * 1000)


def dead_letter(
    code: str,
    reason: str,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    index: int | None = None,
    payload: bytes | None = None,
    key: bytes | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
    stage: str = "unpack",
) -> dict[str, Any]:
    """A dead-letter record: enough to count it by code, show why, and replay it to its topic."""
    return {
        "code": code,
        "reason": reason,
        "stage": stage,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "index": index,
        "payload": payload,
        "key": key,
        "headers": tuple(headers),
        "time": now_ms(),
    }


# --- Dead letters on Kafka -------------------------------------------------------------------
# A dead letter travels as the ORIGINAL key and value bytes, with its metadata in headers under
# "dlq." (as Kafka Connect does with "__connect.errors."). Replay is then a plain re-publish of
# key/value/original headers to dlq.topic, and any Kafka tool can read the reason.
DLQ_HEADER_PREFIX = "dlq."
_DLQ_META = ("code", "reason", "stage", "topic", "partition", "offset", "index", "time")


def dead_letter_to_kafka(dl: dict[str, Any]) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) for producing a dead letter to the DLQ topic."""
    headers = [(k, v) for k, v in dl.get("headers") or () if not k.startswith(DLQ_HEADER_PREFIX)]
    for name in _DLQ_META:
        val = dl.get(name)
        if val is not None:
            headers.append((DLQ_HEADER_PREFIX + name, str(val).encode("utf-8", "replace")))
    return dl.get("key"), dl.get("payload"), headers


def dead_letter_from_kafka(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None
) -> dict[str, Any]:
    """Inverse of dead_letter_to_kafka: the dead-letter dict back from a DLQ record."""
    meta: dict[str, Any] = {}
    original: list[tuple[str, bytes]] = []
    for k, v in headers or ():
        if k.startswith(DLQ_HEADER_PREFIX):
            meta[k[len(DLQ_HEADER_PREFIX) :]] = v.decode("utf-8", "replace") if v is not None else None
        else:
            original.append((k, v))
    for name in ("partition", "offset", "index", "time"):
        if meta.get(name) not in (None, "", "None"):
            meta[name] = int(meta[name])
        else:
            meta[name] = None
    return {
        "code": meta.get("code"),
        "reason": meta.get("reason"),
        "stage": meta.get("stage"),
        "topic": meta.get("topic"),
        "partition": meta["partition"],
        "offset": meta["offset"],
        "index": meta["index"],
        "time": meta["time"],
        "payload": value,
        "key": key,
        "headers": tuple(original),
    }
