"""The pipeline's DAG:

ReadFromKafka -> Unpack -> Classify -> WindowMetrics -> WriteToKafka (per category) + ClickHouse
                   \\-----------\\--> dead letters -> DLQ topic + ClickHouse dead_letters
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from pipeline.config import PipelineConfig
from transforms.classify import Classify
from transforms.kafkaio import ReadFromKafka, WriteToKafka
from transforms.route import DeadLettersToTopic, EventsToCategoryTopics
from transforms.unpack import Unpack
from transforms.window import WindowMetrics


def build_pipeline(p: beam.Pipeline, cfg: PipelineConfig) -> dict[str, Any]:
    """Adds the whole DAG to `p`; returns the main PCollections (for tests and inspection)."""
    records = p | "ReadFromKafka" >> ReadFromKafka(cfg.read)
    return build_from_records(records, cfg)


def build_from_records(records, cfg: PipelineConfig) -> dict[str, Any]:
    """Everything after the source: lets tests feed KafkaRecords from TestStream or Create.

    Each output hangs directly off the stage that produces its input (no Flatten across stages):
    the category topics, the input dead letters and (on local runners) the ClickHouse events stay
    fused with the read, so a bundle's offsets are committed, at bundle finalization, only after
    its records were written, and output flows while the job runs instead of piling up in memory.
    """
    unpacked = records | "Unpack" >> Unpack(cfg.unpack)
    classified = unpacked.events | "Classify" >> Classify(cfg.classify)
    events = classified.events
    _ = (
        events
        | "RouteByCategory" >> EventsToCategoryTopics(cfg.routes.topic_template)
        | "WriteEvents" >> WriteToKafka(cfg.producer)
    )
    aggregates = events | "WindowMetrics" >> WindowMetrics(cfg.window, bounded=cfg.read.bounded)

    dead_letters = {"Input": (unpacked.dlq, classified.dlq) | "InputDeadLetters" >> beam.Flatten()}
    if cfg.clickhouse is not None:
        from transforms.clickhouse import WriteToClickHouse

        dead_letters["EventsSink"] = events | "EventsToClickHouse" >> WriteToClickHouse(
            cfg.clickhouse, "events"
        )
        # Sinks batch across windows: aggregates go back to the global window (their own window
        # bounds are columns).
        dead_letters["AggregatesSink"] = (
            aggregates
            | "AggregatesToGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
            | "AggregatesToClickHouse" >> WriteToClickHouse(cfg.clickhouse, "window_aggregates")
        )
    for name, dls in dead_letters.items():
        _ = (
            dls
            | f"{name}DeadLettersToDLQ" >> DeadLettersToTopic(cfg.routes.dlq_topic)
            | f"Write{name}DeadLetters" >> WriteToKafka(cfg.producer)
        )
        if cfg.clickhouse is not None:
            # Rejections of the dead-letter table itself go to the logs and metrics only.
            _ = dls | f"{name}DeadLettersToClickHouse" >> WriteToClickHouse(cfg.clickhouse, "dead_letters")
    return {"events": events, "aggregates": aggregates, "dead_letters": dead_letters}
