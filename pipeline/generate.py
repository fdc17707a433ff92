"""Realistic input for the demo, tests and benchmarks: the three envelope shapes of the services we
replace, with Loghub message bodies (../shared/data/loghub) and a share of malformed messages.

Every generated message knows how many events it holds and how many of them must be dead-lettered,
so a run can prove that nothing was lost: produced events == classified + dead-lettered.
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
LOGHUB = Path(__import__("os").environ.get("LOGHUB_DIR", ROOT.parent / "shared" / "data" / "loghub"))

# Perf-SDK messages the rules in rules/default.yaml know (domain notes: crash, lag/ANR, OOM, network).
PERF_MESSAGES = [
    (
        "PERF_CRASH",
        "FATAL EXCEPTION: main java.lang.NullPointerException: Attempt to invoke virtual method "
        "'int java.lang.String.length()' on a null object reference",
    ),
    (
        "PERF_CRASH",
        "Terminating app due to uncaught exception 'NSInvalidArgumentException', reason: "
        "'-[__NSCFNumber length]: unrecognized selector sent to instance 0x8c4f2b0'",
    ),
    (
        "PERF_LAG",
        "Choreographer: Skipped 87 frames!  The application may be doing too much work on its main thread.",
    ),
    (
        "PERF_ANR",
        "ANR in com.example.game (com.example.game/.MainActivity) Reason: Input dispatching timed out",
    ),
    (
        "PERF_OOM",
        "java.lang.OutOfMemoryError: Failed to allocate a 4194316 byte allocation with 2097152 free bytes",
    ),
    (
        "PERF_NETWORK",
        "java.net.SocketTimeoutException: failed to connect to api.example.com/203.0.113.7 "
        "(port 443) after 10000ms",
    ),
]
APPS = ["com.example.game", "com.example.chat", "com.example.shop", "com.example.maps"]
PLATFORMS = ["android", "ios"]
TRACEPARENT = "00-{trace}-{span}-01"


def loghub_lines(system: str, limit: int | None = None) -> list[str]:
    """The `Content` column of a Loghub structured CSV (real log message bodies)."""
    path = LOGHUB / system / f"{system}_2k.log_structured.csv"
    with open(path, newline="", encoding="utf-8") as f:
        lines = [row["Content"] for row in csv.DictReader(f)]
    return lines[:limit] if limit else lines


def loghub_systems() -> list[str]:
    return sorted(p.name for p in LOGHUB.iterdir() if p.is_dir())


@dataclass
class Message:
    topic: str  # suffix under the run's prefix: perf | gamelogs | gateway
    value: bytes | None
    headers: list[tuple[str, bytes]]
    events: int  # events this message holds (items, lines; 1 for a message that is rejected whole)
    dead: int  # how many of them must end up dead-lettered
    key: bytes | None = None


class Generator:
    """Deterministic for a seed; timestamps are near `now` so skew checks pass for valid events."""

    def __init__(self, seed: int = 7, now_ms: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.now_ms = now_ms or int(time.time() * 1000)
        self.android = loghub_lines("Android")
        self.server = {s: loghub_lines(s) for s in loghub_systems() if s != "Android"}
        self._device_ids = [f"dev-{i:05d}" for i in range(500)]

    def _ts(self) -> int:
        return self.now_ms - self.rng.randint(0, 120_000)

    def _traceparent(self) -> bytes:
        r = self.rng
        return TRACEPARENT.format(
            trace=f"{r.getrandbits(128):032x}", span=f"{r.getrandbits(64) or 1:016x}"
        ).encode()

    def upload(self, items: int, bad_items: int = 0) -> Message:
        """Upload envelope: meta + data items; `bad_items` of them fail validation (partial success)."""
        r = self.rng
        app = r.choice(APPS)
        meta = {
            "app_id": app,
            "platform": r.choice(PLATFORMS),
            "sdk_version": "3.2.1",
            "os_version": "13",
            "device_id": r.choice(self._device_ids),
        }
        data = []
        bad_at = set(r.sample(range(items), bad_items)) if bad_items else set()
        for i in range(items):
            if r.random() < 0.5:
                _, msg = r.choice(PERF_MESSAGES)
            else:
                msg = r.choice(self.android)
            item = {
                "id": f"e-{i}",
                "timestamp": self._ts(),
                "ip": "203.0.113.7",
                "message": msg,
                "duration_ms": round(r.uniform(5, 3000), 1),
            }
            if i in bad_at:
                item["duration_ms"] = "slow"  # wrong type: VALIDATION_ERROR for this item only
            data.append(item)
        value = orjson.dumps({"meta": meta, "data": data})
        return Message("perf", value, [("traceparent", self._traceparent())], items, bad_items, app.encode())

    def gamelog(self) -> Message:
        """Game log record: headers + logs (one event, time from logs.mtime in seconds)."""
        r = self.rng
        logs = {
            "account_name": str(r.randint(10**9, 10**10)),
            "action": r.randint(1000, 3000),
            "item_id": r.randint(10**7, 10**8),
            "amount": r.randint(1, 5),
            "mtime": self._ts() // 1000,
            "role_id": r.randint(10**12, 10**13),
            "server_id": 5001,
            "platform": 3100,
            "message": r.choice(self.android),
        }
        value = orjson.dumps(
            {"headers": {"app_id": r.choice([24, 25, 26]), "log_name": "log_item"}, "logs": logs}
        )
        return Message("gamelogs", value, [], 1, 0)

    def gateway(self, lines: int, bad_lines: int = 0) -> Message:
        """Log gateway: JSON Lines, one server log per line (Loghub bodies); bad lines are not JSON."""
        r = self.rng
        system = r.choice(sorted(self.server))
        out = []
        # Never the first line: with envelope auto-detection a value whose first line is not JSON is
        # rejected whole (one dead letter), not line by line.
        bad_at = set(r.sample(range(1, lines), bad_lines)) if bad_lines else set()
        for i in range(lines):
            if i in bad_at:
                out.append(b'{"app_id": "svc.' + system.lower().encode() + b'", "message": unterminated')
                continue
            out.append(
                orjson.dumps(
                    {
                        "app_id": f"svc.{system.lower()}",
                        "timestamp": self._ts(),
                        "host": f"node-{r.randint(1, 9)}",
                        "message": r.choice(self.server[system]),
                    }
                )
            )
        return Message("gateway", b"\n".join(out), [], lines, bad_lines)

    def malformed(self) -> Message:
        """A message rejected whole: counts as one event, one dead letter."""
        kind = self.rng.choice(["not_json", "not_utf8", "empty", "too_large", "wrong_shape"])
        value = {
            "not_json": b"<html>502 Bad Gateway</html>",
            "not_utf8": b'{"app_id": "com.example.game", "message": "\xff\xfe broken"}',
            "empty": b"",
            # over unpack.validation.max_field_chars (a 1 MiB value would exceed the broker limit first)
            "too_large": orjson.dumps({"app_id": "com.example.game", "message": "x" * 70_000}),
            "wrong_shape": b"[1, 2, 3]",
        }[kind]
        return Message("perf", value, [], 1, 1)

    def mix(self, messages: int, malformed_share: float = 0.02) -> Iterator[Message]:
        """A realistic stream: mostly uploads, some game logs and gateway batches, a few bad ones."""
        r = self.rng
        for _ in range(messages):
            x = r.random()
            if x < malformed_share:
                yield self.malformed()
            elif x < 0.6:
                items = r.randint(1, 8)
                yield self.upload(items, bad_items=1 if items > 2 and r.random() < 0.1 else 0)
            elif x < 0.8:
                yield self.gamelog()
            else:
                lines = r.randint(1, 10)
                yield self.gateway(lines, bad_lines=1 if lines > 2 and r.random() < 0.1 else 0)
