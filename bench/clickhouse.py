"""Benchmark of the ClickHouse sink's insert path against a bare client insert of the same batches.

    python -m bench.clickhouse --rows 1000000 --json [--targets server,chdb] [--batch-rows 50000]

Per batch of events (generated outside the timings):
  sink:  the sink's own DoFn code: _ToRowChunks.process per element (dict -> row, chunking; an element is
         a list of `--element-events` events, as the pipeline's lists of records become), the chunks of
         the batch joined as GroupIntoBatches hands them over, _InsertBatches.process (chunk flattening,
         dedup token, retry wrapper, metrics, ONE client insert)                           -> db bench_sink
  floor: the client's insert of rows built beforehand (no conversion, no sink code)        -> db bench_floor
Both run interleaved batch by batch, so background merges and a busy machine hit both alike.
Prints ONE JSON object: {"server": {"rows_per_s", "floor_rows_per_s", "ratio", "cpu_us_per_row",
"floor_cpu_us_per_row"}, "chdb": {...}, ...}; cpu_us_per_row is process CPU time (time.process_time), which
for chdb includes the embedded server's own insert work.
Progress goes to stderr. The server target starts the local server (scripts/clickhouse.sh up) if needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000


def make_events(start: int, n: int) -> list[dict]:
    """Events shaped like unpack+classify output (about 330 B of JSON each)."""
    out = []
    for i in range(start, start + n):
        out.append({
            "event_id": hashlib.blake2b(f"bench:{i % 8}:{i}:0".encode(), digest_size=16).hexdigest(),
            "event_time": T0 + i, "ingest_time": T0 + i + 900, "app_id": f"com.example.app{i % 20}",
            "event_name": "crash", "platform": "android", "device_id": f"dev{i % 5000}",
            "duration_ms": None if i % 3 else (i % 1000) / 3,
            "fields": {"message": f"FATAL EXCEPTION: main java.lang.NullPointerException at {i}",
                       "stack": "at com.example.Foo.bar(Foo.java:12)"},
            "attrs": {"ip": "203.0.113.7", "sdk_version": "3.2.1", "os_version": "13"},
            "traceparent": None, "src": ["perf.upload", i % 8, i, 0], "envelope": "upload",
            "category": "PERF_CRASH", "rule_id": f"r{i % 40}", "engine": "hyperscan",
        })
    return out


def log(msg: str) -> None:
    print(f"bench.clickhouse: {msg}", file=sys.stderr, flush=True)


def bench_target(name: str, url: str, rows: int, batch_rows: int, element_events: int = 2000) -> dict:
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import Timestamp

    from transforms.clickhouse import _InsertBatches, _ToRowChunks, chunking, validate_clickhouse_config
    from transforms.clickhouse_client import connect
    from transforms.clickhouse_rows import EVENTS
    from transforms.clickhouse_schema import ensure_schema

    sink_cfg = validate_clickhouse_config({"url": url, "database": "bench_sink", "batch_rows": batch_rows})
    floor_cfg = validate_clickhouse_config({"url": url, "database": "bench_floor", "batch_rows": batch_rows})
    client = connect(floor_cfg)
    for db in ("bench_sink", "bench_floor"):
        client.execute(f"DROP DATABASE IF EXISTS `{db}`")
    ensure_schema(sink_cfg, force=True)
    ensure_schema(floor_cfg, client, force=True)
    log(f"{name}: ClickHouse {'.'.join(map(str, client.version))}, {rows} rows in batches of {batch_rows}")

    chunk_rows, _ = chunking(batch_rows)
    to_chunks = _ToRowChunks(EVENTS, sink_cfg.shards, chunk_rows, sink_cfg.max_buffer_s)
    to_chunks.setup()
    window, ts = GlobalWindow(), Timestamp(0)
    insert = _InsertBatches(sink_cfg, EVENTS, create_schema=False, chunked=True)
    insert.setup()
    insert._writer.client()  # connect outside the timings, as the floor's client is
    layout = EVENTS
    t_sink = t_floor = 0.0
    cpu_sink = cpu_floor = 0.0
    done = 0
    while done < rows:
        n = min(batch_rows, rows - done)
        events = make_events(done, n)
        prebuilt = [layout.to_row(e) for e in events]
        # Alternate which side goes first, so neither always pays for the merges the other started.
        for side in (("floor", "sink") if (done // batch_rows) % 2 == 0 else ("sink", "floor")):
            t, c = time.perf_counter(), time.process_time()
            if side == "floor":  # the bare client insert of pre-built rows
                client.insert(layout.name, layout.columns, prebuilt, types=layout.types)
                t_floor += time.perf_counter() - t
                cpu_floor += time.process_time() - c
            else:  # the sink: per-element conversion + chunking, the chunks of the batch, the batch DoFn
                to_chunks.start_bundle()
                chunks = []
                append = chunks.append
                process = to_chunks.process
                if element_events == 1:
                    for e in events:
                        for keyed in process(e, window, ts):
                            append(keyed[1])
                else:
                    for i in range(0, n, element_events):
                        for keyed in process(events[i:i + element_events], window, ts):
                            append(keyed[1])
                chunks.extend(wv.value[1] for wv in to_chunks.finish_bundle())
                dead = list(insert.process((0, chunks)))
                t_sink += time.perf_counter() - t
                cpu_sink += time.process_time() - c
        if dead:
            raise RuntimeError(f"{name}: sink rejected rows: {dead[0]['reason']}")
        done += n
        log(f"{name}: {done}/{rows}  sink {done / t_sink:,.0f} rows/s  floor {done / t_floor:,.0f} rows/s")
    counts = [client.execute(f"SELECT count() FROM `{db}`.events")[0][0]
              for db in ("bench_sink", "bench_floor")]
    if counts != [rows, rows]:
        raise RuntimeError(f"{name}: expected {rows} rows in each table, found {counts}")
    insert.teardown()
    for db in ("bench_sink", "bench_floor"):
        client.execute(f"DROP DATABASE IF EXISTS `{db}`")
    client.close()
    sink_rate, floor_rate = rows / t_sink, rows / t_floor
    return {"rows_per_s": round(sink_rate), "floor_rows_per_s": round(floor_rate),
            "ratio": round(sink_rate / floor_rate, 3), "cpu_us_per_row": round(cpu_sink / rows * 1e6, 3),
            "floor_cpu_us_per_row": round(cpu_floor / rows * 1e6, 3),
            "version": ".".join(map(str, client.version))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.clickhouse", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-rows", type=int, default=50_000)
    ap.add_argument("--element-events", type=int, default=2000,
                    help="events per pipeline element (the pipeline reads lists of 500 records, ~2,000 "
                    "events); 1 = one event per element")
    ap.add_argument("--targets", default="server,chdb", help="comma list of: server, chdb")
    ap.add_argument("--server-url", default=f"clickhouse://default@127.0.0.1:"
                                            f"{os.environ.get('CLICKHOUSE_TCP_PORT', '9000')}")
    ap.add_argument("--chdb-path", default=str(ROOT / ".run" / "bench-chdb"))
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    out: dict = {"rows": args.rows, "batch_rows": args.batch_rows, "element_events": args.element_events,
                 "target_ratio": 0.7}
    for name in targets:
        if name == "server":
            res = subprocess.run(["bash", str(ROOT / "scripts" / "clickhouse.sh"), "up"], capture_output=True,
                                 text=True, timeout=300)
            if res.returncode != 0:
                raise SystemExit(f"bench.clickhouse: server did not start:\n{res.stderr}")
            out[name] = bench_target(name, args.server_url, args.rows, args.batch_rows, args.element_events)
        elif name == "chdb":
            shutil.rmtree(args.chdb_path, ignore_errors=True)
            out[name] = bench_target(name, f"chdb://{args.chdb_path}", args.rows, args.batch_rows,
                                     args.element_events)
            from transforms.clickhouse_client import close_chdb

            close_chdb()
            shutil.rmtree(args.chdb_path, ignore_errors=True)
        else:
            raise SystemExit(f"bench.clickhouse: unknown target {name!r} (server, chdb)")
        log(f"{name}: {out[name]}")
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
