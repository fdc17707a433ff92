"""The whole DAG against the real broker and chdb: records on the category topics, the DLQ topic and
rows in the ClickHouse tables must account for every produced event."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from pipeline.generate import PERF_MESSAGES, Generator
from tests.conftest import create_topics, produce, read_all, write_test_config
from transforms.common import dead_letter_from_kafka


def _write_config(tmp_path, prefix: str, chdb_path, batch_records: int) -> str:
    def mutate(raw):
        raw["source"]["batch_records"] = batch_records
        raw["sinks"]["clickhouse"]["url"] = f"chdb://{chdb_path}"
        raw["unpack"]["envelopes"] = [
            {"topic": r".*\.gamelogs", "envelope": "logs"},
            {"topic": r".*\.gateway", "envelope": "jsonl"},
        ]

    return write_test_config(tmp_path, mutate, prefix)


@pytest.mark.slow
# 1: one record per element; 37: lists of records through every stage (several lists per partition).
@pytest.mark.parametrize("batch_records", [1, 37])
def test_whole_dag_accounts_for_every_event(kafka, topic_prefix, tmp_path, batch_records):
    from pipeline.config import load_config
    from pipeline.run import run_pipeline
    from transforms.clickhouse_client import close_chdb, connect

    shapes = ("perf", "gamelogs", "gateway")
    topics = {s: f"{topic_prefix}.in.{s}" for s in shapes}
    create_topics(list(topics.values()), partitions=2)
    gen = Generator(seed=11)
    events = dead = 0
    expected_perf = Counter()
    by_topic: dict[str, list] = {t: [] for t in topics.values()}
    perf_text = {text: cat for cat, text in PERF_MESSAGES}
    for msg in gen.mix(400, malformed_share=0.05):
        by_topic[topics[msg.topic]].append(msg)
        events += msg.events
        dead += msg.dead
        if msg.topic == "perf" and msg.key:  # an upload envelope (malformed ones carry no key)
            for item in orjson.loads(msg.value)["data"]:
                if item["message"] in perf_text and item["duration_ms"] != "slow":
                    expected_perf[perf_text[item["message"]]] += 1
    for topic, msgs in by_topic.items():
        for m in msgs:
            produce(topic, [m.value], headers=m.headers or None, key=m.key)

    config = _write_config(tmp_path, topic_prefix, tmp_path / "chdb", batch_records)
    cfg = load_config(config)
    close_chdb()
    rc = run_pipeline(
        [
            f"--config={config}",
            f"--topic_pattern=^{topic_prefix}\\.in\\..*",
            "--stop_at_end",
            f"--group_id={topic_prefix}",
            "--runner=DirectRunner",
        ]
    )
    assert rc == 0

    # Kafka: every valid event on its category topic, every rejected one on the DLQ with a code.
    out = {}
    for cat in cfg.classify.categories():
        topic = f"{topic_prefix}.out.{cat}"
        try:
            out[cat] = read_all(topic)
        except KeyError:
            out[cat] = []
    classified = sum(len(v) for v in out.values())
    dlq = [dead_letter_from_kafka(m.key(), m.value(), m.headers()) for m in read_all(f"{topic_prefix}.dlq")]
    assert classified + len(dlq) == events
    assert len(dlq) >= dead
    assert all(d["code"] and d["reason"] and d["topic"] in topics.values() for d in dlq)
    # The known perf messages landed in their category (the rules in rules/default.yaml).
    got_perf = Counter()
    for cat, msgs in out.items():
        for m in msgs:
            ev = orjson.loads(m.value())
            if ev["fields"].get("message") in perf_text:
                got_perf[cat] += 1
                assert perf_text[ev["fields"]["message"]] == cat
    assert got_perf == expected_perf
    # Upload events carried a traceparent: the output has a child span of the same trace.
    traced = [m for msgs in out.values() for m in msgs if m.headers()]
    assert traced
    for m in traced[:50]:
        ev = orjson.loads(m.value())
        child = dict(m.headers())["traceparent"].decode()
        assert child.split("-")[1] == ev["traceparent"].split("-")[1]
        assert child.split("-")[2] != ev["traceparent"].split("-")[2]

    # ClickHouse: FINAL events == classified, aggregates count == classified, dead letters stored.
    client = connect(cfg.clickhouse)
    try:
        db = cfg.clickhouse.database
        assert client.execute(f"SELECT count() FROM {db}.events FINAL")[0][0] == classified
        assert client.execute(f"SELECT sum(count) FROM {db}.window_aggregates FINAL")[0][0] == classified
        assert client.execute(f"SELECT count() FROM {db}.dead_letters")[0][0] == len(dlq)
        codes = dict(client.execute(f"SELECT code, count() FROM {db}.dead_letters GROUP BY code"))
        assert codes == dict(Counter(d["code"] for d in dlq))
    finally:
        close_chdb()
