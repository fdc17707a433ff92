"""ClickHouse sink against a real server (Debian's 18.16, via scripts/clickhouse.sh) and real chdb (26.9).

Every sink test runs on both targets. chdb runs one embedded server per process and per path: each chdb test
gets a fresh temp path and closes the process-wide session afterwards, so the next test can open another.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that

from transforms.clickhouse import (
    WriteToClickHouse,
    close_chdb,
    connect,
    ensure_schema,
    table_stats,
    validate_clickhouse_config,
)
from transforms.clickhouse_client import DATA, FATAL, TRANSIENT, classify_error, error_text
from transforms.clickhouse_rows import TABLES
from transforms.clickhouse_schema import render_statements
from transforms.common import SINK_REJECTED, ConfigError, dead_letter

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "clickhouse.sh"
TCP_PORT = int(os.environ.get("CLICKHOUSE_TCP_PORT", "9000"))
T0 = 1_700_000_000_000  # ms


def script(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def clickhouse_server() -> str:
    """The real server (started by scripts/clickhouse.sh up when not running; left running for others)."""
    res = script("up")
    assert res.returncode == 0, f"clickhouse.sh up failed:\n{res.stdout}\n{res.stderr}"
    return f"clickhouse://default@127.0.0.1:{TCP_PORT}"


@pytest.fixture(params=["server", "chdb"])
def target(request, tmp_path):
    """A validated config for a fresh database: on the server (unique db name) or a fresh chdb path."""
    db = f"t_{uuid.uuid4().hex[:12]}"

    def make(**extra):
        if request.param == "server":
            url = request.getfixturevalue("clickhouse_server")
        else:
            url = f"chdb://{tmp_path}/chdb"
        return validate_clickhouse_config({"url": url, "database": db, **extra})

    yield make
    cfg = make()
    if request.param == "server":
        client = connect(cfg)
        client.execute(f"DROP DATABASE IF EXISTS `{db}`")
        client.close()
    else:
        close_chdb()


def make_event(i: int, *, topic: str = "t", version: int | None = None) -> dict:
    eid = hashlib.blake2b(f"{topic}:0:{i}:0".encode()).hexdigest()[:32]
    ev = {
        "event_id": eid, "event_time": T0 + i * 7, "ingest_time": T0 + 60_000, "app_id": f"app{i % 3}",
        "event_name": "crash", "platform": "android", "device_id": f"dev{i % 11}",
        "duration_ms": None if i % 2 else i / 4, "fields": {"message": f"boom {i} é", "stack": "at x"},
        "attrs": {"ip": "203.0.113.7", "n": i}, "traceparent": None, "src": [topic, 0, i, 0],
        "envelope": "upload", "category": "PERF_CRASH", "rule_id": f"r{i % 5}", "engine": "hyperscan",
    }
    if version is not None:
        ev["version"] = version
    return ev


def gen_events(n: int, chunk: int = 1000, **kw):
    """A PTransform source of n events, generated in the workers (beam.Create of big lists is slow)."""
    starts = list(range(0, n, chunk))
    return beam.Create(starts) | beam.FlatMap(
        lambda s: [make_event(i, **kw) for i in range(s, min(s + chunk, n))])


def run(build, *, check_dlq=None):
    """Run a pipeline on FnApiRunner; build(p) returns the sink's dead-letter PCollection."""
    p = beam.Pipeline(runner="FnApiRunner")
    dlq = build(p)
    if check_dlq is not None:
        assert_that(dlq, check_dlq)
    result = p.run()
    result.wait_until_finish()
    return result


def counter(result, name: str) -> int:
    res = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in res)


def dist(result, name: str):
    res = result.metrics().query(MetricsFilter().with_name(name))["distributions"]
    return [d.committed for d in res]


def expect_empty(dl):
    assert list(dl) == [], f"unexpected dead letters: {list(dl)[:3]}"


def q1(cfg, sql: str):
    client = connect(cfg)
    try:
        return client.execute(sql)
    finally:
        client.close()


# --- config ------------------------------------------------------------------------------------------------

def test_config_defaults_and_errors(tmp_path, monkeypatch):
    cfg = validate_clickhouse_config(None)
    assert (cfg.kind, cfg.database, cfg.batch_rows, cfg.max_buffer_s, cfg.shards) == \
        ("chdb", "perf", 50000, 1.0, 2)
    assert cfg.path == os.path.abspath(".run/chdb")
    assert (cfg.retry.max_attempts, cfg.retry.initial_backoff_s, cfg.retry.max_backoff_s,
            cfg.retry.budget_s) == (8, 0.2, 10.0, 60.0)
    assert cfg.insert_dedup_token is True

    srv = validate_clickhouse_config({"url": "clickhouse://writer@db.local:9440/analytics",
                                      "password_env": "CH_PW"})
    assert (srv.kind, srv.host, srv.port, srv.user, srv.database) == ("native", "db.local", 9440, "writer",
                                                                      "analytics")
    bad = [
        ({"urll": "x"}, "sinks.clickhouse.urll"),
        ({"url": "http://x"}, "sinks.clickhouse.url"),
        ({"url": "clickhouse://u:secret@h:9000"}, "sinks.clickhouse.url"),
        ({"batch_rows": 0}, "sinks.clickhouse.batch_rows"),
        ({"batch_rows": "10"}, "sinks.clickhouse.batch_rows"),
        ({"max_buffer_s": -1}, "sinks.clickhouse.max_buffer_s"),
        ({"shards": True}, "sinks.clickhouse.shards"),
        ({"database": "a-b"}, "sinks.clickhouse.database"),
        ({"retry": {"max_attempts": 0}}, "sinks.clickhouse.retry.max_attempts"),
        ({"retry": {"initial_backoff_s": 5, "max_backoff_s": 1}}, "sinks.clickhouse.retry.max_backoff_s"),
        ({"retry": {"jitter": 1}}, "sinks.clickhouse.retry.jitter"),
        ({"insert_dedup_token": "yes"}, "sinks.clickhouse.insert_dedup_token"),
        ({"batching": "magic"}, "sinks.clickhouse.batching"),
    ]
    for section, key in bad:
        with pytest.raises(ConfigError) as err:
            validate_clickhouse_config(section)
        assert err.value.key == key, (section, err.value)

    # The password is read at connect time, from env or file, and is never part of the config object.
    monkeypatch.setenv("CH_PW", "s3cret")
    assert srv.resolve_password() == "s3cret" and "s3cret" not in repr(srv)
    pw = tmp_path / "pw"
    pw.write_text("filepw\n")
    fcfg = validate_clickhouse_config({"url": "clickhouse://u@h", "password_file": str(pw)})
    assert fcfg.resolve_password() == "filepw" and "filepw" not in repr(fcfg)
    monkeypatch.delenv("CH_PW")
    with pytest.raises(ConfigError) as err:
        srv.resolve_password()
    assert err.value.key == "sinks.clickhouse.password_env"


def test_event_row_fast_and_lenient_paths():
    from transforms.clickhouse_rows import EVENTS, event_row

    e = make_event(3)
    row = event_row(e)
    assert len(row) == len(EVENTS.columns)
    got = dict(zip(EVENTS.columns, row, strict=True))
    assert got["event_time"] == e["event_time"] // 1000 and got["message"] == "boom 3 é"
    assert (got["src_topic"], got["src_offset"], got["version"]) == ("t", 3, e["ingest_time"])
    # Foreign shapes (missing optional keys, non-str JSON keys) take the slow path instead of failing.
    odd = event_row({"event_id": "x", "event_time": 1500, "attrs": {1: 2}, "fields": {"content": "c"}})
    odd = dict(zip(EVENTS.columns, odd, strict=True))
    assert (odd["attrs"], odd["message"], odd["src_offset"], odd["app_id"]) == ('{"1":2}', "c", -1, "")
    with pytest.raises(KeyError):
        event_row({"event_time": 1500})


def test_chunking_never_exceeds_batch_rows():
    from transforms.clickhouse import MAX_CHUNK_ROWS, chunking

    for batch_rows in (1, 2, 24, 25, 26, 100, 999, 1000, 50_000, 123_457):
        chunk_rows, per_batch = chunking(batch_rows)
        assert 1 <= chunk_rows <= MAX_CHUNK_ROWS and per_batch >= 1
        assert chunk_rows * per_batch <= batch_rows < chunk_rows * (per_batch + 1)


# --- schema ------------------------------------------------------------------------------------------------

def test_schema_matches_row_layouts(target):
    """sql/*.sql applied to the real target has exactly the columns and types the sink inserts."""
    cfg = target()
    ensure_schema(cfg, force=True)
    ensure_schema(cfg, force=True)  # idempotent
    for name, layout in TABLES.items():
        cols = q1(cfg, f"DESCRIBE TABLE `{cfg.database}`.`{name}`")  # system.columns has no position on 18.16
        assert tuple(c[0] for c in cols) == layout.columns, name
        assert tuple(c[1] for c in cols) == layout.types, name
    engines = dict(q1(cfg, f"SELECT name, engine FROM system.tables WHERE database = '{cfg.database}'"))
    assert engines == {"events": "ReplacingMergeTree", "window_aggregates": "ReplacingMergeTree",
                       "dead_letters": "MergeTree"}


def test_ddl_differs_only_in_dedup_settings():
    old = render_statements("perf", (18, 16, 1))
    new = render_statements("perf", (26, 9, 2))
    assert len(old) == len(new) == 4
    assert not any("SETTINGS" in s for s in old)
    assert all("non_replicated_deduplication_window" in s for s in new[1:])


# --- sink --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_events_written_once_per_batch_and_replay_invisible(target):
    n, batch = 5000, 1000
    cfg = target(batch_rows=batch, shards=2)
    result = run(lambda p: p | gen_events(n) | WriteToClickHouse(cfg, "events"), check_dlq=expect_empty)
    db = cfg.database
    assert q1(cfg, f"SELECT count(), uniqExact(event_id) FROM {db}.events FINAL") == [(n, n)]
    # One INSERT per batch: the batches metric counts client inserts; 2 shards of 2500 rows -> 3 + 3.
    assert counter(result, "rows_inserted") == n
    batches = counter(result, "batches")
    assert math.ceil(n / batch) <= batches <= math.ceil(n / batch) + cfg.shards
    sizes = dist(result, "batch_size")
    assert sum(d.count for d in sizes) == batches and max(d.max for d in sizes) <= batch
    if cfg.kind == "native":
        client = connect(cfg)
        client.execute("SYSTEM FLUSH LOGS")
        inserts = client.execute(f"SELECT count() FROM system.query_log WHERE type = 2 "
                                 f"AND query LIKE 'INSERT INTO `{db}`.`events`%'")
        assert inserts == [(batches,)]

    # Content survives the round trip.
    row = q1(cfg, f"SELECT event_time_ms, toUnixTimestamp(event_time), message, fields, attrs, duration_ms, "
                  f"src_topic, src_offset, version, category, rule_id FROM {db}.events FINAL "
                  f"WHERE event_id = '{make_event(42)['event_id']}'")
    e = make_event(42)
    assert row[0][0] == e["event_time"] and row[0][1] == e["event_time"] // 1000
    assert row[0][2] == "boom 42 é" and orjson.loads(row[0][3]) == e["fields"]
    assert orjson.loads(row[0][4]) == e["attrs"] and row[0][5] == 10.5
    assert row[0][6:] == ("t", 42, e["ingest_time"], "PERF_CRASH", "r2")
    assert q1(cfg, f"SELECT duration_ms FROM {db}.events WHERE event_id = '{make_event(43)['event_id']}'") \
        == [(None,)]

    # Replay of the same input (new batches, same event ids): FINAL unchanged.
    run(lambda p: p | gen_events(n) | WriteToClickHouse(cfg, "events"), check_dlq=expect_empty)
    assert q1(cfg, f"SELECT count(), uniqExact(event_id) FROM {db}.events FINAL") == [(n, n)]
    # A newer version of some events replaces the old rows under FINAL, still one row per id.
    run(lambda p: p | gen_events(100, version=T0 + 120_000) | WriteToClickHouse(cfg, "events"),
        check_dlq=expect_empty)
    assert q1(cfg, f"SELECT count(), countIf(version = {T0 + 120_000}) FROM {db}.events FINAL") == [(n, 100)]


def test_bundle_batching_fallback(target):
    n = 3000
    cfg = target(batch_rows=700, batching="bundle")
    result = run(lambda p: p | gen_events(n) | WriteToClickHouse(cfg, "events"), check_dlq=expect_empty)
    assert q1(cfg, f"SELECT count(), uniqExact(event_id) FROM {cfg.database}.events FINAL") == [(n, n)]
    assert counter(result, "rows_inserted") == n
    assert max(d.max for d in dist(result, "batch_size")) <= 700


def _varied_events() -> list[tuple[dict, tuple]]:
    """(event, expected events row read back) pairs: non-ASCII, empty and missing optional fields, None and
    odd durations, 64-bit extremes, nested attrs, the message fallbacks, and the lenient path. The expected
    rows are written out here (JSON by the json module), not computed by the sink's converters."""
    def j(obj) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    base = {"envelope": "upload", "category": "PERF_CRASH", "rule_id": "r1", "engine": "hyperscan",
            "app_id": "app", "event_name": "crash", "platform": "android", "device_id": "dev"}
    fields_a = {"message": "ошибка 😀 at ü\u2028x \"q\" \\ \n", "stack": "日本"}
    attrs_a = {"nested": {"list": [1, -2, {"deep": None}], "t": True, "f": False}, "é": "ü", "": ""}
    big_fields = {"content": "c", "n": 2**63 - 1, "m": -2**63}
    big_attrs = {"big": 2**64 - 1, "small": -1, "zero": 0}
    cases = [
        ({**base, "event_id": "a1", "event_time": T0 + 123, "ingest_time": T0 + 5000, "app_id": "приложение",
          "event_name": "краш", "platform": "ios", "device_id": "dév-1", "duration_ms": 12.5,
          "fields": fields_a, "attrs": attrs_a, "traceparent": tp, "src": ["tópic", 3, 17, 2],
          "category": "PERF_ANR", "rule_id": "r-ü", "engine": "re"},
         ("a1", (T0 + 123) // 1000, T0 + 123, T0 + 5000, "приложение", "краш", "ios", "dév-1", "PERF_ANR",
          "r-ü", "re", 12.5, fields_a["message"], j(fields_a), j(attrs_a), tp, "tópic", 3, 17, 2, T0 + 5000)),
        # Empty strings and dicts; duration_ms and traceparent keys absent; no version: version = ingest.
        ({"event_id": "b2", "event_time": T0, "ingest_time": T0 + 1, "app_id": "", "event_name": "",
          "platform": "", "device_id": "", "category": "", "rule_id": "", "engine": "", "fields": {},
          "attrs": {}, "src": ["t", 0, 0, 0]},
         ("b2", T0 // 1000, T0, T0 + 1, "", "", "", "", "", "", "", None, "", "{}", "{}", "", "t", 0, 0, 0,
          T0 + 1)),
        # 64-bit extremes; DateTime near its end (2100); explicit None duration and traceparent.
        ({**base, "event_id": "c3", "event_time": 4_102_444_800_123, "ingest_time": 2**63,
          "duration_ms": None, "fields": big_fields, "attrs": big_attrs, "traceparent": None,
          "src": ["t", 2**31 - 1, 2**63 - 1, 2**31 - 1], "version": 2**64 - 1},
         ("c3", 4_102_444_800, 4_102_444_800_123, 2**63, "app", "crash", "android", "dev", "PERF_CRASH", "r1",
          "hyperscan", None, "c", j(big_fields), j(big_attrs), "", "t", 2**31 - 1, 2**63 - 1, 2**31 - 1,
          2**64 - 1)),
        # message: first text field when neither message nor content; "" falls through to content; "" when
        # the first field is not text.
        ({**base, "event_id": "d4", "event_time": T0 + 1, "ingest_time": T0 + 2, "duration_ms": 0.0,
          "fields": {"level": "WARN", "code": 7}, "attrs": {"a": "b"}, "src": ["t", 1, 2, 3], "version": 5},
         ("d4", T0 // 1000, T0 + 1, T0 + 2, "app", "crash", "android", "dev", "PERF_CRASH", "r1", "hyperscan",
          0.0, "WARN", '{"level":"WARN","code":7}', '{"a":"b"}', "", "t", 1, 2, 3, 5)),
        ({**base, "event_id": "e5", "event_time": T0 + 2, "ingest_time": T0 + 3, "duration_ms": -0.25,
          "fields": {"message": "", "content": "fallback"}, "attrs": {}, "src": ["t", 1, 3, 0]},
         ("e5", T0 // 1000, T0 + 2, T0 + 3, "app", "crash", "android", "dev", "PERF_CRASH", "r1", "hyperscan",
          -0.25, "fallback", '{"message":"","content":"fallback"}', "{}", "", "t", 1, 3, 0, T0 + 3)),
        ({**base, "event_id": "f6", "event_time": T0 + 3, "ingest_time": T0 + 4, "duration_ms": 1 / 3,
          "fields": {"x": 1, "y": "s"}, "attrs": {"k": [1e300]}, "src": ["t", 1, 4, 0]},
         ("f6", T0 // 1000, T0 + 3, T0 + 4, "app", "crash", "android", "dev", "PERF_CRASH", "r1", "hyperscan",
          1 / 3, "", '{"x":1,"y":"s"}', j({"k": [1e300]}), "", "t", 1, 4, 0, T0 + 4)),
        # Lenient path: non-str JSON keys, missing ingest_time/src/strings, a None string.
        ({"event_id": "g7", "event_time": 1500, "app_id": None, "fields": {"content": "cc"},
          "attrs": {1: "x", "k": {2: None}}, "duration_ms": 1e300},
         ("g7", 1, 1500, 0, "", "", "", "", "", "", "", 1e300, "cc", '{"content":"cc"}',
          '{"1":"x","k":{"2":null}}', "", "", -1, -1, -1, 0)),
    ]
    return cases


def test_rows_in_clickhouse_exactly_as_expected(target):
    """Varied events through the sink (as one list element and as single dicts), read back column by column
    from the real target and compared with rows written out by hand."""
    cfg = target(batch_rows=1000)
    cases = _varied_events()
    singles = [({**e, "event_id": "s-" + e["event_id"]}, ("s-" + row[0], *row[1:])) for e, row in cases]
    bad = {"src": ["t", 0, 99, 0]}  # no event_id: a conversion dead letter, the rest is written

    def check(dls):
        dls = list(dls)
        assert len(dls) == 2 and all(d["offset"] == 99 and "KeyError" in d["reason"] for d in dls), dls

    run(lambda p: (
        (p | "List" >> beam.Create([[e for e, _ in cases] + [bad]]),
         p | "Singles" >> beam.Create([e for e, _ in singles] + [bad]))
        | beam.Flatten() | WriteToClickHouse(cfg, "events")), check_dlq=check)
    cols = ", ".join("toUnixTimestamp(event_time)" if c == "event_time" else f"`{c}`"
                     for c in TABLES["events"].columns)
    got = q1(cfg, f"SELECT {cols} FROM `{cfg.database}`.events ORDER BY event_id")
    expected = sorted((row for _, row in cases + singles), key=lambda r: r[0].encode())
    assert [tuple(r) for r in got] == expected


def make_aggregates():
    out = []
    for w in range(4):
        for cat in ("PERF_CRASH", "PERF_LAG"):
            for pane_index, pane in enumerate(("EARLY", "ON_TIME", "LATE")):
                out.append({
                    "window_start": T0 + w * 60_000, "window_end": T0 + (w + 1) * 60_000, "category": cat,
                    "app_id": "app", "count": 10 * (pane_index + 1), "distinct_devices": 3 + pane_index,
                    "p50": 1.5 * (pane_index + 1), "p95": None if cat == "PERF_CRASH" else 9.5, "max": 12.0,
                    "pane": pane, "pane_index": pane_index, "version": pane_index + 1,
                })
    return out


def test_window_aggregates_last_pane_wins(target):
    cfg = target(batch_rows=5)
    aggs = make_aggregates()
    run(lambda p: p | beam.Create(aggs) | WriteToClickHouse(cfg, "window_aggregates"), check_dlq=expect_empty)
    db = cfg.database
    rows = q1(cfg, f"SELECT window_start_ms, category, count, distinct_devices, pane, pane_index, p50, p95 "
                   f"FROM {db}.window_aggregates FINAL ORDER BY window_start_ms, category")
    assert len(rows) == 8
    for r in rows:
        assert r[2:7] == (30, 5, "LATE", 2, 4.5)
        assert r[7] == (None if r[1] == "PERF_CRASH" else 9.5)
    # Replay: unchanged under FINAL.
    run(lambda p: p | beam.Create(aggs) | WriteToClickHouse(cfg, "window_aggregates"), check_dlq=expect_empty)
    assert q1(cfg, f"SELECT count() FROM {db}.window_aggregates FINAL") == [(8,)]


def test_dead_letters_table(target):
    cfg = target()
    dls = [dead_letter("DECODE_ERROR", f"bad json {i}", topic="in", partition=1, offset=i, index=None,
                       payload=b"\xff{" + str(i).encode(), key=b"k") for i in range(50)]
    dls.append(dead_letter("EMPTY", "null value", topic=None, partition=None, offset=None, payload=None))
    run(lambda p: p | beam.Create(dls) | WriteToClickHouse(cfg, "dead_letters"), check_dlq=expect_empty)
    db = cfg.database
    assert q1(cfg, f"SELECT count(), countIf(code = 'DECODE_ERROR') FROM {db}.dead_letters") == [(51, 50)]
    rows = q1(cfg, f"SELECT hex(payload), hex(key), `index`, stage FROM {db}.dead_letters WHERE `offset` = 7")
    assert rows == [((b"\xff{7").hex().upper(), "6B", -1, "unpack")]
    rows = q1(cfg, f"SELECT topic, `partition`, `offset`, payload FROM {db}.dead_letters "
                   f"WHERE code = 'EMPTY'")
    assert rows == [("", -1, -1, "")]


GUARD_MS = T0 + 10_000_000  # rows with a later event_time are refused by the server-side guard below


def _guarded_events_table(cfg) -> None:
    """The events table plus a server-side check (a MATERIALIZED throwIf, on 18.16 and 26.9 alike), so the
    server itself refuses some rows; the sink's column list does not name the extra column."""
    ddl = next(s for s in render_statements(cfg.database, connect(cfg).version) if "`events`" in s)
    ddl = ddl.replace("`version` UInt64\n)", f"`version` UInt64,\n    `_guard` UInt8 MATERIALIZED "
                                             f"throwIf(`event_time_ms` > {GUARD_MS})\n)")
    assert "_guard" in ddl
    q1(cfg, f"CREATE DATABASE IF NOT EXISTS `{cfg.database}`")
    q1(cfg, ddl)


@pytest.mark.slow
def test_rejected_rows_come_back_as_dead_letters(target):
    cfg = target(batch_rows=400, shards=1)
    _guarded_events_table(cfg)
    n = 1000
    server_bad = {17, 503, 999}        # the server's throwIf refuses them
    client_bad = {250}                 # event_time beyond DateTime: the client encoder refuses it
    events = [make_event(i) for i in range(n)]
    for i in server_bad:
        events[i]["event_time"] = GUARD_MS + 1000
    for i in client_bad:
        events[i]["event_time"] = 2**33 * 1000  # beyond DateTime: the client cannot encode it
    events.append({"no_event_id": True, "src": ["t", 0, 5000, 0]})  # cannot even become a row

    bad_ids = {events[i]["event_id"] for i in server_bad | client_bad}

    def check(dls):
        dls = list(dls)
        assert len(dls) == len(bad_ids) + 1, dls
        assert all(d["code"] == SINK_REJECTED and d["stage"] == "clickhouse" for d in dls)
        conv = [d for d in dls if d["reason"].startswith("row conversion")]
        assert len(conv) == 1 and conv[0]["offset"] == 5000 and "KeyError" in conv[0]["reason"]
        rows = {orjson.loads(d["payload"])["event_id"]: d for d in dls if d not in conv}
        assert set(rows) == bad_ids
        for i in server_bad:
            d = rows[events[i]["event_id"]]
            assert "throwIf" in d["reason"] and d["reason"].startswith("Code: 395"), d["reason"]
            assert (d["topic"], d["partition"], d["offset"], d["index"]) == ("t", 0, i, 0)
        for i in client_bad:
            assert rows[events[i]["event_id"]]["reason"], "client-side rejection needs a reason"

    result = run(lambda p: p | beam.Create(events) | WriteToClickHouse(cfg, "events"), check_dlq=check)
    good = n - len(bad_ids)
    assert q1(cfg, f"SELECT count(), uniqExact(event_id) FROM {cfg.database}.events FINAL") == [(good, good)]
    assert counter(result, "rejected_rows") == len(bad_ids) + 1
    assert counter(result, "rows_inserted") == good


@pytest.mark.slow
def test_streaming_group_into_batches_on_prism(target):
    """GroupIntoBatches (state + processing-time timers) in a streaming pipeline on Prism."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream

    prism = ROOT / ".cache" / "bin" / "prism"
    assert prism.exists(), "Prism is built by ./run.sh setup prism"
    cfg = target(batch_rows=100, max_buffer_s=0.5)
    ts = TestStream()
    for k in range(5):
        ts = ts.add_elements([make_event(i) for i in range(k * 150, (k + 1) * 150)])
        ts = ts.advance_processing_time(1).advance_watermark_to(k + 1)
    ts = ts.advance_watermark_to_infinity()
    opts = PipelineOptions(["--runner=PrismRunner", f"--prism_location={prism}",
                            "--environment_type=LOOPBACK"])
    opts.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=opts) as p:
        assert_that(p | ts | WriteToClickHouse(cfg, "events"), expect_empty)
    assert q1(cfg, f"SELECT count(), uniqExact(event_id) FROM {cfg.database}.events FINAL") == [(750, 750)]


# --- error classification on real errors -----------------------------------------------------------------

def test_error_classification_on_real_errors(clickhouse_server):
    from clickhouse_driver import Client

    with pytest.raises(Exception) as refused:
        Client(host="127.0.0.1", port=1, connect_timeout=2).execute("SELECT 1")
    assert classify_error(refused.value) == TRANSIENT
    c = Client(host="127.0.0.1", port=TCP_PORT)
    with pytest.raises(Exception) as missing:
        c.execute("INSERT INTO nodb_x.nothing (a) VALUES", [(1,)])
    assert classify_error(missing.value) == FATAL
    with pytest.raises(Exception) as thrown:
        c.execute("SELECT throwIf(1)")
    assert classify_error(thrown.value) == DATA
    assert "Stack trace" not in error_text(thrown.value) and error_text(thrown.value).startswith("Code: 395")


def test_server_error_codes_classified():
    from chdb._exceptions import ChdbError
    from clickhouse_driver.errors import ServerException

    assert classify_error(ServerException("DB::Exception: Too many parts (300)", code=252)) == TRANSIENT
    assert classify_error(ChdbError("Code: 252. DB::Exception: Too many parts")) == TRANSIENT
    assert classify_error(ChdbError("Code: 469. DB::Exception: Constraint violated")) == DATA
    assert classify_error(ChdbError("Code: 60. DB::Exception: Unknown table")) == FATAL
    assert classify_error(ConfigError("sinks.clickhouse.password_env", "not set")) == FATAL
    assert classify_error(OverflowError("can't convert negative value to unsigned int")) == DATA


def test_retry_budget_exhausted_raises_for_the_runner():
    """Transient errors are retried with backoff; when attempts run out the batch fails loudly (the runner
    then retries the bundle), it is never dropped or dead-lettered."""
    from transforms.clickhouse import BatchWriter
    from transforms.clickhouse_rows import EVENTS

    cfg = validate_clickhouse_config({"url": "clickhouse://default@127.0.0.1:1/perf", "timeout_s": 2,
                                      "retry": {"max_attempts": 4, "initial_backoff_s": 0.05,
                                                "max_backoff_s": 0.1, "budget_s": 10}})
    slept = []

    def sleep(s):
        slept.append(s)

    writer = BatchWriter(cfg, EVENTS, sleep=sleep)
    with pytest.raises(RuntimeError) as err:
        writer.write([EVENTS.to_row(make_event(1))])
    assert "failed after 4 attempts" in str(err.value) and "Connection refused" in str(err.value)
    assert len(slept) == 3 and all(0.025 <= s <= 0.1 for s in slept) and slept[0] <= 0.05


# --- CLI ---------------------------------------------------------------------------------------------------

def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "clickhouse", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_init_and_stats_chdb(tmp_path):
    url = f"chdb://{tmp_path}/db"
    res = cli("init", "--url", url)
    assert res.returncode == 0, res.stderr
    assert "schema ready" in res.stdout and "26." in res.stdout
    cfg = validate_clickhouse_config({"url": url})
    try:
        run(lambda p: p | gen_events(300) | WriteToClickHouse(cfg, "events"), check_dlq=expect_empty)
        run(lambda p: p | gen_events(300) | WriteToClickHouse(cfg, "events"), check_dlq=expect_empty)
        stats = {t["table"]: t for t in table_stats(connect(cfg))}
        assert stats["events"]["final_rows"] == 300
        # While this process holds the chdb path, another process cannot open it: one clear line, exit 2.
        res = cli("stats", "--url", url)
        assert res.returncode == 2 and "in use by another process" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        close_chdb()
    res = cli("stats", "--url", url, "--json")
    assert res.returncode == 0, res.stderr
    out = orjson.loads(res.stdout)
    ev = next(t for t in out["tables"] if t["table"] == "events")
    assert out["database"] == "perf" and ev["final_rows"] == 300 and ev["rows"] >= 300 and ev["parts"] >= 1
    assert ev["last_insert"]


def test_ensure_schema_releases_the_chdb_path_it_opened(tmp_path):
    """The launcher creates the schema, then the workers (maybe other processes) must be able to lock it."""
    url = f"chdb://{tmp_path}/db"
    ensure_schema(validate_clickhouse_config({"url": url}))
    res = cli("stats", "--url", url, "--json")
    assert res.returncode == 0, res.stderr
    assert {t["table"] for t in orjson.loads(res.stdout)["tables"] if t["exists"]} == set(TABLES)


def test_cli_default_url_is_run_chdb(tmp_path):
    res = cli("init", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / ".run" / "chdb").is_dir()


def test_cli_server_and_unreachable(clickhouse_server, tmp_path):
    db = f"t_{uuid.uuid4().hex[:12]}"
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text(f"sinks:\n  clickhouse:\n    url: {clickhouse_server}/{db}\n    batch_rows: 10\n")
    res = cli("init", "--config", str(cfg_file))
    assert res.returncode == 0 and "18.16" in res.stdout, res.stderr
    res = cli("stats", "--config", str(cfg_file))
    assert res.returncode == 0 and "events" in res.stdout
    try:
        res = cli("stats", "--url", "clickhouse://default@127.0.0.1:1/perf")
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Connection refused" in lines[0], res.stderr
        res = cli("init", "--url", "mysql://x")
        assert res.returncode == 2 and "sinks.clickhouse.url" in res.stderr
    finally:
        q1(validate_clickhouse_config({"url": clickhouse_server, "database": db}), f"DROP DATABASE `{db}`")


def test_script_up_is_idempotent(clickhouse_server):
    res = script("up")
    assert res.returncode == 0 and "already running" in res.stderr, res.stderr
    res = script("status")
    assert res.returncode == 0 and res.stdout.startswith("running")
