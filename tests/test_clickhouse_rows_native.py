"""The native event_rows (native/src/rows.rs) gives the rows and failures of the Python definition."""

from __future__ import annotations

import sys

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.clickhouse import make_events
from transforms import clickhouse_rows as cr
from transforms.native import perf_native


def test_native_rows_are_built():
    # ./run.sh setup python builds perf_native; a missing wheel or function fails here, not skips
    assert perf_native is not None and hasattr(perf_native, "event_rows")
    assert cr._native_rows()


def _key(failed):
    return [(id(e), type(x), str(x)) for e, x in failed]


def _nan_free(rows):
    return [tuple("nan" if v != v else v for v in r) for r in rows]


def assert_same(events):
    """event_rows (native + hand back) == _event_rows_py: rows (values and types) and failures."""
    events = list(events)
    rows_py, failed_py = cr._event_rows_py(events)
    rows, failed = cr.event_rows(events)
    assert _nan_free(rows) == _nan_free(rows_py)  # an infinite event_time gives nan // 1000
    assert [[type(v) for v in r] for r in rows] == [[type(v) for v in r] for r in rows_py]
    assert _key(failed) == _key(failed_py)
    # the native rows alone are a subsequence of the Python rows, in order
    native_rows, back = perf_native.event_rows(events)
    assert len(native_rows) + len(back) == len(events)
    handled = [i for i in range(len(events)) if i not in set(back)]
    for i, r in zip(handled, native_rows, strict=True):
        py_rows, py_failed = cr._event_rows_py([events[i]])
        assert _nan_free(py_rows) == _nan_free([r]) and py_failed == []
    return back


def base(i=0):
    return make_events(i, 1)[0]


def test_make_events_all_native():
    events = make_events(0, 3000)
    rows, back = perf_native.event_rows(events)
    assert back == []
    assert len(rows) == 3000
    assert assert_same(events) == []


def test_orjson_escapes():
    # the escaping rows.rs implements, checked against orjson itself
    assert orjson.dumps("\x01") == b'"\\u0001"'
    assert orjson.dumps("\x1f") == b'"\\u001f"'
    assert orjson.dumps("\x7f") == b'"\x7f"'
    assert orjson.dumps("\u2028") == "\"\u2028\"".encode()
    assert orjson.dumps("\b\f\n\r\t\"\\/") == b'"\\b\\f\\n\\r\\t\\"\\\\/"'
    for c in range(0x80):
        s = chr(c) * 3 + "abcdefghij" + chr(c)
        e = base()
        e["fields"] = {"message": "m", chr(c): s, "k": [s, {s: s}]}
        e["attrs"] = {s: s}
        assert assert_same([e]) == [], c


def _variants():
    out = []

    def v(fn, native=None):
        e = base(len(out))
        fn(e)
        out.append((e, native))

    for k in ("event_id", "event_time", "ingest_time", "app_id", "event_name", "platform", "device_id",
              "category", "rule_id", "engine", "fields", "attrs", "src"):
        v(lambda e, k=k: e.pop(k), False)
    for k in ("duration_ms", "traceparent", "version"):
        v(lambda e, k=k: e.pop(k, None), True)
    v(lambda e: e.update(duration_ms=None), True)
    v(lambda e: e.update(duration_ms=1.5), True)
    v(lambda e: e.update(duration_ms="12"), True)
    v(lambda e: e.update(traceparent="00-abc"), True)
    v(lambda e: e.update(traceparent=""), True)
    v(lambda e: e.update(traceparent=0), False)
    v(lambda e: e.update(traceparent=[1]), False)
    v(lambda e: e.update(version=7), True)
    v(lambda e: e["attrs"].update(f=1.5), False)
    v(lambda e: e["fields"].update(f=1.0), False)
    nested = {"a": [1, 2, {"b": None}], "t": True, "f": False, "e": {}, "l": []}
    v(lambda e: e["attrs"].update(n=nested), True)
    v(lambda e: e["attrs"].update(n=(1, 2)), False)
    v(lambda e: e["attrs"].update(u="héllo ✓ 😀 \u2028 \u2029 \x7f"), True)
    v(lambda e: e["fields"].update(message="ünï \"q\" \\ \n\t"), True)
    v(lambda e: e["attrs"].update(s="\ud800"), False)
    v(lambda e: e["attrs"].update({"\udc00": 1}), False)
    v(lambda e: e["fields"].update(message="\ud800"), False)
    for n in (2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64, 0, -1):
        v(lambda e, n=n: e["attrs"].update(n=n), -2**63 <= n < 2**63)
    for n in (2**63 - 1, -2**63, 2**63, -1, -999, -1000, -1001, 0, 999):
        v(lambda e, n=n: e.update(event_time=n), -2**63 <= n < 2**63)
    v(lambda e: e.update(event_time=1.5e12), False)
    v(lambda e: e.update(event_time=True), False)
    v(lambda e: e.update(event_time="1"), False)
    v(lambda e: e["attrs"].update(b=True, i=1, z=0), True)
    v(lambda e: e["attrs"].update({1: "x"}), False)
    v(lambda e: e.update(src=["t", 1, 2]), False)
    v(lambda e: e.update(src=["t", 1, 2, 3, 4]), False)
    v(lambda e: e.update(src=("t", 1, 2, 3)), True)
    v(lambda e: e.update(src=None), False)
    v(lambda e: e.update(src="abcd"), False)
    v(lambda e: e.update(fields={}), False)
    v(lambda e: e.update(fields={"content": "c"}), True)
    v(lambda e: e.update(fields={"message": "", "content": "c"}), True)
    v(lambda e: e.update(fields={"message": None, "content": "c"}), True)
    v(lambda e: e.update(fields={"message": 5}), False)
    v(lambda e: e.update(fields={"message": "", "content": ""}), False)
    v(lambda e: e.update(fields={"x": "first"}), False)
    v(lambda e: e.update(fields=None), False)
    v(lambda e: e.update(fields=[1]), False)
    v(lambda e: e.update(attrs=None), False)
    v(lambda e: e.update(attrs={}), True)
    v(lambda e: e.update(attrs=[]), False)
    v(lambda e: e["attrs"].update(deep=_nest(15)), True)
    v(lambda e: e["attrs"].update(deep=_nest(40)), False)
    v(lambda e: e["attrs"].update(obj=object()), False)
    out.append(("not a dict", False))
    out.append((None, False))
    return out


def _nest(n):
    x = "leaf"
    for i in range(n):
        x = {"k": x} if i % 2 else [x]
    return x


def test_edge_cases():
    cases = _variants()
    events = [e for e, _ in cases]
    back = set(assert_same(events))
    for i, (e, native) in enumerate(cases):
        if native is not None:
            assert (i not in back) == native, (i, e)
    # each alone as well
    for e, _ in cases:
        assert_same([e])


def test_interleaved_order():
    events = make_events(0, 50)
    bad = {3, 4, 17, 49, 0}
    for i in bad:
        events[i] = dict(events[i], fields={"x": 1.5}) if i % 2 else {"event_id": "x"}
    back = assert_same(events)
    assert set(back) == bad


def test_tuple_input_python_path():
    events = tuple(make_events(0, 5))
    assert cr.event_rows(events) == cr._event_rows_py(events)
    assert cr.event_row(events[0]) == cr._event_rows_py(events[:1])[0][0]


_atom = (st.none() | st.booleans() | st.integers(min_value=-2**65, max_value=2**65)
         | st.floats(allow_nan=False) | st.text(st.characters(codec="utf-8", exclude_categories=())))
_json = st.recursive(
    _atom, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
    max_leaves=12,
)
_any = st.none() | st.integers() | st.text(max_size=4) | st.floats(allow_nan=False) | st.booleans()


@st.composite
def _events(draw):
    e = base(draw(st.integers(0, 1000)))
    e["fields"] = draw(st.dictionaries(st.text(max_size=8), _json, max_size=5)
                       | st.fixed_dictionaries({"message": _any, "content": _any}))
    e["attrs"] = draw(st.dictionaries(st.text(max_size=8), _json, max_size=5) | _any)
    for k in ("duration_ms", "traceparent", "version", "ingest_time", "app_id", "event_time"):
        if draw(st.booleans()):
            if draw(st.booleans()):
                e.pop(k, None)
            else:
                e[k] = draw(_any | st.integers(min_value=-2**64, max_value=2**64))
    if draw(st.booleans()):
        e["src"] = draw(st.lists(_any, max_size=5) | _any)
    return e


@settings(max_examples=400, deadline=None)
@given(st.lists(_events(), max_size=6))
def test_hypothesis_same_as_python(events):
    assert_same(events)


def test_keys_not_interned():
    # keys equal to the interned ones but other objects (as json.loads may give): found by lookup
    events = []
    for e in make_events(0, 20):
        e = {"".join(list(k)): v for k, v in e.items()}
        e["fields"] = {"".join(list(k)): v for k, v in e["fields"].items()}
        events.append(e)
    events[5]["version"] = 3
    interned = sys.intern("event_id")
    assert all(k is not interned for k in events[0])  # other objects, equal keys
    assert assert_same(events) == []


def test_reordered_and_extra_keys():
    events = [dict(reversed(list(e.items())), extra=[1.5], zz=object()) for e in make_events(0, 20)]
    assert assert_same(events) == []
