"""Translate a Python `re` pattern into a Hyperscan expression with the SAME match semantics.

Rules are written in Python `re` syntax (the `re` engine is the reference). Handing the raw text to
Hyperscan would silently change meaning in places: `\\Z`, `\\s` (Python counts \\x1c-\\x1f as space),
`{,n}`, POSIX brackets, case folding (Python's `re.I` uses simple lowercase plus a few extra pairs).
So we parse with Python's own parser and emit PCRE from the tree:

- every character class, category (`\\d\\w\\s`), negated literal and case-insensitive literal becomes an
  explicit list of code-point ranges, computed by running Python's `re` itself over all code points
  (exact by construction, cached per process);
- anchors map to their PCRE equivalent (`$` -> `\\Z`, Python `\\Z` -> `\\z`, multiline `^`/`$`);
- constructs Hyperscan lacks (lookaround, backreferences, atomic groups, possessive repeats) are emitted
  faithfully so Hyperscan itself rejects them and its error text explains the fallback.

Sets with a long, irregular non-ASCII part (Unicode `\\w`, `\\d`: hundreds of ranges, seconds of Hyperscan
compile time, even "Pattern length exceeds limit") are emitted exactly on ASCII and as "any non-ASCII"
beyond; Unicode `\\b` is emitted as ASCII `\\b` (Hyperscan rejects `\\b` in UCP mode). Such a translation is
marked `ascii_only`: exact on ASCII text, and the classifier runs the rule on `re` for non-ASCII text.
"""

from __future__ import annotations

import _sre
import re
from dataclasses import dataclass
from functools import lru_cache
from re import _casefix, _parser
from re import _constants as C

_SURROGATES = range(0xD800, 0xE000)
_MAXUNICODE = 0x10FFFF


class Untranslatable(ValueError):
    """The pattern uses something we cannot express for Hyperscan; the message says what."""


@dataclass(frozen=True)
class Translation:
    expression: str
    utf8: bool        # needs HS_FLAG_UTF8 (non-ASCII or any-character constructs)
    ascii_only: bool  # exact only on ASCII text (see above)
    multiline: bool   # uses multiline ^/$
    dotall: bool      # uses a dot that matches newline


@lru_cache(maxsize=1)
def _all_chars() -> str:
    # Every code point that can occur in text scanned by Hyperscan (valid UTF-8 has no surrogates).
    return "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, _MAXUNICODE + 1)))


def _ranges(chars: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for cp in map(ord, sorted(chars)):
        if out and out[-1][1] + 1 == cp:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


@lru_cache(maxsize=4096)
def _char_set(atom_src: str, flags: int) -> tuple[bool, tuple[tuple[int, int], ...]]:
    """(False, ranges): exactly the code points the one-character regex `atom_src` matches."""
    out: list[tuple[int, int]] = []
    gap = 0xD800  # index in _all_chars where the surrogates were left out
    for m in re.finditer(f"(?:{atom_src})+", _all_chars(), flags):
        lo, hi = m.start(), m.end() - 1
        if lo < gap <= hi:
            out.append((lo, gap - 1))
            lo = gap
        shift = 0x800 if lo >= gap else 0
        out.append((lo + shift, hi + shift))
    return False, tuple(out)


@lru_cache(maxsize=1)
def _lower_inverse() -> dict[int, list[int]]:
    # Python's re.I compares simple lowercase mappings (_sre.unicode_tolower), plus a few extra pairs.
    inverse: dict[int, list[int]] = {}
    for cp in range(_MAXUNICODE + 1):
        lo = _sre.unicode_tolower(cp)
        if lo != cp:
            inverse.setdefault(lo, []).append(cp)
    return inverse


@lru_cache(maxsize=4096)
def _caseless_ranges(cp: int, ascii_flag: int) -> tuple[tuple[int, int], ...]:
    """Code points that literal `cp` matches under re.I: sre's candidates, each confirmed by `re`."""
    lo = _sre.unicode_tolower(cp)
    cands = {cp, lo, *_lower_inverse().get(lo, ())}
    for extra in _casefix._EXTRA_CASES.get(lo, ()):
        cands.update((extra, *_lower_inverse().get(extra, ())))
    rx = re.compile(_py_char(cp), re.IGNORECASE | ascii_flag)
    chars = "".join(chr(c) for c in sorted(cands) if c not in _SURROGATES and rx.fullmatch(chr(c)))
    return tuple(_ranges(chars))


def _hex(cp: int) -> str:
    return f"\\x{cp:02x}" if cp < 0x80 else f"\\x{{{cp:x}}}"


def _needs_utf8(negated: bool, ranges) -> bool:
    return negated or any(hi >= 0x80 for _, hi in ranges)


_EXACT_RANGES = 16  # above this many ranges a set's non-ASCII part is approximated


def _ascii_split(negated: bool, ranges) -> tuple[list[tuple[int, int]], int]:
    """ASCII ranges of the positive set, and its non-ASCII part: 0 empty, 1 partial, 2 everything."""
    pos = [(lo, hi) for lo, hi in ranges if lo < 0x80]
    pos = [(lo, min(hi, 0x7F)) for lo, hi in pos]
    high = sum(min(hi, _MAXUNICODE) - max(lo, 0x80) + 1 for lo, hi in ranges if hi >= 0x80)
    total = _MAXUNICODE + 1 - 0x80 - len(_SURROGATES)
    if negated:
        pos = _complement_ascii(pos)
        high = total - high
    return pos, (0 if high == 0 else 2 if high == total else 1)


def _complement_ascii(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= 0x7F:
        out.append((nxt, 0x7F))
    return out


def _class_expr(negated: bool, ranges: tuple[tuple[int, int], ...]) -> str:
    if not ranges:
        if negated:  # complement of nothing: any code point
            return f"[{_hex(0)}-{_hex(_MAXUNICODE)}]"
        raise Untranslatable("character class that matches nothing")
    parts = [_hex(lo) if lo == hi else f"{_hex(lo)}-{_hex(hi)}" for lo, hi in ranges]
    return ("[^" if negated else "[") + "".join(parts) + "]"


_CATEGORY_SRC = {
    C.CATEGORY_DIGIT: r"\d", C.CATEGORY_NOT_DIGIT: r"\D",
    C.CATEGORY_SPACE: r"\s", C.CATEGORY_NOT_SPACE: r"\S",
    C.CATEGORY_WORD: r"\w", C.CATEGORY_NOT_WORD: r"\W",
}


def _py_char(cp: int) -> str:
    return f"\\U{cp:08x}"


def _merge(ranges) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return tuple(out)


def _category_set(cat, ascii_flag: int) -> tuple[tuple[int, int], ...]:
    """Positive ranges of a category (no case folding involved)."""
    src = _CATEGORY_SRC[cat]
    return _char_set(src, ascii_flag)[1]


def _class_set(items: list, ascii_flag: int) -> tuple[bool, tuple[tuple[int, int], ...]]:
    """(negated, ranges) of a class without case folding, by set algebra on its items."""
    negated = False
    ranges: list[tuple[int, int]] = []
    for op, av in items:
        if op is C.NEGATE:
            negated = True
        elif op is C.LITERAL:
            ranges.append((av, av))
        elif op is C.RANGE:
            ranges.append(av)
        elif op is C.CATEGORY:
            ranges.extend(_category_set(av, ascii_flag))
        else:
            raise Untranslatable(f"class item {op}")
    return negated, _merge(ranges)


def _class_items_src(items: list) -> tuple[str, bool]:
    """Python source of the inside of a class, and whether it was negated."""
    negated = False
    out = []
    for op, av in items:
        if op is C.NEGATE:
            negated = True
        elif op is C.LITERAL:
            out.append(_py_char(av))
        elif op is C.RANGE:
            out.append(f"{_py_char(av[0])}-{_py_char(av[1])}")
        elif op is C.CATEGORY:
            out.append(_CATEGORY_SRC[av])
        else:
            raise Untranslatable(f"class item {op}")
    return "".join(out), negated


class _Emitter:
    def __init__(self) -> None:
        self.utf8 = False
        self.ascii_only = False
        self.multiline = False
        self.dotall = False

    def set_expr(self, atom_src: str, flags: int) -> str:
        return self.emit_set(*_char_set(atom_src, flags & (re.IGNORECASE | re.ASCII)))

    def emit_set(self, negated: bool, ranges) -> str:
        if len(ranges) > _EXACT_RANGES:
            pos, high = _ascii_split(negated, ranges)
            if high == 1:
                self.ascii_only = True
            if high:
                pos.append((0x80, _MAXUNICODE))
            negated, ranges = False, tuple(pos)
        self.utf8 |= _needs_utf8(negated, ranges)
        return _class_expr(negated, ranges)

    def literal(self, cp: int, flags: int) -> str:
        if flags & re.IGNORECASE:
            ranges = _caseless_ranges(cp, flags & re.ASCII)
            if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
                cp = ranges[0][0]
            else:
                self.utf8 |= _needs_utf8(False, ranges)
                return _class_expr(False, ranges)
        if cp < 0x80:
            ch = chr(cp)
            return ch if ch.isalnum() or ch == "_" else f"\\x{cp:02x}"
        self.utf8 = True
        return _hex(cp)

    def seq(self, items, flags: int) -> str:
        return "".join(self.node(op, av, flags) for op, av in items)

    def node(self, op, av, flags: int) -> str:  # noqa: C901 - one branch per opcode
        if op is C.LITERAL:
            return self.literal(av, flags)
        if op is C.NOT_LITERAL:
            if not flags & re.IGNORECASE:
                return self.emit_set(True, ((av, av),))
            src = _py_char(av)
            return self.set_expr(f"[^{src}]", flags)
        if op is C.ANY:
            self.utf8 = True
            if flags & re.DOTALL:
                self.dotall = True
                return "."
            return "[^\\n]"
        if op is C.IN:
            if not flags & re.IGNORECASE:  # direct set algebra; brute force only for case folding
                return self.emit_set(*_class_set(av, flags & re.ASCII))
            inner, negated = _class_items_src(av)
            return self.set_expr(f"[^{inner}]" if negated else f"[{inner}]", flags)
        if op is C.CATEGORY:  # outside a class
            src = _CATEGORY_SRC[av]
            return self.set_expr(src, flags)
        if op is C.SUBPATTERN:
            group, add, delete, sub = av
            inner = self.seq(sub, (flags | add) & ~delete)
            return f"({inner})" if group is not None else f"(?:{inner})"
        if op is C.BRANCH:
            return "(?:" + "|".join(self.seq(alt, flags) for alt in av[1]) + ")"
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            # Lazy and greedy repeats find a match at the same places: existence is all we need.
            quant = f"{{{lo},}}" if hi is C.MAXREPEAT else f"{{{lo},{hi}}}"
            if op is C.POSSESSIVE_REPEAT:
                quant += "+"
            return f"(?:{self.seq(sub, flags)}){quant}"
        if op is C.AT:
            return self.anchor(av, flags)
        if op is C.ATOMIC_GROUP:
            return f"(?>{self.seq(av, flags)})"
        if op in (C.ASSERT, C.ASSERT_NOT):
            direction, sub = av
            kind = ("=" if op is C.ASSERT else "!") if direction == 1 else ("<=" if op is C.ASSERT else "<!")
            return f"(?{kind}{self.seq(sub, flags)})"
        if op is C.GROUPREF:
            return f"\\g{{{av}}}"
        if op is C.GROUPREF_EXISTS:
            group, yes, no = av
            return f"(?({group}){self.seq(yes, flags)}|{self.seq(no or [], flags)})"
        raise Untranslatable(f"unsupported regex construct {op}")

    def anchor(self, at, flags: int) -> str:
        if at is C.AT_BEGINNING_STRING:
            return "\\A"
        if at is C.AT_END_STRING:
            return "\\z"
        if at is C.AT_BEGINNING:
            if flags & re.MULTILINE:
                self.multiline = True
                return "^"
            return "\\A"
        if at is C.AT_END:
            if flags & re.MULTILINE:
                self.multiline = True
                return "$"
            return "\\Z"  # PCRE \Z == Python $: end, or before a final newline
        if at in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY):
            if not flags & re.ASCII:
                self.ascii_only = True  # Python's \b is Unicode-aware; Hyperscan rejects \b under UCP
            return "\\b" if at is C.AT_BOUNDARY else "\\B"
        raise Untranslatable(f"unsupported anchor {at}")


def translate(pattern: str, flags: int = 0) -> Translation:
    """Hyperscan expression equivalent to `re.compile(pattern, flags).search` (match or not)."""
    tree = _parser.parse(pattern, flags)
    em = _Emitter()
    expr = em.seq(tree, tree.state.flags)
    return Translation(expr, em.utf8, em.ascii_only, em.multiline, em.dotall)


def literal_count(pattern: str, flags: int = 0) -> int:
    """Literal characters in the pattern (the default specificity of a rule)."""

    def count(items) -> int:
        n = 0
        for op, av in items:
            if op is C.LITERAL:
                n += 1
            elif op is C.SUBPATTERN:
                n += count(av[3])
            elif op is C.BRANCH:
                n += min(count(alt) for alt in av[1]) if av[1] else 0
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
                n += count(av[2]) * av[0]  # only the mandatory repetitions are certain
            elif op is C.ATOMIC_GROUP:
                n += count(av)
        return n

    return count(_parser.parse(pattern, flags))
