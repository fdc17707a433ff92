"""Event times: a time value as payloads and headers give it -> milliseconds since the epoch.

Numbers (and numeric strings) by magnitude: < 1e11 seconds, < 1e14 ms, < 1e17 µs, else ns. Other strings:
ISO-8601 via datetime.fromisoformat; no zone means UTC. Used by unpack (payload times) and ReadFromKafka
(`event_time_header`), so both read a time the same way.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

MAX_EVENT_MS = 253402300799999  # 9999-12-31T23:59:59.999Z: anything later is garbage, not a time


def _num_to_ms(v: float) -> int:
    a = abs(v)
    if a < 1e11:
        return int(v * 1000)
    if a < 1e14:
        return int(v)
    if a < 1e17:
        return int(v // 1000)
    return int(v // 1_000_000)


def parse_event_time(v: Any) -> int | None:
    """A payload time value -> ms since epoch, or None when it is not a time (see module doc)."""
    t = type(v)
    if t is int or t is float:
        return _num_to_ms(v) if (t is int or math.isfinite(v)) else None
    if t is not str:
        return None
    s = v.strip()
    if not s:
        return None
    try:
        return _num_to_ms(int(s))
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        f = None
    if f is not None:
        return _num_to_ms(f) if math.isfinite(f) else None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))
