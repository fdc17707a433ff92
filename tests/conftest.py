"""Shared fixtures: real components only. A test that needs one starts it; if it cannot, it fails."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _run_sh(*args: str, timeout: float = 300, env: dict | None = None) -> None:
    proc = subprocess.run(
        [str(ROOT / "run.sh"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"./run.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


def kafka_answers(timeout: float = 5.0) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=timeout)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka() -> str:
    """The real broker's bootstrap address; started with ./run.sh kafka-up when it is not running."""
    if not kafka_answers():
        _run_sh("kafka-up")
    assert kafka_answers(15), "Kafka broker did not answer after ./run.sh kafka-up"
    return BOOTSTRAP


@pytest.fixture()
def topic_prefix() -> str:
    """A unique prefix so tests never see each other's topics or offsets."""
    return f"t{uuid.uuid4().hex[:10]}"


def create_topics(topics: list[str], partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for fut in admin.create_topics([NewTopic(t, partitions) for t in topics]).values():
        fut.result(30)


def produce(
    topic: str, values: list[bytes], headers=None, key: bytes | None = None, partition: int | None = None
):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    for v in values:
        kwargs = {"partition": partition} if partition is not None else {}
        p.produce(topic, v, key, headers=headers, **kwargs)
        p.poll(0)
    assert p.flush(30) == 0


def _watermarks(consumer, topic: str, partition: int, timeout: float = 60.0) -> tuple[int, int]:
    """Low/high offsets, waiting out leader elections (e.g. right after a broker restart)."""
    import time

    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.time() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        except KafkaException as e:
            if not e.args[0].retriable() or time.time() > deadline:
                raise
            time.sleep(1)


def read_all(topic: str, timeout: float = 30.0) -> list:
    """Every record now in `topic` (all partitions, start to current end), as confluent Messages."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        assign = []
        for p in md.partitions:
            low, high = _watermarks(c, topic, p)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        if not assign:
            return []
        c.assign(assign)
        out, done = [], set()
        import time

        deadline = time.time() + timeout
        while len(done) < len(ends) and time.time() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error():
                    continue
                out.append(m)
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
        assert len(done) == len(ends), f"timed out reading {topic}: {len(out)} records"
        return out
    finally:
        c.close()


def write_test_config(tmp_path, mutate=None, prefix: str | None = None) -> str:
    """config/default.yaml made fit for a test: this broker, absolute rules path and, with a `prefix`, the
    test's own output and DLQ topics (one partition each: a broker restart recovers every partition);
    `mutate(raw)` changes the rest. Returns the written file's path."""
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    raw["classify"]["rules_files"] = [str(ROOT / "rules" / "default.yaml")]
    raw["kafka"]["consumer"]["bootstrap.servers"] = raw["kafka"]["producer"]["bootstrap.servers"] = BOOTSTRAP
    if prefix:
        raw["routes"].update(
            topic_template=prefix + ".out.{category}", dlq_topic=f"{prefix}.dlq", topic_partitions=1
        )
    if mutate:
        mutate(raw)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)
