"""`python -m pipeline [options]`: validate config and components, then run the DAG."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, _BeamArgumentParser

from pipeline.config import UNSET, PipelineConfig, load_config
from pipeline.graph import build_pipeline
from pipeline.options import ClassifierOptions
from pipeline.prism import prism_job_server
from pipeline.runners import FLINK_JOB_SERVER_JAR, runner_name, with_defaults
from pipeline.tuning import tune_gc
from transforms.common import ConfigError
from transforms.kafkaio import request_stop, reset_stop

log = logging.getLogger("pipeline")
RUN_DIR = Path(__file__).resolve().parent.parent / ".run"

DESCRIPTION = """\
Classify app-performance and log events from Kafka into per-category topics, windowed metrics and
ClickHouse tables.

Examples:
  python -m pipeline --stop_at_end                       # bounded run on DirectRunner (FnApiRunner)
  python -m pipeline --topic_pattern '^to_analyzer__0\\..*' # unbounded, Prism, windows on the watermark
  python -m pipeline --runner=FlinkRunner                 # submit to the local Flink cluster

Operator commands: python -m pipeline {rules,clickhouse,lag,dlq,flink,report} --help
"""


def print_help() -> None:
    parser = _BeamArgumentParser(
        prog="python -m pipeline",
        description=DESCRIPTION,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    ClassifierOptions._add_argparse_args(parser)
    seen = {str(ClassifierOptions)}
    for cls in PipelineOptions.__subclasses__():
        if str(cls) not in seen:
            seen.add(str(cls))
            cls._add_argparse_args(parser)
    parser.print_help()


def _overrides(o: ClassifierOptions) -> list[tuple[tuple[str, ...], object]]:
    out: list[tuple[tuple[str, ...], object]] = []
    if o.kafka_bootstrap:
        out += [
            (("kafka", "consumer", "bootstrap.servers"), o.kafka_bootstrap),
            (("kafka", "producer", "bootstrap.servers"), o.kafka_bootstrap),
        ]
    if o.group_id:
        out.append((("kafka", "consumer", "group.id"), o.group_id))
    if o.topics:
        out += [
            (("source", "topics"), [t for t in o.topics.split(",") if t]),
            (("source", "topic_pattern"), UNSET),
        ]
    if o.topic_pattern:
        out += [(("source", "topic_pattern"), o.topic_pattern), (("source", "topics"), UNSET)]
    for key, value in (
        ("start", o.start_from),
        ("stop_at_end", o.stop_at_end),
        ("max_records", o.max_records),
        ("idle_timeout_s", o.idle_timeout),
        ("discovery_interval_s", o.discovery_interval),
    ):
        out.append((("source", key), value))
    out += [
        (("routes", "topic_template"), o.output_topic_template),
        (("routes", "dlq_topic"), o.dlq_topic),
        (("window", "size_s"), o.window_size),
        (("window", "allowed_lateness_s"), o.allowed_lateness),
        (("classify", "engine"), o.classify_engine),
        (("sinks", "clickhouse", "url"), o.clickhouse_url),
    ]
    if o.no_clickhouse:
        out.append((("sinks", "clickhouse", "enabled"), False))
    return out


def config_from_options(opts: PipelineOptions) -> PipelineConfig:
    o = opts.view_as(ClassifierOptions)
    return load_config(o.config, _overrides(o))


def preflight(cfg: PipelineConfig) -> None:
    """Reachability checks before any data moves: broker, source topics, ClickHouse, output topics."""
    from transforms.kafkaio import KafkaAuthError, KafkaReadError, list_partitions
    from transforms.route import ensure_topics, topic_name

    try:
        parts = list_partitions(cfg.read)
    except KafkaReadError as e:
        # A pattern may match nothing yet, and discovery retries an outage; credentials and ACLs stay wrong.
        if cfg.read.bounded or not cfg.read.topic_pattern or isinstance(e, KafkaAuthError):
            raise
        parts = []
        log.warning("%s", e)
    log.info("source: %d partitions (%s)", len(parts), cfg.read.describe())
    if cfg.routes.create_topics:
        topics = {topic_name(cfg.routes.topic_template, c) for c in cfg.classify.categories()}
        topics.add(cfg.routes.dlq_topic)
        created = ensure_topics(
            cfg.producer
            | {
                "bootstrap.servers": cfg.producer.get(
                    "bootstrap.servers", cfg.read.client_config()["bootstrap.servers"]
                )
            },
            topics,
            cfg.routes.topic_partitions,
        )
        if created:
            log.info("created topics: %s", ", ".join(created))
    if cfg.clickhouse is not None:
        from transforms.clickhouse import ensure_schema

        ensure_schema(cfg.clickhouse)


LOCAL_RUNNERS = ("FnApiRunner", "PrismRunner", "DirectRunner", "BundleBasedDirectRunner")


def for_runner(cfg: PipelineConfig, runner: str) -> PipelineConfig:
    """Runner-specific choices. On local runners nothing is checkpointed, so the ClickHouse sink batches
    inside the bundle (fused with the read): a bundle's offsets are committed only after its rows are in
    ClickHouse. On Flink, state is checkpointed and GroupIntoBatches buffers across bundles."""
    if cfg.clickhouse is not None and runner in LOCAL_RUNNERS and cfg.clickhouse.batching != "bundle":
        return replace(cfg, clickhouse=replace(cfg.clickhouse, batching="bundle"))
    return cfg


class _GracefulStop:
    """SIGTERM/SIGINT: first one drains (stop reading, fire windows, flush sinks, commit offsets, exit 0);
    a second one, or `drain_timeout_s` passing, cancels the job."""

    def __init__(self, drain_timeout_s: float) -> None:
        self.drain_timeout_s = drain_timeout_s
        self.requested_at: float | None = None
        self.forced = False
        self._saved: dict = {}

    def install(self) -> None:
        # Called again after p.run(): Beam's job-server wrapper sets a SIGINT handler that stops Prism.
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, self._handle)
            self._saved.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            log.info(
                "%s: draining (stop reading, flush sinks, commit offsets); send it again to abort",
                signal.Signals(signum).name,
            )
            request_stop()
        else:
            log.warning("%s again: aborting the drain", signal.Signals(signum).name)
            self.forced = True

    def overdue(self) -> bool:
        return self.forced or (
            self.requested_at is not None and time.monotonic() - self.requested_at > self.drain_timeout_s
        )


def run_and_wait(p: beam.Pipeline, stop: _GracefulStop) -> int:
    """Runs `p` and blocks until it finishes, handling a graceful stop. 0 when it completed or drained."""
    drain_timeout_s = stop.drain_timeout_s
    if stop.requested_at is not None:
        log.info("stopped before the job started")
        return 0
    holder: dict[str, object] = {}
    done = threading.Event()

    def watchdog() -> None:
        while not done.wait(0.5):
            if stop.overdue():
                log.error("stop: the job did not drain in %.0f s; cancelling", drain_timeout_s)
                result = holder.get("result")
                if result is None:  # FnApiRunner runs inside p.run(): nothing to cancel but the process
                    os._exit(1)
                try:
                    result.cancel()
                except Exception as e:
                    log.warning("cancel failed: %s", e)
                holder["cancelled"] = True
                return

    def wait(result) -> None:
        try:
            result.wait_until_finish()
        except BaseException as e:  # reported from the main thread
            holder["error"] = e
        finally:
            done.set()

    threading.Thread(target=watchdog, name="drain-watchdog", daemon=True).start()
    try:
        try:
            result = holder["result"] = p.run()  # FnApiRunner completes here; Prism returns at once
        except Exception as e:
            holder["error"] = e
            done.set()
        else:
            stop.install()
            threading.Thread(target=wait, args=(result,), name="pipeline-wait", daemon=True).start()
            while not done.wait(0.5):
                pass
    finally:
        done.set()
        if stop.requested_at is None:
            stop.restore()
        # else: keep ours through teardown; a repeated SIGTERM then must not kill a drained run.
    if "cancelled" in holder:
        return 1
    if "error" in holder:
        err = holder["error"]
        print(
            f"error: the pipeline failed: {type(err).__name__}: {str(err).strip()[-2000:]}", file=sys.stderr
        )
        return 1
    if stop.requested_at is not None:
        log.info("drained in %.1f s", time.monotonic() - stop.requested_at)
    return 0


def run_pipeline(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # our progress lines, not its chatter
    opts = PipelineOptions(argv)
    reset_stop()
    stop = _GracefulStop(opts.view_as(ClassifierOptions).drain_timeout)
    stop.install()  # from here on a SIGTERM/SIGINT is a graceful stop, even during preflight
    try:
        cfg = config_from_options(opts)
        preflight(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an unreachable component: one clear line, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    argv = with_defaults(argv, cfg.read.bounded)
    runner = runner_name(argv)
    if runner == "FlinkRunner" and not any(a.startswith("--flink_job_server_jar") for a in argv):
        print(
            f"error: FlinkRunner needs the Beam Flink job-server jar ({FLINK_JOB_SERVER_JAR.name}), which is "
            f"not in {FLINK_JOB_SERVER_JAR.parent} and not on the Maven mirror this machine reaches; get it "
            "elsewhere and pass --flink_job_server_jar=PATH (see flink-conf/README.md)",
            file=sys.stderr,
        )
        return 2
    workers = PipelineOptions(argv).view_as(DirectOptions).direct_num_workers
    if runner == "FnApiRunner" and workers not in (0, 1):
        # Measured here: 2 workers (multi_processing) wrote 228,753 of 300,000 records read by our Kafka SDF,
        # rc 0. FnApiRunner does not merge SDF residuals across workers (apache/beam#19842, open): Beam
        # 2.77's ParallelBundleManager merges the workers' responses keeping only metrics and errors, so
        # the residual of every self-checkpoint is lost. Reading each partition in one bundle instead
        # (no checkpoints) wrote all 300,004 records, but on this 2-core machine used 1.7x the CPU and
        # took longer than one worker (16.2 s vs 12.9 s wall, 2026-11-22), and chdb cannot be opened by
        # two worker processes: not worth a second code path.
        print(
            "error: --direct_num_workers > 1 with FnApiRunner loses records of splittable reads "
            "(apache/beam#19842); run with one worker, or unbounded on Prism",
            file=sys.stderr,
        )
        return 2
    cfg = for_runner(cfg, runner)
    with ExitStack() as stack:
        if runner == "PrismRunner" and not any(a.startswith("--job_endpoint") for a in argv):
            prism = next(a.split("=", 1)[1] for a in argv if a.startswith("--prism_location="))
            argv = [
                *argv,
                f"--job_endpoint={stack.enter_context(prism_job_server(prism, RUN_DIR / 'prism'))}",
            ]
        p = beam.Pipeline(options=PipelineOptions(argv))
        build_pipeline(p, cfg)
        tune_gc()
        log.info("running on %s (%s)", runner, "bounded" if cfg.read.bounded else "unbounded")
        return run_and_wait(p, stop)
