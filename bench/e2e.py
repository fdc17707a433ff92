"""End-to-end benchmark: Kafka -> our pipeline -> category topics + ClickHouse, and its peers, in one run.

    python -m bench.e2e --events 20000 --json                  # smoke size
    python -m bench.e2e --events 1000000 --json                # the full run (BENCHMARKS.md)
    python -m bench.e2e --events 2000 --json --peers none      # ours only

Input: one fresh 4-partition topic holding the realistic mix of pipeline.generate (upload envelopes with
Loghub Android bodies, game logs, gateway JSON Lines, ~2% malformed; lz4), at least `--events` events.
Rules: the rules of rules/default.yaml that every engine accepts (Go regexp/RE2 and Hyperscan reject
backreferences and lookaround), in rank order (priority, specificity, file order); all engines get the
same list. Every engine reads the whole input once with a fresh consumer group, stops at the end offsets
seen at start, and writes one record per event to its own `<prefix>.<CATEGORY>` topics or its DLQ topic;
the bench checks that each engine's output record count equals the input event count.
  - ours:          `python -m pipeline --stop_at_end` (DirectRunner defaults: FnApiRunner, in process),
                   ClickHouse sink on (server at 127.0.0.1:9000 if it answers, else chdb), window metrics;
  - quixstreams:   bench/peers/quix_peer.py in its own venv (Python `re`, first rule in rank order);
  - go-regexp:     bench/peers/go-regexp (segmentio/kafka-go consumer group + Go regexp), GOMAXPROCS=nproc;
  - go-hyperscan:  bench/peers/go-hyperscan (the same with github.com/flier/gohs + libhyperscan).
Figures per engine: events/s from process start to exit (wall), events/s from the moment data flows to
exit (excluding start-up: the peers report when they consumed their first record; ours logs "bounded read
of" when its reader starts), and events per CPU-second of the process and its children (os.wait4 rusage;
the broker's and the ClickHouse server's CPU during the engine's run are reported beside it as
`server_cpu_s`; ours inserts into a freshly dropped ClickHouse database each run). `first_output_s`: when
the first output record showed up on the engine's topics. Engines run one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from bench.common import (
    BENCH_DIR,
    BOOTSTRAP,
    ROOT,
    ServerCpu,
    create_topics,
    delete_topics,
    kafka_check,
    machine,
    ratio,
    record_counts,
    run_child,
    run_id,
    topics_with_prefix,
)
from bench.common import produce as produce_records
from bench.common import progress as _progress

PARTITIONS = 4
PEERS = ("quixstreams", "go-regexp", "go-hyperscan")
PEERS_DIR = ROOT / "bench" / "peers"
BIN_DIR = ROOT / ".cache" / "bin"
QUIX_VENV = ROOT / ".cache" / "peers" / "quix-venv"
GO_BINS = {"go-regexp": BIN_DIR / "peer-go-regexp", "go-hyperscan": BIN_DIR / "peer-go-hyperscan"}
CH_DATABASE = "bench_e2e"


def progress(msg: str) -> None:
    _progress("e2e", msg)


# --- Setup of the peers --------------------------------------------------------------------------


def _sh(cmd: list[str], cwd: Path = ROOT, env: dict | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def setup_go(name: str) -> Path:
    """Builds bench/peers/<name> into .cache/bin when missing or older than its sources."""
    out = GO_BINS[name]
    srcs = [p for d in (PEERS_DIR / name, PEERS_DIR / "gopeer") for p in d.iterdir() if p.is_file()]
    if out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in srcs):
        return out
    if shutil.which("go") is None:
        raise SystemExit("error: the go toolchain is needed to build the Go peers (./run.sh setup prism)")
    env = dict(os.environ, GOFLAGS="-mod=mod")
    if name == "go-hyperscan":
        env["CGO_ENABLED"] = "1"
        if subprocess.run(["dpkg", "-s", "libhyperscan-dev"], capture_output=True).returncode != 0:
            progress("installing Debian libhyperscan-dev (for github.com/flier/gohs, cgo)")
            _sh(["apt-get", "install", "-y", "-q", "libhyperscan-dev", "pkg-config"],
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    progress(f"go build {name} -> {out}")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    _sh(["go", "build", "-o", str(out), "."], cwd=PEERS_DIR / name, env=env)
    return out


def setup_quix() -> Path:
    """A venv of its own: quixstreams 3.28 pins confluent-kafka<2.13, the pipeline pins 2.16.1."""
    py = QUIX_VENV / "bin" / "python"
    if py.exists():
        if subprocess.run([str(py), "-c", "import quixstreams"], capture_output=True).returncode == 0:
            return py
    progress(f"creating {QUIX_VENV} with bench/peers/requirements.txt")
    base = shutil.which("python3.11") or sys.executable
    _sh([base, "-m", "venv", str(QUIX_VENV)])
    _sh([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
         str(PEERS_DIR / "requirements.txt")])
    return py


# --- Rules ---------------------------------------------------------------------------------------


def ranked_rules() -> list:
    """rules/default.yaml in rank order: priority, then specificity (literal characters), then file."""
    from transforms.classify_rules import load_rules_file

    rules = load_rules_file(str(ROOT / "rules" / "default.yaml"))
    order = sorted(range(len(rules)), key=lambda i: (-rules[i].priority, -rules[i].specificity, i))
    return [rules[i] for i in order]


def common_rules(rules: list, work: Path, peers: list[str]) -> tuple[list, dict[str, list[str]]]:
    """The rules every engine accepts: asks each Go binary (-check) which ones it rejects."""
    import re

    path = work / "rules-all.json"
    path.write_text(json.dumps([_rule_json(r) for r in rules]))
    rejected: dict[str, list[str]] = {"re": []}
    for r in rules:
        try:
            r.compile_re()
        except re.error:
            rejected["re"].append(r.id)
    for name in ("go-regexp", "go-hyperscan"):
        try:
            binary = setup_go(name) if name in peers or not GO_BINS[name].exists() else GO_BINS[name]
        except SystemExit as e:
            if name in peers:
                raise
            progress(f"cannot build {name} to check the rules ({e}); not filtering for it")
            continue
        proc = subprocess.run([str(binary), "-check", "-rules", str(path)], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"error: {binary} -check failed: {proc.stderr}")
        rejected[name] = json.loads(proc.stdout)["rejected"]
    drop = {i for ids in rejected.values() for i in ids}
    return [r for r in rules if r.id not in drop], rejected


def _rule_json(r) -> dict:
    return {"id": r.id, "category": r.category, "pattern": r.pattern,
            "fields": list(r.fields) if r.fields is not None else None, "flags": list(r.flags)}


# --- Input ---------------------------------------------------------------------------------------


def produce_input(topic: str, events: int, seed: int) -> dict:
    from pipeline.generate import Generator

    gen = Generator(seed=seed)
    stats = {"messages": 0, "events": 0, "expected_dead": 0, "expected_outputs": 0, "bytes": 0}

    def records():
        for msg in gen.mix(10**9):
            if stats["events"] >= events:
                return
            stats["messages"] += 1
            stats["events"] += msg.events
            stats["expected_dead"] += msg.dead
            stats["expected_outputs"] += _outputs(msg)
            stats["bytes"] += len(msg.value or b"")
            yield msg.key, msg.value, msg.headers

    _, secs = produce_records(topic, records(), "e2e")
    stats["produce_s"] = round(secs, 2)
    return stats


def _outputs(msg) -> int:
    """Output records a message yields: one per event, except a JSON Lines batch whose FIRST line is
    bad: it is not recognised as JSON Lines and is dead-lettered whole (one record)."""
    import orjson

    if msg.topic == "gateway" and msg.dead:
        try:
            orjson.loads(msg.value.split(b"\n", 1)[0])
        except orjson.JSONDecodeError:
            return 1
    return msg.events


# --- Engines -------------------------------------------------------------------------------------


class OutputWatch:
    """Polls an engine's output topics; remembers when its first output record appeared."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.first_at: float | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OutputWatch:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)

    def _run(self) -> None:
        while self.first_at is None and not self._stop.wait(0.1):
            try:
                if sum(record_counts(self.topics).values()) > 0:
                    self.first_at = time.monotonic()
            except Exception:  # noqa: BLE001 - a missed poll only delays the stamp
                pass


def engine_result(name: str, res, t_start: float, watch: OutputWatch, events: int, expected: int,
                  out_topics: list[str], report: dict | None, extra: dict | None = None) -> dict:
    counts = record_counts(out_topics)
    written = sum(counts.values())
    end = t_start + res.wall_s
    steady = end - watch.first_at if watch.first_at else None
    if steady is not None and steady < 0.5:  # too short to tell from the polling interval
        steady = None
    out = {
        "engine": name,
        "rc": res.rc,
        "wall_s": round(res.wall_s, 2),
        "startup_s": round(watch.first_at - t_start, 2) if watch.first_at else None,
        "cpu_s": round(res.cpu_s, 2),
        "cores_used": round(res.cpu_s / res.wall_s, 2) if res.wall_s else None,
        "events_per_s": round(events / res.wall_s) if res.rc == 0 else None,
        "events_per_s_excl_startup": round(events / steady) if steady and res.rc == 0 else None,
        "events_per_cpu_s": round(events / res.cpu_s) if res.cpu_s and res.rc == 0 else None,
        "output_records": written,
        "count_ok": written == expected,
        "per_topic": {t: n for t, n in counts.items() if n},
        "self_report": report,
    }
    first_output_at = getattr(watch, "first_output_at", None)
    if first_output_at is not None:
        out["first_output_s"] = round(first_output_at - t_start, 2)
    if extra:
        out.update(extra)
    if res.rc != 0:
        out["error"] = res.stderr.strip()[-1500:]
    return out


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _log_time(log: str, marker: str) -> float | None:
    """Epoch seconds of the first `asctime` log line containing `marker` (local time, as logging writes)."""
    import datetime as dt

    for line in log.splitlines():
        if marker in line:
            try:
                return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                return None
    return None


def server_cpu() -> ServerCpu:
    """Broker and ClickHouse server CPU during one engine's run (chdb runs inside ours' process)."""
    return ServerCpu({"broker": int(BOOTSTRAP.rsplit(":", 1)[1]), "clickhouse_server": 9000})


def fresh_clickhouse(url: str) -> None:
    """Each run inserts into an empty database: rows left by earlier runs make the server merge them
    (CPU taken from the engines under test) and the count query scan them."""
    if url.startswith("clickhouse://"):
        from clickhouse_driver import Client

        Client("127.0.0.1", port=9000).execute(f"DROP DATABASE IF EXISTS {CH_DATABASE}")
    else:
        shutil.rmtree(url.removeprefix("chdb://"), ignore_errors=True)


def clickhouse_url() -> str:
    """The ClickHouse server if it answers on 127.0.0.1:9000 (no chdb path lock shared with others)."""
    try:
        from clickhouse_driver import Client

        Client("127.0.0.1", port=9000, connect_timeout=3).execute("SELECT 1")
        return f"clickhouse://default@127.0.0.1:9000/{CH_DATABASE}"
    except Exception:  # noqa: BLE001
        return f"chdb://{BENCH_DIR / 'chdb'}"


def clickhouse_events(url: str, src_topic: str) -> int | None:
    try:
        if url.startswith("clickhouse://"):
            from clickhouse_driver import Client

            client = Client("127.0.0.1", port=9000)
            q = f"SELECT count() FROM {CH_DATABASE}.events FINAL WHERE src_topic = %(t)s"
            return client.execute(q, {"t": src_topic})[0][0]
    except Exception as e:  # noqa: BLE001
        progress(f"ClickHouse count failed: {e}")
    return None


def run_ours(work: Path, topic: str, prefix: str, rules_yaml: Path, events: int, expected: int,
             categories: list[str], timeout: float, profile: Path | None = None,
             extra_args: list[str] | None = None) -> dict:
    raw = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    ch_url = clickhouse_url()
    raw["kafka"]["consumer"]["bootstrap.servers"] = BOOTSTRAP
    raw["kafka"]["producer"]["bootstrap.servers"] = BOOTSTRAP
    raw["source"] = {k: v for k, v in raw["source"].items() if k != "topic_pattern"} | {
        "topics": [topic], "start": "earliest"}
    raw["classify"]["rules_files"] = [str(rules_yaml)]
    raw["routes"]["topic_template"] = prefix + "{category}"
    raw["routes"]["dlq_topic"] = prefix + "dlq"
    raw["sinks"]["clickhouse"]["url"] = ch_url
    raw["sinks"]["clickhouse"]["database"] = CH_DATABASE
    cfg_path = work / "ours.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out_topics = [prefix + c for c in categories] + [prefix + "dlq"]
    create_topics(out_topics, PARTITIONS)
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    cmd = [sys.executable, *prof, "-m", "pipeline", f"--config={cfg_path}", "--stop_at_end",
           f"--group_id={prefix}group", "--start_from=earliest", *(extra_args or [])]
    fresh_clickhouse(ch_url)
    with OutputWatch(out_topics) as watch, server_cpu() as servers:
        t0, wall0 = time.monotonic(), time.time()
        res = run_child(cmd, "e2e.ours", timeout)
    ch_rows = clickhouse_events(ch_url, topic)
    # On FnApiRunner the Kafka outputs come out at the very end (the write stage runs after the read
    # stage), so "first output" is no start-up mark for ours: use the reader's "bounded read of" log line.
    read_at = _log_time(res.stderr, "bounded read of")
    if read_at is not None:
        watch.first_output_at = watch.first_at
        watch.first_at = t0 + (read_at - wall0)
    return engine_result("ours", res, t0, watch, events, expected, out_topics, None, {
        "runner": _runner_text(res.stderr), "args": extra_args or [], "clickhouse": ch_url.split("@")[-1],
        "clickhouse_events_rows": ch_rows, "server_cpu_s": servers.cpu_s})


def _runner_text(stderr: str) -> str:
    """What ours ran on, from its own start-up log line (see pipeline.run)."""
    for line in stderr.splitlines():
        if "running on " in line:
            return line.split("running on ", 1)[1].strip()
    return "DirectRunner -> FnApiRunner (bounded)"


def run_peer(name: str, work: Path, topic: str, prefix: str, rules_json: Path, events: int, expected: int,
             categories: list[str], timeout: float) -> dict:
    out_topics = [prefix + c for c in categories] + [prefix + "dlq"]
    create_topics(out_topics, PARTITIONS)
    common = ["--topic", topic, "--group", prefix + "group", "--out-prefix", prefix, "--dlq", prefix + "dlq",
              "--rules", str(rules_json)]
    if name == "quixstreams":
        cmd = [str(setup_quix()), str(PEERS_DIR / "quix_peer.py"), "--brokers", BOOTSTRAP, *common]
        extra = {"runtime": "quixstreams 3.28.1, 1 process (Python)"}
    else:
        cmd = [str(setup_go(name)), "-brokers", BOOTSTRAP, *[a.replace("--", "-", 1) for a in common]]
        extra = {"runtime": f"Go, GOMAXPROCS={os.cpu_count()}"}
    with OutputWatch(out_topics) as watch, server_cpu() as servers:
        t0 = time.monotonic()
        res = run_child(cmd, f"e2e.{name}", timeout)
    extra["server_cpu_s"] = servers.cpu_s
    report = _last_json(res.stdout)
    if report and report.get("startup_s") is not None:
        # the peer's own mark (first input record consumed): outputs may show up only at its end
        watch.first_output_at = watch.first_at
        watch.first_at = t0 + report["startup_s"]
    return engine_result(name, res, t0, watch, events, expected, out_topics, report, extra)


def print_profile(path: Path, top: int = 40) -> None:
    import pstats

    progress(f"cProfile of ours ({path}), top {top} by internal time, then cumulative:")
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(top)
    stats = pstats.Stats(str(path), stream=sys.stderr).sort_stats("cumulative")
    stats.print_stats(r"/work/main/transforms", top)


# --- Main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="events to produce (default %(default)s)")
    ap.add_argument("--peers", default="all",
                    help=f"comma list of {', '.join(PEERS)}, or all, or none (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=1800, help="per engine, seconds")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--profile", action="store_true",
                    help="run ours under cProfile (stderr; .prof under .run/bench/e2e-*/); its figures then "
                    "include the profiler's overhead")
    ap.add_argument("--ours-args", default="",
                    help="extra flags for ours' `python -m pipeline` (one string, shell-split), e.g. "
                    "'--direct_num_workers=1'")
    ap.add_argument("--keep-topics", action="store_true", help="keep this run's topics (default: delete)")
    args = ap.parse_args(argv)
    peers = list(PEERS) if args.peers == "all" else [p for p in args.peers.split(",") if p and p != "none"]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r}")

    kafka_check()
    info = machine()
    rid = run_id()
    work = BENCH_DIR / f"e2e-{rid}"
    work.mkdir(parents=True, exist_ok=True)
    base = f"bench.e2e.{rid.replace('-', '')}"
    topic = f"{base}.in"

    for p in peers:  # build/install before anything is timed
        setup_quix() if p == "quixstreams" else setup_go(p)
    rules = ranked_rules()
    common, rejected = common_rules(rules, work, peers)
    rules_json = work / "rules.json"
    rules_json.write_text(json.dumps([_rule_json(r) for r in common]))
    rules_yaml = work / "rules.yaml"
    rules_yaml.write_text(yaml.safe_dump({"rules": [r.to_dict() for r in common]}, sort_keys=False))
    categories = sorted({r.category for r in common} | {"UNCLASSIFIED"})
    progress(f"{len(common)} of {len(rules)} rules run on every engine (rejected: {rejected})")

    create_topics([topic], PARTITIONS)
    results: dict[str, dict] = {}
    try:
        progress(f"producing the mix to {topic}: at least {args.events} events")
        produced = produce_input(topic, args.events, args.seed)
        events = produced["events"]
        progress(f"produced {produced}")
        expected = produced["expected_outputs"]
        profile = work / "ours.prof" if args.profile else None
        results["ours"] = run_ours(work, topic, f"{base}.ours.", rules_yaml, events, expected, categories,
                                   args.timeout, profile, shlex.split(args.ours_args))
        if profile:
            print_profile(profile)
        progress(f"ours: {results['ours']}")
        for p in peers:
            results[p] = run_peer(p, work, topic, f"{base}.{p}.", rules_json, events, expected, categories,
                                  args.timeout)
            progress(f"{p}: {results[p]}")
    finally:
        if not args.keep_topics:
            delete_topics(topics_with_prefix(base))

    ours = results["ours"]
    out: dict = {
        "bench": "e2e",
        "events": events,
        "expected_output_records": expected,
        "input": produced,
        "rules": {"used": len(common), "of": len(rules), "rejected_by": rejected},
        "events_per_s": ours["events_per_s"],
        "events_per_s_excl_startup": ours["events_per_s_excl_startup"],
        "events_per_cpu_s": ours["events_per_cpu_s"],
        "count_ok": ours["count_ok"],
        "engines": results,
        "vs": {},
        "targets": {"events_per_s>=100k": bool(ours["events_per_s"] and ours["events_per_s"] >= 100_000)},
    }
    for p in peers:
        r = results[p]
        out["vs"][p] = {
            "ratio_wall": ratio(ours["events_per_s"], r["events_per_s"]),
            "ratio_excl_startup": ratio(ours["events_per_s_excl_startup"], r["events_per_s_excl_startup"]),
            "ratio_per_cpu_s": ratio(ours["events_per_cpu_s"], r["events_per_cpu_s"]),
        }
    if "quixstreams" in peers:
        v = out["vs"]["quixstreams"]["ratio_wall"]
        out["targets"][">=2x_quixstreams"] = bool(v and v >= 2)
    if "go-regexp" in peers:
        v = out["vs"]["go-regexp"]["ratio_per_cpu_s"]
        out["targets"][">=go-regexp_per_core"] = bool(v and v >= 1)
    if "go-hyperscan" in peers:
        v = out["vs"]["go-hyperscan"]["ratio_per_cpu_s"]
        out["targets"][">=0.5x_go-hyperscan_per_core"] = bool(v and v >= 0.5)
    out["all_counts_ok"] = all(r["count_ok"] for r in results.values())
    out["machine"] = info | {"loadavg_end": list(os.getloadavg()), "bootstrap": BOOTSTRAP}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0 if out["all_counts_ok"] else 1


if __name__ == "__main__":
    from bench.e2e import main as _main

    sys.exit(_main())
