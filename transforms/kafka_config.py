"""librdkafka settings: defaults, secret references, redaction.

Settings pass through as librdkafka dicts. A value may be a reference instead of a literal:
`${env:NAME}` or `${file:/path}`. References are resolved in the worker, right before a client is
created, so secret values never sit in the pipeline graph, the runner's job config or the logs.
"""

from __future__ import annotations

import os
import re
from typing import Any

from transforms.common import ConfigError

_REF = re.compile(r"^\$\{(env|file):([^}]+)\}$")
# Keys whose values are never printed (librdkafka names, substring match).
_SECRET_HINTS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "token")

CONSUMER_DEFAULTS: dict[str, Any] = {
    "bootstrap.servers": "127.0.0.1:9092",
    # Offsets are committed by the pipeline after a bundle is durable (bundle finalization),
    # never by librdkafka's timer: an auto-commit could run ahead of what the runner has persisted.
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # EOF events tell a bounded read that it reached the end offsets seen at start.
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
    # Bound the prefetch queue (librdkafka default is 64 MiB per consumer): a slow downstream then
    # slows fetching instead of growing memory. One consumer serves one partition here.
    "queued.max.messages.kbytes": 32768,
    "fetch.wait.max.ms": 100,
}

PRODUCER_DEFAULTS: dict[str, Any] = {
    "bootstrap.servers": "127.0.0.1:9092",
    # Idempotence stops broker-side duplicates from producer retries; it implies acks=all.
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 200000,
}

COMPRESSION_CODECS = ("lz4", "zstd", "snappy", "gzip", "none")


def merged(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(defaults)
    out.update(overrides or {})
    return out


def validate_client_config(cfg: Any, key: str) -> dict[str, Any]:
    """Checks a librdkafka dict's shape (librdkafka itself checks names and values at client creation)."""
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(key, f"expected a mapping of librdkafka settings, got {type(cfg).__name__}")
    for k, v in cfg.items():
        if not isinstance(k, str):
            raise ConfigError(key, f"setting names must be strings, got {k!r}")
        if not isinstance(v, (str, int, float, bool)):
            raise ConfigError(f"{key}.{k}", f"expected a scalar, got {type(v).__name__}")
        if isinstance(v, str) and v.startswith("${") and not _REF.match(v):
            raise ConfigError(f"{key}.{k}", "references look like ${env:NAME} or ${file:/path}")
    codec = cfg.get("compression.type", cfg.get("compression.codec"))
    if codec is not None and codec not in COMPRESSION_CODECS:
        raise ConfigError(f"{key}.compression.type", f"one of {', '.join(COMPRESSION_CODECS)}, got {codec!r}")
    return dict(cfg)


def resolve_secrets(cfg: dict[str, Any]) -> dict[str, Any]:
    """Replaces ${env:NAME} / ${file:/path} references with their values. Call in the worker only."""
    out = {}
    for k, v in cfg.items():
        m = _REF.match(v) if isinstance(v, str) else None
        if m is None:
            out[k] = v
            continue
        kind, ref = m.groups()
        if kind == "env":
            if ref not in os.environ:
                raise ConfigError(k, f"environment variable {ref} is not set")
            out[k] = os.environ[ref]
        else:
            try:
                with open(ref, encoding="utf-8") as f:
                    out[k] = f.read().strip()
            except OSError as e:
                raise ConfigError(k, f"cannot read secret file {ref}: {e.strerror}") from None
    return out


def redacted(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to log or display: secret values replaced, references kept (they hold no secret)."""
    out = {}
    for k, v in cfg.items():
        secret = any(h in k.lower() for h in _SECRET_HINTS)
        out[k] = "***" if secret and not (isinstance(v, str) and _REF.match(v)) else v
    return out


# librdkafka error names that mean "not allowed": a refused login or a missing ACL. Reads, writes and the
# operator commands stop on them with one clear line instead of retrying.
AUTH_CODES = frozenset({"_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED"})
DENIED_CODES = AUTH_CODES | {"TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED",
                             "CLUSTER_AUTHORIZATION_FAILED"}
# An _AUTHENTICATION error whose handshake never got an answer is a dropped connection, not a refused
# login (seen in CI: "SASL PLAIN mechanism handshake failed: Local: Broker transport failure: broker's
# supported mechanisms: (n/a)" while a fresh broker's TLS listener settled); librdkafka reconnects.
_TRANSPORT_MARKERS = ("Broker transport failure", "supported mechanisms: (n/a)", "Connection refused",
                      "Disconnected")


def transport_failure(text: str) -> bool:
    return any(m in text for m in _TRANSPORT_MARKERS)


def is_denied(err: Any) -> bool:
    """A KafkaError that means "not allowed" (no ACL, refused login), not a failure to retry."""
    name = err.name()
    return name in DENIED_CODES and not (name in AUTH_CODES and transport_failure(err.str()))
