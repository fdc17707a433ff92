"""The `sinks.clickhouse` config section: validation into a picklable ClickHouseConfig.

The config holds WHERE the password is (env var name / file path), never the password itself: the object is
pickled into the pipeline and may be logged; the worker reads the secret when it connects.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from transforms.common import ConfigError

SECTION = "sinks.clickhouse"
DEFAULT_URL = "chdb://.run/chdb"
DEFAULT_DATABASE = "perf"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 8
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    budget_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class ClickHouseConfig:
    url: str = DEFAULT_URL
    kind: str = "chdb"          # "chdb" (embedded, in process) or "native" (server, native protocol)
    path: str = ""              # chdb: absolute data path
    host: str = ""
    port: int = 9000
    user: str = "default"
    database: str = DEFAULT_DATABASE
    password_env: str | None = None
    password_file: str | None = None
    batch_rows: int = 50_000
    max_buffer_s: float = 1.0
    shards: int = 2
    # "state": GroupIntoBatches; "bundle": buffer inside a bundle, flush at its end.
    batching: str = "state"
    retry: RetryConfig = RetryConfig()
    insert_dedup_token: bool = True
    timeout_s: float = 30.0
    enabled: bool = True

    def resolve_password(self) -> str:
        """The password, read now (in the worker) from the env var or file; '' when neither is set."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"{SECTION}.password_env",
                                  f"environment variable {self.password_env} is not set")
            return value
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as exc:
                raise ConfigError(f"{SECTION}.password_file", f"cannot read: {exc.strerror}") from None
        return ""

    def describe(self) -> str:
        """Where the sink writes, for messages (no secret in it)."""
        if self.kind == "chdb":
            return f"chdb:{self.path} db={self.database}"
        return f"clickhouse://{self.user}@{self.host}:{self.port} db={self.database}"


_KEYS = {
    "url", "password_env", "password_file", "database", "batch_rows", "max_buffer_s", "shards", "retry",
    "insert_dedup_token", "batching", "timeout_s", "enabled",
}
_RETRY_KEYS = {"max_attempts", "initial_backoff_s", "max_backoff_s", "budget_s"}


def _num(section: dict, key: str, default: Any, kind: type, prefix: str, *, minimum: float,
         strict: bool) -> Any:
    value = section.get(key, default)
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{prefix}.{key}", f"must be {what}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{prefix}.{key}", f"must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return kind(value)


def parse_url(url: str, key: str = f"{SECTION}.url") -> dict[str, Any]:
    """`chdb://PATH` (relative to the working dir, or chdb:///abs) or `clickhouse://user@host:port/db`."""
    if not isinstance(url, str) or not url:
        raise ConfigError(key, f"must be a non-empty string, got {url!r}")
    if url.startswith("chdb://"):
        path = url[len("chdb://"):]
        if not path:
            raise ConfigError(key, "chdb:// needs a data path, e.g. chdb://.run/chdb or chdb:///abs/path")
        return {"kind": "chdb", "path": os.path.abspath(path)}
    if url.startswith("clickhouse://"):
        parts = urlsplit(url)
        if parts.password is not None:
            raise ConfigError(key, "no password in the URL: use password_env or password_file")
        try:
            port = parts.port or 9000
        except ValueError as exc:
            raise ConfigError(key, f"bad port: {exc}") from None
        if not parts.hostname:
            raise ConfigError(key, "clickhouse:// needs a host, e.g. clickhouse://default@127.0.0.1:9000/perf")
        out: dict[str, Any] = {"kind": "native", "host": parts.hostname, "port": port,
                               "user": unquote(parts.username or "default")}
        db = parts.path.strip("/")
        if db:
            out["database"] = db
        return out
    raise ConfigError(key, f"scheme must be chdb:// or clickhouse://, got {url!r}")


def validate_clickhouse_config(section: dict[str, Any] | None, prefix: str = SECTION) -> ClickHouseConfig:
    """Validate `sinks.clickhouse` (None = defaults) into a ClickHouseConfig; ConfigError names the key."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise ConfigError(prefix, f"must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(_KEYS))})")
    url = section.get("url", DEFAULT_URL)
    target = parse_url(url, f"{prefix}.url")
    database = section.get("database", target.pop("database", DEFAULT_DATABASE))
    if not isinstance(database, str) or not _IDENT.match(database):
        raise ConfigError(f"{prefix}.database",
                          f"must be an identifier [A-Za-z_][A-Za-z0-9_]*, got {database!r}")
    for key in ("password_env", "password_file"):
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{prefix}.{key}", f"must be a non-empty string, got {value!r}")
    if section.get("password_env") and section.get("password_file"):
        raise ConfigError(f"{prefix}.password_file", "set password_env or password_file, not both")
    if target["kind"] == "chdb" and (section.get("password_env") or section.get("password_file")):
        raise ConfigError(f"{prefix}.url", "chdb:// is embedded and takes no password")
    for key, default in (("insert_dedup_token", True), ("enabled", True)):
        if not isinstance(section.get(key, default), bool):
            raise ConfigError(f"{prefix}.{key}", f"must be true or false, got {section.get(key)!r}")
    batching = section.get("batching", "state")
    if batching not in ("state", "bundle"):
        raise ConfigError(f"{prefix}.batching", f"must be 'state' or 'bundle', got {batching!r}")
    retry_section = section.get("retry") or {}
    rp = f"{prefix}.retry"
    if not isinstance(retry_section, dict):
        raise ConfigError(rp, f"must be a mapping, got {type(retry_section).__name__}")
    unknown = sorted(set(retry_section) - _RETRY_KEYS)
    if unknown:
        raise ConfigError(f"{rp}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(_RETRY_KEYS))})")
    d = RetryConfig()
    retry = RetryConfig(
        max_attempts=_num(retry_section, "max_attempts", d.max_attempts, int, rp, minimum=1, strict=False),
        initial_backoff_s=_num(retry_section, "initial_backoff_s", d.initial_backoff_s, float, rp,
                               minimum=0, strict=True),
        max_backoff_s=_num(retry_section, "max_backoff_s", d.max_backoff_s, float, rp, minimum=0,
                           strict=True),
        budget_s=_num(retry_section, "budget_s", d.budget_s, float, rp, minimum=0, strict=True),
    )
    if retry.max_backoff_s < retry.initial_backoff_s:
        raise ConfigError(f"{rp}.max_backoff_s", "must be >= initial_backoff_s")
    return ClickHouseConfig(
        url=url,
        database=database,
        password_env=section.get("password_env"),
        password_file=section.get("password_file"),
        batch_rows=_num(section, "batch_rows", 50_000, int, prefix, minimum=1, strict=False),
        max_buffer_s=_num(section, "max_buffer_s", 1.0, float, prefix, minimum=0, strict=True),
        shards=_num(section, "shards", 2, int, prefix, minimum=1, strict=False),
        batching=batching,
        retry=retry,
        insert_dedup_token=section.get("insert_dedup_token", True),
        timeout_s=_num(section, "timeout_s", 30.0, float, prefix, minimum=0, strict=True),
        enabled=section.get("enabled", True),
        **target,
    )
