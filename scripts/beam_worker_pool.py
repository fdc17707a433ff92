"""Beam worker pool for EXTERNAL environments (Flink runs Python stages through it), bound to loopback.

Same protocol as `python -m apache_beam.runners.worker.worker_pool_main --service_port=N`, with three fixes
for running it beside a local Flink cluster:
  * binds 127.0.0.1 instead of [::] (no service of ours listens on outside interfaces);
  * starts SDK workers with this interpreter (sys.executable), not whatever `python` is first on PATH;
  * worker stdout goes to this process's log, not to a pipe nobody reads (a chatty worker would block).
Usage: python scripts/beam_worker_pool.py --port 50000 [--host 127.0.0.1] [--state-cache-mb 100]
Flink jobs then use --environment_type=EXTERNAL --environment_config=127.0.0.1:50000.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import (
    BeamFnExternalWorkerPoolServicer,
    kill_process_gracefully,
)
from apache_beam.utils import thread_pool_executor

_LOG = logging.getLogger("beam_worker_pool")


class LoopbackWorkerPool(BeamFnExternalWorkerPoolServicer):
    """Process-mode worker pool: one SDK harness subprocess per StartWorker request."""

    def StartWorker(
        self, request: beam_fn_api_pb2.StartWorkerRequest, unused_context: object
    ) -> beam_fn_api_pb2.StartWorkerResponse:
        code = (
            "from apache_beam.runners.worker.sdk_worker import SdkHarness; "
            f"SdkHarness({request.control_endpoint.url!r}, worker_id={request.worker_id!r}, "
            f"state_cache_size={self._state_cache_size}, "
            f"data_buffer_time_limit_ms={self._data_buffer_time_limit_ms}).run()"
        )
        try:
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            return beam_fn_api_pb2.StartWorkerResponse(error=f"cannot start SDK worker: {exc}")
        self._worker_processes[request.worker_id] = proc
        _LOG.info("started SDK worker %s (pid %d) for %s", request.worker_id, proc.pid,
                  request.control_endpoint.url)
        return beam_fn_api_pb2.StartWorkerResponse()


def serve(host: str, port: int, state_cache_mb: int) -> None:
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    pool = LoopbackWorkerPool(use_process=True, state_cache_size=state_cache_mb << 20,
                              data_buffer_time_limit_ms=-1)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"cannot bind {host}:{port}")
    server.start()
    _LOG.info("worker pool listening on %s:%d (python %s)", host, bound, sys.executable)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        _LOG.info("signal %d: stopping worker pool", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.stop(grace=2).wait()
    for proc in list(pool._worker_processes.values()):
        kill_process_gracefully(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50000)
    parser.add_argument("--state-cache-mb", type=int, default=100,
                        help="SDK state/side-input cache per worker (Beam's own default is 100 MB)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(args.host, args.port, args.state_cache_mb)


if __name__ == "__main__":
    main()
