"""Beam Classify on FnApiRunner: classified events, dead letters for broken events, metrics."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.classify import METRICS_NAMESPACE, Classify
from transforms.classify_rules import validate_classify_config
from transforms.common import INTERNAL_ERROR

ROOT = Path(__file__).resolve().parent.parent


def _cfg(engine: str = "auto"):
    return validate_classify_config({"engine": engine, "rules_files": ["../rules/default.yaml"]},
                                    str(ROOT / "config"))


def _event(i: int, **fields) -> dict:
    return {"event_id": f"e{i}", "event_time": 1700000000000 + i, "fields": fields, "attrs": {},
            "src": ["in", 0, 100 + i, 0], "envelope": "upload"}


EVENTS = [
    _event(1, message="FATAL EXCEPTION: main java.lang.NullPointerException"),
    _event(2, message="Choreographer: Skipped 87 frames!  The application may be doing too much work"),
    _event(3, message="all good"),
    _event(4, message="ok", stack="Traceback (most recent call last):\n  File \"x\"\nKeyError: 1"),
    _event(5, message=12345),  # not a string: a bug upstream -> INTERNAL_ERROR dead letter
    {"event_id": "e6", "src": ["in", 0, 106, 0]},  # no fields at all
]


def _run(engine: str):
    p = BeamTestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]), blocking=False)
    out = p | beam.Create(EVENTS) | Classify(_cfg(engine))
    assert_that(out.events | beam.Map(lambda e: (e["event_id"], e["category"], e["rule_id"], e["engine"])),
                equal_to([
                    ("e1", "PERF_CRASH", "android-fatal-exception", "hyperscan" if engine != "re" else "re"),
                    ("e2", "PERF_LAG", "android-choreographer-skipped-frames",
                     "hyperscan" if engine != "re" else "re"),
                    ("e3", "UNCLASSIFIED", "", "default"),
                    ("e4", "PERF_CRASH", "python-traceback", "re"),
                ]), label="events")
    assert_that(out.dlq | beam.Map(lambda d: (d["code"], d["stage"], d["offset"], d["reason"].split(":")[1])),
                equal_to([(INTERNAL_ERROR, "classify", 105, " TypeError"),
                          (INTERNAL_ERROR, "classify", 106, " KeyError")]), label="dlq")
    result = p.run()
    result.wait_until_finish()
    return result


def test_classify_transform_outputs_dlq_and_metrics():
    result = _run("auto")
    q = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    counters = {c.key.metric.name: c.committed for c in q["counters"]}
    assert counters["events_classified"] == 4
    assert counters["category.PERF_CRASH"] == 2
    assert counters["category.PERF_LAG"] == 1
    assert counters["category.UNCLASSIFIED"] == 1
    assert counters["rule.python-traceback"] == 1
    assert counters["default_hits"] == 1
    assert counters["errors"] == 2
    gauges = {g.key.metric.name: g.committed.value for g in q["gauges"]}
    assert gauges["re_fallback_patterns"] == 2


def test_classify_transform_re_engine_same_decisions():
    result = _run("re")
    q = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    gauges = {g.key.metric.name: g.committed.value for g in q["gauges"]}
    assert gauges["re_fallback_patterns"] == 0


def test_classify_transform_accepts_lists_of_events():
    p = BeamTestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]), blocking=False)
    out = p | beam.Create([EVENTS[:3], EVENTS[3:]]) | Classify(_cfg())
    # A list in, one list out: the next stages keep working list by list.
    assert_that(out.events | beam.Map(lambda b: (type(b).__name__, len(b))),
                equal_to([("list", 3), ("list", 1)]), label="lists")
    assert_that(out.events | beam.FlatMap(lambda b: b) | beam.Map(lambda e: (e["event_id"], e["category"])),
                equal_to([("e1", "PERF_CRASH"), ("e2", "PERF_LAG"), ("e3", "UNCLASSIFIED"),
                          ("e4", "PERF_CRASH")]), label="events")
    assert_that(out.dlq | beam.Map(lambda d: d["offset"]), equal_to([105, 106]), label="dlq")
    p.run().wait_until_finish()
