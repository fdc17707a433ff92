"""Row layouts of the ClickHouse tables and the dict -> row-tuple converters the sink uses.

Column order here is the column list of every INSERT; it must name columns that exist in sql/*.sql (a test
compares both). Converters do no type coercion on purpose: a value of the wrong type is refused by the client
encoder or the server, isolated by the sink's bisection and dead-lettered, instead of being silently changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from transforms.native import native_available, perf_native

_dumps = orjson.dumps
_OPT = orjson.OPT_NON_STR_KEYS

# (element, exception) of each element a list converter could not turn into a row.
Failed = list[tuple[Any, Exception]]


class TableLayout(NamedTuple):
    name: str
    columns: tuple[str, ...]
    # ClickHouse type per column (the DDL's); also drives the Arrow schema of the chdb client.
    types: tuple[str, ...]
    to_row: Callable[[dict[str, Any]], tuple]
    # Stable identity of a row, used for the insert dedup token and to name rows in dead letters.
    row_id: Callable[[tuple], str]
    # List converter: elements -> (rows, [(element, exception), ...]); same rows as to_row, faster.
    to_rows: Callable[[list], tuple[list[tuple], Failed]] | None = None

    def convert(self, elements: list) -> tuple[list[tuple], Failed]:
        """Rows of a list of elements, and the (element, exception) pairs of those that do not convert."""
        if self.to_rows is not None:
            return self.to_rows(elements)
        return rows_of(self.to_row, elements)


def _message(fields: dict[str, Any]) -> str:
    """The main text of an event: `message`, else `content`, else the first text field."""
    msg = fields.get("message") or fields.get("content")
    if msg is None and fields:
        msg = next(iter(fields.values()))
    return msg if isinstance(msg, str) else ""


def event_row(e: dict[str, Any]) -> tuple:
    """Event dict (unpack + classify shape) -> events row; raises what made it unconvertible (the caller
    dead-letters the event). One definition of the row: event_rows()."""
    rows, failed = event_rows((e,))
    if failed:
        raise failed[0][1]
    return rows[0]


def event_rows(events: list[dict[str, Any]] | tuple) -> tuple[list[tuple], Failed]:
    """A list of event dicts -> (rows, [(event, exception), ...] of events that do not convert).

    With perf_native (native/src/rows.rs) the common events are converted natively; the events it hands
    back go through _event_rows_py (the definition) in place, so rows and failures are the same either way.
    """
    if type(events) is not list or not _native_rows():
        return _event_rows_py(events)
    rows, back = perf_native.event_rows(events)
    if not back:
        return rows, []
    out: list[tuple] = []
    failed: Failed = []
    done = 0  # native rows taken so far
    prev = 0  # next event index not yet merged
    for i in back:
        n = i - prev
        out += rows[done:done + n]
        done += n
        r, f = _event_rows_py((events[i],))
        out += r
        failed += f
        prev = i + 1
    out += rows[done:]
    return out, failed


def _native_rows() -> bool:
    return native_available() and hasattr(perf_native, "event_rows")


def _event_rows_py(events: list[dict[str, Any]] | tuple) -> tuple[list[tuple], Failed]:
    """event_rows in Python: THE definition of the events row (the native path must give the same).

    The hot path of the sink: one loop over a pipeline element (a list of events), plain subscripts into ONE
    tuple display (no itemgetter or starred parts, which build a list first). A missing key or odd type
    takes the lenient path (event_id and event_time stay required); fields and attrs are serialized once.
    decode() on purpose: keeping many orjson bytes objects alive is ~10x slower (their allocation is
    oversized), and both clients take str for String.
    """
    rows: list[tuple] = []
    failed: Failed = []
    append = rows.append
    dumps = _dumps
    message = _message
    for e in events:
        try:
            ms = e["event_time"]
            ingest = e["ingest_time"]
            fields = e["fields"]
            src_topic, src_partition, src_offset, src_index = e["src"]
            append((
                e["event_id"], ms // 1000, ms, ingest,
                e["app_id"], e["event_name"], e["platform"], e["device_id"], e["category"], e["rule_id"],
                e["engine"],
                e.get("duration_ms"),
                fields.get("message") or fields.get("content") or message(fields),
                dumps(fields).decode(),
                dumps(e["attrs"]).decode(),
                e.get("traceparent") or "",
                src_topic, src_partition, src_offset, src_index,
                e.get("version", ingest),
            ))
        except (KeyError, TypeError, ValueError):
            try:
                append(_event_row_lenient(e))
            except Exception as exc:  # noqa: BLE001 - handed back: the caller dead-letters the event
                failed.append((e, exc))
        except Exception as exc:  # noqa: BLE001 - anything else is not retried leniently: dead-lettered
            failed.append((e, exc))
    return rows, failed


def rows_of(to_row: Callable[[Any], tuple], elements: list) -> tuple[list[tuple], Failed]:
    """Generic list converter (tables without a dedicated one): (rows, [(element, exception), ...])."""
    rows: list[tuple] = []
    failed: Failed = []
    append = rows.append
    for el in elements:
        try:
            append(to_row(el))
        except Exception as exc:  # noqa: BLE001 - handed back: the caller dead-letters the element
            failed.append((el, exc))
    return rows, failed


def _event_row_lenient(e: dict[str, Any]) -> tuple:
    """Slow path for events missing optional keys or with non-str JSON keys; event_id and event_time stay
    required (KeyError -> dead letter)."""
    ms = e["event_time"]
    ingest = e.get("ingest_time") or 0
    fields = e.get("fields") or {}
    src = e.get("src") or ("", -1, -1, -1)
    return (
        e["event_id"], ms // 1000, ms, ingest,
        *(e.get(k) or "" for k in ("app_id", "event_name", "platform", "device_id", "category", "rule_id",
                                   "engine")),
        e.get("duration_ms"),
        _message(fields),
        _dumps(fields, option=_OPT).decode(),
        _dumps(e.get("attrs") or {}, option=_OPT).decode(),
        e.get("traceparent") or "",
        *src,
        e.get("version", ingest),
    )


EVENTS = TableLayout(
    "events",
    (
        "event_id", "event_time", "event_time_ms", "ingest_time_ms", "app_id", "event_name", "platform",
        "device_id", "category", "rule_id", "engine", "duration_ms", "message", "fields", "attrs",
        "traceparent", "src_topic", "src_partition", "src_offset", "src_index", "version",
    ),
    (
        "String", "DateTime", "UInt64", "UInt64", "String", "String", "String",
        "String", "String", "String", "String", "Nullable(Float64)", "String", "String", "String", "String",
        "String", "Int32", "Int64", "Int32", "UInt64",
    ),
    event_row,
    itemgetter(0),  # event_id; a C callable: batch_token calls it per row
    event_rows,
)


def aggregate_row(a: dict[str, Any]) -> tuple:
    start = a["window_start"]
    end = a["window_end"]
    return (
        start // 1000,
        start,
        end // 1000,
        end,
        a.get("category") or "",
        a.get("app_id") or "",
        a["count"],
        a.get("distinct_devices") or 0,
        a.get("p50"),
        a.get("p95"),
        a.get("max"),
        str(a.get("pane") or ""),
        a.get("pane_index") or 0,
        a.get("version") or 0,
    )


WINDOW_AGGREGATES = TableLayout(
    "window_aggregates",
    (
        "window_start", "window_start_ms", "window_end", "window_end_ms", "category", "app_id", "count",
        "distinct_devices", "p50", "p95", "max", "pane", "pane_index", "version",
    ),
    (
        "DateTime", "UInt64", "DateTime", "UInt64", "String", "String", "UInt64",
        "UInt64", "Nullable(Float64)", "Nullable(Float64)", "Nullable(Float64)", "String", "UInt64", "UInt64",
    ),
    aggregate_row,
    lambda row: f"{row[1]}|{row[4]}|{row[5]}|{row[13]}",
)


def _int(v: Any) -> int:
    return -1 if v is None else v


def _bytes(v: Any) -> bytes | str:
    return b"" if v is None else v


def dead_letter_row(d: dict[str, Any]) -> tuple:
    t = d.get("time") or 0
    return (
        d.get("code") or "",
        d.get("reason") or "",
        d.get("stage") or "",
        d.get("topic") or "",
        _int(d.get("partition")),
        _int(d.get("offset")),
        _int(d.get("index")),
        t // 1000,
        t,
        _bytes(d.get("key")),
        _bytes(d.get("payload")),
    )


DEAD_LETTERS = TableLayout(
    "dead_letters",
    ("code", "reason", "stage", "topic", "partition", "offset", "index", "time", "time_ms", "key", "payload"),
    ("String", "String", "String", "String", "Int32", "Int64", "Int32", "DateTime", "UInt64", "String",
     "String"),
    dead_letter_row,
    lambda row: f"{row[3]}|{row[4]}|{row[5]}|{row[6]}|{row[8]}|{row[0]}",
)

TABLES: dict[str, TableLayout] = {t.name: t for t in (EVENTS, WINDOW_AGGREGATES, DEAD_LETTERS)}


def batch_token(layout: TableLayout, rows: list[tuple]) -> str:
    """Insert dedup token: a hash of the batch's row ids, so a retried batch is recognised by the server."""
    h = hashlib.blake2b(digest_size=16)
    h.update(layout.name.encode())
    rid = layout.row_id
    h.update("\n".join(map(rid, rows)).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def row_as_json(layout: TableLayout, row: tuple) -> bytes:
    """A row as a JSON object (payload of a SINK_REJECTED dead letter); never raises."""
    obj = {}
    for name, value in zip(layout.columns, row, strict=False):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        obj[name] = value
    return _dumps(obj, option=_OPT | orjson.OPT_PASSTHROUGH_DATACLASS, default=repr)
