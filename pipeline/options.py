"""The pipeline's flags, as Beam PipelineOptions subclasses (listed by `python -m pipeline --help`)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

DEFAULT_CONFIG = "config/default.yaml"


class ClassifierOptions(PipelineOptions):
    """What to read, how to classify, where to write. Flags override the YAML config."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        g = parser.add_argument_group("pipeline")
        g.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            help="YAML with kafka, source, unpack, classify, window, routes and sinks sections "
            "(default: %(default)s)",
        )
        g.add_argument(
            "--kafka_bootstrap",
            default=None,
            help="Kafka bootstrap servers for consumer and producer (overrides kafka.*.bootstrap.servers)",
        )
        g.add_argument(
            "--topics", default=None, help="comma-separated topics to read (overrides source.topics)"
        )
        g.add_argument(
            "--topic_pattern",
            default=None,
            help=r"regex of topics to read, e.g. '^to_analyzer__0\..*' (overrides source.topic_pattern)",
        )
        g.add_argument(
            "--group_id", default=None, help="consumer group for committed offsets (kafka.consumer.group.id)"
        )
        g.add_argument(
            "--start_from",
            default=None,
            choices=["committed", "earliest", "latest"],
            help="where to start when the group has no committed offset (source.start)",
        )
        g.add_argument(
            "--stop_at_end",
            action="store_true",
            default=None,
            help="bounded run: read up to the end offsets seen at start, then finish",
        )
        g.add_argument(
            "--max_records",
            type=int,
            default=None,
            help="bounded run: read at most this many records in total",
        )
        g.add_argument(
            "--idle_timeout",
            type=float,
            default=None,
            help="seconds without data before a partition stops holding the watermark (default 10)",
        )
        g.add_argument(
            "--discovery_interval",
            type=float,
            default=None,
            help="seconds between topic/partition discovery for --topic_pattern (default 30)",
        )
        g.add_argument(
            "--output_topic_template",
            default=None,
            help="topic per category, e.g. 'to_analyzer__0.{category}' (routes.topic_template)",
        )
        g.add_argument("--dlq_topic", default=None, help="dead-letter topic (routes.dlq_topic)")
        g.add_argument(
            "--clickhouse_url",
            default=None,
            help="chdb:///path (embedded) or clickhouse://user@host:9000/db (sinks.clickhouse.url); "
            "the password comes from sinks.clickhouse.password_env/password_file, never a flag",
        )
        g.add_argument("--no_clickhouse", action="store_true", default=False, help="skip the ClickHouse sink")
        g.add_argument(
            "--window_size", type=float, default=None, help="window size in seconds (window.size_s)"
        )
        g.add_argument(
            "--allowed_lateness",
            type=float,
            default=None,
            help="seconds a window accepts late data (window.allowed_lateness_s)",
        )
        g.add_argument(
            "--classify_engine",
            default=None,
            choices=["auto", "hyperscan", "re"],
            help="regex engine (classify.engine)",
        )
        g.add_argument(
            "--drain_timeout",
            type=float,
            default=60.0,
            help="seconds a SIGTERM/SIGINT drain may take (stop reading, flush, commit) before the job "
            "is cancelled (default %(default)s)",
        )
