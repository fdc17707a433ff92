"""The native route_messages (native/src/route.rs) builds the messages route.py's Python code builds."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.kafkaio import KafkaMessage, KafkaRecord
from transforms.native import perf_native
from transforms.route import _EventsToMessagesFn

TEMPLATE = "to_analyzer__0.{category}"
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _fn(native: bool) -> _EventsToMessagesFn:
    fn = _EventsToMessagesFn(TEMPLATE)
    fn.setup()
    if not native:
        fn._native = None
    return fn


def _comparable(m: KafkaMessage):
    """A message without its random span id: (topic, key, value, [(name, trace id, flags)])."""
    headers = []
    for name, value in m.headers:
        version, trace, span, flags = value.decode().split("-")
        assert version == "00" and len(span) == 16 and int(span, 16) != 0
        headers.append((name, trace, flags))
    return m.topic, m.key, m.value, headers


def assert_same(events: list) -> list[int]:
    """The DoFn's messages with the native path == without it; returns the indices handed back."""
    native_fn = _fn(True)
    assert native_fn._native is not None
    native = native_fn.process(list(events))
    python = _fn(False).process(list(events))
    assert len(native) == len(python)
    if native:
        assert all(type(m) is KafkaMessage for m in native[0])
        assert [_comparable(m) for m in native[0]] == [_comparable(m) for m in python[0]]
    # the handed-back set, with a warm topic cache (as after the first list of a bundle)
    _, back = perf_native.route_messages(list(events), native_fn._topics, orjson.dumps, KafkaMessage)
    return back


def _event(i: int = 0, **kw) -> dict:
    e = {
        "event_id": f"e{i}", "event_time": 1_700_000_000_000 + i, "ingest_time": 1_700_000_000_900 + i,
        "app_id": "com.example.game", "event_name": "lag", "platform": "android", "device_id": f"d{i}",
        "duration_ms": 812.5, "fields": {"message": "ANR in com.example", "stack": "at a.b(C.java:1)"},
        "attrs": {"sdk": "3.2.1", "ratio": 0.25}, "traceparent": PARENT, "src": ["ingest.perf", 0, i, 0],
        "envelope": "upload", "category": "PERF_ANR", "rule_id": "anr", "engine": "hyperscan",
    }
    e.update(kw)
    return e


def test_route_messages_is_built():
    # ./run.sh setup python builds perf_native; a missing function fails here, not skips
    assert perf_native is not None and hasattr(perf_native, "route_messages")


def test_common_events_are_native_and_identical():
    events = [_event(i) for i in range(200)]
    events += [_event(i, traceparent=None, category="PERF_LAG") for i in range(9)]
    assert assert_same(events) == []
    msgs, back = perf_native.route_messages(events, {"PERF_ANR": "t.a", "PERF_LAG": "t.l"}, orjson.dumps,
                                           KafkaMessage)
    assert back == []
    m = msgs[0]
    assert m.topic == "t.a" and m.key == b"com.example.game" and orjson.loads(m.value) == events[0]
    assert m.value == orjson.dumps(events[0])
    assert msgs[-1].headers == () and msgs[-1].topic == "t.l"
    spans = {dict(m.headers)["traceparent"].split(b"-")[2] for m in msgs[:200]}
    assert len(spans) == 200  # a new span per message


def test_unusual_events_are_handed_back_and_python_decides():
    odd = [
        _event(traceparent=" " + PARENT),  # Python strips it: valid
        _event(traceparent=PARENT + "-x"),  # a suffix: invalid for version 00
        _event(traceparent="01" + PARENT[2:] + "-more"),  # a suffix a later version may carry
        _event(traceparent=PARENT.upper()),
        _event(traceparent="ff" + PARENT[2:]),
        _event(traceparent="00-" + "0" * 32 + PARENT[35:]),
        _event(traceparent=PARENT[:36] + "0" * 16 + PARENT[52:]),
        _event(traceparent="garbage"),
    ]
    # values orjson writes its own way stay native: it is orjson that writes them
    fine = [_event(duration_ms=math.nan), _event(duration_ms=-math.inf), _event(attrs=("a", "tuple")),
            _event(fields={"message": "ünï \u2028 😀 \"q\" \\ \n"})]
    back = assert_same([_event(0)] + odd + fine + [_event(1)])
    assert back == list(range(1, len(odd) + 1))


def test_message_type_must_be_a_plain_namedtuple():
    class Wider(tuple):  # a tuple subclass with a __dict__: not the layout route.rs writes
        pass

    for bad in (dict, Wider):
        with pytest.raises(TypeError, match="NamedTuple"):
            perf_native.route_messages([_event()], {"PERF_ANR": "t"}, orjson.dumps, bad)


@pytest.mark.parametrize("bad", [
    {"app_id": 7}, {"category": None}, {"src": ["t", 0, 2**70, 0]}, {"fields": {"message": "\ud800"}},
    {"fields": {1: "int key"}},
])
def test_what_python_rejects_is_handed_back_and_fails_as_in_python(bad):
    # unpack never emits these; if one came, the bundle fails the same way with or without the native path
    events = [_event(0), _event(1, **bad)]
    assert perf_native.route_messages(events, {"PERF_ANR": "t"}, orjson.dumps, KafkaMessage)[1] == [1]
    with pytest.raises(Exception) as py_err:
        _fn(False).process(list(events))
    with pytest.raises(Exception) as native_err:
        _fn(True).process(list(events))
    assert type(native_err.value) is type(py_err.value) and str(native_err.value) == str(py_err.value)


def test_first_list_fills_the_topic_cache():
    fn = _fn(True)
    events = [_event(i, category=c) for i, c in enumerate(["A", "B", "A", "C"])]
    first = fn.process(events)[0]
    assert [m.topic for m in first] == [TEMPLATE.format(category=c) for c in "ABAC"]
    assert perf_native.route_messages(events, fn._topics, orjson.dumps, KafkaMessage)[1] == []


FLOATS = [0.0, -0.0, 1.0, -1.5, 0.1, 1e15, 1e16, 1.5e16, 123456789012345678.0, 1e-4, 1e-5, 1.5e-5, 1e-6,
          1e-7, 5e-324, 1.7976931348623157e308, 2.5, 100.0, 33.333333333333336, 1e21, 1e22, 1e300,
          0.30000000000000004, 9007199254740993.0, 2**53 + 0.0, 1234.5678e-10]


@pytest.mark.parametrize("v", FLOATS)
def test_floats_as_orjson_writes_them(v):
    e = _event(duration_ms=v, attrs={"x": [v, -v]})
    msgs, back = perf_native.route_messages([e], {"PERF_ANR": "t"}, orjson.dumps, KafkaMessage)
    assert back == [] and msgs[0].value == orjson.dumps(e)


_atom = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.floats()
         | st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=12))
_json = st.recursive(
    _atom, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
    max_leaves=12,
)


@st.composite
def _events(draw):
    e = _event(draw(st.integers(0, 1000)))
    e["fields"] = draw(st.dictionaries(st.text(max_size=8), _json, max_size=5))
    e["duration_ms"] = draw(_atom)
    choices = {"traceparent": [PARENT, "", None, PARENT.upper(), " " + PARENT, "x"],
               "app_id": ["", "com.x", "ünï", "a\nb"], "category": ["PERF_LAG", "PERF_ANR", "a b/c"]}
    for k, values in choices.items():
        if draw(st.booleans()):
            e[k] = draw(st.sampled_from(values))
    return e


@settings(max_examples=300, deadline=None)
@given(st.lists(_events(), max_size=6))
def test_hypothesis_same_as_python(events):
    assert_same(events)


def test_generated_pipeline_events_are_native():
    # the e2e bench's mix, unpacked and classified as in the pipeline: all but the odd ones go native
    from pipeline.config import load_config
    from pipeline.generate import LOGHUB, Generator
    from transforms.classify import Classifier
    from transforms.unpack import Unpacker

    assert LOGHUB.is_dir(), f"Loghub data missing: {LOGHUB} (the generator's message bodies)"
    cfg = load_config("config/default.yaml")
    gen = Generator(seed=9)
    recs = [KafkaRecord(f"ingest.{m.topic}", 0, off, 1_700_000_000_000, m.key, m.value,
                        tuple(m.headers or ())) for off, m in enumerate(gen.mix(800))]
    events = Unpacker(cfg.unpack).unpack_batch(recs)[0]
    events = Classifier(cfg.classify).classify_batch(events, inplace=True)
    assert len(events) > 2000
    back = assert_same(events)
    assert len(back) < len(events) // 100, back[:20]
