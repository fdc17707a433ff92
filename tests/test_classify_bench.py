"""bench.kernel at a tiny size: it runs, prints one JSON object with the agreed keys, loses nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")


def test_kernel_bench_smoke():
    args = ["--events", "3000", "--repeat", "1", "--re-events", "300", "--json"]
    proc = subprocess.run([PY, "-m", "bench.kernel", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # progress goes to stderr
    res = json.loads(lines[0])
    for key in ("events_per_s", "floor_events_per_s", "ratio", "re_events_per_s", "rules", "events", "python",
                "cpu"):
        assert key in res, key
    assert res["events"] == 3000 and res["rules"] > 300 and res["re_fallback_rules"] == 0
    assert res["accuracy"] == 1.0 and res["re_accuracy"] == 1.0  # Loghub labels, both engines
    assert res["events_per_s"] > 0 and res["floor_events_per_s"] > 0 and res["re_events_per_s"] > 0
    assert 0 < res["ratio"] < 2
    assert "[bench.kernel]" in proc.stderr
