"""Python-native Kafka IO for Beam on confluent-kafka (librdkafka): no Java, no expansion service.

ReadFromKafka is a splittable DoFn whose element is one topic-partition and whose restriction is an
offset range, the shape of Beam Java's ReadFromKafkaDoFn:

    Impulse | PeriodicImpulse -> discover partitions -> ReadPartitionFn (SDF) -> KafkaRecord
                                                                                (or lists of them)

- Bounded mode (`stop_at_end`): partitions and their end offsets are fixed when the read starts,
  `max_records` is split across partitions up front, and the read ends when every range is done.
- Unbounded mode: discovery repeats every `discovery_interval_s` (new topics matching the pattern and
  new partitions are picked up), ranges are open-ended, the SDF checkpoints itself every
  `max_poll_s`, and the watermark comes from record timestamps, advancing with wall time on an idle
  partition so empty partitions do not hold windows back.

`batch_records` > 1 makes each element a list of up to that many records of one partition (timestamped
with its oldest record's time): the pipeline's stages then work list by list, and Beam's per-element
cost (timestamps, coders, DoFn invocation) is paid once per list instead of once per record.

Offsets are committed to the consumer group from bundle finalization, i.e. only after the runner has
made the bundle's output durable, so committed offsets never run ahead of processed data.
WriteToKafka produces with an idempotent producer and fails the bundle if any record is not
acknowledged, so the runner retries it: at least once.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.coders import Batch
from transforms.common import ConfigError, KafkaRecord
from transforms.event_time import MAX_EVENT_MS, parse_event_time
from transforms.kafka_config import (
    AUTH_CODES,
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    is_denied,
    merged,
    redacted,
    resolve_secrets,
    validate_client_config,
)

log = logging.getLogger(__name__)

START_POSITIONS = ("committed", "earliest", "latest")

# Graceful stop of a local run (SIGTERM/SIGINT in `python -m pipeline`): readers stop claiming and
# finish their restrictions, discovery ends, the watermark reaches the end, windows fire, sinks flush,
# bundles finalize (offsets committed) and the job completes. One flag per worker process: on local
# runners the workers live in the launching process.
_STOP = threading.Event()


def request_stop() -> None:
    _STOP.set()


def reset_stop() -> None:
    _STOP.clear()


_OPEN_END = sys.maxsize  # the stop offset of an unbounded restriction


class KafkaReadError(RuntimeError):
    """A read error retrying cannot fix (unknown topic, authorization): names the topic."""


class KafkaAuthError(KafkaReadError):
    """Kafka refused the credentials, or the principal lacks an ACL: retrying with the same settings
    cannot fix it, so even an unbounded read (which retries broker outages) stops."""


@dataclass(frozen=True)
class ReadConfig:
    consumer: dict[str, Any] = field(default_factory=dict)
    topics: tuple[str, ...] = ()
    topic_pattern: str | None = None
    start: str = "committed"
    stop_at_end: bool = False
    max_records: int | None = None
    idle_timeout_s: float = 10.0
    discovery_interval_s: float = 30.0
    # Watermark = newest record timestamp minus this. Bundles of different partitions complete out of
    # order on Prism; measured: 1 s let ~5% of records arrive late, 3 s none (max_poll_s = 1 s).
    max_out_of_orderness_s: float = 3.0
    commit_offsets: bool = True
    poll_batch: int = 5000
    max_poll_s: float = 1.0
    # Event time instead of the Kafka timestamp for element timestamps and the watermark: the header of
    # this name (decimal ms, or s/µs/ns by magnitude); records without it keep their Kafka timestamp.
    event_time_header: str | None = None
    # Records per output element: 1 = one KafkaRecord per element (the usual IO contract); n > 1 = lists of
    # up to n records of one partition, so downstream DoFns pay Beam's per-element cost once per list.
    batch_records: int = 1

    @property
    def bounded(self) -> bool:
        return self.stop_at_end or self.max_records is not None

    def client_config(self) -> dict[str, Any]:
        """The consumer settings with defaults and resolved secrets (worker side only)."""
        cfg = resolve_secrets(merged(CONSUMER_DEFAULTS, self.consumer))
        cfg.setdefault("group.id", "classifier")
        return cfg

    def describe(self) -> str:
        what = f"pattern {self.topic_pattern!r}" if self.topic_pattern else f"topics {list(self.topics)}"
        return f"{what}, consumer {redacted(self.consumer)}"


def validate_read_config(cfg: ReadConfig) -> ReadConfig:
    if bool(cfg.topics) == bool(cfg.topic_pattern):
        raise ConfigError("source.topics", "give exactly one of topics (a list) or topic_pattern (a regex)")
    if cfg.topic_pattern:
        try:
            re.compile(cfg.topic_pattern)
        except re.error as e:
            raise ConfigError("source.topic_pattern", f"bad regex: {e}") from None
    if cfg.start not in START_POSITIONS:
        raise ConfigError("source.start", f"one of {', '.join(START_POSITIONS)}, got {cfg.start!r}")
    if cfg.max_records is not None and cfg.max_records < 0:
        raise ConfigError("source.max_records", "must be >= 0")
    for name in ("idle_timeout_s", "discovery_interval_s", "max_poll_s"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"source.{name}", "must be > 0")
    if cfg.event_time_header is not None and (not isinstance(cfg.event_time_header, str)
                                              or not cfg.event_time_header):
        raise ConfigError("source.event_time_header", f"must be a header name, got {cfg.event_time_header!r}")
    for name in ("poll_batch", "batch_records"):
        if type(getattr(cfg, name)) is not int or getattr(cfg, name) < 1:
            raise ConfigError(f"source.{name}", f"must be an integer >= 1, got {getattr(cfg, name)!r}")
    validate_client_config(cfg.consumer, "kafka.consumer")
    return cfg


class PartitionSpec(NamedTuple):
    """The SDF element: one partition, and where its read starts and (bounded) stops."""

    topic: str
    partition: int
    start: int
    stop: int  # _OPEN_END for unbounded


# --- Client helpers ----------------------------------------------------------------------------


def _who(cfg: dict[str, Any]) -> str:
    user = cfg.get("sasl.username")
    return f" as {user!r}" if user else ""


def auth_error_cb(cfg: dict[str, Any], error_cls: type[Exception]):
    """An error_cb that raises `error_cls` on a refused login. librdkafka reports that only through
    error_cb and keeps reconnecting; the request that waits on it just times out (_TRANSPORT, after
    10 s or, for a producer, message.timeout.ms) and says nothing about credentials. The exception
    surfaces from the next poll/consume/flush of the client."""
    where = f"{cfg.get('bootstrap.servers', '?')}{_who(cfg)}"

    def on_error(err) -> None:
        if err.name() in AUTH_CODES and is_denied(err):
            raise error_cls(f"Kafka at {where} refused the login: {err.name()}: {err.str()}")
        log.warning("kafka: %s", err.str())  # what librdkafka logs by itself without an error_cb

    return on_error


def _consumer(cfg: dict[str, Any]):
    from confluent_kafka import Consumer

    return Consumer({**cfg, "error_cb": auth_error_cb(cfg, KafkaAuthError)})


def _raise_denied(consumer, cfg: dict[str, Any]) -> None:
    """After a request on an unassigned consumer timed out: serve its callbacks (a refused login
    raises from there) and look at its queue, where librdkafka puts GROUP_AUTHORIZATION_FAILED."""
    msg = consumer.poll(0.1)
    err = msg.error() if msg is not None else None
    if err is not None and is_denied(err):
        group = cfg.get("group.id")
        subject = f"consumer group {group!r} (kafka.consumer group.id)" if "GROUP" in err.name() else "Kafka"
        raise KafkaAuthError(f"not authorized to use {subject}{_who(cfg)}: {err.name()}: {err.str()}")


def list_partitions(cfg: ReadConfig, consumer=None, timeout: float = 10.0) -> list[tuple[str, int]]:
    """The (topic, partition) pairs to read now. Raises KafkaReadError naming a missing topic, and
    KafkaAuthError naming a topic the principal may not read or a refused login."""
    own = consumer is None
    client_cfg = cfg.client_config()
    consumer = consumer or _consumer(client_cfg)
    try:
        try:
            md = consumer.list_topics(timeout=timeout)
        except Exception as e:  # KafkaException: broker unreachable within timeout
            _raise_denied(consumer, client_cfg)
            raise KafkaReadError(f"cannot list topics at {client_cfg['bootstrap.servers']}: {e}") from e
        if cfg.topic_pattern:
            rx = re.compile(cfg.topic_pattern)
            names = [t for t in md.topics if rx.search(t) and not t.startswith("__")]
        else:
            names = list(cfg.topics)
        out = []
        for name in sorted(names):
            tmd = md.topics.get(name)
            if tmd is None and not cfg.topic_pattern:
                # A full listing leaves out topics the principal may not describe: asking by name tells
                # "not authorized" from "does not exist" (consumers never auto-create topics).
                tmd = consumer.list_topics(name, timeout=timeout).topics.get(name)
            err = tmd.error if tmd is not None else None
            if tmd is None or (err is not None and err.name() in _UNKNOWN_CODES):
                raise KafkaReadError(f"topic {name!r} does not exist (source.topics)")
            if err is not None and is_denied(err):
                raise KafkaAuthError(
                    f"not authorized to read topic {name!r}{_who(client_cfg)}: {err.name()}: {err.str()}"
                )
            if err is not None:
                raise KafkaReadError(f"topic {name!r}: {err.str()}")
            out.extend((name, p) for p in sorted(tmd.partitions))
    finally:
        if own:
            consumer.close()
    return out


# Transient answers librdkafka does not always flag retriable(): a restarting or just-started broker (its
# group coordinator loads __consumer_offsets first: NOT_COORDINATOR was seen in CI on a fresh broker).
_TRANSIENT_CODES = frozenset({
    "_TRANSPORT", "_TIMED_OUT", "_WAIT_COORD", "NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE",
    "NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS", "REQUEST_TIMED_OUT",
})


def _retrying(call, what: str, budget_s: float = 120.0, consumer=None, cfg: dict[str, Any] | None = None):
    """`call()` again while the broker answers with a retriable error (leader election, restart).
    With an (unassigned) `consumer`, an authorization failure behind a timeout is raised at once."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + budget_s
    delay = 0.5
    while True:
        try:
            return call()
        except KafkaException as e:
            err = e.args[0]
            if consumer is not None:
                _raise_denied(consumer, cfg or {})
            if not err.retriable() and err.name() not in _TRANSIENT_CODES:
                raise
            if time.monotonic() > deadline:
                raise KafkaReadError(f"{what}: {err.str()} (retried for {budget_s:.0f} s)") from e
            log.warning("%s: %s; retrying in %.1f s", what, err.str(), delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def resolve_start(
    consumer, topic: str, partition: int, policy: str, cfg: dict[str, Any] | None = None
) -> int:
    """The first offset to read for a start policy; `committed` falls back to earliest.
    `consumer` must be unassigned (a failure is diagnosed by polling it); `cfg` names the group."""
    from confluent_kafka import TopicPartition

    tp = TopicPartition(topic, partition)
    what = f"offsets of {topic}[{partition}]"
    low, high = _retrying(
        lambda: consumer.get_watermark_offsets(tp, timeout=10), what, consumer=consumer, cfg=cfg
    )
    if policy == "latest":
        return high
    if policy == "committed":
        fetched = _retrying(lambda: consumer.committed([tp], timeout=10), what, consumer=consumer, cfg=cfg)
        committed = fetched[0].offset
        if committed >= 0:
            return max(committed, low)
    return low


def plan_bounded(cfg: ReadConfig) -> list[PartitionSpec]:
    """Fixes each partition's [start, end) at read start, and splits max_records across them."""
    client_cfg = cfg.client_config()
    consumer = _consumer(client_cfg)
    try:
        from confluent_kafka import TopicPartition

        specs = []
        for topic, p in list_partitions(cfg, consumer):
            start = resolve_start(consumer, topic, p, cfg.start, client_cfg)
            _, high = _retrying(
                lambda t=topic, p=p: consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10),
                f"end offset of {topic}[{p}]",
                consumer=consumer,
                cfg=client_cfg,
            )
            specs.append(PartitionSpec(topic, p, start, max(start, high)))
    finally:
        consumer.close()
    if cfg.max_records is not None:
        # Deterministic split: partitions in order, each takes what it has until the budget is spent.
        budget, capped = cfg.max_records, []
        for s in specs:
            take = min(budget, s.stop - s.start)
            budget -= take
            capped.append(s._replace(stop=s.start + take))
        specs = capped
    return [s for s in specs if s.stop > s.start]


# --- Restriction tracking ----------------------------------------------------------------------


class _OffsetBatch:
    """A claim for a run of offsets [first, last]; the tracker writes back how far it granted."""

    __slots__ = ("first", "last", "upto")

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.upto = first, last, -1


class KafkaOffsetTracker(OffsetRestrictionTracker):
    """OffsetRestrictionTracker that can claim a whole fetched batch in one call.

    Claiming per record costs a lock round trip per element; one claim per batch keeps the hot loop
    tight. A split can land inside the batch, so the tracker grants `upto` (the last offset still in
    the range) and the caller emits only records up to it.
    """

    def try_claim(self, position):
        if not isinstance(position, _OffsetBatch):
            return super().try_claim(position)
        first, last = position.first, position.last
        if self._last_claim_attempt is not None and first <= self._last_claim_attempt:
            raise ValueError(f"claims must increase: {first} after {self._last_claim_attempt}")
        if first < self._range.start:
            raise ValueError(f"offset {first} before range start {self._range.start}")
        self._last_claim_attempt = last
        stop = self._range.stop
        if first >= stop:
            return False
        position.upto = min(last, stop - 1)
        self._current_position = position.upto
        return True

    def try_split(self, fraction_of_remainder):
        # An open-ended range has no middle: a fractional split would hand out a range starting
        # near sys.maxsize. Only checkpoints (fraction 0) split it; bounded ranges split as usual.
        if self._range.stop >= _OPEN_END and fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)

    def is_bounded(self) -> bool:
        return self._range.stop < _OPEN_END


class _PartitionRestrictions(RestrictionProvider):
    """Stateless: discovery has already resolved each partition's start offset."""

    def initial_restriction(self, element: PartitionSpec) -> OffsetRange:
        return OffsetRange(element.start, max(element.start, element.stop))

    def create_tracker(self, restriction: OffsetRange) -> KafkaOffsetTracker:
        return KafkaOffsetTracker(restriction)

    def restriction_size(self, element: PartitionSpec, restriction: OffsetRange) -> int:
        if restriction.stop >= _OPEN_END:
            return 1  # unknown backlog; a real estimate would need a broker call per size request
        return restriction.size()

    def truncate(self, element, restriction):
        # On drain, an unbounded partition stops where it is: nothing more is claimed.
        if restriction.stop >= _OPEN_END:
            return None
        return restriction


_RESTRICTIONS = _PartitionRestrictions()


class _WatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element, restriction):
        return None

    def create_watermark_estimator(self, estimator_state):
        return ManualWatermarkEstimator(estimator_state)


# --- The read DoFn -----------------------------------------------------------------------------


class _CachedConsumer:
    __slots__ = ("consumer", "next_offset")

    def __init__(self, consumer, next_offset: int) -> None:
        self.consumer, self.next_offset = consumer, next_offset


# When each partition last yielded data or was found behind its end, per worker process. Shared by
# all DoFn instances: a restriction may move between instances, and idleness is the partition's.
_last_busy: dict[tuple[str, int], float] = {}


# Errors no retry fixes (kafka_config.is_denied): the principal lacks an ACL (message errors of a consume,
# topic metadata, the consumer queue after a group request) or the login was refused (error_cb, see
# auth_error_cb). A read that meets one fails with KafkaAuthError naming the topic or group.
_UNKNOWN_CODES = {"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION"}
# A new topic can look unknown for a moment while metadata propagates; longer than this, it is gone.
UNKNOWN_TOPIC_GRACE_S = 30.0


class _TopicGone(Exception):
    pass


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition's offset range. One consumer per partition, cached across calls."""

    MAX_CACHED = 64

    def __init__(self, cfg: ReadConfig) -> None:
        self._cfg = cfg
        self._records = Metrics.counter("kafka", "records_read")
        self._bytes = Metrics.counter("kafka", "bytes_read")
        self._errors = Metrics.counter("kafka", "consumer_errors")
        self._commits = Metrics.counter("kafka", "offset_commits")

    def setup(self) -> None:
        self._client_cfg = self._cfg.client_config()
        self._consumers: OrderedDict[tuple[str, int], _CachedConsumer] = OrderedDict()
        self._committer = None
        self._commit_lock = threading.Lock()
        self._last_error_log = 0.0
        self._unknown_since: dict[tuple[str, int], float] = {}

    def teardown(self) -> None:
        for c in getattr(self, "_consumers", {}).values():
            c.consumer.close()
        if getattr(self, "_committer", None) is not None:
            self._committer.close()

    def _consumer_at(self, topic: str, partition: int, offset: int) -> _CachedConsumer:
        from confluent_kafka import TopicPartition

        key = (topic, partition)
        cached = self._consumers.get(key)
        if cached is not None:
            self._consumers.move_to_end(key)
            if cached.next_offset != offset:
                cached.consumer.seek(TopicPartition(topic, partition, offset))
                cached.next_offset = offset
            return cached
        consumer = _consumer(self._client_cfg)
        consumer.assign([TopicPartition(topic, partition, offset)])
        cached = _CachedConsumer(consumer, offset)
        self._consumers[key] = cached
        while len(self._consumers) > self.MAX_CACHED:
            _, old = self._consumers.popitem(last=False)
            old.consumer.close()
        return cached

    def _commit(self, topic: str, partition: int, next_offset: int) -> None:
        """Bundle-finalization callback: the bundle is durable, so its offsets may be committed."""
        from confluent_kafka import TopicPartition

        with self._commit_lock:
            if self._committer is None:
                self._committer = _consumer(self._client_cfg)
            try:
                self._committer.commit(
                    offsets=[TopicPartition(topic, partition, next_offset)], asynchronous=False
                )
                self._commits.inc()
            except Exception as e:  # a failed commit only means more replay after a restart
                log.warning("offset commit %s[%d]@%d failed: %s", topic, partition, next_offset, e)

    def _idle(self, consumer, key: tuple[str, int], position: int, now: float) -> bool:
        """Caught up with the partition's end and no data for idle_timeout_s."""
        _, high = consumer.get_watermark_offsets(_topic_partition(*key), cached=True)
        if high < 0 or position < high:
            _last_busy[key] = now  # behind (or end unknown yet): there is data to read
            return False
        return now - _last_busy.setdefault(key, now) >= self._cfg.idle_timeout_s

    def _handle_error(self, err, topic: str, partition: int) -> None:
        self._errors.inc()
        name = err.name()
        if is_denied(err):
            raise KafkaAuthError(
                f"not authorized to read topic {topic!r} partition {partition}{_who(self._client_cfg)}: "
                f"{name}: {err.str()}"
            )
        if err.fatal():
            raise KafkaReadError(f"reading topic {topic!r} partition {partition}: {name}: {err.str()}")
        now = time.monotonic()
        if name in _UNKNOWN_CODES:
            since = self._unknown_since.setdefault((topic, partition), now)
            if now - since > UNKNOWN_TOPIC_GRACE_S:
                if self._cfg.topic_pattern:
                    raise _TopicGone()  # deleted topic under a pattern: stop reading it, keep the job
                raise KafkaReadError(f"topic {topic!r} partition {partition} no longer exists ({err.str()})")
        else:
            self._unknown_since.pop((topic, partition), None)
        if now - self._last_error_log > 5:  # librdkafka retries by itself; log, don't flood
            self._last_error_log = now
            log.warning("kafka %s[%d]: %s (retrying)", topic, partition, err.str())

    def process(
        self,
        element: PartitionSpec,
        # Beam passes the finalizer positionally and tracker/watermark by keyword: keep this order.
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(_RESTRICTIONS),
        watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider()),
    ) -> Iterable[TimestampedValue]:
        from confluent_kafka import KafkaError

        topic, partition = element.topic, element.partition
        key = (topic, partition)
        rng = tracker.current_restriction()
        if rng.start >= rng.stop:
            return
        cached = self._consumer_at(topic, partition, rng.start)
        consumer = cached.consumer
        cfg = self._cfg
        bounded = rng.stop < _OPEN_END
        deadline = time.monotonic() + cfg.max_poll_s
        lag = cfg.max_out_of_orderness_s
        records_ctr, bytes_ctr = self._records, self._bytes
        claimed_upto = -1
        eof_code = KafkaError._PARTITION_EOF
        done = False
        try:
            while True:
                if _STOP.is_set():
                    log.info(
                        "stop requested: finishing %s[%d] at offset %d",
                        topic,
                        partition,
                        claimed_upto + 1 if claimed_upto >= 0 else rng.start,
                    )
                    tracker.try_claim(tracker.current_restriction().stop)  # marks the range done
                    return
                msgs = consumer.consume(num_messages=cfg.poll_batch, timeout=0.2)
                data = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        if m.offset() >= rng.start:  # an offset reset can rewind below our range
                            data.append(m)
                    elif err.code() == eof_code:
                        # At the end: a bounded range whose tail holds no data (e.g. transaction
                        # markers) is done once the consumer position reaches its stop.
                        if bounded and m.offset() >= rng.stop:
                            done = True
                    else:
                        try:
                            self._handle_error(err, topic, partition)
                        except _TopicGone:
                            log.warning(
                                "topic %s partition %d is gone: no longer reading it", topic, partition
                            )
                            tracker.try_claim(tracker.current_restriction().stop)
                            return
                now = time.monotonic()
                if data:
                    _last_busy[key] = now
                    # The consumer's position is now past the batch, whatever we emit of it: a later
                    # call that starts elsewhere (split, or a restriction we return early from) seeks.
                    cached.next_offset = data[-1].offset() + 1
                    claim = _OffsetBatch(data[0].offset(), data[-1].offset())
                    if not tracker.try_claim(claim):
                        return
                    upto = claim.upto
                    max_ts = 0
                    nbytes = 0
                    n = 0
                    per = cfg.batch_records
                    time_header = cfg.event_time_header
                    batch: list[KafkaRecord] = []
                    min_ts = 0
                    for m in data:
                        off = m.offset()
                        if off > upto:
                            break
                        kts = m.timestamp()[1]
                        value = m.value()
                        if value is not None:
                            nbytes += len(value)
                        n += 1
                        headers = tuple(m.headers() or ())
                        rec = KafkaRecord(topic, partition, off, kts, m.key(), value, headers)
                        ts = kts
                        if time_header is not None and headers:
                            ts = _header_time(headers, time_header, kts)
                        if ts > max_ts:
                            max_ts = ts
                        if per == 1:
                            yield TimestampedValue(rec, ts / 1000.0)
                            continue
                        if 0 < ts and (min_ts <= 0 or ts < min_ts):
                            min_ts = ts
                        batch.append(rec)
                        if len(batch) >= per:
                            # A list's timestamp is its oldest record's: nothing in it is later than its
                            # element, as with one record per element.
                            yield TimestampedValue(batch, (min_ts or max_ts) / 1000.0)
                            batch, min_ts = [], 0
                    if batch:
                        yield TimestampedValue(batch, (min_ts or max_ts) / 1000.0)
                    claimed_upto = upto
                    records_ctr.inc(n)
                    bytes_ctr.inc(nbytes)
                    if max_ts > 0:
                        _advance(watermark, Timestamp(micros=int((max_ts / 1000.0 - lag) * 1e6)))
                    if upto < claim.last or (bounded and upto >= rng.stop - 1):
                        return  # split inside this batch, or range finished: the rest is not ours
                elif not bounded and self._idle(
                    consumer, key, rng.start if claimed_upto < 0 else claimed_upto + 1, now
                ):
                    # Idle partition: caught up and quiet. New records will carry timestamps near
                    # wall time, so the watermark follows the clock instead of holding windows back.
                    _advance(watermark, Timestamp.of(time.time() - cfg.idle_timeout_s))
                if done:
                    tracker.try_claim(rng.stop)  # marks the range as finished for check_done
                    return
                if now >= deadline:
                    # Self-checkpoint: the runner gets a residual and can persist progress.
                    tracker.defer_remainder(Duration.of(0) if data else Duration.of(0.2))
                    return
        finally:
            if claimed_upto >= 0 and self._cfg.commit_offsets:
                next_offset = claimed_upto + 1
                finalizer.register(lambda: self._commit(topic, partition, next_offset))
            else:
                # Prism asks every bundle of this stage to finalize; a bundle that registered nothing
                # is already released by the SDK and that request fails noisily. Register a no-op.
                finalizer.register(_noop)


def _header_time(headers: tuple, name: str, default: int) -> int:
    """Event time (ms) from the last header `name`, read as unpack reads payload times (ms, or s/µs/ns by
    magnitude, or ISO-8601); the Kafka timestamp when the header is missing or not a time."""
    raw = None
    for hk, hv in headers:
        if hk == name:
            raw = hv
    if raw is None:
        return default
    try:
        ms = parse_event_time(raw.decode("ascii") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError, OverflowError):
        return default
    return ms if ms is not None and 0 < ms <= MAX_EVENT_MS else default


def _noop() -> None:
    pass


def _topic_partition(topic: str, partition: int):
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition)


def _advance(estimator, wm: Timestamp) -> None:
    current = estimator.current_watermark()
    if current is None or wm > current:
        estimator.set_watermark(wm)


class _ReadUnboundedPartitionFn(_ReadPartitionFn):
    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element,
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(_RESTRICTIONS),
        watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider()),
    ):
        return super().process(element, finalizer, tracker=tracker, watermark=watermark)


# --- Discovery ---------------------------------------------------------------------------------


class _PlanBoundedFn(beam.DoFn):
    def __init__(self, cfg: ReadConfig) -> None:
        self._cfg = cfg

    def process(self, _) -> Iterable[PartitionSpec]:
        specs = plan_bounded(self._cfg)
        total = sum(s.stop - s.start for s in specs)
        log.info(
            "bounded read of %d records from %d partitions (%s)", total, len(specs), self._cfg.describe()
        )
        yield from specs


class _TickRestrictions(RestrictionProvider):
    def initial_restriction(self, element) -> OffsetRange:
        return OffsetRange(0, _OPEN_END)

    def create_tracker(self, restriction: OffsetRange) -> KafkaOffsetTracker:
        return KafkaOffsetTracker(restriction)

    def restriction_size(self, element, restriction) -> int:
        return 1


_TICKS = _TickRestrictions()
_last_discovery: dict[str, float] = {}  # per worker: when each reader last listed partitions


class _DiscoverFn(beam.DoFn):
    """Lists the partitions to read every `discovery_interval_s`, until a stop is requested.

    A splittable DoFn rather than PeriodicImpulse so that a graceful stop can end it: it wakes each
    second (cheap) and lists partitions when the interval is due. Each listing is one element, so
    the next step sees whole ticks.
    """

    def __init__(self, cfg: ReadConfig) -> None:
        self._cfg = cfg
        self._key = cfg.topic_pattern or ",".join(cfg.topics)

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        _,
        tracker=beam.DoFn.RestrictionParam(_TICKS),
        watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider()),
    ) -> Iterable[TimestampedValue]:
        rng = tracker.current_restriction()
        if _STOP.is_set():
            tracker.try_claim(rng.stop)
            return
        if not tracker.try_claim(rng.start):
            return
        now = time.time()
        _advance(watermark, Timestamp.of(now))
        if now - _last_discovery.get(self._key, 0.0) >= self._cfg.discovery_interval_s:
            _last_discovery[self._key] = now
            try:
                parts = list_partitions(self._cfg)
            except KafkaAuthError:
                raise  # credentials or ACLs: waiting for the next tick changes nothing
            except KafkaReadError as e:
                # A broker outage or a not-yet-created topic must not kill the job: retry next tick.
                log.warning(
                    "partition discovery failed, retrying in %.0f s: %s", self._cfg.discovery_interval_s, e
                )
            else:
                yield TimestampedValue(("all", parts), now)
        tracker.defer_remainder(Duration.of(1))


class _NewPartitionsFn(beam.DoFn):
    """Emits each partition once, with its start offset resolved.

    Partitions seen on the first successful tick start at the configured position; later ones (new
    topics matching the pattern, partitions added to a topic) start at their earliest offset, so
    nothing written to them before discovery is skipped.
    """

    SEEN = beam.transforms.userstate.ReadModifyWriteStateSpec("seen", beam.coders.PickleCoder())

    def __init__(self, cfg: ReadConfig) -> None:
        self._cfg = cfg

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)) -> Iterable[PartitionSpec]:
        _, parts = element
        known = seen.read()
        policy = self._cfg.start if known is None else "earliest"
        known = set(known or ())
        new = [tp for tp in parts if tp not in known]
        if not new:
            return
        client_cfg = self._cfg.client_config()
        consumer = _consumer(client_cfg)
        try:
            specs = [
                PartitionSpec(t, p, resolve_start(consumer, t, p, policy, client_cfg), _OPEN_END)
                for t, p in new
            ]
        finally:
            consumer.close()
        seen.write(known | set(new))
        for s in specs:
            log.info("reading partition %s[%d] from offset %d (%s)", s.topic, s.partition, s.start, policy)
            yield s


class ReadFromKafka(beam.PTransform):
    """Reads Kafka records (`KafkaRecord`) from a topic list or a topic regex.

    Bounded with `stop_at_end` or `max_records`, unbounded otherwise. Elements are timestamped with
    the Kafka record timestamp (or the event time in `event_time_header`); the watermark follows it per
    partition.
    """

    def __init__(self, cfg: ReadConfig) -> None:
        super().__init__()
        self._cfg = validate_read_config(cfg)

    def expand(self, pbegin):
        cfg = self._cfg
        if cfg.bounded:
            specs = (
                pbegin
                | "Start" >> beam.Impulse()
                | "PlanPartitions" >> beam.ParDo(_PlanBoundedFn(cfg))
                | "SpreadPartitions" >> beam.Reshuffle()
            )
            read_fn = _ReadPartitionFn(cfg)
        else:
            specs = (
                pbegin
                | "Start" >> beam.Impulse()
                | "DiscoverPartitions" >> beam.ParDo(_DiscoverFn(cfg))
                | "NewPartitions" >> beam.ParDo(_NewPartitionsFn(cfg))
            )
            read_fn = _ReadUnboundedPartitionFn(cfg)
        return specs | "ReadPartitions" >> beam.ParDo(read_fn).with_output_types(Batch)


# --- Write -------------------------------------------------------------------------------------


class KafkaMessage(NamedTuple):
    """One record to produce: WriteToKafka's element. The topic is per record (routing)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class KafkaWriteError(RuntimeError):
    """Records were not acknowledged; raised from finish_bundle so the runner retries the bundle."""


class _WriteFn(beam.DoFn):
    POLL_EVERY = 1000

    def __init__(self, producer_cfg: dict[str, Any], flush_timeout_s: float, retry_budget_s: float) -> None:
        self._producer_cfg = producer_cfg
        self._flush_timeout_s = flush_timeout_s
        self._retry_budget_s = retry_budget_s
        self._written = Metrics.counter("kafka", "records_written")
        self._failed = Metrics.counter("kafka", "delivery_errors")
        self._retried = Metrics.counter("kafka", "records_retried")
        self._full = Metrics.counter("kafka", "producer_queue_full")

    def setup(self) -> None:
        from confluent_kafka import Producer

        cfg = resolve_secrets(merged(PRODUCER_DEFAULTS, self._producer_cfg))
        # A refused login raises KafkaWriteError from the next poll/flush instead of waiting out the
        # retry budget (records to a broker that refuses us time out as if it were down).
        # Delivery reports only for failures: finish_bundle needs nothing else, and a Python callback per
        # acknowledged record was ~1 µs of the hot path. The callback is the producer's default rather
        # than an on_delivery argument per produce() call, which cost ~0.4 µs per record (measured).
        self._producer = Producer({**cfg, "error_cb": auth_error_cb(cfg, KafkaWriteError),
                                   "on_delivery": self._on_delivery, "delivery.report.only.error": True})
        self._failures: list[tuple[Any, Any]] = []

    def start_bundle(self) -> None:
        self._failures = []
        self._pending = 0

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failures.append((err, msg))

    def _produce(self, topic, value, key, headers) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                # Local queue full: wait for deliveries instead of growing memory (backpressure).
                self._full.inc()
                self._producer.poll(0.05)

    def process(self, msg: KafkaMessage | list[KafkaMessage]) -> None:
        msgs = msg if type(msg) is list else (msg,)
        produce = self._producer.produce
        i = 0
        try:
            # the common case, one call per record; the queue filling up ends it (below)
            for topic, key, value, headers in msgs:
                if headers:
                    produce(topic, value, key, headers=list(headers))
                else:
                    produce(topic, value, key)
                i += 1
        except BufferError:
            for topic, key, value, headers in msgs[i:]:
                self._produce(topic, value, key, list(headers) or None)
        before = self._pending
        self._pending += len(msgs)
        if self._pending // self.POLL_EVERY != before // self.POLL_EVERY:
            self._producer.poll(0)  # serve delivery reports (failures) as they come

    def finish_bundle(self) -> None:
        """Waits until every record is acknowledged. Transient failures (broker down or restarting,
        timeouts) are produced again with backoff within the retry budget; anything else, or an
        exhausted budget, fails the bundle so the runner retries it."""
        if self._pending == 0:
            return
        deadline = time.monotonic() + self._retry_budget_s
        backoff = 0.5
        while True:
            remaining = self._flush(max(1.0, min(self._flush_timeout_s, deadline - time.monotonic())))
            failures, self._failures = self._failures, []
            fatal = [(e, m) for e, m in failures if not _retriable(e)]
            if fatal:
                self._failed.inc(len(fatal))
                err, msg = fatal[0]
                raise KafkaWriteError(
                    f"{len(fatal)} of {self._pending} records rejected: {msg.topic()}: {err.str()}"
                )
            if not failures and not remaining:
                break
            if time.monotonic() >= deadline:
                self._failed.inc(len(failures) + remaining)
                raise KafkaWriteError(
                    f"{len(failures) + remaining} of {self._pending} records not acknowledged within the "
                    f"{self._retry_budget_s:.0f} s retry budget"
                    + (f": {failures[0][1].topic()}: {failures[0][0].str()}" if failures else "")
                )
            if failures:
                log.warning(
                    "kafka write: %d records failed (%s); producing them again in %.1f s",
                    len(failures),
                    failures[0][0].str(),
                    backoff,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._retried.inc(len(failures))
                for _, m in failures:
                    self._produce(m.topic(), m.value(), m.key(), m.headers())
            else:
                log.warning("kafka write: %d records still unacknowledged; waiting for the broker", remaining)
        self._written.inc(self._pending)

    def _flush(self, timeout: float) -> int:
        """producer.flush in slices of 1 s: an exception of the error_cb (a refused login) surfaces only
        when a flush call returns, and one long call would hold it back for the whole timeout."""
        end = time.monotonic() + timeout
        while True:
            remaining = self._producer.flush(max(0.0, min(1.0, end - time.monotonic())))
            if not remaining or time.monotonic() >= end:
                return remaining

    def teardown(self) -> None:
        if getattr(self, "_producer", None) is not None:
            try:
                self._flush(self._flush_timeout_s)
            except Exception as e:  # e.g. a refused login or a fatal idempotent-producer error
                # A failing bundle has reported the cause already; an error here would hide it.
                log.warning("kafka write teardown: %s", e)
            self._producer = None  # destroys the client now: a refused one would keep reconnecting


def _retriable(err) -> bool:
    from confluent_kafka import KafkaError

    return err.retriable() or err.code() in (
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REQUEST_TIMED_OUT,
    )


class WriteToKafka(beam.PTransform):
    """Produces `KafkaMessage`s (elements may be lists of them). A bundle completes only when all its
    records are acknowledged."""

    def __init__(
        self,
        producer_cfg: dict[str, Any] | None = None,
        flush_timeout_s: float = 30.0,
        retry_budget_s: float = 600.0,
    ) -> None:
        super().__init__()
        self._producer_cfg = validate_client_config(producer_cfg, "kafka.producer")
        self._flush_timeout_s = flush_timeout_s
        self._retry_budget_s = retry_budget_s

    def expand(self, pcoll):
        return pcoll | "Produce" >> beam.ParDo(
            _WriteFn(self._producer_cfg, self._flush_timeout_s, self._retry_budget_s)
        )
