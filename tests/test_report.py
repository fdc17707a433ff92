"""`report` end to end: rows written by the sink's BatchWriter into chdb (and the server), offsets committed
on the real broker, the HTML page rendered in headless Chromium (screenshot not blank, inline script ran)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
import zlib

import pytest
import yaml

from tests.conftest import BOOTSTRAP, ROOT, create_topics, produce
from transforms.common import DECODE_ERROR, VALIDATION_ERROR, dead_letter

CHROMIUM = "/usr/bin/chromium"
MINUTE = 60_000
T0 = 1_790_000_000_000 // MINUTE * MINUTE  # a fixed minute; --since cuts the first one off
RULES = {("android-fatal-exception", "PERF_CRASH"): 30,
         ("android-choreographer-skipped-frames", "PERF_LAG"): 20,
         ("", "UNCLASSIFIED"): 10}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (./run.sh setup should carry it)."""
    if not os.path.exists(CHROMIUM):
        proc = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True,
                              timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        assert proc.returncode == 0, f"apt-get install chromium failed:\n{proc.stdout[-2000:]}{proc.stderr}"
    assert os.path.exists(CHROMIUM)
    return CHROMIUM


def _events() -> list[dict]:
    out = []
    i = 0
    for (rule, cat), n in RULES.items():
        for _ in range(n):
            t = T0 + MINUTE + (i % 4) * MINUTE  # minutes 1..4 (inside --since)
            out.append({
                "event_id": uuid.uuid4().hex, "event_time": t, "ingest_time": t + 5,
                "app_id": "com.example.game",
                "event_name": "", "platform": "android", "device_id": f"d{i % 7}", "duration_ms": 12.5,
                "fields": {"message": f"msg {rule} <b>&amp;</b>"}, "attrs": {}, "traceparent": None,
                "src": ["in", 0, i, 0], "envelope": "upload", "category": cat, "rule_id": rule,
                "engine": "hyperscan" if rule else "default",
            })
            i += 1
    return out


def _aggregates() -> list[dict]:
    # minute 0 is before --since; minutes 1..4 carry 3, 4, 5, 6 (crash) and 1, 2, 3, 4 (lag).
    out = []
    for m in range(5):
        for cat, base in (("PERF_CRASH", 2), ("PERF_LAG", 0)):
            start = T0 + m * MINUTE
            out.append({"window_start": start, "window_end": start + MINUTE, "category": cat,
                        "app_id": "com.example.game", "count": base + m, "distinct_devices": 1, "p50": 1.0,
                        "p95": 2.0, "max": 3.0, "pane": "ON_TIME", "pane_index": 0, "version": 1})
    return [a for a in out if a["count"]]


def _dead_letters() -> list[dict]:
    out = []
    for code, reason, n, t in ((DECODE_ERROR, "not JSON: </script><script>bad()</script>", 3, T0 + MINUTE),
                               (VALIDATION_ERROR, "missing app_id", 5, T0 + 2 * MINUTE),
                               ("TOO_LARGE", "too old to show", 2, T0 - MINUTE)):
        for i in range(n):
            dl = dead_letter(code, reason, topic="in", partition=0, offset=i, payload=b"x", key=None)
            dl["time"] = t
            out.append(dl)
    return out


def fill_clickhouse(url: str, database: str) -> None:
    from transforms.clickhouse import BatchWriter, close_chdb, validate_clickhouse_config
    from transforms.clickhouse_rows import DEAD_LETTERS, EVENTS, WINDOW_AGGREGATES

    cfg = validate_clickhouse_config({"url": url, "database": database})
    for layout, items in ((EVENTS, _events()), (WINDOW_AGGREGATES, _aggregates()),
                          (DEAD_LETTERS, _dead_letters())):
        writer = BatchWriter(cfg, layout)
        assert writer.write([layout.to_row(x) for x in items]) == []
        writer.close()
    close_chdb()  # the report runs in another process: release the chdb path


def _config(tmp_path, url: str, database: str, group: str, topic: str) -> str:
    with open(ROOT / "config" / "default.yaml") as f:
        raw = yaml.safe_load(f)
    raw["kafka"]["consumer"].update({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    raw["kafka"]["producer"]["bootstrap.servers"] = BOOTSTRAP
    raw["source"].pop("topic_pattern", None)
    raw["source"]["topics"] = [topic]
    raw["sinks"]["clickhouse"].update({"url": url, "database": database})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _kafka_lag(prefix: str) -> tuple[str, str]:
    """A 2-partition topic with 10 + 6 records; the group committed 4 on partition 0 -> lag 6 + 6."""
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.cli_ops import commit_offsets

    topic, group = f"{prefix}.in", f"{prefix}-classifier"
    create_topics([topic], partitions=2)
    produce(topic, [b"a"] * 10, partition=0)
    produce(topic, [b"b"] * 6, partition=1)
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    try:
        commit_offsets(c, [TopicPartition(topic, 0, 4)])
    finally:
        c.close()
    return topic, group


def run_report(config: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "report", "--config", config, "--out", out, *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)


def check_data(doc: dict, topic: str, group: str) -> None:
    ch = doc["clickhouse"]
    assert ch["events_total"] == sum(RULES.values())
    assert [(r["rule_id"], r["category"], r["count"]) for r in ch["rules"]] == [
        (rule or "(default)", cat, n) for (rule, cat), n in RULES.items()]
    assert {c: [n for _, n in pts] for c, pts in ch["series"].items()} == {"PERF_CRASH": [3, 4, 5, 6],
                                                                          "PERF_LAG": [1, 2, 3, 4]}
    assert ch["series"]["PERF_CRASH"][0][0] == T0 + MINUTE
    assert ch["dlq_codes"] == [{"code": VALIDATION_ERROR, "count": 5}, {"code": DECODE_ERROR, "count": 3}]
    lag = doc["lag"]
    assert lag["group"] == group and lag["total_lag"] == 12
    assert [(p["partition"], p["committed"], p["lag"]) for p in lag["topics"][0]["partitions"]] == [
        (0, 4, 6), (1, None, 6)]
    assert lag["topics"][0]["topic"] == topic


def png_colors(path: str, max_rows: int = 700) -> tuple[int, int, int]:
    """(width, height, distinct colors in the top `max_rows` rows) with a tiny PNG decoder (zlib only).
    Rows only depend on the rows above them, so decoding a prefix is exact."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if typ == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif typ == b"IDAT":
            idat.append(body)
        elif typ == b"IEND":
            break
    w, h, depth, ctype, _, _, interlace = hdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, hdr
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    raw = zlib.decompressobj().decompress(b"".join(idat), (stride + 1) * min(h, max_rows))
    prev = bytearray(stride)
    colors: set[bytes] = set()
    for y in range(min(h, max_rows)):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif f == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for i in range(0, stride, bpp):
            colors.add(bytes(line[i:i + 3]))
        prev = line
    return w, h, len(colors)


def chromium_args(profile, *extra: str) -> list[str]:
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1280,2000", *extra]


def test_report_renders_in_chromium(kafka, chromium, topic_prefix, tmp_path):
    url = f"chdb://{tmp_path}/chdb"
    fill_clickhouse(url, "perf")
    topic, group = _kafka_lag(topic_prefix)
    config = _config(tmp_path, url, "perf", group, topic)
    out = tmp_path / "report.html"

    proc = run_report(config, str(out), "--since", str(T0 + MINUTE), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["out"] == str(out)
    check_data(doc, topic, group)

    page = out.read_text()
    # Self-contained: no external script, stylesheet, image or font.
    for needle in ("<link", "src=", "@import", "url(", "http://", "https://"):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), needle
    assert page.count("<svg") == 4  # events over time, rules, dlq codes, lag
    # Data from the tables is escaped, never markup.
    assert "</script><script>bad()" not in page and "&lt;/script&gt;&lt;script&gt;bad()" in page

    png = tmp_path / "shot.png"
    shot = subprocess.run(chromium_args(tmp_path / "profile", f"--screenshot={png}", out.as_uri()),
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.stat().st_size > 10_000
    w, h, colors = png_colors(str(png))
    assert (w, h) == (1280, 2000)
    assert colors > 50, f"screenshot looks blank: {colors} colors"

    args = chromium_args(tmp_path / "profile2", "--enable-logging=stderr", "--v=0", "--dump-dom",
                         out.as_uri())
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>report-ok</title>" in dom.stdout, dom.stderr[-2000:]
    assert "4 charts, 2 categories" in dom.stdout
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []


def test_report_on_server_and_text_output(kafka, topic_prefix, tmp_path):
    from tests.test_clickhouse import TCP_PORT, script

    assert script("up").returncode == 0
    server = f"clickhouse://default@127.0.0.1:{TCP_PORT}"
    db = f"t_{uuid.uuid4().hex[:12]}"
    fill_clickhouse(server, db)
    try:
        topic, group = _kafka_lag(topic_prefix)
        config = _config(tmp_path, server, db, group, topic)
        out = tmp_path / "report.html"
        proc = run_report(config, str(out), "--since", str(T0 + MINUTE), "--json")
        assert proc.returncode == 0, proc.stderr
        check_data(json.loads(proc.stdout), topic, group)
        text = run_report(config, str(out))
        assert text.returncode == 0, text.stderr
        assert f"report written to {out}" in text.stdout and "android-fatal-exception (30)" in text.stdout
    finally:
        from transforms.clickhouse import connect, validate_clickhouse_config

        client = connect(validate_clickhouse_config({"url": server, "database": db}))
        client.execute(f"DROP DATABASE IF EXISTS `{db}`")
        client.close()


def test_report_unreachable_is_one_line_exit_2(tmp_path):
    config = _config(tmp_path, "clickhouse://default@127.0.0.1:1", "perf", "g", "t")
    proc = run_report(config, str(tmp_path / "r.html"), "--no-lag")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("report: cannot query clickhouse://")
    assert not (tmp_path / "r.html").exists()
    # ClickHouse fine (empty chdb), Kafka unreachable: also one line, exit 2.
    raw = yaml.safe_load(open(config))
    raw["sinks"]["clickhouse"]["url"] = f"chdb://{tmp_path}/chdb"
    raw["kafka"]["consumer"]["bootstrap.servers"] = "127.0.0.1:1"
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(raw))
    fill_clickhouse(f"chdb://{tmp_path}/chdb", "perf")
    proc = run_report(str(tmp_path / "k.yaml"), str(tmp_path / "r.html"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot reach Kafka at 127.0.0.1:1" in proc.stderr
