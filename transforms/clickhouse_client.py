"""Two ClickHouse clients behind one small interface, and the error classification the sink retries by.

- NativeClient: a server over the native protocol with clickhouse-driver. Not clickhouse-connect: it speaks
  HTTP and its get_client() runs a settings query that Debian's 18.16 server rejects
  (`Unknown identifier: readonly`); the native protocol works on 18.16 and current servers alike.
- ChdbClient: ClickHouse embedded in this process (chdb). chdb runs ONE embedded server per process and
  locks its data path (a second process fails with "Cannot lock file .../status"; a second path in the same
  process fails with "EmbeddedServer already initialized with path ..."). So sessions are cached per path at
  module level and shared by every DoFn instance of the process; close_chdb() releases the path.
  Inserts go through Arrow: `INSERT ... SELECT * FROM Python(table)`, the fastest path we measured.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Protocol

from transforms.clickhouse_config import ClickHouseConfig

# Version from which INSERT ... SETTINGS insert_deduplication_token and the MergeTree setting
# non_replicated_deduplication_window exist (22.2; Debian's 18.16 has neither).
DEDUP_TOKEN_SINCE = (22, 2)


class ClickHouseClient(Protocol):
    kind: str
    database: str
    version: tuple[int, ...]

    def execute(self, sql: str) -> list[tuple]: ...

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple], *, types: tuple[str, ...] = (),
               dedup_token: str | None = None) -> None: ...

    def close(self) -> None: ...


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def supports_dedup_token(version: tuple[int, ...]) -> bool:
    return version >= DEDUP_TOKEN_SINCE


def _insert_sql(database: str, table: str, columns: tuple[str, ...], dedup_token: str | None) -> str:
    cols = ", ".join(f"`{c}`" for c in columns)
    settings = f" SETTINGS insert_deduplication_token = '{dedup_token}'" if dedup_token else ""
    return f"INSERT INTO `{database}`.`{table}` ({cols}){settings}"


class NativeClient:
    """A server over the native protocol (clickhouse-driver); reconnects by itself after network errors."""

    kind = "native"

    def __init__(self, cfg: ClickHouseConfig) -> None:
        from clickhouse_driver import Client

        self.database = cfg.database
        self._client = Client(
            host=cfg.host,
            port=cfg.port,
            user=cfg.user,
            password=cfg.resolve_password(),
            connect_timeout=min(cfg.timeout_s, 10.0),
            send_receive_timeout=cfg.timeout_s,
            sync_request_timeout=min(cfg.timeout_s, 5.0),
        )
        self.version = parse_version(self._client.execute("SELECT version()")[0][0])

    def execute(self, sql: str) -> list[tuple]:
        return self._client.execute(sql)

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple], *, types: tuple[str, ...] = (),
               dedup_token: str | None = None) -> None:
        if not rows:
            return
        # Columnar: the driver then skips its own per-row transposition and checks.
        data = list(zip(*rows, strict=True))
        self._client.execute(_insert_sql(self.database, table, columns, dedup_token) + " VALUES", data,
                             columnar=True)

    def close(self) -> None:
        self._client.disconnect()


# --- chdb ------------------------------------------------------------------------------------------------
_chdb_lock = threading.Lock()
_chdb_sessions: dict[str, Any] = {}


def chdb_session(path: str) -> Any:
    """The process-wide chdb session for `path` (created on first use)."""
    with _chdb_lock:
        session = _chdb_sessions.get(path)
        if session is None:
            from chdb import session as chdb_session_mod

            if _chdb_sessions:
                other = next(iter(_chdb_sessions))
                raise RuntimeError(f"chdb is already open on {other} in this process; one path per process "
                                   f"(close_chdb() first)")
            session = _open_chdb(chdb_session_mod, path)
            # Plain JSON numbers for 64-bit ints in execute() results.
            session.query("SET output_format_json_quote_64bit_integers = 0")
            _chdb_sessions[path] = session
        return session


def _open_chdb(mod: Any, path: str) -> Any:
    """Open a chdb session; on failure raise with the reason chdb printed to fd 2 (its exception only says
    "Error initializing EmbeddedServer", while stderr says e.g. "Cannot lock file .../status")."""
    import os
    import tempfile

    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            return mod.Session(path)
        except Exception as exc:
            os.dup2(saved, 2)
            err.seek(0)
            printed = " ".join(err.read().decode("utf-8", "replace").split())[:500]
            raise RuntimeError(f"cannot open chdb at {path}: {printed or exc}") from exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def chdb_is_open(path: str) -> bool:
    with _chdb_lock:
        return path in _chdb_sessions


def close_chdb(path: str | None = None) -> None:
    """Close the cached session of `path` (all when None), releasing the path's lock for other processes."""
    with _chdb_lock:
        for p in [p for p in _chdb_sessions if path is None or p == path]:
            _chdb_sessions.pop(p).close()


_ARROW_TYPES: dict[str, Any] = {}


def _arrow_type(ch_type: str) -> Any:
    if not _ARROW_TYPES:
        import pyarrow as pa

        # String columns as binary: takes str and bytes (orjson output) alike, no UTF-8 check.
        _ARROW_TYPES.update({
            "String": pa.binary(), "DateTime": pa.uint32(), "UInt64": pa.uint64(), "UInt32": pa.uint32(),
            "Int64": pa.int64(), "Int32": pa.int32(), "Float64": pa.float64(),
            "Nullable(Float64)": pa.float64(),
        })
    return _ARROW_TYPES[ch_type]


_ARROW_STRUCTS: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}


def _arrow_struct(columns: tuple[str, ...], types: tuple[str, ...]) -> Any:
    """The Arrow struct type of a row: one field per column, typed as _arrow_type() (cached per layout)."""
    key = (tuple(columns), tuple(types))
    st = _ARROW_STRUCTS.get(key)
    if st is None:
        import pyarrow as pa

        st = _ARROW_STRUCTS[key] = pa.struct([pa.field(c, _arrow_type(t))
                                              for c, t in zip(columns, types, strict=True)])
    return st


class ChdbClient:
    """ClickHouse embedded in this process."""

    kind = "chdb"

    def __init__(self, cfg: ClickHouseConfig) -> None:
        self.database = cfg.database
        self.path = cfg.path
        self._session = chdb_session(cfg.path)
        self.version = parse_version(self.execute("SELECT version()")[0][0])

    def execute(self, sql: str) -> list[tuple]:
        import orjson

        res = self._session.query(sql, "JSONCompactEachRow")
        text = res.bytes() if hasattr(res, "bytes") else bytes(str(res), "utf-8")
        return [tuple(orjson.loads(line)) for line in text.splitlines() if line.strip()]

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple], *, types: tuple[str, ...] = (),
               dedup_token: str | None = None) -> None:
        if not rows:
            return
        import pyarrow as pa

        if len(types) != len(columns):
            raise RuntimeError("chdb insert needs the ClickHouse type of every column")
        # Rows straight into one Arrow struct array (tuples are struct values), split into columns without a
        # copy: Arrow reads each row tuple once, where zip(*rows) + pa.array per column walks every row once
        # per column (and builds a Python tuple per column). Same arrays, same errors (a row of the wrong
        # length, a value that does not fit) as converting column by column.
        struct = pa.array(rows, type=_arrow_struct(columns, types))
        ch_insert_batch = pa.Table.from_batches(  # noqa: F841 (read by Python() below)
            [pa.RecordBatch.from_struct_array(struct)])
        self._session.query(_insert_sql(self.database, table, columns, dedup_token)
                            + " SELECT * FROM Python(ch_insert_batch)")

    def close(self) -> None:
        # The session is shared by the process; close_chdb() ends it.
        pass


def connect(cfg: ClickHouseConfig) -> ClickHouseClient:
    return ChdbClient(cfg) if cfg.kind == "chdb" else NativeClient(cfg)


# --- error classification ----------------------------------------------------------------------------------
TRANSIENT = "transient"  # retry the same batch after a backoff
DATA = "data"            # some row(s) can never be inserted: bisect, dead-letter them
FATAL = "fatal"          # neither (missing table, bad auth, syntax): fail the bundle, the runner retries it

# Server error codes (ErrorCodes.cpp) that a later attempt can get past.
_TRANSIENT_CODES = {
    3,    # UNEXPECTED_END_OF_FILE
    32,   # ATTEMPT_TO_READ_AFTER_EOF
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    236,  # ABORTED
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    252,  # TOO_MANY_PARTS
    319,  # UNKNOWN_STATUS_OF_INSERT
    394,  # QUERY_WAS_CANCELLED
    425,  # SYSTEM_ERROR
    439,  # CANNOT_SCHEDULE_TASK
    999,  # KEEPER_EXCEPTION
}
# Server error codes caused by the data of some row.
_DATA_CODES = {
    6, 26, 27, 38, 41, 72,  # CANNOT_PARSE_{TEXT,QUOTED_STRING,INPUT_ASSERTION_FAILED,DATE,DATETIME,NUMBER}
    53,   # TYPE_MISMATCH (the driver raises it too, client-side, when a value does not encode)
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    395,  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a MATERIALIZED throwIf guard)
    469,  # VIOLATED_CONSTRAINT
}
_CODE_RE = re.compile(r"Code:\s*(\d+)")


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE_RE.search(str(exc))
    return int(m.group(1)) if m else None


def classify_error(exc: BaseException) -> str:
    from transforms.common import ConfigError

    if isinstance(exc, ConfigError):
        return FATAL
    try:
        from clickhouse_driver import errors as drv
    except ImportError:  # pragma: no cover - the driver is a pinned dependency
        drv = None
    if drv is not None and isinstance(exc, (drv.NetworkError, drv.SocketTimeoutError,
                                            drv.UnexpectedPacketFromServerError)):
        return TRANSIENT
    if isinstance(exc, (ConnectionError, TimeoutError, EOFError)):
        return TRANSIENT
    # Client-side encoding of a value (driver struct packing, Arrow conversion): the data is wrong.
    if isinstance(exc, (TypeError, ValueError, OverflowError, UnicodeError)) and error_code(exc) is None:
        return DATA
    code = error_code(exc)
    if code in _TRANSIENT_CODES:
        return TRANSIENT
    if code in _DATA_CODES:
        return DATA
    if isinstance(exc, OSError):  # socket errors without a ClickHouse code: refused, reset, unreachable
        return TRANSIENT
    return FATAL


def error_text(exc: BaseException, limit: int = 1000) -> str:
    """The server's (or encoder's) message without the stack trace 18.16 appends."""
    text = getattr(exc, "message", None) or str(exc)
    code = error_code(exc)
    text = text.split("Stack trace:")[0].strip()
    if code is not None and not text.startswith("Code:"):
        text = f"Code: {code}. {text}"
    return text[:limit]
