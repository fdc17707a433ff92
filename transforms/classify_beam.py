"""Beam side of classification: `Classify` (PCollection of event dicts -> .events / .dlq)."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.classify import METRICS_NAMESPACE, Classifier
from transforms.classify_rules import ClassifyConfig
from transforms.coders import Batch
from transforms.common import DLQ_TAG, INTERNAL_ERROR, dead_letter


class ClassifyFn(beam.DoFn):
    """Event dict -> classified event, a list of them -> one list; a failing event -> INTERNAL_ERROR dead
    letter.

    Counts are summed in a dict and flushed to Beam metrics once per bundle: a Beam counter update per
    element would cost more than classifying it.
    """

    def __init__(self, cfg: ClassifyConfig) -> None:
        self._cfg = cfg  # plain dataclasses pickle; the Hyperscan database is built in setup()

    def setup(self) -> None:
        self._clf = Classifier(self._cfg)
        self._stats: dict[str, int] = {}

    def process(self, element):
        if type(element) is list:  # a list in, ONE list out (dead letters one by one)
            # In place: the list and its dicts are Unpack's fresh output and this DoFn is their only
            # consumer in the pipeline's graph, so nobody else sees the added keys; a copy per event was
            # ~0.25 µs of the kernel.
            out = self._classify(element, inplace=True)
            events = [ev for ev in out if type(ev) is dict]
            dls = [ev for ev in out if type(ev) is not dict] if len(events) < len(out) else []
            return ([events] if events else []) + dls
        return self._classify((element,))

    def _classify(self, batch, inplace: bool = False):
        clf = self._clf
        try:
            out = clf.classify_batch(batch, inplace=inplace)
        except Exception:  # noqa: BLE001 - find the bad event(s); the others go on
            out = []
            for ev in batch:
                try:
                    out.append(clf.classify(ev))
                except Exception as exc:  # noqa: BLE001 - one bad event must not fail the bundle
                    self._count("errors")
                    out.append(beam.pvalue.TaggedOutput(DLQ_TAG, _internal_error(ev, exc)))
        stats = self._stats
        for ev in out:
            if type(ev) is dict:
                key = "category." + ev["category"]
                stats[key] = stats.get(key, 0) + 1
                rid = ev["rule_id"]
                key = "rule." + rid if rid else "default_hits"
                stats[key] = stats.get(key, 0) + 1
        return out

    def _count(self, name: str) -> None:
        self._stats[name] = self._stats.get(name, 0) + 1

    def finish_bundle(self) -> None:
        stats = self._stats
        classified = sum(n for k, n in stats.items() if k.startswith("category."))
        if classified:
            Metrics.counter(METRICS_NAMESPACE, "events_classified").inc(classified)
        for name, n in stats.items():
            if n:
                Metrics.counter(METRICS_NAMESPACE, name).inc(n)
        stats.clear()
        Metrics.gauge(METRICS_NAMESPACE, "re_fallback_patterns").set(len(self._clf.fallback))


def _internal_error(event: Any, exc: Exception) -> dict[str, Any]:
    import orjson

    src = event.get("src") if isinstance(event, dict) else None
    topic = partition = offset = index = None
    if isinstance(src, (list, tuple)) and len(src) == 4:
        topic, partition, offset, index = src
    try:
        payload = orjson.dumps(event, default=repr)
    except Exception:  # noqa: BLE001 - whatever it is, keep something to look at
        payload = repr(event).encode("utf-8", "replace")
    return dead_letter(INTERNAL_ERROR, f"classify: {type(exc).__name__}: {exc}", topic=topic,
                       partition=partition, offset=offset, index=index, payload=payload, stage="classify")


class Classify(beam.PTransform):
    """PCollection[event dict] -> object with `.events` (classified) and `.dlq` (dead letters)."""

    def __init__(self, cfg: ClassifyConfig, label: str | None = None) -> None:
        super().__init__(label)
        self._cfg = cfg

    def expand(self, events):
        return events | "ClassifyEvents" >> beam.ParDo(ClassifyFn(self._cfg)).with_output_types(
            Batch).with_outputs(DLQ_TAG, main="events")

