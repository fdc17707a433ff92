"""Quix Streams peer of bench/e2e.py: parse JSON -> unpack envelope -> classify (Python `re`, first rule
in rank order wins) -> produce to the category's topic (dead letters to the DLQ topic).

Runs in its own venv (.cache/peers/quix-venv: quixstreams pins confluent-kafka<2.13). Reads the input
topic once with a fresh consumer group, stops at the end offsets seen at start, and prints one JSON
line of counts and timings on stdout.

    python quix_peer.py --brokers 127.0.0.1:9092 --topic T --group G --out-prefix P. --dlq D --rules R.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time

TEXT_FIELDS = ("message", "stack", "content", "msg", "log", "reason", "exception")
MAX_FIELD_CHARS = 65536
TIME_KEYS = ("timestamp", "time", "ts", "event_time")
FLAGS = {"caseless": re.IGNORECASE, "multiline": re.MULTILINE, "dotall": re.DOTALL}


class Reject(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def scalar(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float, bool)):
        return str(v)
    raise Reject("VALIDATION_ERROR", f"expected a scalar, got {type(v).__name__}")


class Peer:
    def __init__(self, rules: list[dict], out_prefix: str, dlq: str) -> None:
        self.rules = [
            (r["id"], r["category"], re.compile(r["pattern"], sum(FLAGS[f] for f in r.get("flags") or ())),
             tuple(r["fields"]) if r.get("fields") else None)
            for r in rules
        ]
        self.out_prefix, self.dlq = out_prefix, dlq
        self.events = self.dead = self.classified = 0

    def classify(self, fields: dict[str, str]) -> tuple[str, str, str]:
        for rid, cat, rx, only in self.rules:
            for name, text in fields.items():
                if (only is None or name in only) and rx.search(text):
                    self.classified += 1
                    return cat, rid, "re"
        return "UNCLASSIFIED", "", "default"

    def dead_letter(self, code: str, reason: str, payload: bytes, src: list) -> dict:
        self.dead += 1
        return {"_topic": self.dlq, "code": code, "reason": reason, "src": src,
                "payload": payload.decode("utf-8", "replace")}

    def build(self, m: dict, own: dict, envelope: str, src: list, now: int, ts: int) -> dict:
        d = own.get("duration_ms")
        if d is not None and not isinstance(d, (int, float)):
            raise Reject("VALIDATION_ERROR", f"field 'duration_ms': expected a number, got {d!r}")
        dev = own.get("device_id")
        if dev is not None and not isinstance(dev, str):
            raise Reject("VALIDATION_ERROR", "field 'device_id': expected a string")
        event_time = ts
        for k in TIME_KEYS:
            t = m.pop(k, None)
            if t is not None:
                if not isinstance(t, (int, float)) or t < 0:
                    raise Reject("VALIDATION_ERROR", f"field '{k}': not a time")
                event_time = int(t)
                break
        app_id = scalar(m.pop("app_id", None))
        if not app_id:
            raise Reject("VALIDATION_ERROR", "field 'app_id': required but missing")
        name = m.pop("event_name", None)
        if name is None:
            name = m.pop("name", None)
        duration = m.pop("duration_ms", None)
        fields = {}
        for k in TEXT_FIELDS:
            v = m.get(k)
            if isinstance(v, str):
                if len(v) > MAX_FIELD_CHARS:
                    raise Reject("TOO_LARGE", f"field '{k}': {len(v)} chars > max_field_chars")
                fields[k] = v
                del m[k]
        category, rule_id, engine = self.classify(fields)
        self.events += 1
        return {
            "_topic": self.out_prefix + category,
            "event_id": hashlib.blake2b(f"{src[0]}:{src[1]}:{src[2]}:{src[3]}".encode()).hexdigest()[:32],
            "event_time": event_time, "ingest_time": now, "app_id": app_id, "event_name": scalar(name),
            "platform": scalar(m.pop("platform", None)), "device_id": scalar(m.pop("device_id", None)),
            "duration_ms": None if duration is None else float(duration), "fields": fields, "attrs": m,
            "src": src, "envelope": envelope, "category": category, "rule_id": rule_id, "engine": engine,
        }

    def emit(self, out: list, m: dict, own: dict, envelope: str, base: list, index: int, now: int, ts: int,
             raw: bytes) -> None:
        src = [*base, index]
        try:
            out.append(self.build(m, own, envelope, src, now, ts))
        except Reject as r:
            out.append(self.dead_letter(r.code, r.reason, raw, src))

    def unpack(self, value: bytes, topic: str, partition: int, offset: int, ts: int) -> list[dict]:
        now = int(time.time() * 1000)
        base = [topic, partition, offset]
        out: list[dict] = []
        v = value.strip() if value else b""
        if not v:
            return [self.dead_letter("EMPTY", "value is empty", value or b"", [*base, 0])]
        try:
            obj = json.loads(v)
        except ValueError as e:
            lines = v.split(b"\n")
            first = None
            if len(lines) >= 2:
                try:
                    first = json.loads(lines[0])
                except ValueError:
                    pass
            if not isinstance(first, dict):
                return [self.dead_letter("DECODE_ERROR", f"not JSON: {e}", value, [*base, 0])]
            for i, ln in enumerate(lines):
                ln = ln.strip()
                if not ln:
                    continue
                try:
                    o = json.loads(ln)
                except ValueError as e2:
                    out.append(self.dead_letter("DECODE_ERROR", f"line {i}: not JSON: {e2}", ln, [*base, i]))
                    continue
                self.emit(out, o, o, "jsonl", base, i, now, ts, ln)
            return out
        if not isinstance(obj, dict):
            return [self.dead_letter("VALIDATION_ERROR", "value: expected a JSON object", value, [*base, 0])]
        if "meta" in obj and "data" in obj:
            meta, data = obj["meta"], obj["data"]
            if not isinstance(meta, dict) or not isinstance(data, list) or not data:
                return [self.dead_letter("VALIDATION_ERROR", "bad upload envelope", value, [*base, 0])]
            for i, item in enumerate(data):
                if not isinstance(item, dict):
                    out.append(self.dead_letter("VALIDATION_ERROR", f"data[{i}]: not an object", value,
                                                [*base, i]))
                    continue
                merged = dict(meta)
                merged.update(item)
                self.emit(out, merged, item, "upload", base, i, now, ts, value)
            return out
        if "headers" in obj and "logs" in obj:
            h, lg = obj["headers"], obj["logs"]
            if not isinstance(h, dict) or not isinstance(lg, dict):
                return [self.dead_letter("VALIDATION_ERROR", "bad logs envelope", value, [*base, 0])]
            merged = {k: x for k, x in h.items() if k not in ("app_id", "log_name")}
            merged.update(lg)
            if "app_id" in h:
                merged["app_id"] = h["app_id"]
            if h.get("log_name"):
                merged["event_name"] = "t_" + str(h["log_name"])
            if isinstance(merged.get("mtime"), (int, float)):
                merged["timestamp"] = int(merged.pop("mtime") * 1000)
            self.emit(out, merged, merged, "logs", base, 0, now, ts, value)
            return out
        self.emit(out, obj, obj, "json", base, 0, now, ts, value)
        return out


def end_offsets(brokers: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "quix-peer-ends"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        return ends
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--out-prefix", required=True)
    ap.add_argument("--dlq", required=True)
    ap.add_argument("--rules", required=True)
    args = ap.parse_args()

    from quixstreams import Application, message_context

    t0 = time.monotonic()
    with open(args.rules) as f:
        peer = Peer(json.load(f), args.out_prefix, args.dlq)
    ends = end_offsets(args.brokers, args.topic)
    expected = sum(ends.values())
    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
        producer_extra_config={"compression.type": "lz4", "linger.ms": 20},
        auto_create_topics=False,
    )
    inp = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    outs: dict = {}

    def out_topic(value, key, timestamp, headers):
        name = value.pop("_topic")
        t = outs.get(name)
        if t is None:
            t = outs[name] = app.topic(name, value_serializer="json", key_serializer="str")
        return t

    state = {"consumed": 0, "first": None, "done": set()}

    def process(value, key, timestamp, headers):
        ctx = message_context()
        p, off = ctx.partition, ctx.offset
        if state["first"] is None:
            state["first"] = time.monotonic()
        end = ends.get(p)
        if end is None or off >= end:
            return []
        state["consumed"] += 1
        out = peer.unpack(value, ctx.topic, p, off, timestamp)
        if off + 1 >= end:
            state["done"].add(p)
            if len(state["done"]) == len(ends):
                app.stop()
        return out

    sdf = app.dataframe(inp)
    sdf = sdf.apply(process, expand=True, metadata=True)
    sdf.to_topic(out_topic, key=lambda v: v.get("app_id") or "")
    app.run()
    t1 = time.monotonic()
    first = state["first"] or t1
    print(json.dumps({
        "engine": "quixstreams", "records_in": state["consumed"], "records_expected": expected,
        "events_out": peer.events, "dead_letters": peer.dead, "classified": peer.classified,
        "wall_s": t1 - t0, "startup_s": first - t0, "steady_s": t1 - first,
    }))
    return 0 if state["consumed"] == expected else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
