"""A Prism job server of our own, in its own session.

Beam starts Prism as a child in the launcher's process group, so a Ctrl-C in the terminal (SIGINT to
the whole group) or a SIGTERM to the group kills Prism before our graceful stop can drain the job;
Beam also replaces the SIGINT handler with one that stops Prism. Started here with its own session,
Prism outlives those signals until the drained job has finished, and is stopped afterwards.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def _detach_but_die_with_parent() -> None:
    """In the child: a session of its own (terminal and process-group signals do not reach it), but
    SIGTERM when the launcher dies, even by kill -9, so no Prism is left behind (Linux prctl)."""
    import ctypes
    import signal

    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prism_job_server(binary: str, log_dir: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Yields a job endpoint (`localhost:PORT`) served by `binary` until the block exits."""
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"Prism binary {binary} is missing: run ./run.sh setup prism")
    port = _free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"prism-{port}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [binary, "--job_port", str(port), "--serve_http=false", "--log_level", "warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_detach_but_die_with_parent,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Prism exited with {proc.returncode} at start; see {log_path}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Prism did not listen on port {port} in {timeout_s:.0f} s; see {log_path}"
                    ) from None
                time.sleep(0.1)
        log.info("Prism job server on localhost:%d (log %s)", port, log_path)
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        try:
            os.remove(log_path) if os.path.getsize(log_path) == 0 else None
        except OSError:
            pass
