"""`lag` and `dlq` against the real broker: produce, commit, dead-letter, then check what the commands say."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from tests.conftest import BOOTSTRAP, ROOT, create_topics, produce, read_all
from transforms.common import DECODE_ERROR, VALIDATION_ERROR, dead_letter, dead_letter_to_kafka


def _config(tmp_path, *, group: str, topics: list[str], dlq_topic: str, bootstrap: str = BOOTSTRAP) -> str:
    with open(ROOT / "config" / "default.yaml") as f:
        raw = yaml.safe_load(f)
    raw["kafka"]["consumer"]["bootstrap.servers"] = bootstrap
    raw["kafka"]["consumer"]["group.id"] = group
    raw["kafka"]["producer"]["bootstrap.servers"] = bootstrap
    raw["source"].pop("topic_pattern", None)
    raw["source"]["topics"] = topics
    raw["routes"]["dlq_topic"] = dlq_topic
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def cli_json(*args: str) -> dict:
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _commit(group: str, offsets: dict[tuple[str, int], int]) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.cli_ops import commit_offsets

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "enable.auto.commit": False})
    try:
        commit_offsets(c, [TopicPartition(t, p, o) for (t, p), o in offsets.items()])
    finally:
        c.close()


def test_lag_per_partition_with_totals(kafka, topic_prefix, tmp_path):
    a, b = f"{topic_prefix}.a", f"{topic_prefix}.b"
    create_topics([a], partitions=2)
    create_topics([b], partitions=1)
    produce(a, [b"x"] * 7, partition=0)
    produce(a, [b"y"] * 5, partition=1)
    produce(b, [b"z"] * 4, partition=0)
    group = f"{topic_prefix}-g"
    _commit(group, {(a, 0): 3, (b, 0): 4})  # a/1 never committed
    cfg = _config(tmp_path, group=group, topics=[a, b], dlq_topic=f"{topic_prefix}.dlq")

    doc = cli_json("lag", "--config", cfg)
    assert doc["group"] == group
    parts = {(p["topic"], p["partition"]): p for t in doc["topics"] for p in t["partitions"]}
    assert parts[(a, 0)] == {"topic": a, "partition": 0, "low": 0, "high": 7, "committed": 3, "lag": 4}
    assert parts[(a, 1)] == {"topic": a, "partition": 1, "low": 0, "high": 5, "committed": None, "lag": 5}
    assert parts[(b, 0)] == {"topic": b, "partition": 0, "low": 0, "high": 4, "committed": 4, "lag": 0}
    assert {t["topic"]: t["lag"] for t in doc["topics"]} == {a: 9, b: 0}
    assert doc["total_lag"] == 9

    # --group and --topic_pattern override the config; another group has everything outstanding.
    doc = cli_json("lag", "--config", cfg, "--group", f"{topic_prefix}-other", "--topic_pattern",
                   f"^{topic_prefix}\\.a$")
    assert [t["topic"] for t in doc["topics"]] == [a]
    assert doc["total_lag"] == 12

    table = cli("lag", "--config", cfg)
    assert table.returncode == 0, table.stderr
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in table.stdout.splitlines() if "│" in ln]
    assert [a, "1", "0", "5", "-", "5"] in rows  # no commit: shown as "-", lag = high - low
    assert [a, "0", "0", "7", "3", "4"] in rows
    assert ["TOTAL", "", "", "", "", "9"] in rows

    # --bootstrap overrides the config's servers: a config pointing nowhere still reports this broker.
    nowhere = _config(tmp_path, group=group, topics=[a, b], dlq_topic=f"{topic_prefix}.dlq",
                      bootstrap="127.0.0.1:1")
    assert cli_json("lag", "--config", nowhere, "--bootstrap", BOOTSTRAP)["total_lag"] == 9


def test_lag_unreachable_is_one_line_exit_2(tmp_path):
    cfg = _config(tmp_path, group="g", topics=["t"], dlq_topic="d", bootstrap="127.0.0.1:1")
    t0 = time.monotonic()
    proc = cli("lag", "--config", cfg, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "cannot reach Kafka at 127.0.0.1:1" in proc.stderr
    assert time.monotonic() - t0 < 40
    proc = cli("dlq", "count", "--config", cfg, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    # and a good config with --bootstrap pointing nowhere names the flag's address
    good = _config(tmp_path, group="g", topics=["t"], dlq_topic="d")
    proc = cli("dlq", "count", "--config", good, "--bootstrap", "127.0.0.1:1", timeout=60)
    assert proc.returncode == 2 and "127.0.0.1:1" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.fixture()
def dlq_setup(kafka, topic_prefix, tmp_path):
    """A DLQ topic with 5 dead letters (two codes) of records from two source topics."""
    src_a, src_b, dlq = f"{topic_prefix}.src.a", f"{topic_prefix}.src.b", f"{topic_prefix}.dlq"
    create_topics([src_a, src_b])
    create_topics([dlq], partitions=2)
    letters = [
        dead_letter(DECODE_ERROR, "not JSON: expected value", topic=src_a, partition=0, offset=10, index=None,
                    payload=b"\xff\xfenot json", key=b"k1", headers=(("traceparent", b"00-abc-def-01"),)),
        dead_letter(VALIDATION_ERROR, "missing app_id", topic=src_a, partition=0, offset=11, index=2,
                    payload=b'{"meta":{},"data":[1,2,3]}', key=None, headers=()),
        dead_letter(VALIDATION_ERROR, "duration_ms: expected number", topic=src_b, partition=0, offset=3,
                    index=0, payload=b'{"a":1}', key=b"k3", headers=(("h1", b"v1"), ("h2", b""))),
        dead_letter(DECODE_ERROR, "not UTF-8", topic=src_b, partition=0, offset=4, index=None,
                    payload=b"\x80", key=b"k4", headers=()),
        dead_letter("SINK_REJECTED", "ClickHouse refused", topic=src_b, partition=0, offset=5, index=0,
                    payload=b'{"event_id":"x"}', key=None, headers=(), stage="clickhouse"),
    ]
    for i, dl in enumerate(letters):
        dl["time"] = 1_700_000_000_000 + i * 1000
        key, value, headers = dead_letter_to_kafka(dl)
        produce(dlq, [value], headers=headers, key=key, partition=i % 2)
    cfg = _config(tmp_path, group=f"{topic_prefix}-g", topics=[src_a], dlq_topic=dlq)
    return cfg, dlq, letters, (src_a, src_b)


def test_dlq_count_peek_replay_clear(dlq_setup):
    cfg, dlq, letters, (src_a, src_b) = dlq_setup

    doc = cli_json("dlq", "count", "--config", cfg)
    assert doc["unreviewed"] == 5 and doc["group"] == f"{dlq}.reviewed"
    assert doc["by_code"] == {"DECODE_ERROR": 2, "VALIDATION_ERROR": 2, "SINK_REJECTED": 1}
    table = cli("dlq", "count", "--config", cfg)
    assert table.returncode == 0 and "5 unreviewed" in table.stdout and "VALIDATION_ERROR" in table.stdout

    # peek: the oldest 3 by dead-letter time, across partitions; nothing moves.
    doc = cli_json("dlq", "peek", "3", "--config", cfg)
    got = [(r["code"], r["topic"], r["offset"], r["index"]) for r in doc["letters"]]
    assert got == [(dl["code"], dl["topic"], dl["offset"], dl["index"]) for dl in letters[:3]]
    assert doc["letters"][1]["payload"] == '{"meta":{},"data":[1,2,3]}'
    assert doc["letters"][0]["reason"] == "not JSON: expected value"
    peek_table = cli("dlq", "peek", "2", "--config", cfg)
    assert peek_table.returncode == 0 and "missing app_id" in peek_table.stdout
    assert cli_json("dlq", "count", "--config", cfg)["unreviewed"] == 5

    # replay --dry-run produces nothing; a filtered replay only that code and time.
    dry = cli_json("dlq", "replay", "--dry-run", "--config", cfg)
    assert dry["would_replay"] == {src_a: 2, src_b: 2} and dry["skipped"]
    assert read_all(src_a) == [] and read_all(src_b) == []
    since = "2023-11-14T22:13:21"  # = 1_700_000_001_000: letters[1:] only
    doc = cli_json("dlq", "replay", "--code", "VALIDATION_ERROR", "--since", since, "--config", cfg)
    assert doc["replayed"] == {src_a: 1, src_b: 1} and doc["failed"] == {} and doc["delivered"] == 2
    a_records, b_records = read_all(src_a), read_all(src_b)
    assert len(a_records) == 1 and len(b_records) == 1
    for rec, dl in ((a_records[0], letters[1]), (b_records[0], letters[2])):
        assert rec.key() == dl["key"] and rec.value() == dl["payload"]
        hdrs = rec.headers() or []
        assert [h for h in hdrs if h[0] != "dlq.replayed_from"] == [(k, v) for k, v in dl["headers"]]
        replayed_from = [v for k, v in hdrs if k == "dlq.replayed_from"]
        assert len(replayed_from) == 1 and replayed_from[0].decode().startswith(f"{dlq}:")

    # full replay: everything but SINK_REJECTED, original bytes and headers; count is unchanged.
    doc = cli_json("dlq", "replay", "--config", cfg)
    assert doc["replayed"] == {src_a: 2, src_b: 2} and doc["delivered"] == 4
    assert sum(doc["skipped"].values()) == 1
    a_records = read_all(src_a)
    by_offset = {}
    for rec in a_records[1:]:
        by_offset[rec.value()] = rec
    assert by_offset[letters[0]["payload"]].key() == b"k1"
    hdrs = by_offset[letters[0]["payload"]].headers()
    assert hdrs[0] == ("traceparent", b"00-abc-def-01") and hdrs[1][0] == "dlq.replayed_from"
    assert cli_json("dlq", "count", "--config", cfg)["unreviewed"] == 5

    # clear: refused without --yes; with --upto-time only the first two; then the rest, audited.
    refused = cli("dlq", "clear", "--config", cfg)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert cli_json("dlq", "count", "--config", cfg)["unreviewed"] == 5
    first = cli_json("dlq", "clear", "--yes", "--upto-time", "1700000001000", "--config", cfg)
    assert first["count"] == 2 and first["by_code"] == {"DECODE_ERROR": 1, "VALIDATION_ERROR": 1}
    assert sorted((p["partition"], p["from"], p["to"]) for p in first["partitions"]) == [(0, 0, 1), (1, 0, 1)]
    left = cli_json("dlq", "count", "--config", cfg)
    assert left["unreviewed"] == 3 and left["by_code"] == {"VALIDATION_ERROR": 1, "DECODE_ERROR": 1,
                                                           "SINK_REJECTED": 1}
    second = cli("dlq", "clear", "--yes", "--config", cfg)
    assert second.returncode == 0, second.stderr
    assert "cleared 3 dead letters" in second.stdout
    assert cli_json("dlq", "count", "--config", cfg)["unreviewed"] == 0
    assert cli_json("dlq", "peek", "5", "--config", cfg)["letters"] == []

    audit = [json.loads(m.value()) for m in read_all(f"{dlq}.audit")]
    assert [a["count"] for a in audit] == [2, 3]
    last = audit[1]
    assert last["action"] == "clear" and last["group"] == f"{dlq}.reviewed" and last["who"]
    assert last["by_code"] == {"VALIDATION_ERROR": 1, "DECODE_ERROR": 1, "SINK_REJECTED": 1}
    assert sorted((p["partition"], p["from"], p["to"]) for p in last["partitions"]) == [(0, 1, 3), (1, 1, 2)]
    assert audit[0]["id"] == first["id"] and audit[0]["partitions"] == first["partitions"]

    # Nothing left: clear is a no-op and writes no audit record.
    assert cli_json("dlq", "clear", "--yes", "--config", cfg)["count"] == 0
    assert len(read_all(f"{dlq}.audit")) == 2


def test_dlq_missing_topic_is_clear_error(kafka, topic_prefix, tmp_path):
    cfg = _config(tmp_path, group="g", topics=["t"], dlq_topic=f"{topic_prefix}.nodlq")
    proc = cli("dlq", "count", "--config", cfg)
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and proc.stderr.count("\n") == 1
