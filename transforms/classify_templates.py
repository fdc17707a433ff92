"""Loghub/Drain templates (`EventId,EventTemplate`, `<*>` = variable part) as classification rules."""

from __future__ import annotations

import csv
import os
import re

from transforms.classify_rules import Rule

VARIABLE = "<*>"
_META = re.compile(r"([.^$*+?{}\[\]\\|()])")


def _escape(literal: str) -> str:
    # Only regex metacharacters (re.escape also escapes spaces, unreadable in a YAML rules file).
    return _META.sub(r"\\\1", literal)


def template_pattern(template: str) -> tuple[str, int]:
    """(anchored regex for the whole text, literal character count) of one template."""
    parts = template.split(VARIABLE)
    # `.*` (not `.+`): Loghub's parsers also put <*> where the variable text is empty.
    return r"\A" + ".*".join(_escape(p) for p in parts) + r"\Z", sum(len(p) for p in parts)


def read_templates(path: str) -> list[tuple[str, str]]:
    """[(EventId, EventTemplate)] of a templates CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"EventId", "EventTemplate"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns EventId,EventTemplate, got {reader.fieldnames}")
        return [(row["EventId"], row["EventTemplate"]) for row in reader]


def set_name(path: str) -> str:
    """`.../Android_2k.log_templates.csv` -> `Android` (the Loghub system name)."""
    base = os.path.basename(path)
    return base.split("_", 1)[0] if "_" in base else base.split(".", 1)[0]


def rules_from_templates(path: str, category_prefix: str = "") -> list[Rule]:
    """One rule per template: id and category `<prefix><EventId>`, pattern anchored on the whole text."""
    rules = []
    for event_id, template in read_templates(path):
        pattern, literals = template_pattern(template)
        name = f"{category_prefix}{event_id}"
        rules.append(Rule(id=name, category=name, pattern=pattern, flags=("dotall",), specificity=literals))
    return rules


def read_labeled(path: str) -> list[tuple[str, str]]:
    """[(Content, EventId)] of a Loghub structured CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"Content", "EventId"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns Content and EventId, got {reader.fieldnames}")
        return [(row["Content"], row["EventId"]) for row in reader]
