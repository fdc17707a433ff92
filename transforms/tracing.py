"""W3C trace context: the child `traceparent` each output record carries.

The services we replace forwarded the incoming traceparent with its span id replaced by their own
span's id: the output becomes a child in the same trace. Parsing follows the rules of
opentelemetry-api's TraceContext propagator (a test checks they agree), and ids are formatted with
its helpers.
"""

from __future__ import annotations

import random
import re

from opentelemetry import trace

_rand = random.getrandbits  # span ids need uniqueness, not unpredictability


_CACHE_MAX = 4096
_parsed: dict[str, tuple[str, str] | None] = {}
# W3C trace-context: version-traceid-parentid-flags, lowercase hex (the format OTel's propagator parses).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def _parse(parent: str) -> tuple[str, str] | None:
    """(prefix up to the span id, suffix after it) of a child's traceparent; None if invalid.

    Same rules as OTel's TraceContextTextMapPropagator.extract (checked against it in the tests), at a
    fraction of its cost: extract builds a whole Context per call, ~50 µs, which showed up as the
    largest single cost per event when every upload carries its own trace.
    """
    m = _TRACEPARENT.match(parent.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or int(trace_id, 16) == 0 or int(span_id, 16) == 0:
        return None
    # A child is written in the version we speak (00), with the parent's trace id and sampling flag.
    return f"00-{trace_id}-", f"-{int(flags, 16) & 0x01:02x}"


def child_traceparent(parent: str | None) -> str | None:
    """A traceparent for a child span of `parent` (same trace id and flags, new span id); None if the
    parent is missing or invalid (we do not invent traces for untraced input)."""
    if not parent:
        return None
    parts = _parsed.get(parent, False)
    if parts is False:
        if len(_parsed) >= _CACHE_MAX:
            _parsed.clear()
        parts = _parsed[parent] = _parse(parent)
    if parts is None:
        return None
    return f"{parts[0]}{trace.format_span_id(_rand(64) or 1)}{parts[1]}"
