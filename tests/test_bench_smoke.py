"""Smoke test of bench.kafka_read and bench.e2e: they run at a tiny size against the real broker, print one
JSON object with the documented keys, and every reader counted exactly what was produced. Speed is not
asserted (a shared 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import BOOTSTRAP, ROOT

pytestmark = pytest.mark.timeout(300)


def _bench(kafka: str, *args: str, timeout: float = 240) -> dict:
    env = dict(os.environ, KAFKA_BOOTSTRAP=kafka, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", *args, "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got: {proc.stdout[-2000:]}"
    return json.loads(lines[0])


def test_kafka_read_smoke(kafka):
    out = _bench(kafka, "bench.kafka_read", "--events", "2000")
    for key in ("events_per_s", "floor_events_per_s", "ratio", "events_per_s_excl_startup", "ours", "floor",
                "machine", "target_met"):
        assert key in out, key
    assert out["ours"]["count"] == 2000
    assert out["floor"]["count"] == 2000
    assert out["ours"]["runner"] == "FnApiRunner"
    assert out["events_per_s"] > 0 and out["floor_events_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["events_per_s"] / out["floor_events_per_s"], rel=0.01)


def test_e2e_smoke_ours_only(kafka):
    out = _bench(kafka, "bench.e2e", "--events", "2000", "--peers", "none")
    assert out["events"] >= 2000
    assert out["count_ok"] is True and out["all_counts_ok"] is True
    ours = out["engines"]["ours"]
    assert ours["rc"] == 0
    assert ours["output_records"] == out["expected_output_records"]
    # every input event came out once: on a category topic or the DLQ
    assert sum(ours["per_topic"].values()) == out["expected_output_records"]
    assert out["input"]["expected_dead"] > 0  # the mix holds malformed records, and they were routed
    assert any(t.endswith(".dlq") for t in ours["per_topic"])
    assert out["rules"]["used"] <= out["rules"]["of"]
    for key in ("events_per_s", "events_per_cpu_s", "targets", "machine", "vs"):
        assert key in out, key
    assert out["vs"] == {}
    # the broker shares the machine: its CPU during ours' run is reported (it served ours' reads and writes)
    assert ours["server_cpu_s"]["broker"] > 0


def test_bench_bootstrap_is_loopback():
    assert BOOTSTRAP.startswith("127.0.0.1:")
