"""The native fast path of unpack (native/, perf_native) gives EXACTLY what the Python path gives: the same
events (values and key order), dead letters and counters, on generated and hand-written batches."""

from __future__ import annotations

import random
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_unpack_properties import GOOD, HEADERS, ITEMS, JSONISH, SCALARS
from transforms.common import KafkaRecord, now_ms
from transforms.unpack import Unpacker, validate_unpack_config

NOW = now_ms()  # one ingest time for both paths: they stamp events and dead letters with it
TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIGS = {
    "default": None,
    "small_limits": {"text_fields": ["message", "stack", "msg", "app_id"],
                     "validation": {"max_field_chars": 12, "max_items": 3, "max_value_bytes": 300}},
    "per_topic": {"envelopes": [{"topic": "j", "envelope": "json"}, {"topic": "u", "envelope": "upload"},
                                {"topic": "l", "envelope": "logs"}, {"topic": "g", "envelope": "jsonl"}],
                  "validation": {"max_past_skew_s": None, "max_future_skew_s": None}},
    # config/default.yaml's validation, and every type name: the native code hands failing records back
    "validated": {"validation": {"required": ["app_id"],
                                 "types": {"duration_ms": "number", "device_id": "string"}}},
    "all_types": {"validation": {"required": ["platform", "duration_ms", "event_name"],
                                 "types": {"x": "integer", "y": "boolean", "z": "object", "w": "array",
                                           "message": "string", "v": "number"}}},
}


def test_native_module_is_installed():
    import perf_native  # noqa: F401 - ./run.sh setup python builds it; a missing wheel fails here

    assert Unpacker(validate_unpack_config(None), native=True).native


def test_native_off_when_the_config_needs_python():
    # required keys outside the event's own keys (attrs, time keys) are Python's alone
    for section in ({"validation": {"required": ["x"]}}, {"validation": {"required": ["timestamp"]}},
                    {"text_fields": ["message", "message"]}):
        assert not Unpacker(validate_unpack_config(section), native=True).native
    assert not Unpacker(validate_unpack_config(None), native=False).native
    for name in ("validated", "all_types"):
        assert Unpacker(validate_unpack_config(CONFIGS[name]), native=True).native


def test_default_config_runs_native():
    import yaml

    from tests.conftest import ROOT

    raw = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    assert Unpacker(validate_unpack_config(raw["unpack"]), native=True).native


def _dump(obj) -> bytes:
    try:
        return orjson.dumps(obj, default=lambda b: ["bytes", b.hex()] if isinstance(b, bytes) else repr(b))
    except TypeError:  # nested deeper than orjson writes: repr shows key order and types as well
        return repr(obj).encode()


def run_both(records, section=None, batches=2, feed=list):
    """Unpack `records` with native ON and OFF (same ingest time); assert identical outputs and stats.
    `feed` makes what unpack_batch gets from the records (list, tuple, iter)."""
    cfg = validate_unpack_config(section)
    records = list(records)
    results = []
    with mock.patch("transforms.unpack.now_ms", lambda: NOW), mock.patch("transforms.common.now_ms",
                                                                          lambda: NOW):
        for native in (True, False):
            u = Unpacker(cfg, native=native)
            assert u.native is native
            # several batches: the first one fills the topic cache, the next ones use it
            outs = [u.unpack_batch(feed(records)) for _ in range(batches)]
            results.append((outs, u.stats))
    (n_outs, n_stats), (p_outs, p_stats) = results
    for (ne, nd), (pe, pd) in zip(n_outs, p_outs, strict=True):
        assert ne == pe
        assert nd == pd
        assert _dump(ne) == _dump(pe)  # key order and int/float types too
        assert _dump(nd) == _dump(pd)
    assert dict(n_stats) == dict(p_stats)
    assert list(n_stats.items()) == list(p_stats.items())
    return p_outs[0]


def rec(value, offset=7, topic="perf", partition=2, ts=NOW - 5, headers=()):
    return KafkaRecord(topic, partition, offset, ts, b"k", value, tuple(headers))


# --- generated batches ----------------------------------------------------------------------------------

TOPICS = st.sampled_from(["perf", "j", "u", "l", "g", "perf"])
TIMES = st.integers(NOW - 8 * 86400_000, NOW + 2 * 3600_000) | st.sampled_from([NOW // 1000, 0, -1])
UPLOAD = st.builds(lambda m, d: {"meta": m, "data": d}, GOOD | ITEMS | st.none() | SCALARS,
                   st.lists(GOOD | GOOD | ITEMS | JSONISH, max_size=5) | JSONISH)
VALUES = (
    st.one_of(UPLOAD, GOOD, ITEMS, JSONISH, st.builds(lambda d: {"data": d, "meta": None}, st.lists(GOOD)))
    .map(orjson.dumps)
    | st.binary(max_size=120)
    | st.lists(ITEMS.map(orjson.dumps), min_size=1, max_size=4).map(b"\n".join)  # jsonl-looking
    | st.sampled_from([b"", b"  \n", b"null", b"[1]", b'{"a":1} {"b":2}', b'{"a":1}\n{"b":2}'])
    | st.none()
)
RECORD_HEADERS = HEADERS | st.just([("traceparent", TP)]) | st.just([("traceparent", TP), ("x", b"y")])


@st.composite
def records(draw, max_size=12):
    n = draw(st.integers(1, max_size))
    return [KafkaRecord(draw(TOPICS), draw(st.integers(0, 3)), offset, draw(TIMES), b"k", draw(VALUES),
                        tuple(draw(RECORD_HEADERS))) for offset in range(n)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_generated_batches_identical(name):
    @SETTINGS
    @given(records())
    def check(batch):
        run_both(batch, CONFIGS[name])

    check()


def test_bench_records_identical_and_all_native():
    import perf_native

    from bench.kernel import TOPIC, make_records

    rnd = random.Random(3)
    words = ["FATAL", "ANR in", "Skipped 87 frames!", "数据 💥", "a\"b\\c\n", "x" * 300]
    lines = [(" ".join(rnd.choice(words) for _ in range(rnd.randint(1, 8))), "c") for _ in range(200)]
    recs, expected = make_records(5000, lines)
    events, dls = run_both(recs)
    assert not dls and len(events) == len(expected) == 5000
    # the bench's records are all the common case: no record left to Python
    u = Unpacker(validate_unpack_config(None), native=True)
    _, fallbacks, n_up = perf_native.unpack_records(
        recs, KafkaRecord, u._topics, u._topic_info, NOW, 0, 1 << 62, u._text_fields, *u._native_limits)
    assert fallbacks == [] and n_up > 0 and TOPIC in u._topics


# --- hand-written edge cases ----------------------------------------------------------------------------

META = {"app_id": "com.example.game", "platform": "android", "sdk_version": "3.2.1", "device_id": "d1"}
EDGE_VALUES = [
    # duplicate keys: first position, last value (dict semantics), top level, meta, item, nested
    b'{"a": 1, "b": 2, "a": 3}',
    b'{"meta": {"app_id": "x", "k": 1, "app_id": "y"}, "data": [{"m": 1, "m": {"z": 1, "z": 2}}]}',
    b'{"meta": {"k": 1}, "data": [{"x": 1}], "meta": {"k": 2}}',
    b'{"data": [{"x": 1}], "meta": null}',
    b'{"meta": {}, "data": [{"a": 1, "a": null}]}',
    ("{" + ", ".join(f'"k{i % 23}": {i}' for i in range(60)) + "}").encode(),  # > 16 keys, repeats
    # meta overridden by the item: meta's key order stays
    orjson.dumps({"meta": {**META, "z": 1, "sdk_version": "m"},
                  "data": [{"sdk_version": "item", "platform": "ios", "new": [1, {"a": None}]}]}),
    orjson.dumps({"meta": {"message": "from meta", "x": 1}, "data": [{"a": 1}, {"message": "own"}]}),
    # time keys: pop order, null falls through, later keys stay in attrs
    b'{"timestamp": null, "time": null, "ts": 1794999999000, "x": 1}',
    b'{"ts": 1794999999000, "time": 1794999999001, "timestamp": null}',
    b'{"time": 1794999999001, "ts": "later"}',
    b'{"timestamp": 1794999999.5}',
    b'{"timestamp": "2026-11-22T06:00:00Z"}',
    b'{"timestamp": 1794999999}',
    b'{"timestamp": 1}',
    b'{"timestamp": 99999999999999999999}',
    b'{"meta": {"timestamp": 1794999999000}, "data": [{"a": 1}, {"timestamp": null}, {"ts": 1794999998000}]}',
    # null / number / other types of the top fields
    b'{"app_id": null, "event_name": null, "name": null, "type": "t", "platform": null, "device_id": null}',
    b'{"event_name": "e", "name": "n", "type": "t"}',
    b'{"app_id": 12, "platform": 1.5, "device_id": true}',
    b'{"app_id": ["x"]}',
    b'{"duration_ms": 5}', b'{"duration_ms": 2.5}', b'{"duration_ms": "7"}', b'{"duration_ms": null}',
    b'{"duration_ms": -0.0}', b'{"duration_ms": 9007199254740993}', b'{"duration_ms": 18446744073709551615}',
    b'{"duration_ms": true}',
    # text fields: order, non-strings stay in attrs, too long
    b'{"stack": "s", "message": "m", "reason": "r", "error": {"x": 1}, "log": 5}',
    b'{"message": "' + b"x" * 70000 + b'"}',
    b'{"meta": {"message": "' + b"y" * 70000 + b'"}, "data": [{"a": 1}]}',
    # unicode, emoji, escapes
    '{"message": "崩溃 💥 Ошибка", "ключ": "значение", "e": "\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/\\b\\f\\r"}'
    .encode(),
    b'{"a": "\\u0000\\u001f\\u007f", "\\u00e9": 1}',
    b'{"a": "\\ud800"}', b'{"a": "\\udc00"}', b'{"a": "\\ud800\\u0041"}', b'{"a": "\xff"}',
    b'{"a": "\xed\xa0\x80"}', b'{"a": "tab\tinside"}', b'\xef\xbb\xbf{"a": 1}',
    # numbers
    b'{"a": 18446744073709551615, "b": -9223372036854775808, "c": 0, "d": -0}',
    b'{"a": 18446744073709551616}', b'{"a": -9223372036854775809}', b'{"a": 123456789012345678901234567890}',
    b'{"a": 1e300, "b": 0.1, "c": -0.0, "d": 1E2, "e": 1.5e-400, "f": 2.2250738585072011e-308}',
    b'{"a": 1e400}', b'{"a": 01}', b'{"a": 1.}', b'{"a": .5}', b'{"a": 9007199254740993.0}',
    b'{"a": 5e-324, "b": 1.7976931348623157e308, "c": 0.30000000000000004, "d": 123.456e-7}',
    # nesting
    b'{"a": [[[[]]], {"b": [1, [2, {"c": []}]]}], "e": {}}',
    b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}", b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}",
    # upload shapes
    orjson.dumps({"meta": META, "data": []}),
    orjson.dumps({"meta": META, "data": [1, {"a": 1}]}),
    orjson.dumps({"meta": META, "data": {"a": 1}}),
    orjson.dumps({"meta": [1], "data": [{"a": 1}]}),
    orjson.dumps({"meta": META, "data": [{"a": i} for i in range(10001)]}),
    orjson.dumps({"meta": META, "data": [{"a": 1}, {"app_id": 5}]}),
    orjson.dumps({"meta": META, "data": [{"a": 1}, {"timestamp": "bad"}]}),
    orjson.dumps({"headers": {"app_id": "a", "log_name": "x"}, "logs": {"mtime": 1794999999}}),
    orjson.dumps({"headers": 1, "logs": 2, "data": [], "meta": 1}),
    # not one JSON object
    b"", b"   ", b"\x0b", b"null", b"1", b'"s"', b"[]", b'{"a": 1}x', b'{"a": 1} ', b' \r\n\t{"a": 1}',
    b'{"a": 1,}', b'{"a" 1}', b"{", b'{"a": tru}', b'{"a": nul}', b'{"a": 1}\n{"b": 2}',
    b'{"a":1}\n\n{"b":"x"}\n',
    b"not json\nat all", "{\"s\": \"str value\"}", bytearray(b'{"a": 1}'), None,
]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_edge_cases_identical(name):
    batch = [rec(v, offset=i, topic=("perf", "j", "u")[i % 3] if name == "per_topic" else "perf")
             for i, v in enumerate(EDGE_VALUES)]
    run_both(batch, CONFIGS[name])
    for v in EDGE_VALUES:  # one by one too: a batch of one, nothing before or after it
        run_both([rec(v)], CONFIGS[name], batches=1)


@pytest.mark.parametrize("headers", [
    [("traceparent", TP)],
    [("traceparent", b"  " + TP + b"\r\n\x1c")],
    [("traceparent", TP.decode())],
    [("traceparent", TP.upper())],
    [("traceparent", b"garbage"), ("traceparent", TP)],
    [("traceparent", TP), ("traceparent", b"garbage")],
    [("traceparent", b"00-00000000000000000000000000000000-b7ad6b7169203331-01")],
    [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01")],
    [("traceparent", b"\xff\xfe")], [("traceparent", b"")], [("traceparent", None)], [("traceparent", 5)],
    [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\u3000")],
    [(b"traceparent", TP)], [("x", b"y")], [], [["traceparent", TP]],
])
def test_traceparent_identical(headers):
    run_both([rec(orjson.dumps({"meta": META, "data": [{"a": 1}, {"b": 2}]}), headers=headers),
              rec(b'{"a": 1}', offset=8, headers=headers)])


def test_record_shapes_identical():
    v = b'{"a": 1}'
    batch = [
        rec(v, ts=0), rec(v, ts=-5), rec(v, ts=None), rec(v, ts=True), rec(v, ts=2**70),
        rec(v, partition=True), rec(v, offset=2**70), rec(v, partition=None), rec(v, topic=None),
        rec(v, topic="bad\udc80topic"), rec(v, topic="ünï"), rec(v, offset=300),
        KafkaRecord("perf", 0, 1, NOW, None, v), (1, 2), None, "x",
    ]
    run_both(batch)
    run_both(batch, feed=tuple)
    run_both(batch, feed=iter)


def test_validation_failures_are_handed_back_and_rejected_by_python():
    # Each record below fails `validated`/`all_types` in one way; natively built they would pass unchecked.
    def up(meta, *items):
        return orjson.dumps({"meta": meta, "data": list(items)})

    ok = {"app_id": "a", "platform": "p", "duration_ms": 1, "event_name": "e", "message": "m"}
    values = [
        up({"device_id": 5}, {**ok, "device_id": "d"}),  # meta typed value wrong, item overrides it
        up({}, {**ok, "device_id": 7}),  # item typed value wrong (and a number: not a str)
        up({"app_id": ""}, {k: v for k, v in ok.items() if k != "app_id"}),  # required, empty
        up({}, {k: v for k, v in ok.items() if k != "duration_ms"}),  # required duration_ms missing
        up({}, {**ok, "x": 1.5}, {**ok, "x": 2}),  # integer check: a float fails, an int passes
        up({"y": 1}, ok),  # boolean
        orjson.dumps({**ok, "z": [1], "w": {}}),  # object / array swapped (json envelope)
        orjson.dumps({**ok, "v": True}),  # bool is not a number
        orjson.dumps({**ok, "message": 3}),  # a typed text field
        up({}, ok, {**ok, "app_id": None}),  # second item: required app_id null
        up({}, ok),  # passes everything
    ]
    for name in ("validated", "all_types"):
        batch = [rec(v, offset=i) for i, v in enumerate(values)]
        events, dls = run_both(batch, CONFIGS[name])
        assert dls, name  # the failures became dead letters (from the Python code)
        assert all(d["code"] == "VALIDATION_ERROR" for d in dls), name
    # the last record passes both configs and is built natively
    u = Unpacker(validate_unpack_config(CONFIGS["all_types"]), native=True)
    events, dls = u.unpack_batch([rec(values[-1])])
    assert len(events) == 1 and not dls
