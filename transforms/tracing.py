"""W3C trace context: the child `traceparent` each output record carries.

The services we replace forwarded the incoming traceparent with its span id replaced by their own
span's id: the output becomes a child in the same trace. We do the same through opentelemetry-api's
TraceContext propagator, so parsing and formatting follow the spec (version, flags, invalid ids).
"""

from __future__ import annotations

import random

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_rand = random.getrandbits  # span ids need uniqueness, not unpredictability


_CACHE_MAX = 4096
_parsed: dict[str, tuple[str, str] | None] = {}


def _parse(parent: str) -> tuple[str, str] | None:
    """(prefix up to the span id, suffix after it) of the child's traceparent, via OTel; None if invalid."""
    ctx = trace.get_current_span(_PROPAGATOR.extract({"traceparent": parent})).get_span_context()
    if not ctx.is_valid:
        return None
    carrier: dict[str, str] = {}
    probe = trace.SpanContext(ctx.trace_id, 1, is_remote=False, trace_flags=ctx.trace_flags)
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(probe)))
    version, trace_id, _, flags = carrier["traceparent"].split("-")
    return f"{version}-{trace_id}-", f"-{flags}"


def child_traceparent(parent: str | None) -> str | None:
    """A traceparent for a child span of `parent` (same trace id and flags, new span id); None if the
    parent is missing or invalid (we do not invent traces for untraced input).

    Records of one upload share a parent, so the OTel parse is cached and the hot path is one
    random number and a format.
    """
    if not parent:
        return None
    parts = _parsed.get(parent, False)
    if parts is False:
        if len(_parsed) >= _CACHE_MAX:
            _parsed.clear()
        parts = _parsed[parent] = _parse(parent)
    if parts is None:
        return None
    return f"{parts[0]}{_rand(64) or 1:016x}{parts[1]}"
