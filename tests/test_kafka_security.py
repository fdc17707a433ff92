"""SASL and TLS pass-through, and authorization errors, against a real secured broker.

`scripts/kafka_secure.sh` runs a second single-node Kafka with SASL/PLAIN on SASL_PLAINTEXT and SASL_SSL
listeners, StandardAuthorizer and no access without an ACL. Users: admin (super user), alice (READ on the
`<prefix>.alice.` topics and `<prefix>.alice-` groups, given here with AdminClient.create_acls) and bob (no
ACL). The fixture starts the broker when it is not running and stops it at the end if it started it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import ROOT
from transforms.kafkaio import KafkaMessage, ReadConfig, ReadFromKafka, WriteToKafka

FNAPI = PipelineOptions(["--runner=FnApiRunner"])
SECURE_DIR = ROOT / ".run" / "kafka-secure"
PORT = int(os.environ.get("KAFKA_SECURE_PORT", "19192"))
SASL_PLAINTEXT = f"127.0.0.1:{PORT}"
SASL_SSL = f"127.0.0.1:{PORT + 1}"
RECORDS = [b"r%d" % i for i in range(40)]

pytestmark = pytest.mark.timeout(240)


@dataclass(frozen=True)
class Secure:
    prefix: str
    topic: str  # alice may read it
    private: str  # nobody but admin may touch it
    ca: str  # PEM of the broker's CA, for ssl.ca.location

    def password(self, user: str) -> str:
        return (SECURE_DIR / f"{user}.password").read_text().strip()

    def client(self, user: str, password: str | None = None, tls: bool = False) -> dict:
        cfg = {
            "bootstrap.servers": SASL_SSL if tls else SASL_PLAINTEXT,
            "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": user,
            "sasl.password": self.password(user) if password is None else password,
        }
        if tls:
            cfg["ssl.ca.location"] = self.ca
        return cfg


def _secure_sh(cmd: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "scripts" / "kafka_secure.sh"), cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _alice_resources(s: Secure) -> list:
    from confluent_kafka.admin import ResourceType

    return [(ResourceType.TOPIC, f"{s.prefix}.alice."), (ResourceType.GROUP, f"{s.prefix}.alice-")]


def _grant_and_fill(s: Secure) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        NewTopic,
        ResourcePatternType,
    )

    admin = AdminClient(s.client("admin"))
    for fut in admin.create_topics([NewTopic(s.topic, 2), NewTopic(s.private, 1)]).values():
        fut.result(30)
    allow = AclPermissionType.ALLOW
    prefixed = ResourcePatternType.PREFIXED
    acls = [
        AclBinding(kind, name, prefixed, "User:alice", "*", AclOperation.READ, allow)
        for kind, name in _alice_resources(s)
    ]
    for fut in admin.create_acls(acls).values():
        fut.result(30)
    p = Producer(s.client("admin"))
    for i, v in enumerate(RECORDS):
        p.produce(s.topic, v, partition=i % 2)
    p.produce(s.private, b"secret record")
    assert p.flush(30) == 0


@pytest.fixture(scope="session")
def secure_kafka():
    """The secured broker with this session's topics and ACLs. Never skips: no broker is a failure."""
    started = False
    if _secure_sh("status").returncode != 0:
        t0 = time.monotonic()
        proc = _secure_sh("up")
        if proc.returncode != 0:
            pytest.fail(
                f"scripts/kafka_secure.sh up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        started = True
        logging.getLogger(__name__).info("secured broker started in %.1f s", time.monotonic() - t0)
    prefix = f"sec{uuid.uuid4().hex[:8]}"
    s = Secure(prefix, f"{prefix}.alice.in", f"{prefix}.private", str(SECURE_DIR / "tls" / "ca.pem"))
    try:
        _grant_and_fill(s)
        yield s
    finally:
        if started and os.environ.get("KEEP_SERVICES") != "1":  # as ./run.sh test does with its services
            proc = _secure_sh("down")
            assert proc.returncode == 0, proc.stderr
        else:
            _cleanup(s)


def _cleanup(s: Secure) -> None:
    """Leave a broker someone else runs as we found it: drop our topics and ACLs."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
    )

    admin = AdminClient(s.client("admin"))
    admin.delete_topics([s.topic, s.private])
    filters = [
        AclBindingFilter(
            kind, name, ResourcePatternType.PREFIXED, None, None, AclOperation.ANY, AclPermissionType.ANY
        )
        for kind, name in _alice_resources(s)
    ]
    for fut in admin.delete_acls(filters).values():
        fut.result(30)


def _read(consumer: dict, topics: tuple[str, ...], **kw) -> None:
    """A bounded read that must return exactly the records admin produced."""
    kw.setdefault("stop_at_end", True)
    with beam.Pipeline(options=FNAPI) as p:
        values = (
            p
            | ReadFromKafka(ReadConfig(consumer=consumer, topics=topics, **kw))
            | beam.Map(lambda r: r.value)
        )
        assert_that(values, equal_to(RECORDS))


def _failing_read(consumer: dict, topics: tuple[str, ...], **kw) -> tuple[str, float]:
    """Runs a bounded read that must fail; returns the error text and how long it took."""
    t0 = time.monotonic()
    with pytest.raises(Exception) as exc_info:
        with beam.Pipeline(options=FNAPI) as p:
            _ = p | ReadFromKafka(ReadConfig(consumer=consumer, topics=topics, stop_at_end=True, **kw))
    return str(exc_info.value), time.monotonic() - t0


# --- reading -------------------------------------------------------------------------------------------


def test_alice_reads_over_sasl_plaintext_with_password_from_env(secure_kafka, monkeypatch):
    s = secure_kafka
    monkeypatch.setenv("TEST_ALICE_KAFKA_PW", s.password("alice"))
    consumer = s.client("alice", password="${env:TEST_ALICE_KAFKA_PW}") | {"group.id": f"{s.prefix}.alice-1"}
    _read(consumer, (s.topic,))  # start=committed: the group's (empty) offsets are fetched, so its ACL counts


def test_alice_reads_over_sasl_ssl_with_the_ca_pem_and_password_from_file(secure_kafka):
    s = secure_kafka
    consumer = s.client("alice", password=f"${{file:{SECURE_DIR / 'alice.password'}}}", tls=True)
    _read(consumer | {"group.id": f"{s.prefix}.alice-2"}, (s.topic,), start="earliest")


def test_topic_without_read_acl_fails_naming_the_topic(secure_kafka):
    s = secure_kafka
    text, took = _failing_read(s.client("alice") | {"group.id": f"{s.prefix}.alice-3"}, (s.private,))
    assert f"not authorized to read topic '{s.private}' as 'alice'" in text
    assert "TOPIC_AUTHORIZATION_FAILED" in text
    assert took < 60


def test_group_without_acl_fails_naming_the_group(secure_kafka):
    s = secure_kafka
    group = f"{s.prefix}.other"
    text, took = _failing_read(s.client("alice") | {"group.id": group}, (s.topic,), start="committed")
    assert f"not authorized to use consumer group '{group}'" in text
    assert "GROUP_AUTHORIZATION_FAILED" in text
    assert took < 60  # one committed() timeout (10 s), not the 120 s retry budget


def test_wrong_password_fails_fast_and_the_password_is_never_shown(secure_kafka, caplog):
    s = secure_kafka
    wrong = f"wrong-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    text, took = _failing_read(
        s.client("alice", password=wrong) | {"group.id": f"{s.prefix}.alice-4"}, (s.topic,)
    )
    assert f"Kafka at {SASL_PLAINTEXT} as 'alice' refused the login: _AUTHENTICATION" in text
    assert "Invalid username or password" in text
    assert took < 60  # the metadata request's 10 s timeout, then the error_cb's diagnosis
    assert wrong not in text
    assert wrong not in caplog.text


# --- writing -------------------------------------------------------------------------------------------


def _high_watermarks(s: Secure, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(s.client("admin") | {"group.id": f"{s.prefix}.admin"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in sorted(parts)]
    finally:
        c.close()


def test_write_without_write_acl_fails_naming_the_topic(secure_kafka):
    s = secure_kafka
    before = _high_watermarks(s, s.topic)
    t0 = time.monotonic()
    with pytest.raises(Exception) as exc_info:
        with beam.Pipeline(options=FNAPI) as p:
            _ = p | beam.Create([KafkaMessage(s.topic, None, b"from bob")]) | WriteToKafka(s.client("bob"))
    assert f"records rejected: {s.topic}: Broker: Topic authorization failed" in str(exc_info.value)
    assert time.monotonic() - t0 < 60  # rejected at once, not retried for the 600 s budget
    assert _high_watermarks(s, s.topic) == before


def test_write_with_wrong_password_fails_fast(secure_kafka):
    s = secure_kafka
    wrong = f"wrong-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    with pytest.raises(Exception) as exc_info:
        with beam.Pipeline(options=FNAPI) as p:
            _ = (
                p
                | beam.Create([KafkaMessage(s.topic, None, b"x")])
                | WriteToKafka(s.client("alice", password=wrong))
            )
    text = str(exc_info.value)
    assert "as 'alice' refused the login: _AUTHENTICATION" in text
    assert wrong not in text
    assert time.monotonic() - t0 < 20  # not message.timeout.ms (300 s) and the 600 s retry budget


# --- operator CLI ----------------------------------------------------------------------------------------


def _lag(tmp_path: Path, s: Secure, user: str, password_ref: str, env: dict) -> subprocess.CompletedProcess:
    raw = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    raw["kafka"]["consumer"] = s.client(user, password=password_ref) | {"group.id": f"{s.prefix}.alice-lag"}
    raw["kafka"]["producer"] = s.client(user, password=password_ref)
    raw["source"].pop("topic_pattern", None)
    raw["source"]["topics"] = [s.topic]
    path = tmp_path / f"{user}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "lag", "--config", str(path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_lag_cli_with_sasl_settings_from_the_config(secure_kafka, tmp_path):
    s = secure_kafka
    proc = _lag(tmp_path, s, "alice", "${env:TEST_KAFKA_PW}", {"TEST_KAFKA_PW": s.password("alice")})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [t["topic"] for t in doc["topics"]] == [s.topic]
    assert doc["total_lag"] == len(RECORDS)

    bob_pw = s.password("bob")
    proc = _lag(tmp_path, s, "bob", "${env:TEST_KAFKA_PW}", {"TEST_KAFKA_PW": bob_pw})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"lag: not authorized to describe topic {s.topic}: TOPIC_AUTHORIZATION_FAILED"), err
    assert bob_pw not in proc.stdout + proc.stderr

    wrong = f"wrong-{uuid.uuid4().hex}"
    proc = _lag(tmp_path, s, "alice", wrong, {})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("lag: Kafka refused the login:"), err
    assert wrong not in proc.stdout + proc.stderr
