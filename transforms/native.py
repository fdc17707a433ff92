"""The optional native fast paths: perf_native (native/, Rust), built by `./run.sh setup python`.

Beam workers without the wheel run the Python code, which stays the one definition of every decision;
`PERF_NATIVE=0` turns the native paths off (to compare, or to rule them out).
"""

from __future__ import annotations

import os

try:
    import perf_native
except ImportError:  # pragma: no cover - depends on the install
    perf_native = None

__all__ = ["native_available", "perf_native"]


def native_available() -> bool:
    """True when perf_native is installed and not disabled with PERF_NATIVE=0."""
    return perf_native is not None and os.environ.get("PERF_NATIVE", "1") != "0"
