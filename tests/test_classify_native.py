"""The native classify loop (perf_native.HsClassifier) decides EXACTLY like the Python loop: same category,
rule and engine on every event, copies and in place, with prefilter confirmations, `re`-only rules, rules
restricted to fields, non-ASCII and non-str texts (those go back to Python)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_classify import ALPHABET, DEFAULT_RULES, LOGHUB, WORDS, tricky_rules
from transforms.classify import Classifier
from transforms.classify_rules import load_rules_file
from transforms.classify_templates import read_labeled, rules_from_templates, set_name

pytestmark = pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def pair(rule_list) -> tuple[Classifier, Classifier]:
    nat, py = Classifier(rule_list, native=True), Classifier(rule_list, native=False)
    assert nat._native is not None, "perf_native.HsClassifier did not build (./run.sh setup python)"
    assert py._native is None
    return nat, py


def check_same(nat: Classifier, py: Classifier, events: list[dict]) -> list[dict]:
    want = py.classify_batch(events)
    got = nat.classify_batch(events)
    assert got == want
    assert all(g is not e for g, e in zip(got, events, strict=True))  # copies by default
    owned = [dict(e) for e in events]
    assert nat.classify_batch(owned, inplace=True) == want
    assert owned == want and all(o is g for o, g in zip(owned, nat.classify_batch(owned, inplace=True),
                                                        strict=True))
    return got


@pytest.fixture(scope="module")
def default_pair():
    return pair(load_rules_file(str(DEFAULT_RULES)))


@pytest.fixture(scope="module")
def loghub_lines() -> list[str]:
    return [c for d in sorted(LOGHUB.iterdir()) if d.is_dir()
            for c, _ in read_labeled(str(next(d.glob("*_structured.csv"))))]


def test_native_engine_links_hyperscan():
    import perf_native

    assert perf_native.hs_library_version().startswith("5.")


def test_default_rules_on_loghub_lines_in_two_fields(default_pair, loghub_lines):
    nat, py = default_pair
    # default.yaml has rules restricted to `stack` and two prefiltered `re` rules: the general path.
    assert nat._restricted and nat.prefiltered and not nat._plain
    lines = loghub_lines
    events = [{"event_id": str(i), "fields": {"message": t, "stack": lines[-1 - i] if i % 3 else ""}}
              for i, t in enumerate(lines)]
    got = check_same(nat, py, events)
    assert {e["engine"] for e in got} >= {"hyperscan", "default"}


def test_every_loghub_template_rule_at_once(loghub_lines):
    # The kernel benchmark's rule set (531 rules, all plain Hyperscan): the common case.
    rl = []
    for d in sorted(p for p in LOGHUB.iterdir() if p.is_dir()):
        tpl = next(d.glob("*_templates.csv"))
        rl.extend(rules_from_templates(str(tpl), f"{set_name(str(tpl))}."))
    nat, py = pair(rl)
    assert nat._plain
    got = check_same(nat, py, [{"fields": {"message": t}} for t in loghub_lines])
    assert sum(e["engine"] == "hyperscan" for e in got) > 0.99 * len(got)


def test_prefilter_confirmation_and_back_to_python(default_pair):
    nat, py = default_pair
    frames = "java.lang.StackOverflowError\n" + "\tat com.example.Foo.bar(Foo.java:10)\n" * 12
    tb = "Traceback (most recent call last):\n  File \"a.py\", line 1\nValueError: bad"
    events = [
        {"fields": {"message": "boom", "stack": frames}},  # re confirms a prefilter hit
        {"fields": {"message": tb}},
        {"fields": {"message": tb.replace("ValueError: bad", "KeyboardInterrupt")}},  # prefilter hit, no
        {"fields": {"message": "é timed out", "stack": ""}},  # non-ASCII: Python decides
        {"fields": {"message": "bad \ud800 surrogate OutOfMemoryError"}},
        {"fields": {"message": None, "stack": "java.lang.IllegalStateException"}},  # falsy non-str: skipped
        {"fields": {}}, {"fields": {"message": ""}},
    ]
    got = check_same(nat, py, events)
    assert [(e["rule_id"], e["engine"]) for e in got[:3]] == [
        ("java-recursive-stack", "re"), ("python-traceback", "re"), ("", "default")]
    assert got[4]["engine"] == "re"
    # The native loop hands back exactly the events with non-ASCII text.
    out, back = nat._native.classify(events, False)
    assert back == [3, 4]
    assert out[3] is events[3] and out[0] == got[0]


def test_non_str_field_raises_the_python_error(default_pair):
    nat, _ = default_pair
    with pytest.raises(TypeError, match="field 'message' is int, not str"):
        nat.classify_batch([{"fields": {"message": "fine"}}, {"fields": {"message": 42}}])


@pytest.fixture(scope="module", params=["all-fields", "some-restricted"])
def tricky_native(request) -> tuple[Classifier, Classifier]:
    nat, py = pair(tricky_rules(request.param == "some-restricted"))
    assert nat.fallback  # some rules run on `re` only
    return nat, py


texts = st.lists(st.sampled_from(ALPHABET) | st.sampled_from(WORDS), max_size=12).map("".join)
ascii_texts = st.lists(st.sampled_from([a for a in ALPHABET if a.isascii()]) | st.sampled_from(WORDS),
                       max_size=12).map("".join)


@SETTINGS
@given(batch=st.lists(st.fixed_dictionaries({"message": ascii_texts | texts, "stack": ascii_texts}),
                      min_size=1, max_size=6))
def test_tricky_rules_same_decisions(tricky_native, batch):
    nat, py = tricky_native
    check_same(nat, py, [{"fields": f} for f in batch])


def test_classifier_used_from_another_thread(default_pair):
    # Beam runs a DoFn's bundles one at a time, but on Prism not always on the thread that set it up.
    import threading

    nat, py = default_pair
    events = [{"fields": {"message": "ANR in com.example.game"}}, {"fields": {"message": "fine"}}]
    got: list = []
    t = threading.Thread(target=lambda: got.append(nat.classify_batch(events)))
    t.start()
    t.join()
    assert got == [py.classify_batch(events)]
