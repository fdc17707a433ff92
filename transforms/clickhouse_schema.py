"""Apply sql/*.sql (database and tables) to a ClickHouse server or chdb path, and read table stats."""

from __future__ import annotations

import pathlib
import threading

from transforms.clickhouse_client import (
    ClickHouseClient,
    chdb_is_open,
    close_chdb,
    connect,
    supports_dedup_token,
)
from transforms.clickhouse_config import ClickHouseConfig
from transforms.clickhouse_rows import TABLES

SQL_DIR = pathlib.Path(__file__).resolve().parents[1] / "sql"
# Keep insert dedup hashes for this many recent blocks (only on servers that have the setting).
DEDUP_WINDOW = 1000

_done: set[tuple[str, str]] = set()
_done_lock = threading.Lock()


def table_settings(version: tuple[int, ...]) -> str:
    """The only DDL difference between 18.16 and current servers: insert dedup for non-replicated tables."""
    if supports_dedup_token(version):
        return f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    return ""


def render_statements(database: str, version: tuple[int, ...]) -> list[str]:
    """The DDL statements of sql/*.sql, in file order, with placeholders filled for this server version."""
    out = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                 if not ln.lstrip().startswith("--")]
        text = "\n".join(lines).replace("{database}", database).replace("{table_settings}",
                                                                          table_settings(version))
        out.extend(s.strip() for s in text.split(";") if s.strip())
    return out


def apply_schema(client: ClickHouseClient) -> list[str]:
    """Create the database and tables if missing; returns the statements run."""
    statements = render_statements(client.database, client.version)
    for sql in statements:
        client.execute(sql)
    return statements


def ensure_schema(cfg: ClickHouseConfig, client: ClickHouseClient | None = None, *,
                  force: bool = False) -> None:
    """Create database/tables if missing; once per process and target unless `force`."""
    key = (cfg.url, cfg.database)
    with _done_lock:
        if key in _done and not force:
            return
    own = client is None
    # chdb: if this call opens the path, it also releases it, so that the pipeline's workers (maybe other
    # processes) can lock it afterwards.
    release_chdb = own and cfg.kind == "chdb" and not chdb_is_open(cfg.path)
    client = client or connect(cfg)
    try:
        apply_schema(client)
    finally:
        if own:
            client.close()
        if release_chdb:
            close_chdb(cfg.path)
    with _done_lock:
        _done.add(key)


def table_stats(client: ClickHouseClient) -> list[dict]:
    """Per table: rows, rows under FINAL, active parts, last part modification time."""
    db = client.database
    parts = {
        r[0]: (int(r[1]), str(r[2]))
        for r in client.execute(
            f"SELECT table, count(), toString(max(modification_time)) FROM system.parts "
            f"WHERE database = '{db}' AND active GROUP BY table"
        )
    }
    out = []
    for name in TABLES:
        exists = client.execute(
            f"SELECT count() FROM system.tables WHERE database = '{db}' AND name = '{name}'")
        if not int(exists[0][0]):
            out.append({"table": name, "exists": False})
            continue
        rows = int(client.execute(f"SELECT count() FROM `{db}`.`{name}`")[0][0])
        final = rows
        if name != "dead_letters":  # plain MergeTree: FINAL does not apply
            final = int(client.execute(f"SELECT count() FROM `{db}`.`{name}` FINAL")[0][0])
        n_parts, last = parts.get(name, (0, None))
        out.append({"table": name, "exists": True, "rows": rows, "final_rows": final, "parts": n_parts,
                    "last_insert": last if n_parts else None})
    return out
