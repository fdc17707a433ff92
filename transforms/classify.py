"""Classify events with regex rules: one Hyperscan database for all rules, Python `re` for the rest.

Winner of an event = the matching rule with the highest priority, then the highest specificity, then
the earliest position in the rule list. Rules are sorted by that key once; a rule's position in the
sorted list (its "rank") is its Hyperscan id, so the winner is simply the smallest matching id.
"""

from __future__ import annotations

import logging
from typing import Any

from transforms.classify_pcre import translate
from transforms.classify_rules import (
    ClassifyConfig,
    Rule,
    load_rules_file,
    validate_classify_config,
)
from transforms.common import ConfigError
from transforms.native import native_available, perf_native

try:  # the wheel is a hard requirement, but a worker without it must still classify (on `re`)
    import hyperscan
except ImportError:  # pragma: no cover - exercised by a subprocess test with the import blocked
    hyperscan = None

__all__ = [  # plus Classify / ClassifyFn, loaded from classify_beam on first use (see __getattr__)
    "Classifier", "ClassifyConfig", "Rule", "load_rules_file", "validate_classify_config",
    "hyperscan_available",
]

log = logging.getLogger(__name__)
METRICS_NAMESPACE = "classify"


def hyperscan_available() -> bool:
    return hyperscan is not None


def _hs_flags(tr) -> int:
    flags = hyperscan.HS_FLAG_SINGLEMATCH
    if tr.utf8:
        flags |= hyperscan.HS_FLAG_UTF8
    if tr.multiline:
        flags |= hyperscan.HS_FLAG_MULTILINE
    if tr.dotall:
        flags |= hyperscan.HS_FLAG_DOTALL
    return flags


def _hs_compile(exprs: list[bytes], ids: list[int], flags: list[int]):
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=exprs, ids=ids, flags=flags)
    return db


def _error_text(exc: Exception) -> str:
    return str(exc.args[0] if exc.args else exc)


class Classifier:
    """Classifies event dicts (their `fields`) or plain texts. Not thread-safe (one scratch per db).

    Engine "hyperscan": one database holds every rule Hyperscan can run exactly; `fallback` rules (it
    rejects them) run on `re`: those in `prefiltered` sit in the database in prefilter mode (a superset)
    and `re` only confirms their hits, the others are searched with `re` directly. `ascii_only` rules
    (see classify_pcre) run on `re` for non-ASCII text. `re` rules are tried in rank order and only
    while they could still beat the best match so far. Texts that are not valid UTF-8 (lone
    surrogates) are decided by `re` alone.
    """

    def __init__(self, cfg: ClassifyConfig | list[Rule], engine: str | None = None,
                 native: bool | None = None) -> None:
        """`native`: run classify_batch's loop in perf_native when the hyperscan engine runs (None: when
        `native_available()`); it decides like the Python loop and hands every other event back to it."""
        if isinstance(cfg, list):
            cfg = ClassifyConfig(rules=cfg)
        self.config = cfg
        wanted = engine or cfg.engine
        if wanted not in ("auto", "hyperscan", "re"):
            raise ConfigError("classify.engine", f"unknown engine {wanted!r}")
        if wanted == "hyperscan" and hyperscan is None:
            raise ConfigError("classify.engine", "hyperscan requested but the module is not importable")
        self.engine = "re" if wanted == "re" or hyperscan is None else "hyperscan"
        # Rank order: priority desc, specificity desc, file order asc.
        order = sorted(range(len(cfg.rules)), key=lambda i: (-cfg.rules[i].priority,
                                                             -cfg.rules[i].specificity, i))
        self.rules: list[Rule] = [cfg.rules[i] for i in order]
        n = self._none = len(self.rules)  # "no match" rank, worse than every rule
        self._compiled = [r.compile_re() for r in self.rules]
        self._allowed = [frozenset(r.fields) if r.fields is not None else None for r in self.rules]
        self._restricted = any(a is not None for a in self._allowed)
        self._allow_tables: dict[str, bytes] = {}
        self.default_category = cfg.default_category
        self._default = (cfg.default_category, "", "default")
        self.fallback: dict[str, str] = {}  # rule id -> why it runs on `re` (hyperscan's error text)
        self.ascii_only: set[str] = set()  # rule ids run by hyperscan on ASCII text only
        self.prefiltered: set[str] = set()  # fallback rule ids whose re search runs only on a hyperscan hit
        self._confirm = bytes(n)  # per rank: 1 = a hyperscan hit is a prefilter hit, re must confirm it
        self._db = None
        self._hits: list[int] = []
        app = self._hits.append
        self._on_match = lambda i, a, b, c, d: app(i)  # noqa: E731 - bound once, called per match
        re_ranks, ascii_ranks = list(range(n)), []
        if self.engine == "hyperscan":
            re_ranks, ascii_ranks = self._compile_hyperscan()
        # Hyperscan hits that are exact on non-ASCII text too.
        ascii_set = set(ascii_ranks)
        self._exact_any = bytes(0 if k in ascii_set else 1 for k in range(n))
        item = lambda k: (k, self._compiled[k], self._allowed[k])  # noqa: E731
        self._re_items_ascii = [item(k) for k in re_ranks]
        self._re_items_other = [item(k) for k in sorted(set(re_ranks) | set(ascii_ranks))]
        # (category, rule_id, engine) for each rank, per engine, built once.
        self._res_hs = [(r.category, r.id, "hyperscan") for r in self.rules]
        self._res_re = [(r.category, r.id, "re") for r in self.rules]
        # The common case, with its own loop in classify_batch: every rule is in the database, exact
        # (no prefilter to confirm, none on `re`) and allowed in every field.
        self._plain = (self._db is not None and not self._restricted and not re_ranks
                       and not any(self._confirm))
        self._native = None
        if native is None:
            native = native_available()
        if native and self._db is not None and hasattr(perf_native, "HsClassifier"):
            self._native = self._native_classifier()

    # --- setup -----------------------------------------------------------------------------
    def _compile_hyperscan(self) -> tuple[list[int], list[int]]:
        """Build the database; return (ranks that run on re, ranks exact on ASCII text only)."""
        exprs: list[bytes] = []
        ids: list[int] = []
        flags: list[int] = []
        ascii_only: set[int] = set()
        prefilter: set[int] = set()
        for rank, rule in enumerate(self.rules):
            try:
                tr = translate(rule.pattern, rule.re_flags)
            except Exception as exc:  # noqa: BLE001 - Untranslatable or a translator bug: `re` still works
                self.fallback[rule.id] = f"not translatable for hyperscan: {exc}"
                continue
            exprs.append(tr.expression.encode("ascii"))
            ids.append(rank)
            flags.append(_hs_flags(tr))
            if tr.ascii_only:
                ascii_only.add(rank)
        try:
            db = _hs_compile(exprs, ids, flags) if exprs else None
        except hyperscan.error:
            # The multi-pattern error does not say which pattern: compile each alone to find them.
            keep = []
            for i, (expr, rank, fl) in enumerate(zip(exprs, ids, flags, strict=True)):
                try:
                    _hs_compile([expr], [rank], [fl])
                    keep.append(i)
                except hyperscan.error as exc:
                    self.fallback[self.rules[rank].id] = _error_text(exc)
                    # Prefilter mode matches a superset (lookaround dropped, backreferences widened):
                    # re then only confirms Hyperscan's hits instead of searching every text.
                    try:
                        _hs_compile([expr], [rank], [fl | hyperscan.HS_FLAG_PREFILTER])
                        flags[i] = fl | hyperscan.HS_FLAG_PREFILTER
                        prefilter.add(rank)
                        keep.append(i)
                    except hyperscan.error:
                        pass
            exprs, ids, flags = [exprs[i] for i in keep], [ids[i] for i in keep], [flags[i] for i in keep]
            try:
                db = _hs_compile(exprs, ids, flags) if exprs else None
            except hyperscan.error as exc:  # e.g. resource limits of the whole set: everything on `re`
                for rank in ids:
                    self.fallback[self.rules[rank].id] = f"database compile failed: {_error_text(exc)}"
                ids, db = [], None
                prefilter.clear()
        self._db = db
        self._db_patterns = (exprs, ids, flags)
        on_hs = set(ids)
        ascii_only &= on_hs
        self.ascii_only = {self.rules[k].id for k in ascii_only}
        self.prefiltered = {self.rules[k].id for k in prefilter}
        self._confirm = bytes(1 if k in prefilter else 0 for k in range(len(self.rules)))
        if self.fallback:
            log.info("classify: %d of %d rules run on re: %s", len(self.fallback), len(self.rules),
                     self.fallback)
        return [k for k in range(len(self.rules)) if k not in on_hs], sorted(ascii_only)

    def _native_classifier(self):
        """perf_native's HsClassifier on the same database patterns, regexes and tables; None (logged)
        when its Hyperscan library does not compile them."""
        exprs, ids, flags = self._db_patterns
        n = self._none
        try:
            return perf_native.HsClassifier(
                exprs, ids, flags,
                [self._compiled[k].search if self._confirm[k] else None for k in range(n)],
                [(k, rx.search, sorted(a) if a is not None else None) for k, rx, a in self._re_items_ascii],
                [sorted(a) if a is not None else None for a in self._allowed],
                [(r.category, r.id) for r in self.rules],
                self._default)
        except ValueError as exc:
            log.warning("classify: native fast path off (%s); the Python loop classifies", exc)
            return None

    def _allow_table(self, field: str) -> bytes:
        table = self._allow_tables.get(field)
        if table is None:
            table = bytes(1 if a is None or field in a else 0 for a in self._allowed)
            self._allow_tables[field] = table
        return table

    # --- matching ----------------------------------------------------------------------------
    def _re_best(self, text: str, field: str | None, limit: int, items) -> tuple[int, bool]:
        """(best rank below `limit` among `items` whose regex matches `text`, found?)."""
        for k, rx, allowed in items:
            if k >= limit:
                break
            if (allowed is None or field is None or field in allowed) and rx.search(text):
                return k, True
        return limit, False

    def _best_text(self, text: str, field: str | None, limit: int) -> tuple[int, bool]:
        """(best rank below `limit` matching `text` in field `field`, matched by re?). None: any field."""
        if self._db is None and self.engine == "re":
            return self._re_best(text, field, limit, self._re_items_ascii)
        try:
            data = text.encode()
        except UnicodeEncodeError:  # lone surrogates are not UTF-8: hyperscan can't scan, re decides all
            items = [(k, self._compiled[k], self._allowed[k]) for k in range(limit)]
            return self._re_best(text, field, limit, items)
        found, found_re = limit, False
        is_ascii = text.isascii()
        if self._db is not None:
            hits = self._hits
            hits.clear()
            self._db.scan(data, match_event_handler=self._on_match)
            if hits:
                cand = hits
                if not is_ascii:
                    exact = self._exact_any
                    cand = [h for h in cand if exact[h]]
                if self._restricted and field is not None:
                    table = self._allow_table(field)
                    cand = [h for h in cand if table[h]]
                if cand:
                    found, found_re = self._pick(cand, text, limit)
        k, by_re = self._re_best(text, field, found,
                                 self._re_items_ascii if is_ascii else self._re_items_other)
        return (k, True) if by_re else (found, found_re)

    def _pick(self, hits: list[int], text: str, limit: int, table: bytes | None = None) -> tuple[int, bool]:
        """Best of hyperscan's hits below `limit`: (rank, confirmed by re?). Prefilter hits need re;
        `table` (per rank, 1 = allowed in this field) drops hits of rules restricted to other fields."""
        confirm = self._confirm
        for h in sorted(hits):
            if h >= limit:
                break
            if table is not None and not table[h]:
                continue
            if not confirm[h]:
                return h, False
            if self._compiled[h].search(text):
                return h, True
        return limit, False

    def _best_fields(self, fields: dict[str, str]) -> tuple[int, bool]:
        best, via_re = self._none, False
        for name, text in fields.items():
            if text:
                if not isinstance(text, str):  # same error whichever engine runs
                    raise TypeError(f"field {name!r} is {type(text).__name__}, not str")
                k, by_re = self._best_text(text, name, best)
                if k < best:
                    best, via_re = k, by_re
        return best, via_re

    def _result(self, best: int, via_re: bool) -> tuple[str, str, str]:
        if best >= self._none:
            return self._default
        return (self._res_re if via_re else self._res_hs)[best]

    def classify_fields(self, fields: dict[str, str]) -> tuple[str, str, str]:
        """(category, rule_id, engine) for a mapping of field name -> text."""
        return self._result(*self._best_fields(fields))

    def classify_text(self, text: str, field: str | None = None) -> tuple[str, str, str]:
        """(category, rule_id, engine) of one text. With `field` None, rules' `fields` are ignored."""
        if not text:
            return self._default
        return self._result(*self._best_text(text, field, self._none))

    def classify(self, event: dict[str, Any]) -> dict[str, Any]:
        """A copy of `event` with category, rule_id and engine added."""
        if self._db is not None:
            return self.classify_batch((event,))[0]
        return self._classify_general(event, False)

    def _classify_general(self, event: dict[str, Any], inplace: bool) -> dict[str, Any]:
        cat, rid, eng = self._result(*self._best_fields(event["fields"]))
        out = event if inplace else event.copy()
        out["category"] = cat
        out["rule_id"] = rid
        out["engine"] = eng
        return out

    def classify_batch(self, events, inplace: bool = False) -> list[dict[str, Any]]:
        """Fast path: classify many events with the per-call work hoisted out of the loop.

        Returns copies like `classify`; `inplace=True` annotates and returns the given dicts instead
        (for a caller that owns them: right after unpacking, or ClassifyFn on the lists Unpack emits,
        whose only consumer it is; never on elements other transforms also read).
        Same decisions as `classify_fields`; specialised for the common case (hyperscan engine, ASCII
        text) and using the general path for the rest. With perf_native, its loop decides the events
        whose text fields are all ASCII `str` and hands the others back to this one.
        """
        if self._native is not None:
            events = events if events.__class__ is list else list(events)
            out, back = self._native.classify(events, inplace)
            for i in back:
                out[i] = self._classify_batch_py((events[i],), inplace)[0]
            return out
        return self._classify_batch_py(events, inplace)

    def _classify_batch_py(self, events, inplace: bool) -> list[dict[str, Any]]:
        if self._db is None:
            return [self._classify_general(ev, inplace) for ev in events]
        if self._plain:
            return self._classify_plain(events, inplace)
        none = self._none
        default = self._default
        res_hs, res_re = self._res_hs, self._res_re
        re_ascii = self._re_items_ascii
        best_text = self._best_text
        confirm, pick = self._confirm, self._pick
        scan = self._db.scan
        on_match = self._on_match
        hits = self._hits
        clear = hits.clear
        out = []
        push = out.append
        restricted = self._restricted
        tables = self._allow_tables
        table = None
        for ev in events:
            best = none
            res = res_hs
            for name, text in ev["fields"].items():
                if not text:
                    continue
                if text.__class__ is not str or not text.isascii():
                    if not isinstance(text, str):
                        self._classify_general(ev, False)  # raises its TypeError naming the field
                    k, by_re = best_text(text, name, best)
                    if k < best:
                        best, res = k, (res_re if by_re else res_hs)
                    continue
                if restricted:
                    table = tables.get(name) or self._allow_table(name)
                clear()
                scan(text.encode(), on_match)  # (data, match_event_handler): positional is cheaper
                if hits:
                    k = min(hits)
                    if confirm[k] or (restricted and not table[k]):
                        k, by_re = pick(hits, text, best, table)
                        if k < best:
                            best, res = k, (res_re if by_re else res_hs)
                    elif k < best:
                        best, res = k, res_hs
                if re_ascii:
                    for k, rx, allowed in re_ascii:
                        if k >= best:
                            break
                        if (allowed is None or name in allowed) and rx.search(text):
                            best, res = k, res_re
                            break
            cat, rid, eng = default if best == none else res[best]
            if not inplace:
                ev = ev.copy()
            ev["category"] = cat
            ev["rule_id"] = rid
            ev["engine"] = eng
            push(ev)
        return out

    def _classify_plain(self, events, inplace: bool) -> list[dict[str, Any]]:
        """classify_batch when every rule runs exactly on hyperscan and none is restricted to fields
        (`_plain`): an ASCII text's best rank is the smallest hit, nothing else to check."""
        none = self._none
        default = self._default
        res_hs = self._res_hs
        best_text = self._best_text
        scan = self._db.scan
        on_match = self._on_match
        hits = self._hits
        clear = hits.clear
        out = []
        push = out.append
        for ev in events:
            best = none
            res = res_hs
            for name, text in ev["fields"].items():
                if text.__class__ is str and text.isascii():
                    if text:
                        clear()
                        scan(text.encode(), on_match)
                        if hits:
                            k = min(hits)
                            if k < best:
                                best = k
                                res = res_hs
                elif text:
                    if not isinstance(text, str):
                        self._classify_general(ev, False)  # raises its TypeError naming the field
                    k, by_re = best_text(text, name, best)
                    if k < best:
                        best, res = k, (self._res_re if by_re else res_hs)
            cat, rid, eng = default if best == none else res[best]
            if not inplace:
                ev = ev.copy()
            ev["category"] = cat
            ev["rule_id"] = rid
            ev["engine"] = eng
            push(ev)
        return out


# --- Beam ----------------------------------------------------------------------------------------
def __getattr__(name: str):
    # The Beam transform lives in classify_beam: importing apache_beam takes seconds, and the rules
    # CLI and benchmarks only need the Classifier.
    if name in ("Classify", "ClassifyFn"):
        from transforms import classify_beam

        return getattr(classify_beam, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
