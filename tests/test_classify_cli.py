"""`python -m pipeline rules ...` run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
LOGHUB = ROOT.parent / "shared" / "data" / "loghub"


def rules_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "pipeline", "rules", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_import_templates_writes_loadable_rules(tmp_path):
    out = tmp_path / "openssh.yaml"
    tpl = LOGHUB / "OpenSSH" / "OpenSSH_2k.log_templates.csv"
    proc = rules_cli("import-templates", str(tpl), "--out", str(out), "--category-prefix", "SSH_")
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(out.read_text())
    n_templates = len(tpl.read_text().strip().splitlines()) - 1
    assert len(doc["rules"]) == n_templates
    first = doc["rules"][0]
    assert first["id"] == first["category"] and first["category"].startswith("SSH_E")
    assert first["pattern"].startswith(r"\A") and first["pattern"].endswith(r"\Z")
    # The generated file is a valid rules file: `rules test` classifies a real line with it.
    line = "Failed password for root from 183.62.140.253 port 51389 ssh2"
    proc = rules_cli("test", line, "--rules", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["category"] == "SSH_E9" and res["engine"] == "hyperscan"
    # Without --out the YAML goes to stdout.
    proc = rules_cli("import-templates", str(tpl))
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["rules"][0]["id"] == "E1"


def test_eval_json_and_table():
    d = LOGHUB / "Apache"
    args = ["--templates", str(d / "Apache_2k.log_templates.csv"),
            "--labeled", str(d / "Apache_2k.log_structured.csv")]
    proc = rules_cli("eval", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object
    res = json.loads(lines[0])
    assert res["lines"] == 2000
    assert res["accuracy"] == {"hyperscan": 1.0, "re": 1.0} and res["agreement"] == 1.0
    proc = rules_cli("eval", *args)
    assert proc.returncode == 0 and "agreement between engines: 100.0000%" in proc.stdout
    assert "hyperscan" in proc.stdout and "re" in proc.stdout


def test_eval_several_template_files_compete():
    args = []
    for name in ("HDFS", "Zookeeper"):
        d = LOGHUB / name
        args += ["--templates", str(next(d.glob("*_templates.csv"))),
                 "--labeled", str(next(d.glob("*_structured.csv")))]
    proc = rules_cli("eval", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["lines"] == 4000 and res["rules"] == 14 + 50
    assert res["accuracy"]["hyperscan"] >= 0.999 and res["agreement"] == 1.0


def test_check_reports_fallback_with_hyperscan_reason():
    proc = rules_cli("check", str(ROOT / "rules" / "default.yaml"), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["engine"] == "hyperscan" and res["hyperscan_available"] is True
    assert res["re_fallback"] == {"java-recursive-stack": "Back-references are unsupported.",
                                  "python-traceback": "Zero-width assertions are not supported."}
    assert res["hyperscan_rules"] == res["rules"] - 2
    assert res["prefiltered"] == ["java-recursive-stack", "python-traceback"]
    proc = rules_cli("check", str(ROOT / "config" / "default.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert ("re fallback  python-traceback: Zero-width assertions are not supported. "
            "(hyperscan prefilters, re confirms its hits)") in proc.stdout


def test_test_command_json_and_text():
    proc = rules_cli("test", "FATAL EXCEPTION: main java.lang.OutOfMemoryError: Failed to allocate", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert (res["category"], res["rule_id"], res["engine"]) == ("PERF_OOM", "java-oom", "hyperscan")
    assert res["matches"][:2] == ["java-oom", "generic-out-of-memory"]
    assert "android-fatal-exception" in res["matches"]
    proc = rules_cli("test", "Traceback (most recent call last):\n  x\nValueError")
    assert proc.returncode == 0 and "rule python-traceback  engine re" in proc.stdout


def test_bad_files_fail_with_one_clear_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: a, category: A, pattern: 'ok'}\n"
                   "  - {id: b, category: B, pattern: '(x'}\n")
    for args in (["check", str(bad)], ["test", "x", "--rules", str(bad)]):
        proc = rules_cli(*args)
        assert proc.returncode == 2
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert f"'{bad}.rules[1].pattern'" in err[0] and "missing ), unterminated subpattern" in err[0]
    proc = rules_cli("check", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "No such file" in proc.stderr
    csv = tmp_path / "t.csv"
    csv.write_text("Id,Template\n1,x\n")
    proc = rules_cli("import-templates", str(csv))
    assert proc.returncode == 2 and "expected columns EventId,EventTemplate" in proc.stderr
    proc = rules_cli("eval", "--templates", str(csv), "--labeled", str(csv), "--json")
    assert proc.returncode == 2 and proc.stdout == ""
