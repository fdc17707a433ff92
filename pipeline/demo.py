"""`./run.sh demo`: produce a realistic mix to a real broker, run the pipeline end to end (bounded),
and prove the numbers add up: every produced event is classified or dead-lettered.

Each run uses its own input topics and consumer group, and counts only its own output (offsets past
the ends seen before the run, rows whose source topic is this run's), so repeated demos agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.config import load_config
from pipeline.generate import Generator
from transforms.common import dead_letter_from_kafka
from transforms.route import topic_name

console = Console(stderr=False)


def _ends(consumer: Consumer, topics: list[str]) -> dict[tuple[str, int], int]:
    md = consumer.list_topics(timeout=10)
    out = {}
    for t in topics:
        if t in md.topics:
            for p in md.topics[t].partitions:
                out[(t, p)] = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
    return out


def _read_new(consumer: Consumer, before: dict[tuple[str, int], int], topic: str) -> list:
    """Records of `topic` past the offsets seen before the run."""
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    assign, ends = [], {}
    for p in md.partitions:
        high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        start = before.get((topic, p), 0)
        if high > start:
            assign.append(TopicPartition(topic, p, start))
            ends[p] = high
    if not assign:
        return []
    consumer.assign(assign)
    out, done, deadline = [], set(), time.time() + 60
    while len(done) < len(ends) and time.time() < deadline:
        for m in consumer.consume(5000, timeout=0.5):
            if m.error():
                continue
            out.append(m)
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
    consumer.unassign()
    return out


def produce_mix(bootstrap: str, topics: dict[str, str], messages: int, seed: int) -> tuple[int, int, Counter]:
    """Produces `messages` generated messages; returns (events, expected dead letters, per-shape count)."""
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "lz4", "linger.ms": 20})
    gen = Generator(seed=seed)
    events = dead = 0
    shapes: Counter = Counter()
    with Progress(
        TextColumn("producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("produce", total=messages)
        for i, msg in enumerate(gen.mix(messages)):
            producer.produce(topics[msg.topic], msg.value, msg.key, headers=msg.headers or None)
            events += msg.events
            dead += msg.dead
            shapes[msg.topic] += 1
            if i % 500 == 0:
                producer.poll(0)
                progress.update(task, completed=i)
        progress.update(task, completed=messages)
        left = producer.flush(60)
    if left:
        raise SystemExit(f"error: {left} demo messages were not acknowledged by the broker at {bootstrap}")
    return events, dead, shapes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--messages", type=int, default=3000, help="messages to produce (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--config", default="config/default.yaml")
    ap.add_argument("--runner", default="DirectRunner")
    args, beam_args = ap.parse_known_args(argv)

    cfg = load_config(args.config)
    bootstrap = cfg.read.client_config()["bootstrap.servers"]
    run_id = time.strftime("%Y%m%d%H%M%S")
    topics = {shape: f"ingest.{shape}.demo-{run_id}" for shape in ("perf", "gamelogs", "gateway")}
    pattern = rf"^ingest\.(perf|gamelogs|gateway)\.demo-{run_id}$"
    group = f"demo-{run_id}"

    console.rule(f"[bold]demo run {run_id}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.list_topics(timeout=10)
    except Exception as e:
        console.print(
            f"[red]error:[/red] Kafka at {bootstrap} does not answer ({e}); start it with ./run.sh kafka-up"
        )
        return 2
    for fut in admin.create_topics([NewTopic(t, 4) for t in topics.values()]).values():
        fut.result(30)
    categories = cfg.classify.categories()
    out_topics = [topic_name(cfg.routes.topic_template, c) for c in categories]
    watcher = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{group}-watch",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    # Output topics are created by the pipeline's preflight if missing; ends before = 0 then.
    before = _ends(watcher, out_topics + [cfg.routes.dlq_topic])

    t0 = time.time()
    events, expected_dead, shapes = produce_mix(bootstrap, topics, args.messages, args.seed)
    console.print(
        f"produced {args.messages} messages ({dict(shapes)}) holding {events} events "
        f"in {time.time() - t0:.1f} s to {', '.join(topics.values())}"
    )

    import logging

    from pipeline.run import run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)

    stop = threading.Event()

    def progress() -> None:
        while not stop.wait(2.0):
            now = _ends(watcher, out_topics + [cfg.routes.dlq_topic])
            done = sum(v - before.get(k, 0) for k, v in now.items())
            console.print(f"  ... {done} / {events} events on output topics", highlight=False)

    pipeline_args = [
        f"--config={args.config}",
        f"--topic_pattern={pattern}",
        "--stop_at_end",
        f"--group_id={group}",
        "--start_from=earliest",
        f"--runner={args.runner}",
        *beam_args,
    ]
    console.print(f"running: python -m pipeline {' '.join(pipeline_args)}", highlight=False)
    ticker = threading.Thread(target=progress, daemon=True)
    ticker.start()
    t1 = time.time()
    try:
        rc = run_pipeline(pipeline_args)
    finally:
        stop.set()
    elapsed = time.time() - t1
    if rc:
        console.print(f"[red]pipeline failed (exit {rc})")
        return rc
    return report(cfg, watcher, before, out_topics, topics, events, expected_dead, elapsed)


def report(cfg, watcher, before, out_topics, topics, events, expected_dead, elapsed) -> int:
    our_topics = set(topics.values())
    per_topic: dict[str, int] = {}
    for t in out_topics:
        msgs = _read_new(watcher, before, t)
        mine = [m for m in msgs if _src_topic(m) in our_topics]
        if mine:
            per_topic[t] = len(mine)
    dlq = [
        dead_letter_from_kafka(m.key(), m.value(), m.headers())
        for m in _read_new(watcher, before, cfg.routes.dlq_topic)
    ]
    dlq = [d for d in dlq if d["topic"] in our_topics]
    dlq_codes = Counter(d["code"] for d in dlq)
    watcher.close()

    ch_rows, top_rules = _clickhouse_numbers(cfg, our_topics)

    classified = sum(per_topic.values())
    t = Table(title="Events per category (records on the category topics)")
    t.add_column("topic")
    t.add_column("events", justify="right")
    for topic, n in sorted(per_topic.items(), key=lambda kv: -kv[1]):
        t.add_row(topic, str(n))
    console.print(t)
    if top_rules:
        t = Table(title="Top rules (ClickHouse events FINAL)")
        t.add_column("rule")
        t.add_column("category")
        t.add_column("engine")
        t.add_column("events", justify="right")
        for rule, cat, engine, n in top_rules:
            t.add_row(rule or "(default)", cat, engine, str(n))
        console.print(t)
    t = Table(title=f"Dead letters on {cfg.routes.dlq_topic} by code")
    t.add_column("code")
    t.add_column("count", justify="right")
    for code, n in dlq_codes.most_common():
        t.add_row(code, str(n))
    console.print(t)
    if ch_rows:
        t = Table(title="ClickHouse rows from this run")
        t.add_column("table")
        t.add_column("rows", justify="right")
        for table, n in ch_rows.items():
            t.add_row(table, str(n))
        console.print(t)

    ok = classified + len(dlq) == events and len(dlq) >= expected_dead
    if ch_rows:
        ok = ok and ch_rows.get("events (FINAL)") == classified
    summary = (
        f"produced events {events} = classified {classified} + dead-lettered {len(dlq)}"
        f"  ({events / elapsed:.0f} events/s through the pipeline, {elapsed:.1f} s)"
    )
    console.print(("[green]OK[/green] " if ok else "[red]MISMATCH[/red] ") + summary, highlight=False)
    return 0 if ok else 1


def _src_topic(msg) -> str | None:
    import orjson

    try:
        src = orjson.loads(msg.value()).get("src")
        return src[0] if src else None
    except Exception:
        return None


def _clickhouse_numbers(cfg, our_topics: set[str]) -> tuple[dict[str, Any], list]:
    if cfg.clickhouse is None:
        return {}, []
    from transforms.clickhouse_client import connect

    client = connect(cfg.clickhouse)
    db = cfg.clickhouse.database
    in_list = ", ".join("'" + t.replace("'", "") + "'" for t in sorted(our_topics))
    rows = {
        "events (FINAL)": client.execute(
            f"SELECT count() FROM {db}.events FINAL WHERE src_topic IN ({in_list})"
        )[0][0],
        "dead_letters": client.execute(f"SELECT count() FROM {db}.dead_letters WHERE topic IN ({in_list})")[
            0
        ][0],
        "window_aggregates (all runs, FINAL)": client.execute(
            f"SELECT count() FROM {db}.window_aggregates FINAL"
        )[0][0],
    }
    top = client.execute(
        f"SELECT rule_id, category, engine, count() AS n FROM {db}.events FINAL "
        f"WHERE src_topic IN ({in_list}) GROUP BY rule_id, category, engine ORDER BY n DESC LIMIT 10"
    )
    return rows, top


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
