"""Backpressure: a slow downstream must slow ReadFromKafka down, not grow memory.

    python -m bench.kafka_backpressure --events 300000 --json

Produces N ~300-byte records once, then reads them twice in the same process (bounded, FnApiRunner, the read
fused with the next step): with a fast downstream and with one that sleeps 1 ms per 20 records. RSS is sampled
every 0.2 s. Bounded buffers mean the slow run's peak RSS stays near the fast run's although it takes many
times longer: librdkafka's prefetch queue is capped (queued.max.messages.kbytes) and the reader hands
records on synchronously.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.generate import Generator
from transforms.kafkaio import ReadConfig, ReadFromKafka


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Slow(beam.DoFn):
    def __init__(self, every: int, sleep_s: float) -> None:
        self.every, self.sleep_s, self.n = every, sleep_s, 0

    def process(self, rec):
        # lists of records (batch_records > 1) cost the same per record
        n = len(rec) if type(rec) is list else 1
        before, self.n = self.n, self.n + n
        if self.sleep_s:
            time.sleep(self.sleep_s * (self.n // self.every - before // self.every))
        return ()


def run(bootstrap: str, topic: str, sleep_s: float, batch_records: int = 1) -> dict:
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append(rss_mb())

    start_rss = rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.time()
    cfg = ReadConfig(
        topics=(topic,),
        stop_at_end=True,
        consumer={"bootstrap.servers": bootstrap, "group.id": f"bp-{uuid.uuid4().hex}"},
        batch_records=batch_records,
    )
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        _ = p | ReadFromKafka(cfg) | beam.ParDo(_Slow(20, sleep_s))
    seconds = time.time() - t0
    stop.set()
    sampler.join()
    # RSS at each quarter of the run: bounded buffers show as a plateau, not a climb with the data read.
    quarters = [round(samples[min(len(samples) - 1, len(samples) * q // 4)], 1) for q in (1, 2, 3, 4)]
    return {
        "rss_quarters_mb": quarters if samples else [],
        "sleep_ms_per_20": sleep_s * 1000,
        "seconds": round(seconds, 2),
        "rss_start_mb": round(start_rss, 1),
        "rss_peak_mb": round(max(samples or [start_rss]), 1),
        "rss_end_mb": round(rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.kafka_backpressure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--batch-records", type=int, default=1,
                    help="records per element (the pipeline reads lists of 500)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    topic = f"bench.backpressure.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 4)])[topic].result(30)
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 20, "compression.type": "lz4"})
    gen = Generator(seed=5)
    value = gen.upload(1).value
    for i in range(args.events):
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
            print(f"produced {i}/{args.events}", file=sys.stderr)
    assert producer.flush(60) == 0
    fast = run(args.bootstrap, topic, 0.0, args.batch_records)
    print(f"fast: {fast}", file=sys.stderr)
    slow = run(args.bootstrap, topic, 0.001, args.batch_records)
    print(f"slow: {slow}", file=sys.stderr)
    out = {
        "events": args.events,
        "batch_records": args.batch_records,
        "bytes_in_topic_mb": round(args.events * len(value) / 2**20, 1),
        "fast": fast,
        "slow": slow,
        "slowdown": round(slow["seconds"] / fast["seconds"], 2),
        "peak_rss_growth_slow_vs_fast_mb": round(slow["rss_peak_mb"] - fast["rss_peak_mb"], 1),
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
