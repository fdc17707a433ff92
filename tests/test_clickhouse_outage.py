"""The sink rides out a ClickHouse server outage: stop the real server while a pipeline writes, start it again
-> 0 rows lost, 0 duplicates under FINAL.

Runs a PRIVATE server (own ports and data dir, via scripts/clickhouse.sh env overrides) so stopping it never
disturbs the shared one other tests use. chdb has no equivalent (it lives in the writer's own process).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter

from tests.test_clickhouse import make_event
from transforms.clickhouse import WriteToClickHouse, connect, validate_clickhouse_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "clickhouse.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def private_server(tmp_path_factory):
    env = {**os.environ, "CLICKHOUSE_HTTP_PORT": str(_free_port()), "CLICKHOUSE_TCP_PORT": str(_free_port()),
           "CLICKHOUSE_RUN_DIR": str(tmp_path_factory.mktemp("ch-private"))}

    def sh(cmd: str) -> None:
        res = subprocess.run(["bash", str(SCRIPT), cmd], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"clickhouse.sh {cmd}: {res.stdout}\n{res.stderr}"

    sh("up")
    yield sh, f"clickhouse://default@127.0.0.1:{env['CLICKHOUSE_TCP_PORT']}"
    sh("down")


def _count(cfg) -> tuple[int, int, int]:
    client = connect(cfg)
    try:
        db = cfg.database
        raw = client.execute(f"SELECT count() FROM {db}.events")[0][0]
        final, uniq = client.execute(f"SELECT count(), uniqExact(event_id) FROM {db}.events FINAL")[0]
        return raw, final, uniq
    finally:
        client.close()


def _slow_events(start: int, n: int, chunk: int, delay_s: float):
    for i in range(start, min(start + chunk, n)):
        if i % 50 == 0:
            time.sleep(delay_s)  # a source that trickles: inserts spread over the run
        yield make_event(i)


def _start_pipeline(cfg, n: int, *, chunk: int, delay_s: float) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            p = beam.Pipeline(runner="FnApiRunner")
            _ = (p | beam.Create(list(range(0, n, chunk)))
                 | beam.FlatMap(_slow_events, n=n, chunk=chunk, delay_s=delay_s)
                 | WriteToClickHouse(cfg, "events"))
            result = p.run()
            result.wait_until_finish()
            box["retries"] = sum(c.committed for c in result.metrics().query(
                MetricsFilter().with_name("retries"))["counters"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


RETRY = {"max_attempts": 30, "initial_backoff_s": 0.2, "max_backoff_s": 2.0, "budget_s": 90}


@pytest.mark.slow
def test_server_stopped_mid_run_then_restarted(private_server):
    """In-bundle batching: inserts run all along; the server goes away for 30 s in the middle."""
    sh, url = private_server
    n = 6000
    cfg = validate_clickhouse_config({"url": url, "database": "outage_mid", "batch_rows": 200,
                                      "batching": "bundle", "retry": RETRY})
    th, box = _start_pipeline(cfg, n, chunk=1000, delay_s=0.1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "error" not in box:
        try:
            if _count(cfg)[0] > 0:
                break
        except Exception:  # noqa: BLE001 - schema not created yet
            pass
        time.sleep(0.2)
    before = _count(cfg)[0]
    assert 0 < before < n, f"the outage must hit mid-run (rows before: {before})"
    sh("down")
    time.sleep(30)  # the outage: 30 s, inside the retry budget (RETRY budget_s 90)
    sh("up")
    th.join(240)
    assert not th.is_alive(), "pipeline did not finish"
    assert "error" not in box, f"pipeline failed: {box.get('error')!r}"
    assert box["retries"] > 0, "the writer never saw the outage"
    raw, final, uniq = _count(cfg)
    assert (final, uniq) == (n, n), (raw, final, uniq)
    assert raw >= n


@pytest.mark.slow
def test_server_down_at_start_group_into_batches(private_server):
    """GroupIntoBatches path: the server is down when the first batches are due and comes back 5 s later."""
    sh, url = private_server
    n = 3000
    cfg = validate_clickhouse_config({"url": url, "database": "outage_start", "batch_rows": 500,
                                      "retry": RETRY})
    sh("down")
    th, box = _start_pipeline(cfg, n, chunk=1000, delay_s=0.0)
    time.sleep(5)
    sh("up")
    th.join(180)
    assert not th.is_alive(), "pipeline did not finish"
    assert "error" not in box, f"pipeline failed: {box.get('error')!r}"
    assert box["retries"] > 0
    raw, final, uniq = _count(cfg)
    assert (final, uniq) == (n, n) and raw >= n, (raw, final, uniq)
