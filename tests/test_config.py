"""The config is validated before any data moves: one clear line naming the bad key or component."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import load_config
from tests.conftest import ROOT, write_test_config
from transforms.common import ConfigError


def _config(tmp_path, mutate) -> str:
    return write_test_config(tmp_path, mutate)


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_default_config_is_valid():
    cfg = load_config(str(ROOT / "config" / "default.yaml"))
    assert cfg.read.topic_pattern and cfg.routes.topic_for("PERF_CRASH") == "to_analyzer__0.PERF_CRASH"
    assert "PERF_CRASH" in cfg.classify.categories()


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda r: r.update(bogus={}), "bogus"),
        (lambda r: r["source"].update(idle_timeout_s="ten"), "source.idle_timeout_s"),
        (lambda r: r["source"].update(colour="red"), "source.colour"),
        (lambda r: r["source"].update(topic_pattern="(["), "source.topic_pattern"),
        (lambda r: r["routes"].update(topic_template="out.{cat}"), "routes.topic_template"),
        (lambda r: r["routes"].update(dlq_topic="bad topic!"), "routes.dlq_topic"),
        (
            lambda r: r["kafka"]["producer"].update({"compression.type": "brotli"}),
            "kafka.producer.compression.type",
        ),
        (
            lambda r: r["classify"].update(rules=[{"id": "x", "category": "C", "pattern": "a(b"}]),
            "classify.rules",
        ),
    ],
)
def test_bad_values_name_their_key(tmp_path, mutate, key):
    path = _config(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key.startswith(key), err.value


def test_cli_stops_on_bad_config_with_one_line(tmp_path):
    path = _config(tmp_path, lambda r: r["source"].update(colour="red"))
    proc = _run(f"--config={path}")
    assert proc.returncode == 2
    assert "source.colour" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_stops_when_kafka_is_unreachable(tmp_path):
    proc = _run(
        f"--config={_config(tmp_path, lambda r: None)}", "--kafka_bootstrap=127.0.0.1:1", "--stop_at_end"
    )
    assert proc.returncode == 2
    assert "127.0.0.1:1" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_names_a_missing_topic(kafka, tmp_path, topic_prefix):
    proc = _run(
        f"--config={_config(tmp_path, lambda r: None)}", f"--topics={topic_prefix}.nope", "--stop_at_end"
    )
    assert proc.returncode == 2
    assert f"{topic_prefix}.nope" in proc.stderr


def test_cli_refuses_several_fnapi_workers(kafka, tmp_path, topic_prefix):
    # FnApiRunner with 2 worker processes lost ~24% of the records of our Kafka read (apache/beam#19842).
    from tests.conftest import create_topics

    create_topics([f"{topic_prefix}.in"])
    proc = _run(f"--config={_config(tmp_path, lambda r: None)}", f"--topics={topic_prefix}.in",
                "--stop_at_end", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert proc.returncode == 2
    assert "direct_num_workers" in proc.stderr and "19842" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_our_options_beside_beams():
    proc = _run("--help")
    assert proc.returncode == 0
    for flag in (
        "--topic_pattern",
        "--stop_at_end",
        "--clickhouse_url",
        "--runner",
        "--streaming",
        "--flink_master",
    ):
        assert flag in proc.stdout
