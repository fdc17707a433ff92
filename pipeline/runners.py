"""Runner defaults, so `python -m pipeline` runs offline on this machine without extra flags.

- DirectRunner (the default): Beam 2.77 would download Prism from GitHub; we point it at the binary
  `./run.sh setup` builds with `go install`. Unbounded runs go to Prism (windows fire on the
  watermark); bounded runs go to the in-process FnApiRunner, which is faster for batch and is what
  DirectRunner falls back to anyway.
- FlinkRunner: the local cluster from `./run.sh flink-up`, the cached job-server jar, a Beam worker
  pool for Python DoFns (EXTERNAL environment), streaming with checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions

ROOT = Path(__file__).resolve().parent.parent
PRISM_BIN = ROOT / ".cache" / "bin" / "prism"
FLINK_JOB_SERVER_JAR = ROOT / ".cache" / "jars" / "beam-runners-flink-2.2-job-server-2.77.0.jar"


def _has_flag(argv: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def runner_name(argv: list[str]) -> str:
    opts = PipelineOptions(argv).get_all_options(retain_unknown_options=True)
    return (opts.get("runner") or "DirectRunner").split(".")[-1]


def default_args(argv: list[str], bounded: bool) -> list[str]:
    """Beam flags to add to `argv` for the chosen runner (never overriding what the user passed)."""
    runner = runner_name(argv)
    extra: list[str] = []

    def add(name: str, value: str | None = None) -> None:
        if not _has_flag(argv, name):
            extra.append(f"--{name}" if value is None else f"--{name}={value}")

    if runner in ("DirectRunner", "PrismRunner"):
        prism = os.environ.get("PRISM_BIN", str(PRISM_BIN))
        add("prism_location", prism)
        if runner == "DirectRunner":
            extra.append("--runner=FnApiRunner" if bounded else "--runner=PrismRunner")
        if not bounded:
            add("streaming")
    elif runner == "FlinkRunner":
        add("flink_master", os.environ.get("FLINK_MASTER", "localhost:8081"))
        add("flink_submit_uber_jar")
        if FLINK_JOB_SERVER_JAR.exists():
            add("flink_job_server_jar", str(FLINK_JOB_SERVER_JAR))
        add("environment_type", "EXTERNAL")
        add("environment_config", os.environ.get("BEAM_WORKER_POOL", "localhost:50000"))
        if not bounded:
            add("streaming")
            add("checkpointing_interval", "10000")
    return extra


def _joined(argv: list[str]) -> list[str]:
    """`--flag value` -> `--flag=value` for the runner flag, so it can be found and replaced."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--runner" and i + 1 < len(argv):
            out.append(f"--runner={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def with_defaults(argv: list[str], bounded: bool) -> list[str]:
    """`argv` plus the runner's defaults; DirectRunner is resolved to Prism or FnApiRunner."""
    argv = _joined(argv)
    extra = default_args(argv, bounded)
    if any(e.startswith("--runner=") for e in extra):
        argv = [a for a in argv if not a.startswith("--runner=")]
    return argv + extra
