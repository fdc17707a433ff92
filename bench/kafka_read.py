"""Kafka read benchmark: our ReadFromKafka on the default bounded runner against a bare consume loop.

    python -m bench.kafka_read --events 1000000 --json

Produces N upload records of about 300 bytes (pipeline.generate Generator.upload(1) values, lz4) to a
fresh 4-partition topic once, then reads the whole topic, in the same run:
  - ours:  ReadFromKafka(ReadConfig(topics=(t,), stop_at_end=True, batch_records=B)) -> a DoFn that counts
           per bundle (B records per element: 1 by default, the pipeline's 500 with --batch-records 500), on
           DirectRunner as pipeline.runners resolves it for bounded reads (FnApiRunner, in process);
           timed from pipeline start to finish, and from the first record counted to the last
           (excluding fixed start-up: pipeline construction, planning, consumer creation);
  - floor: one confluent-kafka Consumer over the same partitions, `consume(num_messages=10000)` until
           every partition reports EOF, with the same consumer settings (CONSUMER_DEFAULTS).
Each is run `--repeat` times, interleaved; the best run counts. `--profile` runs ours once more
under cProfile and prints the top functions (stderr; the .prof file under .run/bench/).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import apache_beam as beam

from bench.common import (
    BENCH_DIR,
    BOOTSTRAP,
    create_topics,
    delete_topics,
    kafka_check,
    machine,
    ratio,
    run_id,
)
from bench.common import produce as produce_records
from bench.common import progress as _progress

PARTITIONS = 4


def progress(msg: str) -> None:
    _progress("kafka_read", msg)


# In-process runner (FnApiRunner): the counting DoFn reports to this module's globals.
_SEEN = {"n": 0, "first": None, "last": None}
_LOCK = threading.Lock()


class _CountFn(beam.DoFn):
    """Counts per bundle; stamps the first and last bundle activity (monotonic clock)."""

    def start_bundle(self) -> None:
        self._n = 0

    def process(self, element) -> None:
        if self._n == 0:
            now = time.monotonic()
            with _LOCK:
                if _SEEN["first"] is None:
                    _SEEN["first"] = now
        self._n += len(element) if type(element) is list else 1

    def finish_bundle(self) -> None:
        if self._n:
            now = time.monotonic()
            with _LOCK:
                _SEEN["n"] += self._n
                _SEEN["last"] = now


def make_values(n_distinct: int = 20000) -> list[bytes]:
    from pipeline.generate import Generator

    gen = Generator(seed=11)
    return [gen.upload(1).value for _ in range(n_distinct)]


def produce(topic: str, events: int) -> dict:
    values = make_values(min(events, 20000))
    sizes = [len(v) for v in values]
    n, secs = produce_records(
        topic, ((None, values[i % len(values)], None) for i in range(events)), "kafka_read", events
    )
    return {"produced": n, "produce_s": round(secs, 2), "value_bytes_avg": round(sum(sizes) / len(sizes), 1)}


def consumer_settings(group: str) -> dict:
    from transforms.kafkaio import ReadConfig

    return ReadConfig(consumer={"bootstrap.servers": BOOTSTRAP, "group.id": group}).client_config()


def run_ours(topic: str, group: str, expected: int, profile: str | None = None,
             batch_records: int = 1) -> dict:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners import with_defaults
    from transforms.kafkaio import ReadConfig, ReadFromKafka

    argv = with_defaults(["--runner=DirectRunner"], bounded=True)
    cfg = ReadConfig(
        topics=(topic,), stop_at_end=True, start="earliest",
        consumer={"bootstrap.servers": BOOTSTRAP, "group.id": group}, batch_records=batch_records,
    )
    _SEEN.update(n=0, first=None, last=None)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    p = beam.Pipeline(options=PipelineOptions(argv))
    _ = p | "Read" >> ReadFromKafka(cfg) | "Count" >> beam.ParDo(_CountFn())
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        p.run().wait_until_finish()
        prof.disable()
        prof.dump_stats(profile)
    else:
        p.run().wait_until_finish()
    t1 = time.monotonic()
    cpu = time.process_time() - cpu0
    n = _SEEN["n"]
    if n != expected:
        raise SystemExit(f"error: ours counted {n} records, expected {expected}")
    first, last = _SEEN["first"], _SEEN["last"]
    wall = t1 - t0
    steady = (last - first) if first is not None and last is not None and last > first else None
    return {
        "runner": [a for a in argv if a.startswith("--runner=")][-1].split("=", 1)[1],
        "count": n,
        "wall_s": round(wall, 3),
        "startup_s": round(first - t0, 3) if first is not None else None,
        "steady_s": round(steady, 3) if steady else None,
        "cpu_s": round(cpu, 3),
        "events_per_s": round(n / wall),
        "events_per_s_excl_startup": round(n / steady) if steady else None,
        "events_per_cpu_s": round(n / cpu) if cpu else None,
    }


def run_floor(topic: str, group: str, expected: int) -> dict:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    settings = consumer_settings(group)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    c = Consumer(settings)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    n = 0
    eof: set[int] = set()
    first = None
    deadline = t0 + 600
    try:
        while len(eof) < PARTITIONS and time.monotonic() < deadline:
            for m in c.consume(num_messages=10000, timeout=1.0):
                err = m.error()
                if err is None:
                    n += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
            if first is None and n:
                first = time.monotonic()
    finally:
        c.close()
    t1 = time.monotonic()
    cpu = time.process_time() - cpu0
    if n != expected:
        raise SystemExit(f"error: floor counted {n} records, expected {expected}")
    wall = t1 - t0
    steady = t1 - first if first else None
    return {
        "count": n,
        "wall_s": round(wall, 3),
        "startup_s": round(first - t0, 3) if first else None,
        "cpu_s": round(cpu, 3),
        "events_per_s": round(n / wall),
        "events_per_s_excl_startup": round(n / steady) if steady else None,
        "events_per_cpu_s": round(n / cpu) if cpu else None,
    }


def print_profile(path: str, top: int = 30) -> None:
    import pstats

    progress(f"cProfile of ours ({path}), top {top} by internal time:")
    pstats.Stats(path, stream=sys.stderr).sort_stats("tottime").print_stats(top)
    pstats.Stats(path, stream=sys.stderr).sort_stats("cumulative").print_stats(r"kafkaio|_CountFn|fn_runner")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kafka_read", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="records to produce (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of each reader; best counts")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--profile", action="store_true", help="also run ours under cProfile (stderr)")
    ap.add_argument("--batch-records", type=int, default=1,
                    help="records per element of ours (1: one KafkaRecord per element, the IO contract; the "
                    "pipeline reads lists of 500)")
    ap.add_argument("--keep-topic", action="store_true", help="do not delete the bench topic at the end")
    args = ap.parse_args(argv)

    kafka_check()
    info = machine()
    rid = run_id()
    topic = f"bench.kafka_read.{rid}"
    create_topics([topic], PARTITIONS)
    try:
        progress(f"producing {args.events} records to {topic} ({PARTITIONS} partitions, lz4)")
        produced = produce(topic, args.events)
        progress(f"produced in {produced['produce_s']} s, {produced['value_bytes_avg']} B/value")
        ours_runs, floor_runs = [], []
        for i in range(max(1, args.repeat)):
            floor_runs.append(run_floor(topic, f"bench-floor-{rid}-{i}", args.events))
            progress(f"floor run {i + 1}: {floor_runs[-1]}")
            ours_runs.append(run_ours(topic, f"bench-ours-{rid}-{i}", args.events,
                                      batch_records=args.batch_records))
            progress(f"ours run {i + 1}: {ours_runs[-1]}")
        prof_path = None
        if args.profile:
            BENCH_DIR.mkdir(parents=True, exist_ok=True)
            prof_path = str(BENCH_DIR / "kafka_read.prof")
            run_ours(topic, f"bench-prof-{rid}", args.events, profile=prof_path,
                     batch_records=args.batch_records)
            print_profile(prof_path)
    finally:
        if not args.keep_topic:
            delete_topics([topic])
    ours = max(ours_runs, key=lambda r: r["events_per_s"])
    floor = max(floor_runs, key=lambda r: r["events_per_s"])
    r = ratio(ours["events_per_s"], floor["events_per_s"])
    out = {
        "bench": "kafka_read",
        "events": args.events,
        "partitions": PARTITIONS,
        "compression": "lz4",
        "batch_records": args.batch_records,
        "events_per_s": ours["events_per_s"],
        "floor_events_per_s": floor["events_per_s"],
        "ratio": r,
        "events_per_s_excl_startup": ours["events_per_s_excl_startup"],
        "floor_events_per_s_excl_startup": floor["events_per_s_excl_startup"],
        "ratio_excl_startup": ratio(ours["events_per_s_excl_startup"], floor["events_per_s_excl_startup"]),
        "ratio_per_cpu_s": ratio(ours["events_per_cpu_s"], floor["events_per_cpu_s"]),
        "target_ratio": 0.5,
        "target_met": bool(r and r >= 0.5),
        "ours": ours,
        "floor": floor,
        "runs": {"ours": ours_runs, "floor": floor_runs},
        "produce": produced,
        "consumer_settings": {k: v for k, v in consumer_settings("x").items() if k != "group.id"},
        "profile": prof_path,
        "machine": info | {"loadavg_end": list(__import__("os").getloadavg())},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    # Run as bench.kafka_read, not __main__: Beam pickles __main__ classes by value, and the counting
    # DoFn must share this module's globals.
    from bench.kafka_read import main as _main

    sys.exit(_main())
