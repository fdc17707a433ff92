"""`python -m pipeline report --out report.html [--since T]`: one self-contained HTML page for operators.

Charts (inline SVG drawn here, no external script or stylesheet, so the file can be mailed or attached to a
ticket): events per category over time (window_aggregates), top rules (events), dead letters by code and
top reasons (dead_letters), consumer lag per partition (Kafka: the config's group and source). A few lines
of inline JS toggle series from the legend and set document.title to "report-ok" once they ran cleanly
(the headless-browser test checks that).

ClickHouse: --url, else sinks.clickhouse of --config (chdb by default: the path is locked while a pipeline
uses it). Unreachable ClickHouse or Kafka: one line, exit 2 (--no-lag skips Kafka).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pipeline.cli_ops import (
    DEFAULT_CONFIG,
    EXIT_UNREACHABLE,
    Unreachable,
    add_bootstrap,
    iso_ms,
    lag_report,
    load_for,
    parse_time,
)
from transforms.common import ConfigError

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#1f77b4", "#d62728"]
MAX_POINTS = 120  # time buckets on the x axis


# --- data -------------------------------------------------------------------------------------------------
def collect_clickhouse(client: Any, db: str, since: int | None) -> dict[str, Any]:
    """All chart data from ClickHouse; queries parse on 18.16 (Debian server) and 26.x (chdb)."""
    s = int(since or 0)
    q = client.execute
    span = q(f"SELECT min(window_start_ms), max(window_start_ms), count() FROM `{db}`.`window_aggregates` "
             f"WHERE window_start_ms >= {s}")[0]
    series: dict[str, list[list[int]]] = {}
    bucket = 60_000
    if int(span[2]):
        lo, hi = int(span[0]), int(span[1])
        # Whole minutes, at most MAX_POINTS buckets over the range.
        bucket = max(60_000, math.ceil((hi - lo) / MAX_POINTS / 60_000) * 60_000)
        rows = q(f"SELECT intDiv(window_start_ms, {bucket}) * {bucket} AS t, category, sum(`count`) "
                 f"FROM `{db}`.`window_aggregates` FINAL WHERE window_start_ms >= {s} "
                 f"GROUP BY t, category ORDER BY t, category")
        for t, cat, n in rows:
            series.setdefault(str(cat), []).append([int(t), int(n)])
    rules = [{"rule_id": str(r) or "(default)", "category": str(c), "count": int(n)} for r, c, n in q(
        f"SELECT rule_id, category, count() AS n FROM `{db}`.`events` FINAL WHERE event_time_ms >= {s} "
        f"GROUP BY rule_id, category ORDER BY n DESC, rule_id LIMIT 15")]
    codes = [{"code": str(c), "count": int(n)} for c, n in q(
        f"SELECT code, count() AS n FROM `{db}`.`dead_letters` WHERE time_ms >= {s} "
        f"GROUP BY code ORDER BY n DESC, code")]
    reasons = [{"code": str(c), "reason": str(r), "count": int(n)} for c, r, n in q(
        f"SELECT code, substring(reason, 1, 100) AS r, count() AS n FROM `{db}`.`dead_letters` "
        f"WHERE time_ms >= {s} GROUP BY code, r ORDER BY n DESC, code, r LIMIT 12")]
    events_total = int(q(f"SELECT count() FROM `{db}`.`events` FINAL WHERE event_time_ms >= {s}")[0][0])
    return {
        "bucket_ms": bucket, "series": series, "rules": rules, "dlq_codes": codes, "dlq_reasons": reasons,
        "events_total": events_total, "dead_letters_total": sum(c["count"] for c in codes),
        "aggregated_total": sum(n for pts in series.values() for _, n in pts),
    }


def _clickhouse_config(args: argparse.Namespace, cfg: Any) -> Any:
    from transforms.clickhouse_config import validate_clickhouse_config

    if args.url or cfg.clickhouse is None:
        return validate_clickhouse_config({"url": args.url} if args.url else None)
    return cfg.clickhouse


# --- SVG --------------------------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(n: float) -> str:
    n = float(n)
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def line_chart(series: dict[str, list[list[int]]], bucket_ms: int, width: int = 1100,
               height: int = 340) -> str:
    """Multi-series line chart of counts per time bucket; one <g class="series"> per category."""
    if not series:
        return '<p class="empty">no window aggregates in range</p>'
    left, right, top, bottom = 60, 20, 16, 40
    w, h = width - left - right, height - top - bottom
    times = sorted({t for pts in series.values() for t, _ in pts})
    t0, t1 = times[0], max(times[-1], times[0] + bucket_ms)
    # Four grid steps of a round size (1, 2, 2.5, 5 x 10^k).
    ymax = 4 * max(1.0, _nice_max(max(n for pts in series.values() for _, n in pts) / 4))

    def x(t: int) -> float:
        return left + (t - t0) / (t1 - t0) * w

    def y(v: float) -> float:
        return top + h - v / ymax * h

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img">']
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    # Ticks on bucket starts (distinct labels), at most 7 of them.
    fmt = "%H:%M" if t1 - t0 < 86_400_000 else "%m-%d %H:%M"
    for t in times[:: max(1, math.ceil(len(times) / 7))]:
        label = datetime.fromtimestamp(t / 1000, UTC).strftime(fmt)
        out.append(f'<text x="{x(t):.1f}" y="{top + h + 18}" text-anchor="middle">{label}</text>')
    out.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" class="axis"/>')
    ordered = sorted(series.items(), key=lambda kv: -sum(n for _, n in kv[1]))
    for i, (cat, pts) in enumerate(ordered):
        color = PALETTE[i % len(PALETTE)]
        # Missing buckets are zero: a category with no events in a minute drops to the axis.
        have = dict((t, n) for t, n in pts)
        coords = " ".join(f"{x(t):.1f},{y(have.get(t, 0)):.1f}" for t in times)
        out.append(f'<g class="series" data-series="{_e(cat)}" style="color:{color}">'
                   f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for t in times:
            n = have.get(t, 0)
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(n):.1f}" r="2.5" fill="{color}">'
                       f'<title>{_e(cat)} {iso_ms(t)}: {n}</title></circle>')
        out.append("</g>")
    out.append("</svg>")
    legend = "".join(
        f'<button class="legend" data-series="{_e(cat)}">'
        f'<span style="background:{PALETTE[i % len(PALETTE)]}"></span>'
        f'{_e(cat)} ({sum(n for _, n in pts)})</button>'
        for i, (cat, pts) in enumerate(ordered))
    return "".join(out) + f'<div class="legends">{legend}</div>'


def bar_chart(items: list[tuple[str, float, str]], width: int = 1100, color: str = PALETTE[0]) -> str:
    """Horizontal bars: (label, value, tooltip)."""
    if not items:
        return '<p class="empty">nothing in range</p>'
    label_w, row_h, pad = 360, 24, 8
    height = len(items) * row_h + pad * 2
    vmax = max(v for _, v, _ in items) or 1
    bar_w = width - label_w - 80
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img">']
    for i, (label, v, tip) in enumerate(items):
        yy = pad + i * row_h
        w = max(1.0, v / vmax * bar_w) if v else 0
        short = label if len(label) <= 52 else label[:51] + "…"
        out.append(f'<g class="bar"><title>{_e(tip)}</title>'
                   f'<text x="{label_w - 8}" y="{yy + 16}" text-anchor="end">{_e(short)}</text>'
                   f'<rect x="{label_w}" y="{yy + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{color}"/>'
                   f'<text x="{label_w + w + 6:.1f}" y="{yy + 16}">{_fmt(v)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def lag_chart(lag: dict[str, Any]) -> str:
    items = [(f"{p['topic']}[{p['partition']}]", p["lag"],
              f"{p['topic']} partition {p['partition']}: low {p['low']} high {p['high']} committed "
              f"{'-' if p['committed'] is None else p['committed']} lag {p['lag']}")
             for t in lag["topics"] for p in t["partitions"]]
    return bar_chart(items, color=PALETTE[2])


# --- page -------------------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
  background:#fafafa}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666}
.cards{display:flex;gap:12px;margin:16px 0;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:22px}
svg.chart{background:#fff;border:1px solid #e3e3e3;max-width:100%;height:auto}
svg text{font-size:12px;fill:#444}
.grid{stroke:#eee}
.axis{stroke:#999}
.legends{margin:6px 0}
.legend{border:1px solid #ccc;background:#fff;border-radius:4px;margin:2px;cursor:pointer}
.legend span{display:inline-block;width:10px;height:10px;margin-right:6px}
.legend.off{opacity:.4}
.hidden{display:none}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:3px 8px}
td.n{text-align:right}
.empty{color:#888;font-style:italic}
.warn{color:#a33}
"""

# Legend buttons toggle their series; the title tells a headless check that the script ran without error.
_JS = """
(function(){
  var bad = false;
  window.addEventListener('error', function(){ bad = true; document.title = 'report-error'; });
  var data = JSON.parse(document.getElementById('report-data').textContent);
  document.querySelectorAll('button.legend').forEach(function(b){
    b.addEventListener('click', function(){
      var name = b.getAttribute('data-series'); b.classList.toggle('off');
      document.querySelectorAll('g.series').forEach(function(g){
        if (g.getAttribute('data-series') === name) g.classList.toggle('hidden');
      });
    });
  });
  var charts = document.querySelectorAll('svg.chart').length;
  document.getElementById('rendered').textContent =
    charts + ' charts, ' + Object.keys(data.clickhouse.series).length + ' categories';
  if (!bad) document.title = 'report-ok';
})();
"""


def render_html(doc: dict[str, Any]) -> str:
    ch = doc["clickhouse"]
    lag = doc.get("lag")
    cards = [("events", ch["events_total"]), ("in window aggregates", ch["aggregated_total"]),
             ("dead letters", ch["dead_letters_total"])]
    if lag is not None:
        cards.append((f"consumer lag ({lag['group']})", lag["total_lag"]))
    cards_html = "".join(f'<div class="card"><b>{_fmt(v)}</b>{_e(k)}</div>' for k, v in cards)
    rules = bar_chart([(f"{r['rule_id']} → {r['category']}", r["count"],
                        f"rule {r['rule_id']} ({r['category']}): {r['count']} events") for r in ch["rules"]],
                      color=PALETTE[0])
    codes = bar_chart([(c["code"], c["count"], f"{c['code']}: {c['count']}") for c in ch["dlq_codes"]],
                      color=PALETTE[1])
    reasons = "".join(f'<tr><td>{_e(r["code"])}</td><td>{_e(r["reason"])}</td>'
                      f'<td class="n">{r["count"]}</td></tr>' for r in ch["dlq_reasons"])
    reasons_html = (f"<table><tr><th>code</th><th>reason</th><th>count</th></tr>{reasons}</table>"
                    if reasons else '<p class="empty">no dead letters in range</p>')
    if lag is None:
        lag_html = '<p class="empty">skipped (--no-lag)</p>'
    else:
        sel = lag["selection"]
        lag_html = (f'<p class="meta">group <code>{_e(lag["group"])}</code>, source {_e(json.dumps(sel))}, '
                    f'total lag {lag["total_lag"]}</p>' + lag_chart(lag))
    since = f"since {iso_ms(doc['since'])}" if doc["since"] is not None else "all data"
    # JSON inside <script>: escape "</" so a value cannot close the element.
    data_json = json.dumps(doc, ensure_ascii=False).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style></head>
<body>
<h1>Pipeline report</h1>
<p class="meta">generated {_e(doc['generated'])} · {_e(since)} · ClickHouse {_e(doc['clickhouse_target'])} ·
<span id="rendered">script did not run</span></p>
<div class="cards">{cards_html}</div>
<h2>Events per category over time <span class="meta">({doc['clickhouse']['bucket_ms'] // 60000} min buckets,
window_aggregates)</span></h2>
{line_chart(ch['series'], ch['bucket_ms'])}
<h2>Top rules <span class="meta">(events)</span></h2>
{rules}
<h2>Dead letters by code <span class="meta">(dead_letters)</span></h2>
{codes}
<h3>Top reasons</h3>
{reasons_html}
<h2>Consumer lag per partition <span class="meta">(Kafka)</span></h2>
{lag_html}
<script type="application/json" id="report-data">{data_json}</script>
<script>{_JS}</script>
</body></html>
"""


def build(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_for(args)
    import logging

    from transforms.clickhouse_client import connect

    ch_cfg = _clickhouse_config(args, cfg)
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)  # one line, not a traceback per try
    try:
        client = connect(ch_cfg)
        try:
            data = collect_clickhouse(client, ch_cfg.database, args.since)
        finally:
            client.close()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to reach/query ClickHouse: one line, exit 2
        from transforms.clickhouse_client import error_text

        text = (error_text(exc, 300).splitlines() or [type(exc).__name__])[0]
        where = ch_cfg.describe()
        hint = " (the chdb path is in use, e.g. by a running pipeline)" if "lock" in text.lower() else ""
        raise Unreachable(f"cannot query {where}: {text}{hint}") from None
    finally:
        from transforms.clickhouse_client import close_chdb

        close_chdb()
    lag = None if args.no_lag else lag_report(cfg, args.group)
    return {"generated": iso_ms(int(time.time() * 1000)), "since": args.since,
            "clickhouse_target": ch_cfg.describe(), "clickhouse": data, "lag": lag}


def cmd_report(args: argparse.Namespace) -> int:
    try:
        doc = build(args)
    except (Unreachable, ConfigError) as exc:
        print(f"report: {exc}" + (" (--no-lag skips Kafka)" if "Kafka" in str(exc) else ""), file=sys.stderr)
        return EXIT_UNREACHABLE
    page = render_html(doc)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(page)
    if args.json:
        sys.stdout.write(json.dumps({"out": args.out, "bytes": len(page.encode()), **doc}) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    ch = doc["clickhouse"]
    print(f"report written to {args.out} ({len(page.encode())} bytes)")
    table = Table("section", "value")
    table.add_row("events", str(ch["events_total"]))
    table.add_row("categories", ", ".join(sorted(ch["series"])) or "-")
    top = ch["rules"][0] if ch["rules"] else None
    table.add_row("top rule", f"{top['rule_id']} ({top['count']})" if top else "-")
    table.add_row("dead letters", str(ch["dead_letters_total"]))
    table.add_row("consumer lag", "skipped" if doc["lag"] is None else str(doc["lag"]["total_lag"]))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="self-contained HTML report (ClickHouse charts + Kafka lag)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"pipeline YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--out", default="report.html", help="output file (default report.html)")
    p.add_argument("--since", type=parse_time,
                   help="only data from T on (ISO-8601, naive = UTC, or epoch ms)")
    p.add_argument("--url", help="ClickHouse URL (default: sinks.clickhouse.url of the config)")
    p.add_argument("--group", help="consumer group for the lag chart (default: the config's group.id)")
    add_bootstrap(p)
    p.add_argument("--no-lag", "--no_lag", dest="no_lag", action="store_true",
                   help="skip the Kafka lag section")
    p.add_argument("--json", action="store_true", help="print the report's data as one JSON document")
    p.set_defaults(func=cmd_report)
