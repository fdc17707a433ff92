"""Property tests: unpack never raises; every input ends up as events or dead letters, counts adding up."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from transforms.common import DLQ_TAG, KafkaRecord, now_ms
from transforms.unpack import ENVELOPES, Unpacker, UnpackFn, validate_unpack_config

NOW = now_ms()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CFG = validate_unpack_config({"validation": {"required": ["app_id"], "types": {"level": "integer"},
                                             "max_field_chars": 50, "max_items": 20}})
CODES = {"EMPTY", "DECODE_ERROR", "VALIDATION_ERROR", "TOO_LARGE", "INTERNAL_ERROR"}

KEYS = st.sampled_from(["app_id", "timestamp", "time", "ts", "message", "stack", "duration_ms", "event_name",
                        "name", "device_id", "platform", "level", "meta", "data", "headers", "logs", "mtime"])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=60)
           | st.integers(NOW - 10**8, NOW + 10**6) | st.sampled_from(["app", "2026-11-22T06:00:00Z", ""]))
JSONISH = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                       | st.dictionaries(KEYS | st.text(max_size=8), kids, max_size=5), max_leaves=12)
ITEMS = st.dictionaries(KEYS | st.text(max_size=8), JSONISH, max_size=7)
GOOD = st.fixed_dictionaries({"app_id": st.text(min_size=1, max_size=10)},
                              optional={"timestamp": st.integers(NOW - 10**8, NOW + 10**6),
                                        "message": st.text(max_size=60), "level": st.integers(0, 9),
                                        "duration_ms": st.floats(0, 1e6), "x": JSONISH})
HEADERS = st.lists(st.tuples(st.sampled_from(["traceparent", "x"]), st.binary(max_size=60)), max_size=3)


def record(value, offset=1, headers=(), topic="t"):
    return KafkaRecord(topic, 0, offset, NOW, b"k", value, tuple(headers))


def check_accounting(events, dls, n_items=None):
    """>= 1 output; a message-level dead letter is alone; else each item index appears exactly once."""
    assert events or dls
    for d in dls:
        assert d["code"] in CODES and isinstance(d["reason"], str) and d["reason"]
        assert d["payload"] is None or isinstance(d["payload"], bytes)
    if any(d["index"] is None for d in dls):
        assert len(dls) == 1 and not events
        return None
    idx = [e["src"][3] for e in events] + [d["index"] for d in dls]
    assert len(idx) == len(set(idx))
    if n_items is not None:
        assert sorted(idx) == list(range(n_items))
    for e in events:
        assert isinstance(e["event_time"], int) and isinstance(e["app_id"], str) and e["app_id"]
        assert all(isinstance(v, str) for v in e["fields"].values())
        assert e["envelope"] in ENVELOPES
        assert e["traceparent"] is None or len(e["traceparent"]) == 55
    return idx


@SETTINGS
@given(st.binary(max_size=400) | st.none(), HEADERS)
def test_arbitrary_bytes_never_raise(value, headers):
    u = Unpacker(CFG)
    events, dls = u.unpack(record(value, headers=headers))
    check_accounting(events, dls)
    assert u.stats["records_in"] == 1
    assert u.stats["events_out"] == len(events) and u.stats["dead_letters"] == len(dls)


@SETTINGS
@given(JSONISH)
def test_arbitrary_json_never_raises(obj):
    events, dls = Unpacker(CFG).unpack(record(orjson.dumps(obj)))
    check_accounting(events, dls)


@SETTINGS
@given(GOOD | ITEMS, st.lists(GOOD | GOOD | ITEMS | JSONISH, min_size=1, max_size=25))
def test_upload_items_add_up(meta, data):
    u = Unpacker(CFG)
    value = orjson.dumps({"meta": meta, "data": data})
    events, dls = u.unpack(record(value))
    idx = check_accounting(events, dls, n_items=len(data))
    event("rejected" if idx is None else "all ok" if not dls else "none ok" if not events else "partial")
    if idx is None:
        return
    codes = (u.stats["uploads.200"], u.stats["uploads.206"], u.stats["uploads.400"])
    assert codes == ((1, 0, 0) if not dls else (0, 0, 1) if not events else (0, 1, 0))
    for d in dls:  # each rejected item replays alone, with the same verdict
        assert orjson.loads(d["payload"]) == {"meta": meta, "data": [data[d["index"]]]}
        again_events, again = Unpacker(CFG).unpack(record(d["payload"], offset=2))
        assert not again_events and [x["code"] for x in again] == [d["code"]]


@SETTINGS
@given(st.lists(ITEMS.map(orjson.dumps) | st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
                min_size=2, max_size=15))
def test_jsonl_lines_add_up(lines):
    u = Unpacker(validate_unpack_config({"envelopes": [{"topic": "gw", "envelope": "jsonl"}],
                                         "validation": {"required": ["app_id"], "max_items": 100}}))
    value = b"\n".join(lines)
    events, dls = u.unpack(record(value, topic="gw"))
    if not value.strip():
        assert not events and [d["code"] for d in dls] == ["EMPTY"]
        return
    nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
    idx = check_accounting(events, dls)
    assert sorted(idx) == nonblank
    for d in dls:
        assert d["payload"] == lines[d["index"]].strip()


@SETTINGS
@given(st.lists(st.binary(max_size=80) | st.none() | ITEMS.map(orjson.dumps), max_size=8)
       | st.integers() | st.none() | st.text(max_size=20))
def test_dofn_never_raises(element):
    fn = UnpackFn(CFG)
    fn.setup()
    if isinstance(element, list):
        element = [record(v, offset=i) for i, v in enumerate(element)]
        n = len(element)
    else:
        n = 1
    out = list(fn.process(element))
    fn.finish_bundle()
    if isinstance(element, list):  # a list of records gives one list of events (and dead letters)
        assert sum(type(o) is list for o in out) <= 1
        out = [e for o in out for e in (o if type(o) is list else (o,))]
    # one output per record at least; every record is accounted for in the outputs
    offsets = {o.value["offset"] if getattr(o, "tag", None) == DLQ_TAG else o["src"][2] for o in out}
    if isinstance(element, list):
        assert offsets == set(range(n))
    else:
        assert len(out) == 1 and out[0].tag == DLQ_TAG and out[0].value["code"] == "INTERNAL_ERROR"


@SETTINGS
@given(st.fixed_dictionaries({"headers": ITEMS | JSONISH, "logs": ITEMS | JSONISH}))
def test_logs_envelope_one_event_or_one_dead_letter(obj):
    events, dls = Unpacker(CFG).unpack(record(orjson.dumps(obj)))
    check_accounting(events, dls)
    assert len(events) + len(dls) == 1
    if events:
        assert events[0]["envelope"] == "logs"
