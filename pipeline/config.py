"""Loads the one YAML config (rules, routes, sinks, ...) and validates it before any data moves.

Each section is checked by the module that uses it; errors name the dotted key that is wrong.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from pipeline.config_file import read_config_file
from transforms.common import ConfigError
from transforms.kafka_config import validate_client_config
from transforms.kafkaio import ReadConfig, validate_read_config

SECTIONS = ("kafka", "source", "unpack", "classify", "window", "routes", "sinks")
_SOURCE_KEYS = {
    "topics",
    "topic_pattern",
    "start",
    "stop_at_end",
    "max_records",
    "idle_timeout_s",
    "discovery_interval_s",
    "max_out_of_orderness_s",
    "commit_offsets",
    "poll_batch",
    "max_poll_s",
    "batch_records",
    "event_time_header",
}
# The pipeline reads lists of records (ReadConfig.batch_records): every stage then pays Beam's per-element
# cost once per list. 500 records are ~2,000 events and ~0.5 MB: small enough for smooth bundles.
DEFAULT_BATCH_RECORDS = 500
_ROUTE_KEYS = {"topic_template", "dlq_topic", "create_topics", "topic_partitions"}
UNSET = object()  # an override value that removes the key (e.g. --topics drops source.topic_pattern)
_TOPIC_OK = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class Routes:
    topic_template: str = "to_analyzer__0.{category}"
    dlq_topic: str = "pipeline.dlq"
    create_topics: bool = True
    topic_partitions: int = 4

    def topic_for(self, category: str) -> str:
        return self.topic_template.format(category=category)


@dataclass(frozen=True)
class PipelineConfig:
    path: str
    read: ReadConfig
    producer: dict[str, Any]
    unpack: Any
    classify: Any
    window: Any
    routes: Routes
    clickhouse: Any | None  # None: ClickHouse sink disabled


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(name, f"expected a mapping, got {type(value).__name__}")
    return value


def _no_unknown(section: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for k in section:
        if k not in allowed:
            raise ConfigError(f"{prefix}.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _typed(section: dict[str, Any], key: str, types: tuple[type, ...], prefix: str) -> Any:
    value = section[key]
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{prefix}.{key}", f"expected {'/'.join(t.__name__ for t in types)}, got a boolean")
    if not isinstance(value, types):
        raise ConfigError(f"{prefix}.{key}", f"expected {'/'.join(t.__name__ for t in types)}, got {value!r}")
    return value


def _read_config(kafka: dict[str, Any], source: dict[str, Any]) -> ReadConfig:
    _no_unknown(source, _SOURCE_KEYS, "source")
    kwargs: dict[str, Any] = {}
    for key, types in (
        ("start", (str,)),
        ("topic_pattern", (str,)),
        ("stop_at_end", (bool,)),
        ("max_records", (int,)),
        ("idle_timeout_s", (int, float)),
        ("discovery_interval_s", (int, float)),
        ("max_out_of_orderness_s", (int, float)),
        ("commit_offsets", (bool,)),
        ("poll_batch", (int,)),
        ("max_poll_s", (int, float)),
        ("batch_records", (int,)),
        ("event_time_header", (str,)),
    ):
        if source.get(key) is not None:
            kwargs[key] = _typed(source, key, types, "source")
    topics = source.get("topics")
    if topics is not None:
        if isinstance(topics, str):
            topics = [t for t in topics.split(",") if t]
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise ConfigError("source.topics", "expected a list of topic names")
        kwargs["topics"] = tuple(topics)
    kwargs.setdefault("batch_records", DEFAULT_BATCH_RECORDS)
    consumer = validate_client_config(kafka.get("consumer"), "kafka.consumer")
    return ReadConfig(consumer=consumer, **kwargs)


def _routes(section: dict[str, Any]) -> Routes:
    _no_unknown(section, _ROUTE_KEYS, "routes")
    routes = Routes(**section)
    if "{category}" not in routes.topic_template:
        raise ConfigError("routes.topic_template", "must contain {category}")
    try:
        sample = routes.topic_for("PERF_CRASH")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError("routes.topic_template", f"bad template: {e}") from None
    for key, topic in (("topic_template", sample), ("dlq_topic", routes.dlq_topic)):
        if not isinstance(topic, str) or not _TOPIC_OK.match(topic):
            raise ConfigError(f"routes.{key}", f"{topic!r} is not a legal Kafka topic name")
    return routes


def load_config(path: str, overrides: list[tuple[tuple[str, ...], Any]] | None = None) -> PipelineConfig:
    """Reads and validates `path`; `overrides` are (key path, value) pairs from command-line flags
    (paths, not dotted strings: librdkafka names contain dots)."""
    raw = read_config_file(path)
    for k in raw:
        if k not in SECTIONS:
            raise ConfigError(k, f"unknown section (allowed: {', '.join(SECTIONS)})")
    for keys, value in overrides or ():
        if value is None:
            continue
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        if value is UNSET:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return build_config(raw, base_dir=os.path.dirname(os.path.abspath(path)), path=path)


def build_config(raw: dict[str, Any], base_dir: str, path: str = "<dict>") -> PipelineConfig:
    from transforms.classify import validate_classify_config
    from transforms.clickhouse import validate_clickhouse_config
    from transforms.unpack import validate_unpack_config
    from transforms.window import validate_window_config

    kafka = _section(raw, "kafka")
    _no_unknown(kafka, {"consumer", "producer"}, "kafka")
    read = validate_read_config(_read_config(kafka, _section(raw, "source")))
    producer = validate_client_config(kafka.get("producer"), "kafka.producer")
    sinks = _section(raw, "sinks")
    _no_unknown(sinks, {"clickhouse"}, "sinks")
    ch = dict(sinks.get("clickhouse") or {})
    enabled = ch.pop("enabled", True)
    clickhouse = None
    if enabled:
        if (
            isinstance(ch.get("url"), str)
            and ch["url"].startswith("chdb://")
            and not ch["url"].startswith("chdb:///")
        ):
            # chdb://relative/path is relative to the working directory; make it explicit for workers.
            ch["url"] = "chdb://" + os.path.abspath(ch["url"][len("chdb://") :])
        clickhouse = validate_clickhouse_config(ch)
    return PipelineConfig(
        path=path,
        read=read,
        producer=producer,
        unpack=validate_unpack_config(raw.get("unpack")),
        classify=validate_classify_config(raw.get("classify"), base_dir),
        window=validate_window_config(raw.get("window")),
        routes=_routes(_section(raw, "routes")),
        clickhouse=clickhouse,
    )
