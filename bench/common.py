"""Shared helpers of bench.kafka_read and bench.e2e: machine facts, CPU accounting, Kafka plumbing.

Everything talks to 127.0.0.1 only. Progress goes to stderr; the benches print one JSON object.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".run" / "bench"
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def progress(name: str, msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] [bench.{name}] {msg}", file=sys.stderr, flush=True)


def run_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]


def machine() -> dict:
    """What a reader needs to compare figures: cores, CPU model, RAM, load at the start, date."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kb / 2**20, 1),
        "loadavg_start": list(os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
    }


def proc_cpu_s(pid: int | str = "self") -> float:
    """user+system CPU seconds of one process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP `port`, from /proc (no ss/lsof needed), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:  # gone, or not ours to look at
            continue
    return None


class ServerCpu:
    """CPU seconds the servers on `ports` (broker, ClickHouse) spend while the block runs: they share the
    machine's cores with the engine under test, so their cost belongs in the comparison too."""

    def __init__(self, ports: dict[str, int]) -> None:
        self._pids = {name: listener_pid(port) for name, port in ports.items()}
        self.cpu_s: dict[str, float | None] = {}

    def _now(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, pid in self._pids.items():
            try:
                out[name] = proc_cpu_s(pid) if pid else None
            except OSError:
                out[name] = None
        return out

    def __enter__(self) -> ServerCpu:
        self._start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        end = self._now()
        for name, t0 in self._start.items():
            t1 = end[name]
            self.cpu_s[name] = round(t1 - t0, 2) if t0 is not None and t1 is not None else None


@dataclass
class ChildResult:
    rc: int
    wall_s: float
    cpu_s: float  # user+sys of the child and every descendant it waited for (os.wait4 rusage)
    stdout: str
    stderr: str


def run_child(cmd: list[str], name: str, timeout: float, env: dict | None = None,
              cwd: Path = ROOT) -> ChildResult:
    """Runs `cmd`, streaming its stderr to ours (prefixed) and keeping its stdout. CPU via wait4."""
    progress(name, "$ " + " ".join(cmd))
    log_path = BENCH_DIR / f"{name}.stderr.log"
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out_chunks: list[str] = []
        import threading

        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
        reader.start()
        deadline = t0 + timeout
        status = None
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            time.sleep(0.05)
        else:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            progress(name, f"killed after {timeout:.0f} s timeout")
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join(10)
    stderr = log_path.read_text(errors="replace")
    return ChildResult(proc.returncode, wall, ru.ru_utime + ru.ru_stime, "".join(out_chunks), stderr)


# --- Kafka ---------------------------------------------------------------------------------------


def admin():
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": BOOTSTRAP})


def kafka_check() -> None:
    try:
        admin().list_topics(timeout=10)
    except Exception as e:
        msg = f"error: Kafka at {BOOTSTRAP} does not answer ({e}); start it: ./run.sh kafka-up"
        raise SystemExit(msg) from e


def create_topics(names: Iterable[str], partitions: int) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    a = admin()  # keep the client alive until its futures resolve
    futures = a.create_topics([NewTopic(t, partitions) for t in names], operation_timeout=30)
    for fut in futures.values():
        try:
            fut.result(30)
        except KafkaException as e:
            if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise


def delete_topics(names: Iterable[str]) -> None:
    names = list(names)
    if not names:
        return
    a = admin()
    for fut in a.delete_topics(names, operation_timeout=30).values():
        try:
            fut.result(30)
        except Exception:  # noqa: BLE001 - cleanup of our own topics; a missing one is fine
            pass


def topics_with_prefix(prefix: str) -> list[str]:
    return sorted(t for t in admin().list_topics(timeout=10).topics if t.startswith(prefix))


def record_counts(topics: Iterable[str]) -> dict[str, int]:
    """Records per topic (high - low watermark summed over partitions); 0 for a missing topic."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "bench-counter", "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10)
        out = {}
        for t in topics:
            n = 0
            if t in md.topics:
                for p in md.topics[t].partitions:
                    low, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                    n += max(0, high - low)
            out[t] = n
        return out
    finally:
        c.close()


def produce(topic: str, values: Iterable[tuple[bytes | None, bytes, list | None]], name: str,
            total: int | None = None) -> tuple[int, float]:
    """Produces (key, value, headers) records with lz4; returns (count, seconds). Fails if any is lost."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": BOOTSTRAP, "compression.type": "lz4", "linger.ms": 20,
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 500000})
    t0 = time.monotonic()
    n = 0
    for key, value, headers in values:
        while True:
            try:
                p.produce(topic, value, key, headers=headers or None)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
        if n % 100_000 == 0:
            progress(name, f"produced {n}" + (f" / {total}" if total else ""))
    left = p.flush(120)
    if left:
        raise SystemExit(f"error: {left} records to {topic} were not acknowledged")
    return n, time.monotonic() - t0


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None
