"""The local Kafka broker that run.sh manages: real round trips, and data that survives a restart."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "run.sh"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _kafka_up() -> None:
    res = _run("kafka-up")
    assert res.returncode == 0, f"kafka-up failed:\n{res.stdout}\n{res.stderr}"


@pytest.fixture(scope="module")
def kafka() -> str:
    if _run("kafka-status").returncode != 0:
        _kafka_up()
    return BOOTSTRAP


def _new_topic(bootstrap: str, prefix: str) -> str:
    topic = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep a reference: futures die with the client
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    futures[topic].result(timeout=30)
    return topic


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
    delivered: list = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            raise KafkaException(err)
        delivered.append((msg.partition(), msg.offset()))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, key=key, value=value, headers=[("h", b"1")], on_delivery=on_delivery)
    assert producer.flush(30) == 0, "record not delivered within 30 s"
    assert len(delivered) == 1
    return delivered[0]


def _consume_all(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"infra-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg)
    finally:
        consumer.close()
    return got


@pytest.mark.timeout(120)
def test_round_trip_on_fresh_topic(kafka: str) -> None:
    topic = _new_topic(kafka, "infra_rt")
    value = f"payload-{uuid.uuid4().hex}".encode()
    partition, offset = _produce(kafka, topic, b"k1", value)
    assert (partition, offset) == (0, 0)

    got = _consume_all(kafka, topic, expect=1)
    assert len(got) == 1
    msg = got[0]
    assert (msg.key(), msg.value(), msg.headers()) == (b"k1", value, [("h", b"1")])
    assert (msg.partition(), msg.offset()) == (0, 0)


@pytest.mark.timeout(300)
def test_restart_keeps_records(kafka: str) -> None:
    topic = _new_topic(kafka, "infra_restart")
    before = f"before-{uuid.uuid4().hex}".encode()
    _produce(kafka, topic, b"a", before)

    down = _run("kafka-down")
    assert down.returncode == 0, f"kafka-down failed:\n{down.stdout}\n{down.stderr}"
    assert _run("kafka-status").returncode != 0, "kafka-status still reports running after kafka-down"
    _kafka_up()
    assert _run("kafka-status").returncode == 0

    after = f"after-{uuid.uuid4().hex}".encode()
    assert _produce(kafka, topic, b"b", after) == (0, 1), "offsets restarted: the data dir was not kept"
    got = _consume_all(kafka, topic, expect=2)
    assert [(m.offset(), m.key(), m.value()) for m in got] == [(0, b"a", before), (1, b"b", after)]
