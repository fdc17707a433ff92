"""Unbounded runs of `python -m pipeline` on Prism against the real broker and ClickHouse server:
windows fire while data flows, idle partitions do not stall them, new topics are discovered, and a
graceful stop, a kill -9 or a broker restart lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conftest import (
    BOOTSTRAP,
    ROOT,
    _run_sh,
    _watermarks,
    create_topics,
    kafka_answers,
    produce,
    read_all,
    write_test_config,
)

pytestmark = pytest.mark.slow
CH_PORT = int(os.environ.get("CLICKHOUSE_TCP_PORT", "9000"))
CATEGORIES = ("PERF_CRASH", "PERF_LAG", "PERF_ANR", "UNCLASSIFIED")
MESSAGES = {
    "PERF_CRASH": "FATAL EXCEPTION: main java.lang.NullPointerException",
    "PERF_LAG": "Choreographer: Skipped 87 frames!  The application may be doing too much work",
    "PERF_ANR": "ANR in com.example.game (com.example.game/.MainActivity)",
    "UNCLASSIFIED": "user tapped the settings button",
}


@pytest.fixture(scope="module")
def ch_server() -> str:
    _run_sh("clickhouse-up")
    return f"127.0.0.1:{CH_PORT}"


def _config(tmp_path, prefix: str, database: str) -> str:
    def mutate(raw):
        raw["sinks"]["clickhouse"].update(
            url=f"clickhouse://default@127.0.0.1:{CH_PORT}/{database}", database=database
        )
        raw["window"].update(size_s=2, allowed_lateness_s=10)

    return write_test_config(tmp_path, mutate, prefix)


def _event(category: str, seq: int) -> bytes:
    return orjson.dumps(
        {
            "app_id": "com.example.game",
            "device_id": f"d{seq % 50}",
            "message": MESSAGES[category],
            "timestamp": int(time.time() * 1000),
            "duration_ms": seq % 1000,
            "seq": seq,
        }
    )


class Feeder:
    """Produces events to a topic in a background thread, `rate` per second, to chosen partitions."""

    def __init__(self, topic: str, partitions: list[int], rate: int = 200) -> None:
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        p = Producer(
            {
                "bootstrap.servers": BOOTSTRAP,
                "linger.ms": 5,
                "message.timeout.ms": 300000,
                "enable.idempotence": True,
            }
        )
        while not self._stop.is_set():
            for _ in range(self.rate // 10):
                cat = CATEGORIES[self.sent % len(CATEGORIES)]
                p.produce(
                    self.topic,
                    _event(cat, self.sent),
                    partition=self.partitions[self.sent % len(self.partitions)],
                )
                self.sent += 1
            p.poll(0)
            time.sleep(0.1)
        assert p.flush(120) == 0

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(150)
        return self.sent


@contextmanager
def pipeline_process(config: str, *args: str, log_path):
    """`python -m pipeline` as a real process (Prism, unbounded); killed at the end if still running."""
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        f"--config={config}",
        "--idle_timeout=2",
        "--discovery_interval=2",
        *args,
    ]
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Signals are graceful once the job runs; wait for that so a test's SIGTERM means "drain".
        _wait_for(
            lambda: b"running job" in log_path.read_bytes()[start:], 120, "the job to start", proc, log_path
        )
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _log_tail(log_path, n: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-n:]) if log_path.exists() else ""


def _output_ids(prefix: str) -> Counter:
    """event_id -> how many times it is on the category topics."""
    ids: Counter = Counter()
    for cat in CATEGORIES:
        try:
            msgs = read_all(f"{prefix}.out.{cat}")
        except KeyError:
            continue
        for m in msgs:
            ids[orjson.loads(m.value())["event_id"]] += 1
    return ids


def _expected_ids(topic: str, partitions: int) -> set[str]:
    from transforms.common import KafkaRecord
    from transforms.unpack import Unpacker, validate_unpack_config

    unpacker = Unpacker(validate_unpack_config(None))
    ids = set()
    for m in read_all(topic):
        events, _ = unpacker.unpack(KafkaRecord(topic, m.partition(), m.offset(), 0, m.key(), m.value(), ()))
        ids.update(e["event_id"] for e in events)
    return ids


def _wait_for(predicate, timeout: float, what: str, proc=None, log_path=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"pipeline exited ({proc.returncode}) while waiting for {what}:\n{_log_tail(log_path)}"
            )
        time.sleep(1)
    pytest.fail(
        f"timed out after {timeout:.0f} s waiting for {what}:\n{_log_tail(log_path) if log_path else ''}"
    )


def _ch(database: str, sql: str):
    from clickhouse_driver import Client

    return Client(host="127.0.0.1", port=CH_PORT, database=database).execute(sql)


def _committed_lag(group: str, topic: str, partitions: int) -> int:
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    try:
        lag = 0
        committed = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        for tp in committed:
            low, high = _watermarks(c, topic, tp.partition)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        c.close()


def _setup(tmp_path, partitions: int = 4):
    prefix = f"s{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.in.perf"
    create_topics([topic], partitions=partitions)
    database = f"it_{prefix}"
    return prefix, topic, database, _config(tmp_path, prefix, database)


def test_windows_fire_while_data_flows_with_an_idle_partition_then_sigterm_drains(kafka, ch_server, tmp_path):
    prefix, topic, db, config = _setup(tmp_path)
    log_path = tmp_path / "pipeline.log"
    group = f"{prefix}-g"
    # Partition 3 never gets data: it must not hold the watermark (and so the windows) back.
    feeder = Feeder(topic, partitions=[0, 1, 2]).start()
    with pipeline_process(config, f"--topics={topic}", f"--group_id={group}", log_path=log_path) as proc:
        first = _wait_for(
            lambda: _table_exists(db) and _ch(db, "SELECT min(window_end) FROM window_aggregates")[0][0],
            120,
            "a window aggregate in ClickHouse",
            proc,
            log_path,
        )
        assert feeder.sent > 0 and not feeder._stop.is_set()  # fired while input still flows
        time.sleep(4)
        sent = feeder.stop()
        time.sleep(3)
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(90)
        drain_s = time.time() - t0
    assert rc == 0, _log_tail(log_path)
    assert first is not None
    # The drain fired every window: the aggregates account for every event written so far.
    written = _ch(db, "SELECT count() FROM events FINAL")[0][0]
    assert written > 0
    assert _ch(db, "SELECT sum(count) FROM window_aggregates FINAL")[0][0] == written
    expected = _expected_ids(topic, 4)
    assert len(expected) >= sent  # == unless the feeder's own retries duplicated input
    # The drain stopped reading where it was and committed exactly what reached the outputs: a
    # restart with the same group picks up the rest, and then the group's lag is 0.
    with pipeline_process(config, f"--topics={topic}", f"--group_id={group}", log_path=log_path) as proc:
        _wait_for(lambda: expected <= set(_output_ids(prefix)), 120, "the rest after restart", proc, log_path)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(90) == 0, _log_tail(log_path)
    ids = _output_ids(prefix)
    assert set(ids) == expected
    assert _committed_lag(group, topic, 4) == 0
    in_ch = {r[0] for r in _ch(db, "SELECT event_id FROM events FINAL")}
    missing = sorted(_ch(db, "SELECT 1") and [i for i in expected - in_ch])
    assert not missing, f"{len(missing)} events not in ClickHouse, e.g. {_src_of(prefix, missing[:5])}"
    assert _ch(db, "SELECT count() FROM events FINAL")[0][0] == len(expected)
    print(f"drain took {drain_s:.1f} s; {sent} events, {sum(ids.values()) - len(ids)} duplicates")


def _src_of(prefix: str, ids: list[str]) -> list:
    out = []
    for cat in CATEGORIES:
        for m in read_all(f"{prefix}.out.{cat}"):
            ev = orjson.loads(m.value())
            if ev["event_id"] in ids:
                out.append((ev["src"], ev["ingest_time"]))
    return out


def _table_exists(db: str) -> bool:
    try:
        return bool(_ch(db, "EXISTS TABLE window_aggregates")[0][0])
    except Exception:
        return False


def test_new_topics_and_partitions_matching_the_pattern_are_picked_up(kafka, ch_server, tmp_path):
    from confluent_kafka.admin import AdminClient, NewPartitions

    prefix, topic, db, config = _setup(tmp_path, partitions=2)
    log_path = tmp_path / "pipeline.log"
    produce(topic, [_event("PERF_CRASH", 0)])
    with pipeline_process(
        config, rf"--topic_pattern=^{prefix}\.in\..*", f"--group_id={prefix}-g", log_path=log_path
    ) as proc:
        time.sleep(8)  # running, with the first topic only
        new_topic = f"{prefix}.in.late"
        create_topics([new_topic], partitions=1)
        # ...and a third partition on the topic it already reads (keep the admin client alive until done).
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        admin.create_partitions([NewPartitions(topic, 3)])[topic].result(30)
        p = Producer({"bootstrap.servers": BOOTSTRAP})
        for i in range(20):
            p.produce(new_topic, _event("PERF_LAG", i))
            p.produce(topic, _event("PERF_ANR", i), partition=2)
        p.flush(30)

        def arrived(category: str, pred) -> bool:
            try:
                msgs = read_all(f"{prefix}.out.{category}", timeout=5)
            except KeyError:
                return False
            return sum(pred(orjson.loads(m.value())["src"]) for m in msgs) == 20

        _wait_for(
            lambda: arrived("PERF_LAG", lambda src: src[0] == new_topic),
            90,
            "events of the new topic on the output",
            proc,
            log_path,
        )
        _wait_for(
            lambda: arrived("PERF_ANR", lambda src: src[0] == topic and src[1] == 2),
            90,
            "events of the added partition on the output",
            proc,
            log_path,
        )
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(90) == 0, _log_tail(log_path)


def _stop_feeder_and_wait_for_all(feeder, topic, prefix, proc, log_path, timeout, what) -> tuple[int, set]:
    """Stops the input, then waits until every event it produced is on the category topics."""
    sent = feeder.stop()
    expected = _expected_ids(topic, 4)
    assert len(expected) >= sent  # == unless the feeder's own retries duplicated input
    _wait_for(lambda: expected <= set(_output_ids(prefix)), timeout, what, proc, log_path)
    return sent, expected


def test_kill_9_then_restart_with_same_group_loses_nothing(kafka, ch_server, tmp_path):
    prefix, topic, db, config = _setup(tmp_path)
    log_path = tmp_path / "pipeline.log"
    args = (f"--topics={topic}", f"--group_id={prefix}-g")
    feeder = Feeder(topic, partitions=[0, 1, 2, 3]).start()
    with pipeline_process(config, *args, log_path=log_path) as proc:
        _wait_for(lambda: len(_output_ids(prefix)) > 300, 120, "first outputs", proc, log_path)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    time.sleep(2)
    with pipeline_process(config, *args, log_path=log_path) as proc:
        time.sleep(5)
        sent, expected = _stop_feeder_and_wait_for_all(
            feeder, topic, prefix, proc, log_path, 120, "every event after restart"
        )
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(90) == 0, _log_tail(log_path)
    ids = _output_ids(prefix)
    dupes = sum(n - 1 for n in ids.values())
    assert set(ids) == expected  # 0 missing
    # Replayed records are duplicates on Kafka (at least once) but not in ClickHouse FINAL.
    assert _ch(db, "SELECT count() FROM events FINAL")[0][0] == len(expected)
    print(f"kill -9: {sent} events, 0 missing, {dupes} duplicates on the category topics")


def test_broker_restart_mid_stream_loses_nothing(kafka, ch_server, tmp_path):
    prefix, topic, db, config = _setup(tmp_path)
    log_path = tmp_path / "pipeline.log"
    feeder = Feeder(topic, partitions=[0, 1, 2, 3]).start()
    with pipeline_process(config, f"--topics={topic}", f"--group_id={prefix}-g", log_path=log_path) as proc:
        _wait_for(lambda: len(_output_ids(prefix)) > 200, 120, "first outputs", proc, log_path)
        _run_sh("kafka-down")
        time.sleep(5)
        # The broker recovers every partition of the suite's topics; give it time on a loaded machine.
        _run_sh("kafka-up", timeout=400, env={"KAFKA_START_TIMEOUT": "300"})
        assert kafka_answers(30)
        time.sleep(5)
        sent, expected = _stop_feeder_and_wait_for_all(
            feeder, topic, prefix, proc, log_path, 180, "every event after the restart"
        )
        assert proc.poll() is None, "the pipeline must survive a broker restart"
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(90) == 0, _log_tail(log_path)
    assert _ch(db, "SELECT count() FROM events FINAL")[0][0] == len(expected)
