"""Operators' Kafka commands: `lag` (consumer lag per partition) and `dlq` (dead-letter queue review).

`python -m pipeline lag [--group G] [--topics a,b | --topic_pattern RE]`
    low/high watermarks, the group's committed offset and the lag per topic-partition, with totals per
    topic and overall (the old `offset_checker` / `kafka_lag`).

`python -m pipeline dlq count|peek N|replay|clear`
    The DLQ topic is routes.dlq_topic. What an operator has looked at is a consumer group,
    `<dlq_topic>.reviewed`, whose committed offsets are the "reviewed" position; everything after it is
    unreviewed. Clearing moves that position and appends an audit record to `<dlq_topic>.audit`.

Every command reads Kafka settings from --config (kafka.consumer / kafka.producer, secrets resolved), prints
rich tables or, with --json, one JSON document, and exits 2 with one line when Kafka cannot be reached or
refuses access (failed login, missing ACL).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from transforms.common import ConfigError
from transforms.kafka_config import is_denied

DEFAULT_CONFIG = "config/default.yaml"
TIMEOUT_S = 10.0
EXIT_UNREACHABLE = 2
_PREVIEW = 120
_SKIP_REPLAY_CODES = {"SINK_REJECTED"}  # payload is a ClickHouse row as JSON, not the original record


class Unreachable(Exception):
    """Kafka did not answer within the timeout."""


class Denied(Exception):
    """Kafka refused the login, or the principal lacks an ACL on a topic or group: one line, exit 2."""


# librdkafka error names that mean "no access"; retrying with the same settings cannot help.


class CommandError(Exception):
    """A clear operator-facing error (bad argument, missing topic): one line, exit 1."""


# --- shared helpers ---------------------------------------------------------------------------------------
def parse_time(text: str) -> int:
    """ISO-8601 (naive = UTC) or epoch milliseconds -> epoch ms."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not ISO-8601 or epoch ms: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def iso_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quiet_logger() -> logging.Logger:
    # librdkafka logs every failed connect to stderr; the command prints one line instead.
    log = logging.getLogger("pipeline.cli_ops.librdkafka")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def _on_error(err: Any) -> None:
    # A refused login only reaches error_cb (the request itself times out): raise it from the next poll.
    if is_denied(err):
        raise Denied(f"Kafka refused the login: {err.str()}")


def _raise_denied(consumer: Any, bootstrap: str) -> None:
    """After a timeout on an unassigned consumer: serve its callbacks (a refused login raises there) and
    look at its queue, where librdkafka puts GROUP_AUTHORIZATION_FAILED instead of failing the request."""
    msg = consumer.poll(0.1)
    err = msg.error() if msg is not None else None
    if err is not None and is_denied(err):
        raise Denied(f"Kafka at {bootstrap} denied access: {err.name()}: {err.str()}")


def _client_settings(base: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(base)
    cfg["logger"] = _quiet_logger()
    cfg["error_cb"] = _on_error
    cfg.setdefault("socket.connection.setup.timeout.ms", int(TIMEOUT_S * 1000))
    return cfg


def consumer_settings(cfg: OpsConfig, group: str) -> dict[str, Any]:
    """librdkafka consumer settings (secrets resolved) for `group`; it never commits by itself."""
    c = _client_settings(cfg.consumer_config())
    c.update({"group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False,
              "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    return c


def producer_settings(cfg: Any) -> dict[str, Any]:
    from transforms.kafka_config import PRODUCER_DEFAULTS, merged, resolve_secrets

    p = _client_settings(resolve_secrets(merged(PRODUCER_DEFAULTS, cfg.producer)))
    p.update({"enable.idempotence": True, "acks": "all"})
    return p


def bootstrap_of(settings: dict[str, Any]) -> str:
    return str(settings.get("bootstrap.servers", "?"))


_TOPIC_OK = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class OpsConfig:
    """The config sections these commands use (kafka, source, routes.dlq_topic, sinks.clickhouse), checked
    with the pipeline's own validators. Not pipeline.config.load_config: that imports Beam and compiles the
    rules (2 s of CPU, 15+ s on a loaded box) for settings an operator's command never touches."""

    path: str
    consumer: dict[str, Any]
    producer: dict[str, Any]
    topics: tuple[str, ...]
    topic_pattern: str | None
    dlq_topic: str
    clickhouse: Any | None

    def consumer_config(self) -> dict[str, Any]:
        """Consumer settings with the pipeline's defaults, secrets resolved (as ReadConfig.client_config)."""
        from transforms.kafka_config import CONSUMER_DEFAULTS, merged, resolve_secrets

        cfg = resolve_secrets(merged(CONSUMER_DEFAULTS, self.consumer))
        cfg.setdefault("group.id", "classifier")
        return cfg


def _mapping(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    return value


def load(path: str) -> OpsConfig:
    from pipeline.config_file import read_config_file
    from transforms.clickhouse_config import validate_clickhouse_config
    from transforms.kafka_config import validate_client_config

    raw = read_config_file(path)
    kafka, source, routes = _mapping(raw, "kafka"), _mapping(raw, "source"), _mapping(raw, "routes")
    topics = source.get("topics") or ()
    if isinstance(topics, str):
        topics = [t for t in topics.split(",") if t]
    if not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) for t in topics):
        raise ConfigError("source.topics", "expected a list of topic names")
    pattern = source.get("topic_pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ConfigError("source.topic_pattern", f"bad regex: {e}") from None
    dlq = routes.get("dlq_topic", "pipeline.dlq")
    if not isinstance(dlq, str) or not _TOPIC_OK.match(dlq):
        raise ConfigError("routes.dlq_topic", f"{dlq!r} is not a legal Kafka topic name")
    ch = dict(_mapping(_mapping(raw, "sinks"), "clickhouse"))
    clickhouse = validate_clickhouse_config(ch) if ch.pop("enabled", True) else None
    return OpsConfig(path, validate_client_config(kafka.get("consumer"), "kafka.consumer"),
                     validate_client_config(kafka.get("producer"), "kafka.producer"), tuple(topics), pattern,
                     dlq, clickhouse)


def load_for(args: argparse.Namespace) -> OpsConfig:
    """The config of --config, with --bootstrap (when given) as both clients' bootstrap.servers."""
    cfg = load(args.config)
    bootstrap = getattr(args, "bootstrap", None)
    if not bootstrap:
        return cfg
    return replace(cfg, consumer={**cfg.consumer, "bootstrap.servers": bootstrap},
                   producer={**cfg.producer, "bootstrap.servers": bootstrap})


def list_topics(consumer: Any, bootstrap: str) -> dict[str, Any]:
    """Topic metadata; Unreachable if the cluster does not answer within TIMEOUT_S."""
    from confluent_kafka import KafkaException

    try:
        return consumer.list_topics(timeout=TIMEOUT_S).topics
    except KafkaException as exc:
        _raise_denied(consumer, bootstrap)
        raise Unreachable(f"cannot reach Kafka at {bootstrap}: {exc.args[0].str()}") from None


@dataclass
class PartitionLag:
    topic: str
    partition: int
    low: int
    high: int
    committed: int | None

    @property
    def lag(self) -> int:
        # No commit: the group would start from the earliest record (auto.offset.reset=earliest), and a
        # commit below low (records deleted by retention) also restarts at low.
        start = self.low if self.committed is None else max(self.committed, self.low)
        return max(0, self.high - start)

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "low": self.low, "high": self.high,
                "committed": self.committed, "lag": self.lag}


def partition_lags(consumer: Any, bootstrap: str, topics: list[str]) -> list[PartitionLag]:
    """Watermarks and the consumer's group committed offset of every partition of `topics`."""
    from confluent_kafka import KafkaException, TopicPartition

    meta = list_topics(consumer, bootstrap)
    tps = [TopicPartition(t, p) for t in topics for p in sorted(meta[t].partitions)]
    if not tps:
        return []
    try:
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=TIMEOUT_S)}
        out = []
        for tp in tps:
            low, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT_S, cached=False)
            off = committed.get((tp.topic, tp.partition), -1)
            out.append(PartitionLag(tp.topic, tp.partition, low, high, off if off >= 0 else None))
    except KafkaException as exc:
        _raise_denied(consumer, bootstrap)
        raise Unreachable(f"Kafka at {bootstrap} did not answer: {exc.args[0].str()}") from None
    return out


def commit_offsets(consumer: Any, offsets: list[Any], attempts: int = 20) -> None:
    """Synchronous commit, retried while the group coordinator moves or loads (a fresh broker, a restart)."""
    from confluent_kafka import KafkaError, KafkaException

    retriable = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._WAIT_COORD}
    for attempt in range(attempts):
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return
        except KafkaException as exc:
            if exc.args[0].code() not in retriable or attempt == attempts - 1:
                raise
            time.sleep(0.5)


def select_topics(meta: dict[str, Any], topics: list[str] | None, pattern: str | None,
                  consumer: Any = None) -> list[str]:
    from confluent_kafka import KafkaException

    if topics:
        missing = [t for t in topics if t not in meta]
        for t in missing if consumer is not None else ():
            # A full listing leaves out topics the principal may not describe: asked by name, Kafka says so.
            try:
                tmd = consumer.list_topics(t, timeout=TIMEOUT_S).topics.get(t)
            except KafkaException:
                continue  # no better answer than "not found"
            err = tmd.error if tmd is not None else None
            if err is not None and is_denied(err):
                raise Denied(f"not authorized to describe topic {t}: {err.name()}: {err.str()}")
        if missing:
            raise CommandError(f"topic(s) not found: {', '.join(missing)}")
        return topics
    rx = re.compile(pattern or ".*")
    return sorted(t for t in meta if not t.startswith("__") and rx.search(t))


def _fail(cmd: str, exc: BaseException) -> int:
    if isinstance(exc, (Unreachable, Denied)):
        print(f"{cmd}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if isinstance(exc, ConfigError):
        print(f"{cmd}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"{cmd}: {exc}", file=sys.stderr)
    return 1


def _guarded(cmd: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (Unreachable, Denied, ConfigError, CommandError) as exc:
            return _fail(cmd, exc)

    return run


def _console():
    from rich.console import Console

    # Piped output (CI logs, less) gets a wide table instead of rich's 80-column default.
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _dump(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")


# --- lag --------------------------------------------------------------------------------------------------
def lag_report(cfg: Any, group: str | None = None, topics: list[str] | None = None,
               pattern: str | None = None) -> dict[str, Any]:
    """The lag document (what `lag --json` prints); also used by `report`."""
    from confluent_kafka import Consumer

    settings = consumer_settings(cfg, group or cfg.consumer_config()["group.id"])
    if not topics and not pattern:
        topics, pattern = list(cfg.topics) or None, cfg.topic_pattern
    consumer = Consumer(settings)
    try:
        bootstrap = bootstrap_of(settings)
        chosen = select_topics(list_topics(consumer, bootstrap), topics, pattern, consumer)
        parts = partition_lags(consumer, bootstrap, chosen)
    finally:
        consumer.close()
    per_topic: dict[str, dict[str, Any]] = {}
    for p in parts:
        t = per_topic.setdefault(p.topic, {"topic": p.topic, "partitions": [], "lag": 0, "high": 0})
        t["partitions"].append(p.as_dict())
        t["lag"] += p.lag
        t["high"] += p.high - p.low
    return {
        "group": settings["group.id"],
        "selection": {"topics": topics} if topics else {"topic_pattern": pattern},
        "topics": list(per_topic.values()),
        "total_lag": sum(p.lag for p in parts),
        "time": iso_ms(int(time.time() * 1000)),
    }


def cmd_lag(args: argparse.Namespace) -> int:
    cfg = load_for(args)
    topics = [t for t in args.topics.split(",") if t] if args.topics else None
    doc = lag_report(cfg, args.group, topics, args.topic_pattern)
    if args.json:
        _dump(doc)
        return 0
    from rich.table import Table

    table = Table(title=f"consumer group {doc['group']}", title_justify="left")
    for name, justify in (("topic", "left"), ("partition", "right"), ("low", "right"), ("high", "right"),
                          ("committed", "right"), ("lag", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in doc["topics"]:
        for p in t["partitions"]:
            committed = "-" if p["committed"] is None else str(p["committed"])
            table.add_row(t["topic"], str(p["partition"]), str(p["low"]), str(p["high"]), committed,
                          str(p["lag"]))
        table.add_row(f"[bold]{t['topic']} total[/bold]", "", "", "", "", f"[bold]{t['lag']}[/bold]",
                      end_section=True)
    table.add_row("[bold]TOTAL[/bold]", "", "", "", "", f"[bold]{doc['total_lag']}[/bold]")
    con = _console()
    if not doc["topics"]:
        con.print(f"no topics match {doc['selection']}")
    con.print(table)
    return 0


# --- dlq --------------------------------------------------------------------------------------------------
def reviewed_group(dlq_topic: str) -> str:
    return f"{dlq_topic}.reviewed"


def audit_topic(dlq_topic: str) -> str:
    return f"{dlq_topic}.audit"


@dataclass
class Letter:
    """One DLQ record: where it sits in the DLQ and the dead letter it carries."""

    partition: int
    offset: int
    timestamp: int
    dl: dict[str, Any]

    @property
    def time(self) -> int:
        return self.dl["time"] if self.dl.get("time") is not None else self.timestamp

    def summary(self) -> dict[str, Any]:
        dl = self.dl
        payload = dl.get("payload") or b""
        return {
            "dlq_partition": self.partition, "dlq_offset": self.offset, "time": iso_ms(self.time),
            "code": dl.get("code"), "reason": dl.get("reason"), "stage": dl.get("stage"),
            "topic": dl.get("topic"), "partition": dl.get("partition"), "offset": dl.get("offset"),
            "index": dl.get("index"), "key": _preview(dl.get("key") or b""), "payload_bytes": len(payload),
            "payload": _preview(payload),
        }


def _preview(data: bytes) -> str:
    text = data[:_PREVIEW * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…"


@dataclass
class DlqState:
    topic: str
    group: str
    # partition -> (low, high, reviewed position clamped to [low, high])
    positions: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    committed: dict[int, int | None] = field(default_factory=dict)

    @property
    def unreviewed_by_offsets(self) -> int:
        return sum(high - start for _, high, start in self.positions.values())


def dlq_state(consumer: Any, bootstrap: str, dlq_topic: str) -> DlqState:
    meta = list_topics(consumer, bootstrap)
    if dlq_topic not in meta:
        raise CommandError(f"DLQ topic {dlq_topic!r} does not exist (routes.dlq_topic; "
                           "has the pipeline run?)")
    state = DlqState(dlq_topic, reviewed_group(dlq_topic))
    for p in partition_lags(consumer, bootstrap, [dlq_topic]):
        start = p.low if p.committed is None else min(max(p.committed, p.low), p.high)
        state.positions[p.partition] = (p.low, p.high, start)
        state.committed[p.partition] = p.committed
    return state


def read_unreviewed(consumer: Any, state: DlqState, *, per_partition_limit: int | None = None,
                    deadline_s: float = 120.0) -> list[Letter]:
    """Every record between the reviewed position and the high watermark seen at start (or the first
    `per_partition_limit` of each partition), in offset order per partition."""
    from confluent_kafka import KafkaError, TopicPartition

    from transforms.common import dead_letter_from_kafka

    todo = {p: (start, high) for p, (_, high, start) in state.positions.items() if high > start}
    if not todo:
        return []
    consumer.assign([TopicPartition(state.topic, p, start) for p, (start, _) in todo.items()])
    got: dict[int, list[Letter]] = {p: [] for p in todo}
    done: set[int] = set()
    end = time.monotonic() + deadline_s
    while len(done) < len(todo):
        if time.monotonic() > end:
            raise Unreachable(f"timed out reading {state.topic} ({sum(map(len, got.values()))} records read)")
        for m in consumer.consume(1000, timeout=0.5):
            p = m.partition()
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done.add(p)
                    continue
                if m.error().code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                    raise Unreachable(f"lost Kafka while reading {state.topic}: {m.error().str()}")
                continue
            if p in done or m.offset() >= todo[p][1]:
                done.add(p)
                continue
            letter = Letter(p, m.offset(), m.timestamp()[1],
                            dead_letter_from_kafka(m.key(), m.value(), m.headers()))
            got[p].append(letter)
            if m.offset() + 1 >= todo[p][1] or (per_partition_limit and len(got[p]) >= per_partition_limit):
                done.add(p)
                consumer.pause([TopicPartition(state.topic, p)])
    return [letter for p in sorted(got) for letter in got[p]]


def _open_dlq(args: argparse.Namespace) -> tuple[Any, Any, DlqState, dict[str, Any]]:
    from confluent_kafka import Consumer

    cfg = load_for(args)
    topic = args.dlq_topic or cfg.dlq_topic
    settings = consumer_settings(cfg, reviewed_group(topic))
    consumer = Consumer(settings)
    try:
        state = dlq_state(consumer, bootstrap_of(settings), topic)
    except BaseException:
        consumer.close()
        raise
    return cfg, consumer, state, settings


def _by_code(letters: list[Letter]) -> dict[str, int]:
    return dict(Counter(letter.dl.get("code") or "?" for letter in letters).most_common())


def cmd_count(args: argparse.Namespace) -> int:
    _, consumer, state, _ = _open_dlq(args)
    try:
        letters = read_unreviewed(consumer, state)
    finally:
        consumer.close()
    doc = {
        "topic": state.topic, "group": state.group, "unreviewed": len(letters), "by_code": _by_code(letters),
        "partitions": [{"partition": p, "low": low, "high": high, "reviewed": state.committed[p],
                        "unreviewed": high - start}
                       for p, (low, high, start) in sorted(state.positions.items())],
    }
    if args.json:
        _dump(doc)
        return 0
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{doc['unreviewed']}[/bold] unreviewed dead letters in {state.topic} "
              f"(reviewed position: group {state.group})")
    table = Table("code", "count", title="by code", title_justify="left")
    for code, n in doc["by_code"].items():
        table.add_row(code, str(n))
    con.print(table)
    return 0


def cmd_peek(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise CommandError("N must be >= 1")
    _, consumer, state, _ = _open_dlq(args)
    try:
        letters = read_unreviewed(consumer, state, per_partition_limit=args.n)
    finally:
        consumer.close()
    # The oldest N across partitions (each partition is read in order, merge by dead-letter time).
    letters = sorted(letters, key=lambda le: (le.time, le.partition, le.offset))[: args.n]
    rows = [le.summary() for le in letters]
    if args.json:
        _dump({"topic": state.topic, "group": state.group, "unreviewed": state.unreviewed_by_offsets,
               "letters": rows})
        return 0
    from rich.table import Table

    table = Table(title=f"next {len(rows)} of {state.unreviewed_by_offsets} unreviewed in {state.topic}",
                  title_justify="left", show_lines=True)
    for name in ("dlq p:offset", "time", "code", "reason", "source topic/p/offset/index", "payload"):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(f"{r['dlq_partition']}:{r['dlq_offset']}", r["time"], r["code"] or "",
                      r["reason"] or "",
                      f"{r['topic']}/{r['partition']}/{r['offset']}/{r['index']}",
                      f"{r['payload']} ({r['payload_bytes']} B)")
    _console().print(table)
    return 0


def _selected(letters: list[Letter], code: str | None, since: int | None) -> list[Letter]:
    return [le for le in letters
            if (code is None or le.dl.get("code") == code) and (since is None or le.time >= since)]


def replay(cfg: Any, state: DlqState, letters: list[Letter], dry_run: bool) -> dict[str, Any]:
    """Re-publish `letters` to their original topics; every delivery is checked."""
    plan: list[tuple[str, Letter]] = []
    skipped: Counter[str] = Counter()
    for le in letters:
        dl = le.dl
        if dl.get("code") in _SKIP_REPLAY_CODES:
            skipped[f"{dl.get('code')}: payload is not the original record"] += 1
        elif not dl.get("topic"):
            skipped["no original topic (dlq.topic header)"] += 1
        else:
            plan.append((dl["topic"], le))
    per_topic = Counter(t for t, _ in plan)
    doc: dict[str, Any] = {"topic": state.topic, "dry_run": dry_run, "selected": len(letters),
                           "replayed": dict(per_topic), "skipped": dict(skipped), "failed": {}}
    if dry_run or not plan:
        if dry_run:
            doc["replayed"] = {}
            doc["would_replay"] = dict(per_topic)
        return doc
    from confluent_kafka import Producer

    settings = producer_settings(cfg)
    producer = Producer(settings)
    failures: Counter[str] = Counter()
    delivered = [0]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures[f"{msg.topic()}: {err.str()}"] += 1
        else:
            delivered[0] += 1

    for target, le in plan:
        headers = list(le.dl["headers"]) + [
            ("dlq.replayed_from", f"{state.topic}:{le.partition}:{le.offset}".encode())]
        while True:
            try:
                producer.produce(target, le.dl["payload"], le.dl["key"], headers=headers,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    left = producer.flush(max(30.0, TIMEOUT_S))
    if left:
        failures[f"not delivered within the flush timeout (Kafka at {bootstrap_of(settings)})"] += left
    doc["failed"] = dict(failures)
    doc["delivered"] = delivered[0]
    return doc


def cmd_replay(args: argparse.Namespace) -> int:
    cfg, consumer, state, _ = _open_dlq(args)
    try:
        letters = _selected(read_unreviewed(consumer, state), args.code, args.since)
    finally:
        consumer.close()
    doc = replay(cfg, state, letters, args.dry_run)
    if args.json:
        _dump(doc)
    else:
        from rich.table import Table

        verb = "would replay" if args.dry_run else "replayed"
        counts = doc["would_replay"] if args.dry_run else doc["replayed"]
        table = Table("target topic", verb, title=f"{verb} from {state.topic}", title_justify="left")
        for t, n in sorted(counts.items()):
            table.add_row(t, str(n))
        con = _console()
        con.print(table)
        for why, n in doc["skipped"].items():
            con.print(f"skipped {n}: {why}")
        for why, n in doc["failed"].items():
            con.print(f"[red]FAILED {n}: {why}[/red]")
        if not args.dry_run and not doc["failed"] and counts:
            con.print("reviewed position unchanged: run `dlq clear --yes` to mark them reviewed")
    return 1 if doc["failed"] else 0


def _ensure_topic(bootstrap_settings: dict[str, Any], topic: str) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({k: v for k, v in bootstrap_settings.items()
                         if not k.startswith(("enable.", "auto.", "group.", "fetch.", "queued."))})
    fut = admin.create_topics([NewTopic(topic, 1)], request_timeout=TIMEOUT_S)[topic]
    try:
        fut.result(TIMEOUT_S)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise CommandError(f"cannot create audit topic {topic}: {exc.args[0].str()}") from None


def cmd_clear(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CommandError("refusing to clear without --yes (this marks dead letters as reviewed; "
                           "see `dlq count` / `dlq peek` first)")
    from confluent_kafka import KafkaException, Producer, TopicPartition

    cfg, consumer, state, settings = _open_dlq(args)
    try:
        letters = read_unreviewed(consumer, state)
        targets: dict[int, int] = {}
        cleared: list[Letter] = []
        for p, (_, high, start) in state.positions.items():
            mine = [le for le in letters if le.partition == p]
            target = high
            if args.upto_time is not None:
                # The reviewed position is one offset: stop at the first record after T.
                after = next((le for le in mine if le.time > args.upto_time), None)
                if after is not None:
                    target = after.offset
            cleared += [le for le in mine if le.offset < target]
            if target != start:
                targets[p] = target
        doc: dict[str, Any] = {
            "action": "clear", "who": os.environ.get("USER") or getpass.getuser(),
            "when": iso_ms(int(time.time() * 1000)), "topic": state.topic, "group": state.group,
            "upto_time": iso_ms(args.upto_time) if args.upto_time is not None else None,
            "partitions": [{"partition": p, "from": state.positions[p][2], "to": t}
                           for p, t in sorted(targets.items())],
            "count": len(cleared), "by_code": _by_code(cleared), "id": uuid.uuid4().hex,
        }
        if not targets:
            if args.json:
                _dump({**doc, "audit_topic": None})
            else:
                print(f"dlq: nothing to clear in {state.topic}")
            return 0
        # Audit first: a clear that cannot be recorded does not happen.
        audit = audit_topic(state.topic)
        _ensure_topic(settings, audit)
        producer = Producer(producer_settings(cfg))
        errors: list[str] = []
        producer.produce(audit, json.dumps(doc).encode(), doc["id"].encode(),
                         on_delivery=lambda err, _m: errors.append(err.str()) if err else None)
        if producer.flush(30) or errors:
            raise Unreachable(f"cannot write the audit record to {audit}: {errors or 'flush timed out'}")
        try:
            commit_offsets(consumer, [TopicPartition(state.topic, p, t) for p, t in targets.items()])
        except KafkaException as exc:
            raise Unreachable(f"audit written but commit failed for group {state.group}: "
                              f"{exc.args[0].str()}") from None
    finally:
        consumer.close()
    doc["audit_topic"] = audit
    if args.json:
        _dump(doc)
    else:
        con = _console()
        con.print(f"cleared {doc['count']} dead letters in {state.topic} (group {state.group}); audit record "
                  f"appended to {audit}:")
        con.print_json(json.dumps(doc))
    return 0


# --- argparse ---------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"pipeline YAML (default {DEFAULT_CONFIG})")
    add_bootstrap(p)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", metavar="HOST:PORT[,...]",
                   help="Kafka bootstrap servers (default: kafka.consumer/producer bootstrap.servers of the "
                        "config; its other client settings, e.g. SASL, still apply)")


def register(subparsers: argparse._SubParsersAction) -> None:
    lag = subparsers.add_parser(
        "lag", help="consumer lag per topic-partition",
        description="Low/high watermarks, committed offset and lag per topic-partition of a consumer group, "
                    "with totals per topic and overall. No commit: lag = high - low, committed shown as '-'.")
    _common(lag)
    lag.add_argument("--group", help="consumer group (default: kafka.consumer group.id of the config)")
    sel = lag.add_mutually_exclusive_group()
    sel.add_argument("--topics", help="comma-separated topics (default: the config's source)")
    sel.add_argument("--topic_pattern", help="regex over topic names (default: the config's source)")
    lag.set_defaults(func=_guarded("lag", cmd_lag))

    dlq = subparsers.add_parser(
        "dlq", help="dead-letter queue: count, peek, replay, clear",
        description="Dead letters on routes.dlq_topic. The reviewed position is the committed offsets of "
                    "consumer group <dlq_topic>.reviewed; records after it are unreviewed.")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)

    def dlq_common(p: argparse.ArgumentParser) -> None:
        _common(p)
        p.add_argument("--dlq_topic", help="DLQ topic (default: routes.dlq_topic of the config)")

    count = sub.add_parser("count", help="unreviewed dead letters, by dlq.code")
    dlq_common(count)
    count.set_defaults(func=_guarded("dlq count", cmd_count))

    peek = sub.add_parser("peek", help="show the next N unreviewed dead letters (moves nothing)")
    dlq_common(peek)
    peek.add_argument("n", type=int, metavar="N")
    peek.set_defaults(func=_guarded("dlq peek", cmd_peek))

    rp = sub.add_parser(
        "replay", help="re-publish unreviewed dead letters to their original topics",
        description="Re-publishes unreviewed dead letters (optionally only one code / since a time) to "
                    "their ORIGINAL topic (dlq.topic) with the original key, value and headers (dlq.* "
                    "removed) plus dlq.replayed_from=<dlq topic>:<partition>:<offset>, with an idempotent "
                    "producer; every delivery is checked. SINK_REJECTED letters are skipped (their payload "
                    "is a ClickHouse row, not the original record). Replay does NOT advance the reviewed "
                    "position: a replay that fails half-way can simply be run again, and the operator "
                    "decides when the letters are done with `dlq clear --yes` (--upto-time clears only up "
                    "to what was replayed).")
    dlq_common(rp)
    rp.add_argument("--code", help="only this dlq.code (e.g. VALIDATION_ERROR)")
    rp.add_argument("--since", type=parse_time,
                    help="only dlq.time >= T (ISO-8601, naive = UTC, or epoch ms)")
    rp.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                    help="count what would be replayed; produce nothing")
    rp.set_defaults(func=_guarded("dlq replay", cmd_replay))

    cl = sub.add_parser(
        "clear", help="mark dead letters reviewed (advance <dlq_topic>.reviewed) and audit it",
        description="Advances the reviewed group to the end of the DLQ (or to the first record after "
                    "--upto-time) and appends an audit record (who, when, group, per-partition from/to, "
                    "count by code) to <dlq_topic>.audit. Requires --yes.")
    dlq_common(cl)
    cl.add_argument("--yes", action="store_true", help="really clear (required; there is no prompt)")
    cl.add_argument("--upto-time", "--upto_time", dest="upto_time", type=parse_time,
                    help="clear only dead letters with dlq.time <= T (ISO-8601 or epoch ms)")
    cl.set_defaults(func=_guarded("dlq clear", cmd_clear))
