"""Classification rules: schema, validation (ConfigError with the dotted key) and loading."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from transforms.classify_pcre import literal_count
from transforms.common import ConfigError

FLAG_BITS = {"caseless": re.IGNORECASE, "dotall": re.DOTALL, "multiline": re.MULTILINE}
ENGINES = ("auto", "hyperscan", "re")
# A category ends up in a Kafka topic name (to_analyzer__0.<CATEGORY>): keep to Kafka's legal characters.
_CATEGORY_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_RULE_KEYS = {"id", "category", "pattern", "fields", "priority", "flags", "specificity"}
_SECTION_KEYS = {"engine", "default_category", "rules_files", "rules"}


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    pattern: str
    fields: tuple[str, ...] | None = None  # None: every text field of the event
    priority: int = 0
    flags: tuple[str, ...] = ()
    specificity: int = 0  # literal characters of the pattern, or the configured override

    @property
    def re_flags(self) -> int:
        bits = 0
        for name in self.flags:
            bits |= FLAG_BITS[name]
        return bits

    def compile_re(self) -> re.Pattern[str]:
        return re.compile(self.pattern, self.re_flags)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "category": self.category, "pattern": self.pattern}
        if self.fields is not None:
            out["fields"] = list(self.fields)
        if self.priority:
            out["priority"] = self.priority
        if self.flags:
            out["flags"] = list(self.flags)
        out["specificity"] = self.specificity
        return out


@dataclass
class ClassifyConfig:
    engine: str = "auto"
    default_category: str = "UNCLASSIFIED"
    rules: list[Rule] = field(default_factory=list)

    def categories(self) -> list[str]:
        """Every category an event can get: the rules' and the default (sorted, unique)."""
        return sorted({r.category for r in self.rules} | {self.default_category})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise ConfigError(key, f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def validate_rule(raw: Any, key: str) -> Rule:
    """One rule mapping -> Rule; `key` is its dotted path for error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(key, f"a rule must be a mapping, got {type(raw).__name__}")
    for k in raw:
        if k not in _RULE_KEYS:
            raise ConfigError(f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(_RULE_KEYS))})")
    for k in ("id", "category", "pattern"):
        if k not in raw:
            raise ConfigError(f"{key}.{k}", "missing")
        if not isinstance(raw[k], str) or not raw[k]:
            raise ConfigError(f"{key}.{k}", f"must be a non-empty string, got {raw[k]!r}")
    if not _CATEGORY_RE.fullmatch(raw["category"]):
        raise ConfigError(f"{key}.category",
                          f"{raw['category']!r} must match [A-Za-z0-9._-]+ (it names a Kafka topic)")
    fields = None
    if raw.get("fields") is not None:
        fields = _str_list(raw["fields"], f"{key}.fields")
    priority = raw.get("priority", 0)
    if not _is_int(priority):
        raise ConfigError(f"{key}.priority", f"must be an integer, got {priority!r}")
    flags: tuple[str, ...] = ()
    if raw.get("flags") is not None:
        flags = _str_list(raw["flags"], f"{key}.flags")
        for f in flags:
            if f not in FLAG_BITS:
                raise ConfigError(f"{key}.flags", f"unknown flag {f!r} (allowed: {', '.join(FLAG_BITS)})")
    rule = Rule(raw["id"], raw["category"], raw["pattern"], fields, priority, flags)
    # Patterns are Python `re` syntax; Hyperscan runs a translation (classify_pcre), so a pattern that
    # `re` rejects can run in neither engine.
    try:
        rule.compile_re()
    except (re.error, OverflowError, RecursionError) as exc:
        raise ConfigError(f"{key}.pattern", f"does not compile: {exc}") from None
    spec = raw.get("specificity")
    if spec is None:
        spec = literal_count(rule.pattern, rule.re_flags)
    elif not _is_int(spec) or spec < 0:
        raise ConfigError(f"{key}.specificity", f"must be a non-negative integer, got {spec!r}")
    return Rule(rule.id, rule.category, rule.pattern, fields, priority, flags, spec)


def validate_rules(raw: Any, key: str) -> list[Rule]:
    if not isinstance(raw, list):
        raise ConfigError(key, f"must be a list of rules, got {type(raw).__name__}")
    return [validate_rule(r, f"{key}[{i}]") for i, r in enumerate(raw)]


def load_rules_file(path: str, key: str | None = None) -> list[Rule]:
    """Rules from a YAML file holding `rules: [...]`. Error keys are `<key>.rules[i]...`."""
    key = key or path
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(key, f"cannot read rules file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"invalid YAML in {path}: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"rules"}:
        raise ConfigError(key, f"{path}: expected a mapping with exactly one key 'rules'")
    rules = validate_rules(doc["rules"], f"{key}.rules")
    _check_unique(rules, f"{key}.rules")
    return rules


def _check_unique(rules: list[Rule], key: str, seen: dict[str, str] | None = None) -> None:
    seen = {} if seen is None else seen
    for i, r in enumerate(rules):
        if r.id in seen:
            raise ConfigError(f"{key}[{i}].id", f"duplicate rule id {r.id!r} (first defined at {seen[r.id]})")
        seen[r.id] = f"{key}[{i}]"


def validate_classify_config(section: dict | None, base_dir: str) -> ClassifyConfig:
    """The `classify:` config section -> ClassifyConfig (rules_files first, then inline rules)."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError("classify", "must be a mapping")
    for k in section:
        if k not in _SECTION_KEYS:
            raise ConfigError(f"classify.{k}", f"unknown key (allowed: {', '.join(sorted(_SECTION_KEYS))})")
    engine = section.get("engine", "auto")
    if engine not in ENGINES:
        raise ConfigError("classify.engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    default = section.get("default_category", "UNCLASSIFIED")
    if not isinstance(default, str) or not _CATEGORY_RE.fullmatch(default):
        raise ConfigError("classify.default_category", f"must match [A-Za-z0-9._-]+, got {default!r}")
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    files = section.get("rules_files") or []
    if not isinstance(files, list):
        raise ConfigError("classify.rules_files", "must be a list of paths")
    for i, path in enumerate(files):
        key = f"classify.rules_files[{i}]"
        if not isinstance(path, str) or not path:
            raise ConfigError(key, f"must be a path string, got {path!r}")
        loaded = load_rules_file(os.path.join(base_dir, path), key)
        _check_unique(loaded, f"{key}.rules", seen)
        rules.extend(loaded)
    inline = validate_rules(section.get("rules") or [], "classify.rules")
    _check_unique(inline, "classify.rules", seen)
    rules.extend(inline)
    return ClassifyConfig(engine=engine, default_category=default, rules=rules)
