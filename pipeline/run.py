"""`python -m pipeline [options]`: validate config and components, then run the DAG."""

from __future__ import annotations

import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline.config import UNSET, PipelineConfig, load_config
from pipeline.graph import build_pipeline
from pipeline.options import ClassifierOptions
from pipeline.runners import with_defaults
from transforms.common import ConfigError

log = logging.getLogger("pipeline")

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
    from transforms.kafkaio import KafkaReadError, list_partitions
    from transforms.route import ensure_topics, topic_name

    try:
        parts = list_partitions(cfg.read)
    except KafkaReadError as e:
        if cfg.read.bounded or not cfg.read.topic_pattern:
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


def run_pipeline(argv: list[str], wait: bool = True):
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # our progress lines, not its chatter
    opts = PipelineOptions(argv)
    try:
        cfg = config_from_options(opts)
        preflight(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an unreachable component: one clear line, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    opts = PipelineOptions(with_defaults(argv, cfg.read.bounded))
    p = beam.Pipeline(options=opts)
    build_pipeline(p, cfg)
    result = p.run()
    if wait:
        result.wait_until_finish()
        return 0
    return result
