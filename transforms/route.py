"""Routing to Kafka: each classified event to its category's topic, each dead letter to the DLQ."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics

from transforms.coders import Batch
from transforms.common import dead_letter_to_kafka
from transforms.kafkaio import KafkaMessage
from transforms.native import native_available, perf_native
from transforms.tracing import child_traceparent

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def topic_name(template: str, category: str) -> str:
    """The category's topic; characters Kafka does not allow in topic names become '_'."""
    return template.format(category=_UNSAFE.sub("_", category))[:249]


class _EventsToMessagesFn(beam.DoFn):
    def __init__(self, template: str) -> None:
        self._template = template
        self._routed = Metrics.counter("route", "events_routed")

    def setup(self) -> None:
        self._topics: dict[str, str] = {}
        # native/src/route.rs builds the common messages of a list; it hands the others back to _message
        self._native = perf_native.route_messages if native_available() else None

    def _message(self, event: dict[str, Any]) -> KafkaMessage:
        category = event["category"]
        topic = self._topics.get(category)
        if topic is None:
            topic = self._topics[category] = topic_name(self._template, category)
        tp = event.get("traceparent")
        child = child_traceparent(tp) if tp else None
        headers = (("traceparent", child.encode()),) if child else ()
        return KafkaMessage(topic, event["app_id"].encode(), orjson.dumps(event), headers)

    def process(self, event: dict[str, Any] | list[dict[str, Any]]) -> Iterable[Any]:
        if type(event) is list:  # a list of events in, one list of messages out
            if self._native is None:
                msgs = [self._message(e) for e in event]
            else:
                msgs, back = self._native(event, self._topics, orjson.dumps, KafkaMessage)
                for i in back:  # also fills the topic cache the native path reads
                    msgs[i] = self._message(event[i])
            self._routed.inc(len(msgs))
            return [msgs] if msgs else []
        self._routed.inc()
        return [self._message(event)]


class EventsToCategoryTopics(beam.PTransform):
    """Classified event -> KafkaMessage on `template.format(category=...)`, key app_id, JSON value,
    and a child `traceparent` header when the input carried one."""

    def __init__(self, template: str) -> None:
        super().__init__()
        self._template = template

    def expand(self, events):
        return events | beam.ParDo(_EventsToMessagesFn(self._template)).with_output_types(Batch)


def _dead_letter_message(dl: dict[str, Any], topic: str) -> KafkaMessage:
    key, value, headers = dead_letter_to_kafka(dl)
    return KafkaMessage(topic, key, value, tuple(headers))


class DeadLettersToTopic(beam.PTransform):
    """Dead letter -> KafkaMessage on the DLQ topic: the original bytes, with the reason in headers."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self._topic = topic

    def expand(self, dead_letters):
        return dead_letters | beam.Map(_dead_letter_message, self._topic)


def ensure_topics(
    producer_cfg: dict[str, Any], topics: Iterable[str], partitions: int, timeout: float = 15.0
) -> list[str]:
    """Creates missing topics (output and DLQ) before the run; returns those it created."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from transforms.kafka_config import resolve_secrets

    admin_cfg = {
        k: v
        for k, v in resolve_secrets(producer_cfg).items()
        if k.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "client."))
    }
    admin = AdminClient(admin_cfg)
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = sorted(set(topics) - existing)
    if not missing:
        return []
    futures = admin.create_topics([NewTopic(t, partitions) for t in missing], operation_timeout=timeout)
    for fut in futures.values():
        try:
            fut.result(timeout)
        except KafkaException as e:
            if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return missing
