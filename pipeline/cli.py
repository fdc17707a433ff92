"""Command dispatch. Without a known command the arguments are pipeline options (Beam style)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Command group -> module exposing `register(subparsers)`; each registered parser sets
# `func(args) -> int` via set_defaults. Imported lazily so `python -m pipeline --help` stays fast.
COMMAND_MODULES = {
    "rules": "pipeline.cli_rules",
    "clickhouse": "pipeline.cli_clickhouse",
    "lag": "pipeline.cli_ops",
    "dlq": "pipeline.cli_ops",
    "flink": "pipeline.cli_flink",
    "report": "pipeline.cli_report",
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in COMMAND_MODULES:
        parser = argparse.ArgumentParser(prog="python -m pipeline")
        sub = parser.add_subparsers(dest="command", required=True)
        importlib.import_module(COMMAND_MODULES[argv[0]]).register(sub)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    from pipeline.run import run_pipeline  # heavy (Beam): only when running the pipeline

    return run_pipeline(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def main_entry() -> None:
    """Console-script entry point (`perf-pipeline`), same as `python -m pipeline`."""
    sys.exit(main(sys.argv[1:]))
