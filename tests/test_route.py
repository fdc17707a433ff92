"""Routing: category topics, child traceparent, dead letters to the DLQ (TestPipeline + assert_that)."""

from __future__ import annotations

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.common import VALIDATION_ERROR, dead_letter, dead_letter_from_kafka
from transforms.route import DeadLettersToTopic, EventsToCategoryTopics, topic_name
from transforms.tracing import child_traceparent

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _event(category: str, tp: str | None = PARENT) -> dict:
    return {
        "event_id": "e1",
        "app_id": "com.example.game",
        "category": category,
        "traceparent": tp,
        "fields": {"message": "x"},
    }


def test_child_traceparent_keeps_trace_and_flags_and_changes_span():
    child = child_traceparent(PARENT)
    version, trace, span, flags = child.split("-")
    assert (version, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert len(span) == 16 and span != "00f067aa0ba902b7" and int(span, 16) != 0
    assert child_traceparent(PARENT) != child  # a new span each time
    for bad in (None, "", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"):
        assert child_traceparent(bad) is None


def test_topic_names_are_legal():
    assert topic_name("to_analyzer__0.{category}", "PERF_CRASH") == "to_analyzer__0.PERF_CRASH"
    assert topic_name("out.{category}", "a b/c:d") == "out.a_b_c_d"


def test_events_go_to_their_category_topic_with_key_value_and_child_header():
    with BeamTestPipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        msgs = (
            p
            | beam.Create([_event("PERF_CRASH"), _event("PERF_LAG", None)])
            | EventsToCategoryTopics("to_analyzer__0.{category}")
        )
        summary = msgs | beam.Map(
            lambda m: (
                m.topic,
                m.key,
                orjson.loads(m.value)["category"],
                [(k, v.decode().split("-")[1]) for k, v in m.headers],
            )
        )
        assert_that(
            summary,
            equal_to(
                [
                    (
                        "to_analyzer__0.PERF_CRASH",
                        b"com.example.game",
                        "PERF_CRASH",
                        [("traceparent", "4bf92f3577b34da6a3ce929d0e0e4736")],
                    ),
                    ("to_analyzer__0.PERF_LAG", b"com.example.game", "PERF_LAG", []),
                ]
            ),
        )


def test_dead_letters_keep_original_bytes_and_carry_the_reason_in_headers():
    dl = dead_letter(
        VALIDATION_ERROR,
        "data[1]: field 'duration_ms'",
        topic="in",
        partition=2,
        offset=7,
        index=1,
        payload=b'{"x":1}',
        key=b"k",
        headers=(("traceparent", PARENT.encode()),),
    )
    with BeamTestPipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        msgs = p | beam.Create([dl]) | DeadLettersToTopic("pipeline.dlq")
        back = msgs | beam.Map(lambda m: (m.topic, dead_letter_from_kafka(m.key, m.value, list(m.headers))))
        assert_that(
            back
            | beam.Map(
                lambda tb: (
                    tb[0],
                    tb[1]["code"],
                    tb[1]["topic"],
                    tb[1]["partition"],
                    tb[1]["offset"],
                    tb[1]["index"],
                    tb[1]["payload"],
                    tb[1]["key"],
                    tb[1]["headers"],
                )
            ),
            equal_to(
                [
                    (
                        "pipeline.dlq",
                        VALIDATION_ERROR,
                        "in",
                        2,
                        7,
                        1,
                        b'{"x":1}',
                        b"k",
                        (("traceparent", PARENT.encode()),),
                    )
                ]
            ),
        )


def test_traceparent_parsing_agrees_with_the_otel_propagator():
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    prop = TraceContextTextMapPropagator()
    cases = [
        PARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        "garbage",
    ]
    for parent in cases:
        ctx = trace.get_current_span(prop.extract({"traceparent": parent})).get_span_context()
        child = child_traceparent(parent)
        assert (child is not None) == ctx.is_valid, parent
        if child is not None:
            assert child.split("-")[1] == trace.format_trace_id(ctx.trace_id)
            assert int(child.split("-")[3], 16) == int(ctx.trace_flags) & 0x01
