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
    """Everything after the source: lets tests feed KafkaRecords from TestStream or Create."""
    unpacked = records | "Unpack" >> Unpack(cfg.unpack)
    classified = unpacked.events | "Classify" >> Classify(cfg.classify)
    events = classified.events
    aggregates = events | "WindowMetrics" >> WindowMetrics(cfg.window)

    dead_letter_parts = [unpacked.dlq, classified.dlq]
    if cfg.clickhouse is not None:
        from transforms.clickhouse import WriteToClickHouse

        dead_letter_parts.append(
            events | "EventsToClickHouse" >> WriteToClickHouse(cfg.clickhouse, table="events")
        )
        # Sinks batch across windows: aggregates go back to the global window (their own window
        # bounds are columns), which also lets their dead letters flatten with the others.
        dead_letter_parts.append(
            aggregates
            | "AggregatesToGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
            | "AggregatesToClickHouse" >> WriteToClickHouse(cfg.clickhouse, table="window_aggregates")
        )
    dead_letters = dead_letter_parts | "AllDeadLetters" >> beam.Flatten()

    to_kafka = (
        events | "RouteByCategory" >> EventsToCategoryTopics(cfg.routes.topic_template),
        dead_letters | "DeadLettersToDLQ" >> DeadLettersToTopic(cfg.routes.dlq_topic),
    ) | "KafkaOutputs" >> beam.Flatten()
    to_kafka | "WriteToKafka" >> WriteToKafka(cfg.producer)

    if cfg.clickhouse is not None:
        from transforms.clickhouse import WriteToClickHouse

        # Rejections of the dead-letter table itself cannot go anywhere but the logs and metrics.
        dead_letters | "DeadLettersToClickHouse" >> WriteToClickHouse(cfg.clickhouse, table="dead_letters")
    return {"events": events, "aggregates": aggregates, "dead_letters": dead_letters}
