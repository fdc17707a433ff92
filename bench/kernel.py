"""Kernel benchmark: unpack + validate + classify in one process, against the bare floor.

    python -m bench.kernel --events 200000 --json

Events: KafkaRecords whose values are upload envelopes (1-4 items) or single JSON objects, with the
`Content` lines of all Loghub sets as `message`. Rules: every Loghub templates file imported together
(531 rules). Measured in the same run, on the same records and the same Hyperscan database:
  - kernel: Unpacker.unpack_batch + Classifier.classify_batch over chunks of records (classified
    in place, as ClassifyFn does on Unpack's lists; `events_per_s_copies`: classified copies instead, as
    ClassifyFn does for single events);
  - floor:  orjson.loads + one Hyperscan scan per event (smallest matching id) in a plain loop;
  - re:     the same kernel with the `re` engine, on a smaller sample.
`"native"` in the result tells whether unpack ran its native fast path (perf_native, built by
`./run.sh setup python`; `PERF_NATIVE=0` for the pure-Python path).
Each timed part runs `--repeat` times, interleaved chunk by chunk; the best run counts. Times are this
process's CPU time by default (events/s per core, undisturbed by other processes on a shared machine).
Prints ONE JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
LOGHUB = (ROOT / ".." / "shared" / "data" / "loghub").resolve()
TOPIC = "bench.events"
# Per-core throughput: CPU time of this process, so other processes on a shared machine do not count
# (`--clock wall` for elapsed time).
clock = time.process_time


def progress(msg: str) -> None:
    print(f"[bench.kernel] {msg}", file=sys.stderr, flush=True)


def load_loghub() -> tuple[list, list[tuple[str, str]]]:
    """(rules of all templates files, [(Content, expected category)] of all labeled lines)."""
    from transforms.classify_templates import read_labeled, rules_from_templates, set_name

    if not LOGHUB.is_dir():
        raise SystemExit(f"Loghub data missing: {LOGHUB}")
    rules, lines = [], []
    for d in sorted(p for p in LOGHUB.iterdir() if p.is_dir()):
        tpl, lab = next(d.glob("*_templates.csv")), next(d.glob("*_structured.csv"))
        prefix = f"{set_name(str(tpl))}."
        rules.extend(rules_from_templates(str(tpl), prefix))
        lines.extend((c, prefix + e) for c, e in read_labeled(str(lab)))
    return rules, lines


def make_records(n_events: int, lines: list[tuple[str, str]], seed: int = 7):
    """KafkaRecords holding exactly n_events events, and the expected category of each, in order."""
    from transforms.common import KafkaRecord

    rnd = random.Random(seed)
    now = int(time.time() * 1000)
    platforms = ("android", "ios", "server")
    records, expected = [], []
    offset = 0
    made = 0
    while made < n_events:
        n = min(rnd.choice((1, 1, 2, 3, 4)), n_events - made)
        picks = [rnd.choice(lines) for _ in range(n)]
        items = [{"id": f"e-{made + i}", "timestamp": now - rnd.randint(0, 60_000), "ip": "203.0.113.7",
                  "message": content, "duration_ms": rnd.randint(1, 2000)}
                 for i, (content, _) in enumerate(picks)]
        if rnd.random() < 0.5:
            meta = {"app_id": "com.example.game", "platform": rnd.choice(platforms), "sdk_version": "3.2.1",
                    "os_version": "13", "device_id": f"d{rnd.randint(1, 999)}"}
            value = {"meta": meta, "data": items}
        else:  # a single JSON object per record
            picks = picks[:1]
            value = {**items[0], "app_id": "com.example.game", "platform": rnd.choice(platforms)}
        records.append(KafkaRecord(TOPIC, offset % 8, offset, now, None, orjson.dumps(value)))
        expected.extend(cat for _, cat in picks)
        made += len(picks)
        offset += 1
    return records, expected


def run_kernel(unpacker, clf, records, expected, chunk: int, inplace: bool = False) -> tuple[float, int, int]:
    """(CPU seconds, events, correctly classified) for unpack+validate+classify of all records in chunks.

    Outputs are checked and dropped chunk by chunk, as downstream stages would consume them. Only the
    unpack and classify calls are timed: the accuracy check is the benchmark's own work (the floor has
    none), so it runs off the clock.
    """
    n = correct = 0
    spent = 0.0
    for i in range(0, len(records), chunk):
        t0 = clock()
        events, dls = unpacker.unpack_batch(records[i:i + chunk])
        out = clf.classify_batch(events, inplace=inplace)
        spent += clock() - t0
        if dls:
            raise SystemExit(f"unexpected dead letters: {dls[:2]}")
        want = expected[n:n + len(out)]
        correct += sum(e["category"] == w for e, w in zip(out, want, strict=True))
        n += len(out)
    return spent, n, correct


def run_floor(db, records) -> tuple[float, int]:
    """orjson.loads + one scan per event, keeping the smallest matching id: the least work possible."""
    hits: list[int] = []
    app = hits.append

    def on_match(i, a, b, c, d):
        app(i)

    loads = orjson.loads
    scan = db.scan
    clear = hits.clear
    n = 0
    t0 = clock()
    for rec in records:
        obj = loads(rec.value)
        data = obj.get("data")
        for item in (data if data is not None else (obj,)):
            clear()
            scan(item["message"].encode(), match_event_handler=on_match)
            if hits:
                min(hits)
            n += 1
    return clock() - t0, n


def bare_scan(clf, events: list[dict]) -> None:
    """Just the scan calls (with the classifier's own callback) over the events' text fields."""
    scan, on_match, hits = clf._db.scan, clf._on_match, clf._hits
    for ev in events:
        for text in ev["fields"].values():
            hits.clear()
            scan(text.encode(), match_event_handler=on_match)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernel", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--re-events", type=int, default=5_000, help="sample size for the re engine")
    ap.add_argument("--chunk", type=int, default=500, help="records per unpack/classify batch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: process CPU time (per-core throughput, default); wall: elapsed time")
    ap.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    args = ap.parse_args(argv)
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    from transforms.classify import Classifier
    from transforms.unpack import Unpacker, validate_unpack_config

    progress("loading Loghub templates and lines")
    rules, lines = load_loghub()
    t0 = time.perf_counter()
    clf = Classifier(rules, engine="hyperscan")
    compile_s = time.perf_counter() - t0
    progress(f"{len(rules)} rules compiled in {compile_s:.2f} s ({len(clf.fallback)} on re)")
    records, expected = make_records(args.events, lines)
    progress(f"{len(records)} records, {len(expected)} events, "
             f"{sum(len(r.value) for r in records) / len(records):.0f} B per record")
    unpacker = Unpacker(validate_unpack_config(None))
    progress(f"unpack: {'native fast path (perf_native)' if unpacker.native else 'pure-Python path'}")

    # The collector as the pipeline process sets it (pipeline.tuning.tune_gc: start-up objects and these
    # long-lived inputs frozen, young generation every 50k allocations); the same for every measured loop.
    from pipeline.tuning import tune_gc

    tune_gc()
    # Kernel (in place), kernel (copies) and floor are interleaved chunk by chunk, the order rotating per
    # chunk: a burst of noise from the other hyperthread (2 vCPUs) hits all three alike instead of one run.
    starts = list(range(0, len(records), args.chunk))
    ev_at = [0]
    for i in starts:  # where each chunk's events start in `expected` (one untimed pass)
        ev_at.append(ev_at[-1] + len(unpacker.unpack_batch(records[i:i + args.chunk])[0]))
    kernel_s, copies_s, floor_s = [], [], []
    correct = 0
    for r in range(args.repeat):
        k_s = c_s = f_s = 0.0
        n = correct = 0
        for j, i in enumerate(starts):
            part, want = records[i:i + args.chunk], expected[ev_at[j]:ev_at[j + 1]]
            for side in (("k", "c", "f"), ("c", "f", "k"), ("f", "k", "c"))[(j + r) % 3]:
                if side == "k":
                    s, m, ok = run_kernel(unpacker, clf, part, want, args.chunk, inplace=True)
                    k_s += s
                    n += m
                    correct += ok
                elif side == "c":
                    c_s += run_kernel(unpacker, clf, part, want, args.chunk)[0]
                else:
                    f_s += run_floor(clf._db, part)[0]
        if n != len(expected):
            raise SystemExit(f"kernel lost events: {n} out, {len(expected)} expected")
        kernel_s.append(k_s)
        copies_s.append(c_s)
        floor_s.append(f_s)
        progress(f"run {r + 1}: kernel {n / k_s:,.0f} ev/s (copies {n / c_s:,.0f}), "
                 f"floor {n / f_s:,.0f} ev/s")

    # Where the time goes (same chunks; best of the repeats): kernel = unpack + classify, floor =
    # loads + scan; `scan` is the bare scan+callback over the unpacked events' text fields.
    unpack_s, classify_s, scan_s, loads_s = [], [], [], []
    for _ in range(args.repeat):
        u_s = c_s = s_s = 0.0
        for i in range(0, len(records), args.chunk):
            t0 = clock()
            events, _ = unpacker.unpack_batch(records[i:i + args.chunk])
            t1 = clock()
            clf.classify_batch(events, inplace=True)
            t2 = clock()
            bare_scan(clf, events)
            u_s += t1 - t0
            c_s += t2 - t1
            s_s += clock() - t2
        unpack_s.append(u_s)
        classify_s.append(c_s)
        scan_s.append(s_s)
        t0 = clock()
        for rec in records:
            orjson.loads(rec.value)
        loads_s.append(clock() - t0)

    n_re = min(args.re_events, len(records))
    progress(f"re engine on {n_re} records")
    rx = Classifier(rules, engine="re")
    re_s, re_n, re_correct = run_kernel(unpacker, rx, records[:n_re], expected, args.chunk)

    n = len(expected)
    best_kernel, best_floor = min(kernel_s), min(floor_s)
    result: dict[str, Any] = {
        "native": unpacker.native,
        "events_per_s": round(n / best_kernel),
        "floor_events_per_s": round(n / best_floor),
        "ratio": round(best_floor / best_kernel, 3),
        "re_events_per_s": round(re_n / re_s),
        "rules": len(rules),
        "re_fallback_rules": len(clf.fallback),
        "events": n,
        "records": len(records),
        "re_events": re_n,
        "accuracy": round(correct / n, 5),
        "re_accuracy": round(re_correct / re_n, 5),
        "events_per_s_copies": round(n / min(copies_s)),
        "ratio_copies": round(best_floor / min(copies_s), 3),
        "unpack_events_per_s": round(n / min(unpack_s)),
        "classify_events_per_s": round(n / min(classify_s)),
        "us_per_event": {
            "floor": round(best_floor / n * 1e6, 3),
            "floor_loads": round(min(loads_s) / n * 1e6, 3),
            "kernel": round(best_kernel / n * 1e6, 3),
            "unpack": round(min(unpack_s) / n * 1e6, 3),
            "classify": round(min(classify_s) / n * 1e6, 3),
            "classify_bare_scan": round(min(scan_s) / n * 1e6, 3),
        },
        "kernel_runs_s": [round(s, 3) for s in kernel_s],
        "floor_runs_s": [round(s, 3) for s in floor_s],
        "compile_s": round(compile_s, 3),
        "chunk": args.chunk,
        "clock": "process CPU time" if args.clock == "cpu" else "wall time",
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
