"""`flink` commands against the real cluster (./run.sh flink-up) and an unreachable URL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, _run_sh

FLINK_URL = "http://127.0.0.1:8081"


def _overview(timeout: float = 3.0) -> dict | None:
    try:
        with urllib.request.urlopen(FLINK_URL + "/overview", timeout=timeout) as resp:
            return json.loads(resp.read())
    except Exception:
        return None


@pytest.fixture(scope="session")
def flink() -> str:
    """The real Flink cluster; started with ./run.sh flink-up (about 20 s) when it does not answer."""
    if _overview() is None:
        _run_sh("flink-up", timeout=240)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ov = _overview()
        if ov and ov.get("taskmanagers", 0) >= 1:
            return FLINK_URL
        time.sleep(1)
    raise AssertionError("Flink REST did not report a task manager after ./run.sh flink-up")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "flink", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_unreachable_url_is_one_line_exit_2():
    for args in (["status"], ["jobs"], ["savepoint", "0" * 32], ["cancel", "0" * 32]):
        t0 = time.monotonic()
        proc = cli(*args, "--flink_url", "http://127.0.0.1:1")
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1
        assert "cannot reach Flink REST at http://127.0.0.1:1" in proc.stderr
        assert time.monotonic() - t0 < 30


def test_status_and_jobs(flink):
    proc = cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    truth = _overview()
    assert doc["version"] == truth["flink-version"]
    assert doc["taskmanagers"] == truth["taskmanagers"] >= 1
    assert doc["slots_total"] == truth["slots-total"] > 0
    assert doc["jobs_running"] == truth["jobs-running"]
    table = cli("status")
    assert table.returncode == 0 and f"Flink {truth['flink-version']} at {FLINK_URL}" in table.stdout
    assert "slots_total" in table.stdout

    proc = cli("jobs", "--json")
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)["jobs"]
    with urllib.request.urlopen(FLINK_URL + "/jobs/overview", timeout=5) as resp:
        truth_jobs = {j["jid"]: j for j in json.loads(resp.read())["jobs"]}
    # Read after the command: the cluster keeps finished jobs while it lives, so ours is a subset.
    assert {j["id"] for j in jobs} <= set(truth_jobs)
    for j in jobs:
        assert j["name"] == truth_jobs[j["id"]]["name"]
        assert j["start_ms"] == truth_jobs[j["id"]]["start-time"]
    table = cli("jobs")
    assert table.returncode == 0 and "jobs on " + FLINK_URL in table.stdout


def test_savepoint_and_cancel_of_unknown_job(flink):
    unknown = "0123456789abcdef0123456789abcdef"
    for args in (["savepoint", unknown], ["savepoint", unknown, "--stop", "--dir", "/tmp/sp"],
                 ["cancel", unknown]):
        proc = cli(*args)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"flink {args[0]}: job {unknown} not found on {FLINK_URL}"
    proc = cli("cancel", "not-a-job")
    assert proc.returncode == 1 and "is not a Flink job id" in proc.stderr


def test_savepoint_trigger_and_poll_report_flink_failure(flink):
    """The trigger/poll path against the real cluster: Flink accepts a trigger for any well-formed id and
    reports the failure through the poll, which must come out as one clear error."""
    from pipeline.cli_flink import Flink, FlinkError, trigger_savepoint, wait_savepoint

    unknown = "fedcba9876543210fedcba9876543210"
    client = Flink(flink)
    for stop in (False, True):
        rid = trigger_savepoint(client, unknown, "/tmp/h5-sp", stop)
        assert len(rid) == 32
        with pytest.raises(FlinkError) as exc:
            wait_savepoint(client, unknown, rid, timeout=30)
        assert str(exc.value) == (f"savepoint of job {unknown} FAILED: Could not find Flink job ({unknown}) "
                                  "(FlinkJobNotFoundException)")
