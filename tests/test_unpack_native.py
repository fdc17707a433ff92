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


# --- JSON Lines and headers+logs envelopes -------------------------------------------------------------

DEFAULT_SECTION = None  # config/default.yaml's unpack section, loaded once by _default_section()


def _default_section() -> dict:
    global DEFAULT_SECTION
    if DEFAULT_SECTION is None:
        import yaml

        from tests.conftest import ROOT

        DEFAULT_SECTION = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())["unpack"]
    return DEFAULT_SECTION


def native_fallbacks(records, section=None) -> list[int]:
    """Indexes of the records the native code hands back to Python (called as _unpack_native calls it)."""
    u = Unpacker(validate_unpack_config(section), native=True)
    with mock.patch("transforms.unpack.now_ms", lambda: NOW):
        u.unpack_batch([])  # sets the batch's time bounds
    _, fallbacks, _ = u._native(list(records), KafkaRecord, u._topics, u._topic_info, NOW, u._t_lo, u._t_hi,
                                u._text_fields, *u._native_limits, *u._native_checks)
    return [i for i, _, _ in fallbacks]


S = NOW // 1000  # the current time in seconds
PAST_MS = NOW - 7 * 86400_000  # the default skew bounds, in ms
FUTURE_MS = NOW + 3600_000
# payload times in every unit, inside and outside the default skew bounds, and exactly on them
TIME_VALUES = [
    S, S - 100, NOW, NOW - 1, NOW * 1000 + 999, -NOW * 1000, NOW * 1_000_000 + 123, 2**63 - 1, 2**64 - 1,
    S + 0.25, S - 0.0005, float(NOW), NOW + 0.75, float(NOW * 1000), 1e17, -1.5, 0, 0.0, -S, 5, 10**11 - 1,
    PAST_MS, PAST_MS - 1, FUTURE_MS, FUTURE_MS + 1, -(-PAST_MS // 1000), PAST_MS // 1000,
    FUTURE_MS // 1000, FUTURE_MS // 1000 + 1, PAST_MS / 1000, FUTURE_MS / 1000, (FUTURE_MS + 1) / 1000,
    PAST_MS * 1000, PAST_MS * 1000 - 1, FUTURE_MS * 1000 + 999, FUTURE_MS * 1_000_000 + 999_999,
    str(S), str(NOW), " 1794999999 ", "2026-11-22T06:00:00Z", "", None, True, [S], {"s": S},
]
TIME_ST = (st.sampled_from(TIME_VALUES) | st.integers(S - 8 * 86400, S + 7200)
           | st.floats(S - 8 * 86400, S + 7200) | st.integers(NOW - 8 * 86400_000, NOW + 7200_000))
NAMES = st.none() | st.integers(-5, 2**64 - 1) | st.sampled_from(
    ["log_item", "", "ü", 1.5, True, [1], {"a": 1}])
LOG_BODY = st.dictionaries(
    st.sampled_from(["mtime", "timestamp", "ts", "time", "app_id", "log_name", "event_name", "name", "type",
                     "platform", "message", "stack", "x", "y", "duration_ms", "device_id"])
    | st.text(max_size=6),
    TIME_ST | JSONISH | NAMES, max_size=9)
LOG_HEADERS = st.fixed_dictionaries({}, optional={"app_id": NAMES | st.text(max_size=8), "log_name": NAMES,
                                                 "x": JSONISH, "mtime": TIME_ST,
                                                 "message": st.text(max_size=9)})
LOGS = st.builds(lambda h, b, order: dict(sorted({"headers": h, "logs": b}.items(), reverse=order)),
                 LOG_HEADERS | JSONISH, LOG_BODY | JSONISH, st.booleans())
LINE = (GOOD | ITEMS | LOG_BODY).map(orjson.dumps) | st.sampled_from(
    [b"", b" ", b"\r", b"\x0b", b"\x0c", b"\x1c", b"[1]", b"5", b'"s"', b"{", b'{"a": x}', b"null", b"{}",
     b'{"a":1} {"b":2}', b'\t{"a": 1}\r', b'{"a": 1}\x0c', b'{"a":\r1}', b"\xef\xbb\xbf{}", b'{"a": "\xff"}'])
JSONL = st.builds(lambda lines, sep, end: sep.join(lines) + end, st.lists(LINE, min_size=1, max_size=7),
                  st.sampled_from([b"\n", b"\r\n", b"\n\n", b" \n"]),
                  st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]))
JSONL_TOPICS = st.sampled_from(["perf", "g", "l", "j", "u"])


@st.composite
def jsonl_logs_records(draw, max_size=8):
    n = draw(st.integers(1, max_size))
    values = st.one_of(LOGS.map(orjson.dumps), JSONL,
                       st.builds(lambda b: orjson.dumps({"timestamp": b.get("mtime"), **b}), LOG_BODY))
    return [KafkaRecord(draw(JSONL_TOPICS), draw(st.integers(0, 3)), offset, draw(TIMES), b"k", draw(values),
                        tuple(draw(RECORD_HEADERS))) for offset in range(n)]


@pytest.mark.parametrize("name", [*CONFIGS, "default_yaml"])
def test_generated_jsonl_and_logs_identical(name):
    section = _default_section() if name == "default_yaml" else CONFIGS[name]

    @SETTINGS
    @given(jsonl_logs_records())
    def check(batch):
        run_both(batch, section)

    check()


LOGS_BODY = {"account_name": "4242424242", "action": 1200, "item_id": 12345678, "amount": 3, "mtime": S - 30,
             "role_id": 1234567890123, "server_id": 5001, "platform": 3100, "message": "Skipped 87 frames!"}


def logs(headers=None, body=None, **top):
    return orjson.dumps({"headers": {"app_id": 24, "log_name": "log_item"} if headers is None else headers,
                         "logs": LOGS_BODY if body is None else body, **top})


LOGS_VALUES = [
    logs(),  # the e2e generator's game log: app_id int, platform int, mtime in seconds
    logs(body={k: v for k, v in LOGS_BODY.items() if k != "mtime"}),  # no mtime: the Kafka timestamp
    logs(body={**LOGS_BODY, "mtime": None, "timestamp": NOW - 5}),  # mtime null, timestamp pops next
    logs(body={**LOGS_BODY, "mtime": NOW - 5, "timestamp": NOW - 9}),  # mtime in ms wins, timestamp stays
    logs(body={**LOGS_BODY, "mtime": S - 30.5}), logs(body={**LOGS_BODY, "mtime": (NOW - 5) * 1000}),
    logs(body={**LOGS_BODY, "mtime": "2026-11-22T06:00:00Z"}), logs(body={**LOGS_BODY, "mtime": str(S)}),
    logs(body={**LOGS_BODY, "mtime": 5}), logs(body={**LOGS_BODY, "mtime": S + 7200}),  # skew: rejected
    logs(body={**LOGS_BODY, "mtime": True}),
    logs(headers={"app_id": "com.x", "mtime": S - 1}, body={"message": "m"}),  # time from the headers
    logs(headers={"app_id": "a"}), logs(headers={"app_id": "a", "log_name": None}),  # log_name missing/null
    logs(headers={"app_id": "a", "log_name": ""}), logs(headers={"app_id": "a", "log_name": 0}),
    logs(headers={"app_id": "a", "log_name": 2**64 - 1}), logs(headers={"app_id": "a", "log_name": -7}),
    logs(headers={"app_id": "a", "log_name": 1.5}), logs(headers={"app_id": "a", "log_name": True}),
    logs(headers={"app_id": "a", "log_name": ["x"]}), logs(headers={"app_id": "a", "log_name": "日志 💥"}),
    logs(headers={"log_name": "x"}), logs(headers={"app_id": None, "log_name": "x"}),  # app_id missing/null
    logs(headers={"app_id": 2.5, "log_name": "x"}), logs(headers={"app_id": [1], "log_name": "x"}),
    logs(headers={"app_id": -(2**63), "log_name": "x"}), logs(headers={"app_id": 2**64 - 1, "log_name": "x"}),
    logs(headers={}, body={}),
    # logs' own app_id/event_name keep their position, the headers' values win
    logs(body={"x": 1, "app_id": "from logs", "event_name": "from logs", "y": 2}),
    logs(headers={"app_id": "h", "log_name": ""}, body={"x": 1, "app_id": "from logs", "event_name": "e"}),
    logs(headers={"log_name": "n"}, body={"app_id": "from logs", "name": "nm", "type": "tp"}),
    logs(headers={"app_id": "a"}, body={"name": "nm", "type": "tp", "log_name": "stays in attrs"}),
    # extra header keys: before the body's keys, the body wins over them
    logs(headers={"z": 1, "app_id": "a", "message": "from headers", "log_name": "n", "x": [1, {"a": None}]},
         body={"x": "from logs", "k": {"nested": ["ü", 1.5, None, True]}}),
    logs(headers={"app_id": "a", "log_name": "n", **{f"h{i}": i for i in range(20)}},
         body={**{f"h{i}": -i for i in range(0, 40, 3)}, **{f"k{i}": i for i in range(20)}}),
    b'{"headers": {"app_id": "a", "app_id": "b", "log_name": "n"}, "logs": {"m": 1, "m": 2, "message": "x"}}',
    b'{"headers": {"app_id": "a"}, "logs": {"x": 1}, "headers": {"app_id": "b", "log_name": "n"}}',
    '{"headers": {"app_id": "приложение", "log_name": "ошибка"}, '
    '"logs": {"message": "崩溃 💥 \\u00e9"}}'.encode(),
    logs(body={**LOGS_BODY, "duration_ms": "12.5"}), logs(body={**LOGS_BODY, "duration_ms": "slow"}),
    logs(body={**LOGS_BODY, "message": "x" * 70_000}), logs(body={**LOGS_BODY, "platform": 1.5}),
    logs(body={**LOGS_BODY, "device_id": 7}), logs(body={**LOGS_BODY, "device_id": False}),
    # shapes Python rejects or reads as another envelope
    orjson.dumps({"headers": 1, "logs": {"a": 1}}), orjson.dumps({"headers": {"app_id": "a"}, "logs": [1]}),
    orjson.dumps({"headers": None, "logs": None}), orjson.dumps({"logs": {"a": 1}}),
    orjson.dumps({"headers": {"app_id": "a"}}), logs(meta={"app_id": "m"}, data=[{"a": 1}]),
    logs() + b"\n" + logs(),  # two game logs on two lines: JSON Lines (auto)
]

LINES_OK = [orjson.dumps({"app_id": "svc.hdfs", "timestamp": NOW - 50, "host": "node-1", "message": "m1"}),
            orjson.dumps({"app_id": "svc.ssh", "timestamp": NOW - 40, "host": "node-2", "message": "m2"}),
            orjson.dumps({"ts": S - 9, "app_id": "a", "event_name": "e", "x": {"y": [1, 2.5, None]},
                          "stack": "s"})]
JSONL_VALUES = [
    b"\n".join(LINES_OK), b"\n".join(LINES_OK) + b"\n", b"\r\n".join(LINES_OK) + b"\r\n",
    b"\n\n" + b"\n\n\n".join(LINES_OK) + b"\n\n", b"  \n\t\r\n" + b"\n".join(LINES_OK),  # blank lines
    b"\n".join(b"  \t" + ln + b" \r" for ln in LINES_OK),  # whitespace around the lines
    b"\n".join(ln + b"\x0c" for ln in LINES_OK), b"\x0b\n" + b"\n".join(LINES_OK),  # \x0b \x0c: bytes.strip
    b"\n".join(ln + b"\x1c" for ln in LINES_OK),  # not whitespace for bytes.strip
    # a bad line inside: partial results (from Python)
    LINES_OK[0] + b"\n" + b'{"app_id": "svc", "message": unterminated' + b"\n" + LINES_OK[1],
    b'{"app_id": "svc", "message": unterminated\n' + LINES_OK[0],  # bad first line: whole record (auto)
    LINES_OK[0] + b"\n[1, 2]\n" + LINES_OK[1] + b'\n"s"\n5\nnull', LINES_OK[0] + b"\n{}",
    LINES_OK[0] + b"\n" + orjson.dumps({"duration_ms": "slow", "app_id": "a"}),  # a rejected line
    LINES_OK[0] + b"\n" + orjson.dumps({"app_id": ["x"]}), LINES_OK[0] + b"\n" + orjson.dumps({"app_id": 42}),
    LINES_OK[0] + b"\n" + orjson.dumps({"message": "y" * 70_000}),
    LINES_OK[0] + b"\n" + orjson.dumps({"timestamp": "2026-11-22T06:00:00Z"}),
    LINES_OK[0] + b"\n" + orjson.dumps({"timestamp": S - 10.25, "time": 1}),
    LINES_OK[0] + b"\n" + orjson.dumps({"timestamp": 3}), LINES_OK[0] + b"\n" + orjson.dumps({"mtime": S}),
    LINES_OK[0] + b"\n" + logs(),  # a logs envelope as a line: a plain object there
    b'{"a": 1} {"b": 2}\n' + LINES_OK[0], LINES_OK[0] + b'\n{"a": 1} {"b": 2}',  # two objects on a line
    b'{"a":\n1}\n' + LINES_OK[0], b'{\n  "app_id": "pretty",\n  "x": 1\n}',  # objects over several lines
    b'{"a":\r1}\n{"b":\t2}', b'{"m": "a\\nb\\r\\n"}\n{"m": "\xe2\x80\xa8 \\u2028"}',  # \n escaped, U+2028 raw
    '{"message": "崩溃 💥 Ошибка"}\n{"ключ": "значение", "e": "\\ud83d\\ude00"}'.encode(),
    b'{"a": "\xff"}\n{"b": 1}', b'{"b": 1}\n{"a": "\xff"}', b"\xef\xbb\xbf" + b"\n".join(LINES_OK),
    b'{"a": 1, "a": 2, "b": {"c": 1, "c": [3]}}\n{"a": 3}',
    b'{"big": 123456789012345678901234567890}\n{"a": 1}',
    b"\n".join(LINES_OK[:1] * 300), b"\n".join(LINES_OK[:1] * 3 + [b""] * 5), b"\n".join(LINES_OK[:1] * 4),
    LINES_OK[0], LINES_OK[0] + b"\n", LINES_OK[0] + b"\n\n  \n", b"\n\n", b" \r\n ", b"\n",
    LINES_OK[0] + b"\n\x0c", LINES_OK[0] + b"\n \x0b\n", b"\x0c\n" + LINES_OK[0],  # one non-blank line
    b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}\n" + LINES_OK[0],
]


@pytest.mark.parametrize("name", [*CONFIGS, "default_yaml"])
def test_jsonl_and_logs_edge_cases_identical(name):
    section = _default_section() if name == "default_yaml" else CONFIGS[name]
    values = LOGS_VALUES + JSONL_VALUES
    topics = ("perf", "g", "l", "j", "u") if name == "per_topic" else ("perf",)
    if name == "default_yaml":
        topics = ("perf", "ingest.gamelogs", "ingest.gateway")
    for topic in topics:
        run_both([rec(v, offset=i, topic=topic) for i, v in enumerate(values)], section)
        for v in values:  # one by one too
            run_both([rec(v, topic=topic)], section, batches=1)
    # a traceparent, a record without a timestamp
    run_both([rec(v, offset=i, ts=None if i % 2 else NOW - 3, headers=[("traceparent", TP)])
              for i, v in enumerate(values)], section)


def test_jsonl_and_logs_run_natively():
    # the common shapes of both envelopes are built natively: no record handed back
    ok_logs = [logs(), logs(body={k: v for k, v in LOGS_BODY.items() if k != "mtime"}),
               logs(headers={"app_id": "a"}), logs(headers={"app_id": "a", "log_name": 0}),
               logs(body={**LOGS_BODY, "mtime": S - 30.5}), logs(body={**LOGS_BODY, "mtime": NOW - 5}),
               logs(headers={"app_id": "h", "log_name": "n", "x": 1}, body={"app_id": "l", "x": [2]})]
    ok_jsonl = [b"\n".join(LINES_OK), b"\r\n".join(LINES_OK) + b"\r\n",
                b"\n\n" + b"\n\n".join(LINES_OK) + b"\n",
                b"\n".join(b"  \t" + ln + b" \r" for ln in LINES_OK),
                LINES_OK[0] + b"\n" + orjson.dumps({"app_id": 42, "timestamp": S - 10.25}),
                b"\n".join(LINES_OK[:1] * 300)]
    for section, topics in ((None, ("perf",)), (CONFIGS["per_topic"], ("perf", "g", "l")),
                            (_default_section(), ("perf", "ingest.gateway", "ingest.gamelogs"))):
        for topic in topics:
            values = (ok_jsonl if topic in ("perf", "g", "ingest.gateway") else []) + (
                ok_logs if topic in ("perf", "l", "ingest.gamelogs") else [])
            batch = [rec(v, offset=i, topic=topic) for i, v in enumerate(values)]
            assert native_fallbacks(batch, section) == [], (section, topic)
            events, dls = run_both(batch, section)
            n_lines = [len([ln for ln in v.split(b"\n") if ln.strip()]) for v in values]
            assert not dls
            expected = [1 if b"headers" in v else n for v, n in zip(values, n_lines, strict=True)]
            assert len(events) == sum(expected)
    # explicit JSON Lines: one line is one event too; \x0c/\x0b around lines are stripped
    batch = [rec(LINES_OK[0], topic="g"),
             rec(b"\n".join(ln + b"\x0c" for ln in LINES_OK), topic="g", offset=8)]
    assert native_fallbacks(batch, CONFIGS["per_topic"]) == []
    # seconds, float seconds and integer names in a plain object are native as well
    batch = [rec(orjson.dumps({"app_id": 7, "ts": S - 3})), rec(orjson.dumps({"time": S - 3.5, "type": 3}))]
    assert native_fallbacks(batch) == []
    assert run_both(batch)[0][0]["app_id"] == "7"
    # what Python decides (a rejection, a bad line, an unusual time) is handed back
    batch = [rec(v) for v in (JSONL_VALUES[9], JSONL_VALUES[10], logs(body={"mtime": 5}),
                              logs(headers={"app_id": "a", "log_name": 1.5}), logs(body={"mtime": "1"}),
                              logs(headers=[]), b"\n".join(ln + b"\x0c" for ln in LINES_OK))]
    assert native_fallbacks(batch) == list(range(len(batch)))


def _e2e_records(seed=5, messages=1500, topic=None):
    from pipeline.generate import LOGHUB, Generator

    assert LOGHUB.is_dir(), f"Loghub data missing: {LOGHUB} (the generator's message bodies)"
    gen = Generator(seed=seed, now_ms=NOW)
    recs, dead = [], []
    for off, m in enumerate(gen.mix(messages)):
        t = topic or f"ingest.{m.topic}"
        recs.append(KafkaRecord(t, off % 4, off, NOW - 7, m.key, m.value, tuple(m.headers)))
        dead.append(m.dead)
    return recs, dead


@pytest.mark.parametrize("topic", [None, "bench.e2e.in"])
def test_e2e_generator_records_identical(topic):
    # bench/e2e.py's input (uploads, game logs, gateway JSON Lines, malformed): per-topic envelopes as
    # config/default.yaml sets them, or one topic with auto-detection as in the bench
    recs, dead = _e2e_records(topic=topic)
    section = _default_section()
    for n in (500, 37):
        for i in range(0, len(recs), n):
            run_both(recs[i:i + n], section, batches=1)
    # only the records with something Python rejects (an item, a line, the whole value) are handed back
    assert native_fallbacks(recs, section) == [i for i, d in enumerate(dead) if d]
