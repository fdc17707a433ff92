"""Every Loghub set: template rules classify its labeled Content lines, identically on both engines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
LOGHUB = (ROOT / ".." / "shared" / "data" / "loghub").resolve()


def _sets() -> list[Path]:
    # Fail loudly (at collection) rather than silently testing nothing.
    assert LOGHUB.is_dir(), f"Loghub data missing: {LOGHUB} (expected at ../shared/data/loghub from the repo)"
    sets = sorted(d for d in LOGHUB.iterdir() if d.is_dir())
    assert sets, f"no Loghub sets under {LOGHUB}"
    return sets


SETS = _sets()


def test_all_eight_sets_present():
    assert {d.name for d in SETS} >= {"Android", "Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "Spark",
                                      "Zookeeper"}


@pytest.mark.parametrize("set_dir", SETS, ids=[d.name for d in SETS])
def test_loghub_set_eval(set_dir: Path):
    templates = sorted(set_dir.glob("*_templates.csv"))
    labeled = sorted(set_dir.glob("*_structured.csv"))
    assert len(templates) == 1 and len(labeled) == 1, f"{set_dir}: need one templates and one structured CSV"
    proc = subprocess.run([PY, "-m", "pipeline", "rules", "eval", "--templates", str(templates[0]),
                           "--labeled", str(labeled[0]), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["lines"] == 2000
    assert res["accuracy"]["hyperscan"] >= 0.999, res["misses"][:5]
    assert res["accuracy"]["re"] >= 0.999, res["misses"][:5]
    assert res["agreement"] == 1.0
    assert res["re_fallback_rules"] == 0  # template rules are plain literals and wildcards


def test_all_sets_together_still_classify():
    """All templates files compete in one rule set (as in the benchmark): still right, still agreeing."""
    args = []
    for d in SETS:
        args += ["--templates", str(next(d.glob("*_templates.csv"))),
                 "--labeled", str(next(d.glob("*_structured.csv")))]
    proc = subprocess.run([PY, "-m", "pipeline", "rules", "eval", *args, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["lines"] == 2000 * len(SETS) and res["rules"] > 300
    assert res["accuracy"]["hyperscan"] >= 0.999 and res["accuracy"]["re"] >= 0.999
    assert res["agreement"] == 1.0
