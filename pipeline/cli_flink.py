"""`python -m pipeline flink status|jobs|savepoint JOB|cancel JOB`: the Flink cluster through its REST API.

urllib only (no client library): the REST API is small and stable across Flink 1.x/2.x for these calls.
Every request has a short timeout; an unreachable cluster is one line on stderr and exit 2; a request the
cluster refuses (unknown job, no savepoint directory) is one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8081"
TIMEOUT_S = 10.0
EXIT_UNREACHABLE = 2
_JOB_ID = re.compile(r"^[0-9a-fA-F]{32}$")


class Unreachable(Exception):
    pass


class FlinkError(Exception):
    """The cluster answered with an error (HTTP 4xx/5xx) or a failed operation."""


def _flink_message(body: bytes) -> str:
    """The useful line of Flink's error JSON ({"errors": [java stack trace]}): the innermost cause."""
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace").strip()[:300]
    return _cause_line("\n".join(str(e) for e in errors))


def _cause_line(trace: str) -> str:
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip() and not ln.strip().startswith("at ")]
    causes = [ln[len("Caused by: "):] for ln in lines if ln.startswith("Caused by: ")]
    line = causes[-1] if causes else (lines[0] if lines else "unknown error")
    # "org.apache.flink...SomeException: message" -> "message (SomeException)"
    m = re.match(r"^([\w.$]+(?:Exception|Error)): (.*)$", line)
    if m:
        line = f"{m.group(2)} ({m.group(1).rsplit('.', 1)[-1]})"
    return line[:400]


class Flink:
    def __init__(self, url: str, timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise FlinkError(f"{method} {path}: HTTP {exc.code}: {_flink_message(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach Flink REST at {self.url}: {reason}") from None
        return json.loads(raw) if raw.strip() else {}

    def job(self, job_id: str) -> dict[str, Any]:
        if not _JOB_ID.match(job_id):
            raise FlinkError(f"{job_id!r} is not a Flink job id (32 hex digits; see `flink jobs`)")
        try:
            return self.call("GET", f"/jobs/{job_id}")
        except FlinkError as exc:
            if "HTTP 404" in str(exc):
                raise FlinkError(f"job {job_id} not found on {self.url}") from None
            raise


def _ms(ms: int | None) -> str:
    if not ms or ms < 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(ms: int | None) -> str:
    if ms is None or ms < 0:
        return "-"
    s = ms // 1000
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def _console():
    from rich.console import Console

    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _out(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")


def cmd_status(args: argparse.Namespace) -> int:
    flink = Flink(args.flink_url)
    ov = flink.call("GET", "/overview")
    doc = {
        "url": flink.url, "version": ov.get("flink-version"), "commit": ov.get("flink-commit"),
        "taskmanagers": ov.get("taskmanagers"), "slots_total": ov.get("slots-total"),
        "slots_available": ov.get("slots-available"), "jobs_running": ov.get("jobs-running"),
        "jobs_finished": ov.get("jobs-finished"), "jobs_cancelled": ov.get("jobs-cancelled"),
        "jobs_failed": ov.get("jobs-failed"),
    }
    if args.json:
        _out(doc)
        return 0
    from rich.table import Table

    table = Table("", "", show_header=False)
    for k, v in doc.items():
        if k != "url":
            table.add_row(k, str(v))
    con = _console()
    con.print(f"Flink {doc['version']} at {flink.url}")
    con.print(table)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    flink = Flink(args.flink_url)
    jobs = flink.call("GET", "/jobs/overview").get("jobs", [])
    jobs.sort(key=lambda j: j.get("start-time") or 0, reverse=True)
    rows = [{"id": j.get("jid"), "name": j.get("name"), "state": j.get("state"),
             "start": _ms(j.get("start-time")), "start_ms": j.get("start-time"),
             "duration": _duration(j.get("duration")), "duration_ms": j.get("duration")} for j in jobs]
    if args.json:
        _out({"url": flink.url, "jobs": rows})
        return 0
    from rich.table import Table

    table = Table("id", "name", "state", "start", "duration", title=f"{len(rows)} jobs on {flink.url}",
                  title_justify="left")
    for r in rows:
        table.add_row(r["id"], r["name"], r["state"], r["start"], r["duration"])
    _console().print(table)
    return 0


def trigger_savepoint(flink: Flink, job: str, directory: str | None, stop: bool) -> str:
    """POST the trigger; returns Flink's request id (the trigger id to poll)."""
    if stop:
        # Drain: sources emit MAX_WATERMARK so every window fires before the job stops.
        body: dict[str, Any] = {"drain": True}
        if directory:
            body["targetDirectory"] = directory
        trigger = flink.call("POST", f"/jobs/{job}/stop", body)
    else:
        body = {"cancel-job": False}
        if directory:
            body["target-directory"] = directory
        trigger = flink.call("POST", f"/jobs/{job}/savepoints", body)
    rid = trigger.get("request-id")
    if not rid:
        raise FlinkError(f"no request-id in the trigger answer: {trigger}")
    return rid


def wait_savepoint(flink: Flink, job: str, rid: str, timeout: float) -> str:
    """Polls the trigger until Flink reports it COMPLETED; returns the savepoint path. A failed savepoint
    is also COMPLETED, with a failure-cause instead of a location: FlinkError with its innermost cause."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = flink.call("GET", f"/jobs/{job}/savepoints/{rid}")
        if (status.get("status") or {}).get("id") == "COMPLETED":
            break
        time.sleep(0.5)
    else:
        raise FlinkError(f"savepoint {rid} of job {job} not done after {timeout:.0f} s "
                         f"(still {(status.get('status') or {}).get('id')}); poll GET /jobs/{job}/"
                         f"savepoints/{rid}")
    op = status.get("operation") or {}
    if "failure-cause" in op or not op.get("location"):
        cause = op.get("failure-cause") or {}
        why = _cause_line(cause.get("stack-trace") or str(cause))
        raise FlinkError(f"savepoint of job {job} FAILED: {why}")
    return op["location"]


def cmd_savepoint(args: argparse.Namespace) -> int:
    flink = Flink(args.flink_url)
    job = flink.job(args.job)
    if job.get("state") not in ("RUNNING", None):
        raise FlinkError(f"job {args.job} is {job.get('state')}: a savepoint needs a RUNNING job")
    rid = trigger_savepoint(flink, args.job, args.dir, args.stop)
    location = wait_savepoint(flink, args.job, rid, args.timeout)
    doc = {"job": args.job, "request_id": rid, "status": "COMPLETED", "location": location,
           "stopped": bool(args.stop)}
    if args.json:
        _out(doc)
    else:
        print(f"savepoint COMPLETED: {location}" + (" (job stopped, drained)" if args.stop else ""))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    flink = Flink(args.flink_url)
    flink.job(args.job)
    flink.call("PATCH", f"/jobs/{args.job}?mode=cancel")
    state = None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = flink.job(args.job).get("state")
        if state in ("CANCELED", "FAILED", "FINISHED"):
            break
        time.sleep(0.5)
    doc = {"job": args.job, "state": state}
    if args.json:
        _out(doc)
    else:
        print(f"job {args.job}: cancel requested, state {state}")
    return 0


def _guarded(cmd: str, fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except Unreachable as exc:
            print(f"flink {cmd}: {exc} (is it running? ./run.sh flink-up)", file=sys.stderr)
            return EXIT_UNREACHABLE
        except FlinkError as exc:
            print(f"flink {cmd}: {exc}", file=sys.stderr)
            return 1

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("flink", help="Flink cluster: status, jobs, savepoint, cancel (REST API)")
    sub = p.add_subparsers(dest="flink_command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--flink_url", "--flink-url", dest="flink_url", default=DEFAULT_URL,
                        help=f"Flink REST endpoint (default {DEFAULT_URL})")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    st = sub.add_parser("status", help="cluster overview: version, task managers, slots, jobs")
    common(st)
    st.set_defaults(func=_guarded("status", cmd_status))
    jobs = sub.add_parser("jobs", help="table of jobs: id, name, state, start, duration")
    common(jobs)
    jobs.set_defaults(func=_guarded("jobs", cmd_jobs))
    sp = sub.add_parser("savepoint", help="trigger a savepoint (or stop with savepoint) and wait for it")
    common(sp)
    sp.add_argument("job", metavar="JOB", help="job id (see `flink jobs`)")
    sp.add_argument("--dir", help="target directory (default: the cluster's state.savepoints.dir)")
    sp.add_argument("--stop", action="store_true", help="stop the job with a savepoint, draining windows")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for completion (300)")
    sp.set_defaults(func=_guarded("savepoint", cmd_savepoint))
    cn = sub.add_parser("cancel", help="cancel a job (no savepoint)")
    common(cn)
    cn.add_argument("job", metavar="JOB", help="job id (see `flink jobs`)")
    cn.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for CANCELED (30)")
    cn.set_defaults(func=_guarded("cancel", cmd_cancel))
