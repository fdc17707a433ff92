"""Unpack: envelopes, partial success, dead-letter codes, ids, traceparent, config errors, Beam wiring."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from hashlib import blake2b

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.common import (
    DECODE_ERROR,
    DLQ_TAG,
    EMPTY,
    INTERNAL_ERROR,
    TOO_LARGE,
    VALIDATION_ERROR,
    ConfigError,
    KafkaRecord,
    now_ms,
)
from transforms.unpack import (
    Unpack,
    Unpacker,
    UnpackFn,
    parse_event_time,
    validate_unpack_config,
)

NOW = now_ms()
TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EVENT_KEYS = {"event_id", "event_time", "ingest_time", "app_id", "event_name", "platform", "device_id",
              "duration_ms", "fields", "attrs", "traceparent", "src", "envelope"}


def rec(value, offset=7, topic="perf", partition=2, ts=NOW, key=b"k1", headers=()):
    return KafkaRecord(topic, partition, offset, ts, key, value, tuple(headers))


def upload(meta, data):
    return orjson.dumps({"meta": meta, "data": data})


META = {"app_id": "com.example.game", "category": "PERF_CRASH", "platform": "android",
        "sdk_version": "3.2.1", "device_id": "a1b2c3"}


def up(cfg=None):
    return Unpacker(validate_unpack_config(cfg))


# --- envelopes --------------------------------------------------------------------------------------


def test_upload_envelope_one_event_per_item_meta_merged_item_wins():
    u = up()
    data = [
        {"id": "e-1", "timestamp": NOW - 1000, "ip": "203.0.113.7",
         "message": "FATAL EXCEPTION: main java.lang.NullPointerException", "stack": "at com.example.A"},
        {"id": "e-2", "timestamp": NOW - 500, "message": "Skipped 87 frames!", "duration_ms": 1450,
         "platform": "ios", "event_name": "lag"},
    ]
    events, dls = u.unpack(rec(upload(META, data), headers=[("traceparent", TP)]))
    assert dls == []
    assert [set(e) for e in events] == [EVENT_KEYS, EVENT_KEYS]
    a, b = events
    assert a["envelope"] == b["envelope"] == "upload"
    assert a["event_time"] == NOW - 1000 and b["event_time"] == NOW - 500
    assert a["app_id"] == "com.example.game" and a["device_id"] == "a1b2c3"
    assert a["platform"] == "android" and b["platform"] == "ios"  # the item wins over meta
    assert a["event_name"] == "" and b["event_name"] == "lag"
    assert a["duration_ms"] is None and b["duration_ms"] == 1450.0
    assert a["fields"] == {"message": data[0]["message"], "stack": "at com.example.A"}
    assert a["attrs"] == {"category": "PERF_CRASH", "sdk_version": "3.2.1", "id": "e-1", "ip": "203.0.113.7"}
    assert a["src"] == ["perf", 2, 7, 0] and b["src"] == ["perf", 2, 7, 1]
    assert a["traceparent"] == b["traceparent"] == TP.decode()
    assert NOW <= a["ingest_time"] <= now_ms()
    assert u.stats["uploads.200"] == 1 and u.stats["events_out"] == 2


def test_logs_envelope():
    value = orjson.dumps({"headers": {"app_id": 24, "log_name": "log_item", "region": "eu"},
                          "logs": {"account_name": "4866014107", "action": 2146, "mtime": NOW // 1000,
                                   "platform": 3100, "content": "item bought"}})
    events, dls = up().unpack(rec(value))
    assert dls == []
    (e,) = events
    assert e["envelope"] == "logs"
    assert e["app_id"] == "24"  # numbers become strings
    assert e["event_name"] == "t_log_item"
    assert e["event_time"] == (NOW // 1000) * 1000  # mtime seconds -> ms
    assert e["platform"] == "3100"
    assert e["fields"] == {"content": "item bought"}
    assert e["attrs"] == {"region": "eu", "account_name": "4866014107", "action": 2146}
    assert e["src"] == ["perf", 2, 7, 0]


def test_jsonl_bad_line_is_dead_letter_with_line_index_siblings_continue():
    lines = [b'{"app_id": "a", "message": "one"}', b"{not json", b"", b"[1, 2]",
             b'{"app_id": "b", "message": "two"}\r']
    value = b"\n".join(lines)
    events, dls = up().unpack(rec(value))
    assert [e["app_id"] for e in events] == ["a", "b"]
    assert [e["src"][3] for e in events] == [0, 4]
    assert all(e["envelope"] == "jsonl" for e in events)
    assert [(d["code"], d["index"], d["payload"]) for d in dls] == [
        (DECODE_ERROR, 1, b"{not json"), (VALIDATION_ERROR, 3, b"[1, 2]")]
    assert dls[0]["reason"].startswith("line 1: not JSON: ")
    assert "expected a JSON object" in dls[1]["reason"]


def test_single_json_object():
    events, dls = up().unpack(rec(b'{"app_id": "x", "name": "boot", "type": "t", "msg": "hello", "n": 1}'))
    assert dls == []
    (e,) = events
    assert e["envelope"] == "json" and e["event_name"] == "boot"
    assert e["fields"] == {"msg": "hello"} and e["attrs"] == {"type": "t", "n": 1}
    assert e["event_time"] == NOW  # Kafka timestamp fallback


def test_per_topic_envelope_config():
    cfg = {"envelopes": [{"topic": r"gw\..*", "envelope": "jsonl"}, {"topic": "raw", "envelope": "json"},
                         {"topic": "up", "envelope": "upload"}]}
    u = up(cfg)
    obj = upload(META, [{"message": "m"}])
    # forced json: the meta/data object is ONE plain event
    (e,), _ = u.unpack(rec(obj, topic="raw"))
    assert e["envelope"] == "json" and set(e["attrs"]) == {"meta", "data"}
    # forced jsonl: a single line is still jsonl
    (e,), _ = u.unpack(rec(b'{"a": 1}', topic="gw.repo1"))
    assert e["envelope"] == "jsonl"
    # regexes match the whole topic name
    (e,), _ = u.unpack(rec(b'{"a": 1}', topic="xgw.repo1"))
    assert e["envelope"] == "json"
    # forced upload with the wrong shape
    events, (d,) = u.unpack(rec(b'{"data": {"a": 1}}', topic="up"))
    assert events == [] and d["code"] == VALIDATION_ERROR and d["reason"].startswith("data:")


# --- partial success and upload result codes ---------------------------------------------------------


def test_partial_success_bad_item_replays_alone():
    cfg = {"validation": {"required": ["app_id"], "types": {"id": "string"}}}
    u = up(cfg)
    data = [{"id": "e-1", "message": "ok"}, {"id": 5, "message": "bad id"}, "not an object",
            {"id": "e-4", "timestamp": "yesterday-ish"}, {"id": "e-5"}]
    events, dls = u.unpack(rec(upload(META, data), key=b"kk", headers=[("h", b"v")]))
    assert [e["src"][3] for e in events] == [0, 4]
    assert [(d["code"], d["index"]) for d in dls] == [(VALIDATION_ERROR, 1), (VALIDATION_ERROR, 2),
                                                       (VALIDATION_ERROR, 3)]
    assert dls[0]["reason"].startswith("data[1]: field 'id': expected string")
    assert dls[2]["reason"].startswith("data[3]: field 'timestamp': not a time")
    for d in dls:
        assert (d["topic"], d["partition"], d["offset"], d["key"], d["headers"]) == ("perf", 2, 7, b"kk",
                                                                                     (("h", b"v"),))
        # the payload is the item alone in its envelope: same meta, one data item
        replay = orjson.loads(d["payload"])
        assert replay == {"meta": META, "data": [data[d["index"]]]}
    assert u.stats["uploads.206"] == 1
    # replaying a fixed item alone yields exactly one event with the meta merged
    fixed = orjson.loads(dls[0]["payload"])
    fixed["data"][0]["id"] = "e-2"
    (e,), no = u.unpack(rec(orjson.dumps(fixed), offset=99))
    assert no == [] and e["app_id"] == META["app_id"] and e["attrs"]["id"] == "e-2"


def test_upload_result_codes_and_bad_meta():
    u = up({"validation": {"types": {"app_id": "string"}}})
    u.unpack(rec(upload(META, [{"a": 1}])))
    u.unpack(rec(upload(META, [1, 2])))
    events, dls = u.unpack(rec(upload({**META, "app_id": 42}, [{"a": 1}, {"a": 2}, {"a": 3}])))
    assert events == []
    (d,) = dls  # a bad meta: one dead letter for the message, whole value
    assert d["code"] == VALIDATION_ERROR and d["index"] is None and d["reason"].startswith("meta.app_id:")
    assert orjson.loads(d["payload"])["data"] == [{"a": 1}, {"a": 2}, {"a": 3}]
    for bad in (b'{"meta": [], "data": [{}]}', b'{"meta": {}, "data": {}}', b'{"meta": {}, "data": []}'):
        ev, (d,) = u.unpack(rec(bad))
        assert ev == [] and d["code"] == VALIDATION_ERROR and d["payload"] == bad
    assert (u.stats["uploads.200"], u.stats["uploads.206"], u.stats["uploads.400"]) == (1, 0, 5)


# --- dead-letter codes ----------------------------------------------------------------------------


@pytest.mark.parametrize("value,reason", [(None, "value is null"), (b"", "value is empty"),
                                          (b" \n\t\r\n", "value is empty")])
def test_empty(value, reason):
    events, (d,) = up().unpack(rec(value, key=b"key", headers=[("x", b"1")]))
    assert events == [] and d["code"] == EMPTY and d["reason"] == reason
    assert d["payload"] == value and d["key"] == b"key" and d["headers"] == (("x", b"1"),)
    assert (d["topic"], d["partition"], d["offset"], d["index"], d["stage"]) == ("perf", 2, 7, None, "unpack")


@pytest.mark.parametrize("value,needle", [
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"a": ', "unexpected end of data"),
    (b"nope", "invalid literal"),
    (b'"\\ud800"', "surrogate"),
])
def test_decode_error_includes_orjson_message(value, needle):
    events, (d,) = up().unpack(rec(value))
    assert events == [] and d["code"] == DECODE_ERROR and d["payload"] == value
    assert d["reason"].startswith("not JSON: ") and needle in d["reason"]


def test_validation_errors_name_the_field():
    u = up({"validation": {"required": ["app_id", "device_id", "session"], "types": {"level": "integer"}}})
    cases = {
        b"[1, 2]": "value: expected a JSON object, got list",
        b"42": "value: expected a JSON object, got int",
        b'{"device_id": "d", "session": 1}': "field 'app_id': required but missing",
        b'{"app_id": "", "device_id": "d", "session": 1}': "field 'app_id': required but missing",
        b'{"app_id": "a", "session": 1}': "field 'device_id': required but missing",
        b'{"app_id": "a", "device_id": "d"}': "field 'session': required but missing",
        b'{"app_id": "a", "device_id": "d", "session": 1, "level": true}': "field 'level': expected integer",
        b'{"app_id": {"x": 1}, "device_id": "d", "session": 1}': "field 'app_id': expected a string",
        b'{"app_id": "a", "device_id": "d", "session": 1, "duration_ms": "slow"}': "field 'duration_ms'",
        b'{"app_id": "a", "device_id": "d", "session": 1, "ts": true}': "field 'ts': not a time",
        b'{"app_id": "a", "device_id": "d", "session": 1, "time": 1e300}': "field 'time': not a time",
        b'{"headers": [], "logs": {}}': "headers: expected an object",
        b'{"headers": {}, "logs": 3}': "logs: expected an object",
    }
    for value, reason in cases.items():
        events, dls = u.unpack(rec(value))
        assert events == [] and len(dls) == 1, value
        assert dls[0]["code"] == VALIDATION_ERROR and reason in dls[0]["reason"], (value, dls[0]["reason"])
        assert dls[0]["payload"] == value


def test_event_time_skew_bounds():
    # NOW fresh here: the module constant can be minutes old in a long suite, past the 100 s margin below.
    NOW = int(time.time() * 1000)  # noqa: N806
    u = up({"validation": {"max_past_skew_s": 3600, "max_future_skew_s": 60}})
    ok, _ = u.unpack(rec(orjson.dumps({"timestamp": NOW - 3500 * 1000})))
    assert ok[0]["event_time"] == NOW - 3500 * 1000
    _, (d,) = u.unpack(rec(orjson.dumps({"timestamp": NOW - 3700 * 1000})))
    assert d["code"] == VALIDATION_ERROR
    assert "field 'timestamp'" in d["reason"] and "in the past" in d["reason"]
    _, (d,) = u.unpack(rec(orjson.dumps({"time": (NOW + 120_000) / 1000})))
    assert d["code"] == VALIDATION_ERROR and "field 'time'" in d["reason"] and "in the future" in d["reason"]
    # the broker timestamp is trusted: an old record without a payload time is not rejected
    (e,), none = u.unpack(rec(b'{"a": 1}', ts=NOW - 30 * 86400 * 1000))
    assert none == [] and e["event_time"] == NOW - 30 * 86400 * 1000
    # skew checks can be switched off
    u2 = up({"validation": {"max_past_skew_s": None}})
    (e,), _ = u2.unpack(rec(orjson.dumps({"ts": 1608184243})))
    assert e["event_time"] == 1608184243000


def test_too_large():
    u = up({"validation": {"max_value_bytes": 2000, "max_items": 3, "max_field_chars": 100}})
    big = orjson.dumps({"message": "x" * 2100})
    _, (d,) = u.unpack(rec(big))
    assert d["code"] == TOO_LARGE and "max_value_bytes 2000" in d["reason"] and d["payload"] == big
    many = upload(META, [{"a": i} for i in range(4)])
    _, (d,) = u.unpack(rec(many))
    assert d["code"] == TOO_LARGE and d["reason"].startswith("data: 4 items") and d["index"] is None
    lines = b"\n".join(b'{"a": %d}' % i for i in range(4))
    _, (d,) = u.unpack(rec(lines))
    assert d["code"] == TOO_LARGE and "4 lines > max_items 3" in d["reason"]
    # a too-long text field rejects its item only
    events, (d,) = u.unpack(rec(upload(META, [{"message": "y" * 101}, {"message": "y" * 100}])))
    assert [e["src"][3] for e in events] == [1]
    assert d["code"] == TOO_LARGE and d["index"] == 0 and "field 'message': 101 chars" in d["reason"]
    # in meta it rejects the message
    _, (d,) = u.unpack(rec(upload({"stack": "z" * 101}, [{}])))
    assert d["code"] == TOO_LARGE and d["reason"].startswith("meta.stack:") and d["index"] is None


def test_huge_value_default_limit():
    u = up()
    ok = orjson.dumps({"message": "é" * 400_000})  # 800 KB, under 1 MiB; a field over 64 Ki chars
    _, (d,) = u.unpack(rec(ok))
    assert d["code"] == TOO_LARGE and "max_field_chars 65536" in d["reason"]
    (e,), _ = u.unpack(rec(orjson.dumps({"blob": "é" * 400_000})))  # not a text field: kept in attrs
    assert len(e["attrs"]["blob"]) == 400_000
    _, (d,) = u.unpack(rec(b" " * (1 << 20) + b"{}"))
    assert d["code"] == TOO_LARGE and len(d["payload"]) == (1 << 20) + 2


class _Unbytes:
    def __bytes__(self):
        raise RuntimeError("boom")


def test_internal_error_is_caught_and_keeps_the_record():
    u = up()
    events, (d,) = u.unpack(rec(_Unbytes(), key=b"k", headers=[("a", b"b")]))
    assert events == [] and d["code"] == INTERNAL_ERROR and d["reason"] == "RuntimeError: boom"
    assert (d["topic"], d["offset"], d["key"], d["headers"]) == ("perf", 7, b"k", (("a", b"b"),))
    # not even a record: still a dead letter, never an exception
    events, (d,) = u.unpack(None)
    assert events == [] and d["code"] == INTERNAL_ERROR and d["topic"] is None
    assert u.stats["dlq.INTERNAL_ERROR"] == 2


# --- ids, time parsing, traceparent, unicode -------------------------------------------------------------


def test_event_ids_are_deterministic():
    value = upload(META, [{"a": 1}, {"a": 2}])
    ids1 = [e["event_id"] for e in up().unpack(rec(value))[0]]
    ids2 = [e["event_id"] for e in up().unpack(rec(value))[0]]
    assert ids1 == ids2 and len(set(ids1)) == 2
    assert ids1[1] == blake2b(b"perf:2:7:1").hexdigest()[:32]
    other = [e["event_id"] for e in up().unpack(rec(value, offset=8))[0]]
    assert not set(other) & set(ids1)


def test_parse_event_time_units():
    assert parse_event_time(1700000000) == 1700000000000
    assert parse_event_time(1700000000.25) == 1700000000250
    assert parse_event_time(1700000000123) == 1700000000123
    assert parse_event_time(1700000000123456) == 1700000000123
    assert parse_event_time(1700000000123456789) == 1700000000123
    assert parse_event_time("1700000000123") == 1700000000123
    assert parse_event_time("1700000000.5") == 1700000000500
    assert parse_event_time("2023-11-14T22:13:20Z") == 1700000000000
    assert parse_event_time("2023-11-14T22:13:20.123+00:00") == 1700000000123
    assert parse_event_time("2023-11-15T00:13:20+02:00") == 1700000000000
    assert parse_event_time("2023-11-14 22:13:20") == 1700000000000  # no zone: UTC
    for bad in (True, None, "", "soon", "nan", "inf", [1], {"a": 1}, float("nan")):
        assert parse_event_time(bad) is None, bad


def test_time_fallbacks():
    (e,), _ = up().unpack(rec(b'{"a": 1}', ts=-1))  # no broker timestamp: ingest time
    assert e["event_time"] == e["ingest_time"]
    # a null first time key falls through to the next one
    iso = datetime.fromtimestamp((NOW - 60_000) / 1000, UTC).isoformat()
    (e,), _ = up().unpack(rec(orjson.dumps({"timestamp": None, "time": iso})))
    assert e["event_time"] == NOW - 60_000 and "time" not in e["attrs"] and "timestamp" not in e["attrs"]


@pytest.mark.parametrize("header,expected", [
    (TP, TP.decode()),
    (TP.upper(), None),
    (b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
    (b"00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
    (b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
    (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", None),
    (b"\xff\xfe", None),
    (b"", None),
])
def test_traceparent(header, expected):
    u = up()
    (e,), _ = u.unpack(rec(b'{"a": 1}', headers=[("traceparent", b"garbage"), ("traceparent", header)]))
    assert e["traceparent"] == expected
    assert u.stats["traceparent.invalid"] == (0 if expected else 1)


def test_no_traceparent_header_is_not_counted():
    u = up()
    (e,), _ = u.unpack(rec(b'{"a": 1}', headers=[("other", b"x")]))
    assert e["traceparent"] is None and u.stats["traceparent.invalid"] == 0


def test_unicode_round_trip():
    text = "崩溃 💥 Ошибка\u0000 \u202e"
    value = orjson.dumps({"meta": {"app_id": "应用"}, "data": [{"message": text, "ключ": "значение"}]})
    (e,), dls = up().unpack(rec(value))
    assert dls == [] and e["fields"]["message"] == text and e["app_id"] == "应用"
    assert e["attrs"] == {"ключ": "значение"}
    # str values (from a string deserializer) are accepted too
    (e,), _ = up().unpack(rec(value.decode()))
    assert e["fields"]["message"] == text


# --- config ---------------------------------------------------------------------------------------------


def test_config_defaults():
    cfg = validate_unpack_config(None)
    assert cfg.default_envelope == "auto" and cfg.envelopes == ()
    assert "message" in cfg.text_fields and "stack" in cfg.text_fields
    v = cfg.validation
    assert (v.max_value_bytes, v.max_items, v.max_field_chars) == (1 << 20, 10_000, 64 << 10)
    assert (v.max_past_skew_s, v.max_future_skew_s) == (7 * 86400, 3600)
    assert validate_unpack_config({}) == cfg


@pytest.mark.parametrize("section,key", [
    ([], "unpack"),
    ({"bogus": 1}, "unpack.bogus"),
    ({"default_envelope": "xml"}, "unpack.default_envelope"),
    ({"envelopes": {"a": 1}}, "unpack.envelopes"),
    ({"envelopes": ["x"]}, "unpack.envelopes[0]"),
    ({"envelopes": [{"topic": "a", "envelope": "json"}, {"topic": "(", "envelope": "json"}]},
     "unpack.envelopes[1].topic"),
    ({"envelopes": [{"topic": "a", "envelope": "csv"}]}, "unpack.envelopes[0].envelope"),
    ({"envelopes": [{"topic": "a", "envelope": "json", "x": 1}]}, "unpack.envelopes[0].x"),
    ({"text_fields": "message"}, "unpack.text_fields"),
    ({"text_fields": ["message", 3]}, "unpack.text_fields[1]"),
    ({"validation": 5}, "unpack.validation"),
    ({"validation": {"nope": 1}}, "unpack.validation.nope"),
    ({"validation": {"required": ["a", ""]}}, "unpack.validation.required[1]"),
    ({"validation": {"types": {"x": "str"}}}, "unpack.validation.types.x"),
    ({"validation": {"types": ["x"]}}, "unpack.validation.types"),
    ({"validation": {"max_value_bytes": 0}}, "unpack.validation.max_value_bytes"),
    ({"validation": {"max_items": True}}, "unpack.validation.max_items"),
    ({"validation": {"max_field_chars": 1.5}}, "unpack.validation.max_field_chars"),
    ({"validation": {"max_past_skew_s": -1}}, "unpack.validation.max_past_skew_s"),
    ({"validation": {"max_future_skew_s": "1h"}}, "unpack.validation.max_future_skew_s"),
])
def test_config_errors_name_the_key(section, key):
    with pytest.raises(ConfigError) as err:
        validate_unpack_config(section)
    assert err.value.key == key, str(err.value)


# --- Beam -------------------------------------------------------------------------------------------


def test_dofn_accepts_a_list_of_records():
    fn = UnpackFn(validate_unpack_config(None))
    fn.setup()
    out = list(fn.process([rec(b'{"a": 1}', offset=1), rec(b"", offset=2)]))
    # A list of records in, ONE list of events out; dead letters one by one.
    assert type(out[0]) is list and [e["src"] for e in out[0]] == [["perf", 2, 1, 0]]
    assert out[1].tag == DLQ_TAG and out[1].value["code"] == EMPTY
    assert len(out) == 2
    # A single record still gives events one by one.
    single = list(fn.process(rec(b'{"a": 1}', offset=3)))
    assert [e["src"] for e in single] == [["perf", 2, 3, 0]]
    fn.finish_bundle()  # outside a pipeline the counters are a no-op; stats are cleared
    assert not fn._unpacker.stats


def test_beam_unpack_outputs_and_metrics():
    records = [
        rec(upload(META, [{"message": "a"}, {"message": "b"}]), offset=1),
        rec(upload(META, [{"message": "c"}, {"timestamp": "bad"}]), offset=2),
        rec(b"\xff", offset=3),
        rec(None, offset=4),
        rec(b'{"headers": {"app_id": 1, "log_name": "x"}, "logs": {}}', offset=5),
    ]
    options = PipelineOptions(["--runner=FnApiRunner"])
    p = BeamTestPipeline(options=options, blocking=False)
    out = p | beam.Create(records) | Unpack(validate_unpack_config(None))
    assert_that(out.events | "ev" >> beam.Map(lambda e: (e["src"][2], e["src"][3], e["envelope"])),
                equal_to([(1, 0, "upload"), (1, 1, "upload"), (2, 0, "upload"), (5, 0, "logs")]),
                label="events")
    assert_that(out.dlq | "dl" >> beam.Map(lambda d: (d["offset"], d["index"], d["code"])),
                equal_to([(2, 1, VALIDATION_ERROR), (3, None, DECODE_ERROR), (4, None, EMPTY)]), label="dlq")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("unpack"))["counters"]}
    assert counters["records_in"] == 5
    assert counters["events_out"] == 4
    assert counters["dead_letters"] == 3
    assert counters["dlq.DECODE_ERROR"] == 1 and counters["dlq.EMPTY"] == 1
    assert counters["dlq.VALIDATION_ERROR"] == 1
    assert counters["uploads.200"] == 1 and counters["uploads.206"] == 1


def test_unpack_batch_throughput_report():
    """Not a timed assertion: prints records/s of unpack_batch on ~300-byte upload envelopes."""
    import random
    import time

    rnd = random.Random(1)
    msgs = ["FATAL EXCEPTION: main java.lang.NullPointerException", "Choreographer: Skipped 87 frames!",
            "ANR in com.example.game (com.example.game/.MainActivity)"]
    def meta(i):
        return {"app_id": f"com.example.app{i % 50}", "category": "PERF_CRASH", "platform": "android",
                "sdk_version": "3.2.1", "device_id": f"d{rnd.randrange(10**6)}"}

    records = [rec(upload(meta(i),
                          [{"id": f"e-{i}", "timestamp": NOW - rnd.randrange(60_000), "ip": "203.0.113.7",
                            "message": rnd.choice(msgs), "duration_ms": rnd.randrange(2000)}]),
                   offset=i, headers=[("traceparent", TP)]) for i in range(20_000)]
    size = sum(len(r.value) for r in records) / len(records)
    u = up({"validation": {"required": ["app_id"]}})
    t0 = time.perf_counter()
    n = 0
    for j in range(0, len(records), 500):
        events, dls = u.unpack_batch(records[j:j + 500])
        assert not dls
        n += len(events)
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    for r in records:
        orjson.loads(r.value)
    loads_dt = time.perf_counter() - t1
    assert n == len(records)
    print(f"\nunpack_batch: {len(records) / dt:,.0f} records/s on {size:.0f}-byte upload envelopes "
          f"({dt / loads_dt:.1f}x the time of orjson.loads alone)")
