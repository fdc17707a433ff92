"""classify: config section and rules files; every error names its dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from transforms.classify_rules import load_rules_file, validate_classify_config
from transforms.common import ConfigError

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"id": "a", "category": "PERF_CRASH", "pattern": "boom"}
R = {"id": "b", "category": "X", "pattern": "p"}
K = "classify.rules[1]"


def err(section, base_dir=".") -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        validate_classify_config(section, base_dir)
    return ei.value


def test_defaults():
    cfg = validate_classify_config(None, ".")
    assert (cfg.engine, cfg.default_category, cfg.rules) == ("auto", "UNCLASSIFIED", [])
    assert cfg.categories() == ["UNCLASSIFIED"]


def test_rule_defaults_and_specificity():
    cfg = validate_classify_config({"rules": [GOOD]}, ".")
    r = cfg.rules[0]
    assert (r.fields, r.priority, r.flags, r.specificity) == (None, 0, (), 4)


@pytest.mark.parametrize("rule,key,words", [
    ({**GOOD, "colour": 1}, K + ".colour", "unknown key"),
    ({"category": "X", "pattern": "p"}, K + ".id", "missing"),
    ({"id": "b", "pattern": "p"}, K + ".category", "missing"),
    ({"id": "b", "category": "X"}, K + ".pattern", "missing"),
    ({"id": 5, "category": "X", "pattern": "p"}, K + ".id", "non-empty string"),
    ({"id": "b", "category": "has space", "pattern": "p"}, K + ".category", "Kafka"),
    ({**R, "pattern": "(unclosed"}, K + ".pattern", "missing ), unterminated"),
    ({**R, "priority": "high"}, K + ".priority", "integer"),
    ({**R, "priority": True}, K + ".priority", "integer"),
    ({**R, "fields": "message"}, K + ".fields", "list"),
    ({**R, "flags": ["verbose"]}, K + ".flags", "verbose"),
    ({**R, "specificity": -1}, K + ".specificity", "negative"),
    ({"id": "a", "category": "X", "pattern": "p"}, K + ".id", "duplicate"),
    ("not a mapping", K, "mapping"),
])
def test_rule_errors_name_the_key(rule, key, words):
    e = err({"rules": [GOOD, rule]})
    assert e.key == key
    assert words in e.message


@pytest.mark.parametrize("section,key", [
    ({"engine": "pcre"}, "classify.engine"),
    ({"default_category": ""}, "classify.default_category"),
    ({"rulez": []}, "classify.rulez"),
    ({"rules": {"id": "x"}}, "classify.rules"),
    ({"rules_files": "x.yaml"}, "classify.rules_files"),
    ({"rules_files": ["missing.yaml"]}, "classify.rules_files[0]"),
])
def test_section_errors_name_the_key(section, key):
    assert err(section).key == key


def test_rules_files_resolve_relative_to_config_dir(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text("rules:\n  - {id: one, category: A, pattern: 'x+'}\n")
    (tmp_path / "rules" / "b.yaml").write_text(
        "rules:\n  - {id: two, category: B, pattern: 'y', fields: [stack], priority: 3, flags: [caseless]}\n")
    cfg = validate_classify_config({"rules_files": ["rules/a.yaml", "rules/b.yaml"],
                                    "rules": [{"id": "three", "category": "C", "pattern": "z"}],
                                    "engine": "re", "default_category": "OTHER"}, str(tmp_path))
    assert [r.id for r in cfg.rules] == ["one", "two", "three"]
    assert cfg.rules[1].fields == ("stack",) and cfg.rules[1].flags == ("caseless",)
    assert cfg.categories() == ["A", "B", "C", "OTHER"]
    assert cfg.engine == "re"


def test_errors_inside_rules_files_and_duplicates_across_files(tmp_path):
    (tmp_path / "a.yaml").write_text("rules:\n  - {id: one, category: A, pattern: 'x'}\n")
    (tmp_path / "bad.yaml").write_text("rules:\n  - {id: two, category: A, pattern: 'x'}\n"
                                       "  - {id: three, category: A, pattern: '[a-'}\n")
    e = err({"rules_files": ["a.yaml", "bad.yaml"]}, str(tmp_path))
    assert e.key == "classify.rules_files[1].rules[1].pattern"
    (tmp_path / "dup.yaml").write_text("rules:\n  - {id: one, category: B, pattern: 'y'}\n")
    e = err({"rules_files": ["a.yaml", "dup.yaml"]}, str(tmp_path))
    assert e.key == "classify.rules_files[1].rules[0].id" and "duplicate" in e.message
    e = err({"rules_files": ["a.yaml"], "rules": [{"id": "one", "category": "C", "pattern": "z"}]},
            str(tmp_path))
    assert e.key == "classify.rules[0].id"
    (tmp_path / "notrules.yaml").write_text("- just a list\n")
    assert err({"rules_files": ["notrules.yaml"]}, str(tmp_path)).key == "classify.rules_files[0]"
    (tmp_path / "broken.yaml").write_text("rules: [\n")
    assert "invalid YAML" in err({"rules_files": ["broken.yaml"]}, str(tmp_path)).message


def test_default_rules_file_and_config_load():
    rules = load_rules_file(str(ROOT / "rules" / "default.yaml"))
    assert len(rules) >= 25
    assert {r.category for r in rules} >= {"PERF_CRASH", "PERF_ANR", "PERF_OOM", "PERF_LAG", "PERF_NETWORK"}
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    cfg = validate_classify_config(raw["classify"], str(ROOT / "config"))
    assert [r.id for r in cfg.rules] == [r.id for r in rules]
