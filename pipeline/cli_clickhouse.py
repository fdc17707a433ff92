"""`python -m pipeline clickhouse init|stats`: create the schema, show table counts.

Target: --url, else sinks.clickhouse of --config, else chdb://.run/chdb (embedded, relative to the working
directory). chdb locks its path: run these while no pipeline holds the same chdb path.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from transforms.clickhouse_config import DEFAULT_URL, ClickHouseConfig, validate_clickhouse_config
from transforms.common import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("clickhouse", help="ClickHouse schema and table stats")
    sub = p.add_subparsers(dest="clickhouse_command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--url", help=f"chdb://PATH or clickhouse://user@host:9000/db (default {DEFAULT_URL})"
        )
        sp.add_argument("--config", help="pipeline YAML; its sinks.clickhouse section is used")
        sp.add_argument("--database", help="database (default: from URL/config, else perf)")

    init = sub.add_parser("init", help="create the database and tables if missing (sql/*.sql)")
    common(init)
    init.set_defaults(func=cmd_init)
    stats = sub.add_parser("stats", help="tables, row counts, FINAL counts, parts, last insert time")
    common(stats)
    stats.add_argument("--json", action="store_true", help="one JSON object on stdout")
    stats.set_defaults(func=cmd_stats)


def resolve_config(args: argparse.Namespace) -> ClickHouseConfig:
    section: dict[str, Any] = {}
    if args.config:
        import yaml

        with open(args.config, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        section = dict(((raw.get("sinks") or {}).get("clickhouse")) or {})
        section.pop("enabled", None)
    if args.url:
        section["url"] = args.url
        if not args.url.startswith("clickhouse://"):
            section.pop("password_env", None)
            section.pop("password_file", None)
    if args.database:
        section["database"] = args.database
    return validate_clickhouse_config(section)


def _connect(cfg: ClickHouseConfig):
    import logging

    from transforms.clickhouse_client import connect

    # The driver logs a traceback per failed connect; the command prints one line instead.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)

    return connect(cfg)


def _fail(cfg: ClickHouseConfig | None, exc: BaseException) -> int:
    from transforms.clickhouse_client import error_text

    text = error_text(exc, 400).splitlines()[0] if str(exc) else type(exc).__name__
    where = cfg.describe() if cfg is not None else "ClickHouse"
    hint = ""
    if "Cannot lock file" in text or "already initialized with path" in text:
        hint = " (the chdb path is in use by another process, e.g. a running pipeline)"
    elif cfg is not None and cfg.kind == "native":
        hint = " (is the server running? ./run.sh clickhouse-up)"
    print(f"clickhouse: cannot use {where}: {text}{hint}", file=sys.stderr)
    return 2


def _on_target(args: argparse.Namespace, work):
    """Resolves the target, connects and runs `work(client)`: (cfg, client, result), or an exit code (2)
    after one clear line when the config is bad or the target cannot be used."""
    cfg = None
    try:
        cfg = resolve_config(args)
        client = _connect(cfg)
        result = work(client)
        client.close()
    except ConfigError as exc:
        print(f"clickhouse: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - any failure to reach/use the target is one message, exit 2
        return _fail(cfg, exc)
    return cfg, client, result


def cmd_init(args: argparse.Namespace) -> int:
    from transforms.clickhouse_schema import apply_schema

    done = _on_target(args, apply_schema)
    if isinstance(done, int):
        return done
    cfg, client, statements = done
    version = ".".join(map(str, client.version))
    print(
        f"clickhouse: schema ready on {cfg.describe()} (ClickHouse {version}, {len(statements)} statements)"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from transforms.clickhouse_schema import table_stats

    done = _on_target(args, table_stats)
    if isinstance(done, int):
        return done
    cfg, client, tables = done
    version = ".".join(map(str, client.version))
    if args.json:
        print(
            json.dumps(
                {"target": cfg.describe(), "version": version, "database": cfg.database, "tables": tables}
            )
        )
        return 0
    print(f"{cfg.describe()}  (ClickHouse {version})")
    print(f"{'table':<20}{'rows':>12}{'FINAL rows':>12}{'parts':>7}  last insert")
    for t in tables:
        if not t["exists"]:
            print(f"{t['table']:<20}{'(missing: run clickhouse init)':>31}")
            continue
        last = t["last_insert"] or "-"
        print(f"{t['table']:<20}{t['rows']:>12}{t['final_rows']:>12}{t['parts']:>7}  {last}")
    return 0
