"""ClickHouse sink: WriteToClickHouse (Beam has no ClickHouse IO in Python).

events / window aggregates / dead letters
  -> ToRows: dict (or a list of dicts) -> row tuples (rows are smaller than dicts in Beam state)
  -> GroupIntoBatches on a sharded int key (batch_rows, max_buffer_s)   [batching: state]
     or a buffer inside the bundle, flushed at batch_rows and at bundle end   [batching: bundle]
  -> Insert: ONE insert per batch, retried with backoff on transient errors; a batch the server refuses
     for its data is bisected down to the bad rows, which come out as SINK_REJECTED dead letters.
The transform returns the PCollection of those dead letters.

Idempotence: rows have deterministic ids and the tables are ReplacingMergeTree, so replays and retries
collapse under FINAL; servers >= 22.2 (chdb) also drop a retried batch at insert by its dedup token.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from transforms.clickhouse_client import (
    DATA,
    FATAL,
    TRANSIENT,
    ClickHouseClient,
    classify_error,
    close_chdb,
    connect,
    error_text,
    supports_dedup_token,
)
from transforms.clickhouse_config import ClickHouseConfig, RetryConfig, validate_clickhouse_config
from transforms.clickhouse_rows import DEAD_LETTERS, EVENTS, TABLES, TableLayout, batch_token, row_as_json
from transforms.clickhouse_schema import ensure_schema, table_stats
from transforms.coders import Batch
from transforms.common import DLQ_TAG, SINK_REJECTED, dead_letter

__all__ = [
    "ClickHouseConfig", "RetryConfig", "WriteToClickHouse", "BatchWriter", "validate_clickhouse_config",
    "ensure_schema", "table_stats", "connect", "close_chdb",
]

log = logging.getLogger(__name__)
STAGE = "clickhouse"


class SinkRejected(Exception):
    """A batch holds rows the server (or the client's encoder) will never accept."""


def _src_of(layout: TableLayout, row: tuple) -> tuple[Any, Any, Any, Any]:
    # By name: layouts are pickled into the DoFns, so identity checks would fail in workers.
    if layout.name == EVENTS.name:
        return row[16], row[17], row[18], row[19]
    if layout.name == DEAD_LETTERS.name:
        return row[3], row[4], row[5], row[6]
    return None, None, None, None


def rejected_row(layout: TableLayout, row: tuple, reason: str) -> dict[str, Any]:
    topic, partition, offset, index = _src_of(layout, row)
    return dead_letter(SINK_REJECTED, reason, topic=topic or None, partition=partition, offset=offset,
                       index=index, payload=row_as_json(layout, row), stage=STAGE)


class BatchWriter:
    """Writes batches of row tuples to one table: retries, bisection, metrics. Used by the DoFns and bench."""

    def __init__(self, cfg: ClickHouseConfig, layout: TableLayout, *, create_schema: bool = True,
                 sleep=time.sleep) -> None:
        self.cfg = cfg
        self.layout = layout
        self.create_schema = create_schema
        self._sleep = sleep
        self._client: ClickHouseClient | None = None
        ns = f"clickhouse.{layout.name}"
        self.rows_inserted = Metrics.counter(ns, "rows_inserted")
        self.batches = Metrics.counter(ns, "batches")
        self.retries = Metrics.counter(ns, "retries")
        self.rejected = Metrics.counter(ns, "rejected_rows")
        self.batch_size = Metrics.distribution(ns, "batch_size")
        self.latency_ms = Metrics.distribution(ns, "insert_latency_ms")

    def client(self) -> ClickHouseClient:
        if self._client is None:
            client = connect(self.cfg)
            if self.create_schema:
                ensure_schema(self.cfg, client)
            self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def write(self, rows: list[tuple]) -> list[dict[str, Any]]:
        """Insert `rows` (one insert if they are all good); returns dead letters of rows refused for good."""
        if not rows:
            return []
        self.batch_size.update(len(rows))
        rejected: list[dict[str, Any]] = []
        self._write(rows, rejected)
        if rejected:
            self.rejected.inc(len(rejected))
        return rejected

    def _write(self, rows: list[tuple], rejected: list[dict[str, Any]]) -> None:
        try:
            self._insert_with_retry(rows)
        except SinkRejected as exc:
            if len(rows) == 1:
                rejected.append(rejected_row(self.layout, rows[0], str(exc)))
                return
            # Bisect: inserts are atomic per batch, so halves that succeed are in, and the bad rows are
            # isolated in about log2(n) inserts each.
            mid = len(rows) // 2
            self._write(rows[:mid], rejected)
            self._write(rows[mid:], rejected)

    def _insert_with_retry(self, rows: list[tuple]) -> None:
        start = time.monotonic()
        attempt = 0
        token: str | None = None
        layout = self.layout
        while True:
            attempt += 1
            try:
                client = self.client()
            except Exception as exc:  # noqa: BLE001 - only transient connect errors are retried
                if classify_error(exc) != TRANSIENT:
                    raise
                self._backoff(exc, attempt, start)
                continue
            if self.cfg.insert_dedup_token and token is None and supports_dedup_token(client.version):
                token = batch_token(layout, rows)
            t0 = time.perf_counter()
            try:
                client.insert(layout.name, layout.columns, rows, types=layout.types, dedup_token=token)
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless transient
                kind = classify_error(exc)
                if kind == DATA:
                    raise SinkRejected(error_text(exc)) from exc
                if kind == FATAL:
                    raise
                self._backoff(exc, attempt, start)
                continue
            self.latency_ms.update(int((time.perf_counter() - t0) * 1000))
            self.batches.inc()
            self.rows_inserted.inc(len(rows))
            return

    def _backoff(self, exc: Exception, attempt: int, start: float) -> None:
        """Sleep before the next attempt, or raise when attempts or the time budget are used up (the runner
        then retries the whole bundle)."""
        retry = self.cfg.retry
        backoff = min(retry.max_backoff_s, retry.initial_backoff_s * (2 ** (attempt - 1)))
        backoff = backoff / 2 + random.uniform(0, backoff / 2)  # "equal jitter": spread, but never ~0
        elapsed = time.monotonic() - start
        if attempt >= retry.max_attempts or elapsed + backoff > retry.budget_s:
            raise RuntimeError(
                f"ClickHouse insert into {self.layout.name} ({self.cfg.describe()}) failed after {attempt} "
                f"attempts in {elapsed:.1f}s: {error_text(exc)}"
            ) from exc
        log.warning("ClickHouse insert into %s failed (attempt %d, retry in %.2fs): %s",
                    self.layout.name, attempt, backoff, error_text(exc, 300))
        self.retries.inc()
        if self._client is not None and self._client.kind == "native":
            # A fresh client after a network error: no half-read packets from the old connection.
            self.close()
        self._sleep(backoff)


class _ToRowChunks(beam.DoFn):
    """dict (or list of dicts) -> row tuples, buffered inside the bundle per window into chunks of up to
    `chunk_rows` rows, emitted as (shard, rows) when full, older than max_buffer_s, or at the end of the
    bundle. Dicts that do not convert go to the DLQ output at once.

    Why chunks: GroupIntoBatches executed by the SDK costs four state/timer operations per ELEMENT (measured:
    the sink ran ~3x slower with it than with in-bundle batching on FnApiRunner); on chunks they are paid
    once per chunk.
    """

    def __init__(self, layout: TableLayout, shards: int, chunk_rows: int, max_buffer_s: float) -> None:
        self.layout = layout
        self.shards = shards
        self.chunk_rows = chunk_rows
        self.max_buffer_s = max_buffer_s

    def setup(self) -> None:
        self._to_row = self.layout.to_row
        self._convert = self.layout.convert
        self._rejected = Metrics.counter(f"clickhouse.{self.layout.name}", "rejected_rows")
        self._n = 0

    def start_bundle(self) -> None:
        # window -> [rows, timestamp of the latest row, monotonic time of the first row]
        self._bufs: dict[Any, list] = {}
        self._last_window: Any = None
        self._last_buf: list | None = None

    def _shard(self) -> int:
        self._n += 1
        return self._n % self.shards

    def process(self, element: dict[str, Any] | list[dict[str, Any]], window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam) -> list[Any]:
        out: list[Any] = []
        to_row = self._to_row
        if type(element) is list:  # a list of dicts: converted in one go, appended to the buffer at once
            rows, failed = self._convert(element)
            for el, exc in failed:  # a bad shape becomes a dead letter, never a crash
                self._rejected.inc()
                out.append(beam.pvalue.TaggedOutput(DLQ_TAG, _conversion_dead_letter(el, exc)))
        else:
            try:
                rows = (to_row(element),)
            except Exception as exc:  # noqa: BLE001
                self._rejected.inc()
                return [beam.pvalue.TaggedOutput(DLQ_TAG, _conversion_dead_letter(element, exc))]
        if not rows:
            return out
        # Identity check first: hashing a window object per element is measurable on this path.
        if window is self._last_window and self._last_buf is not None:
            buf = self._last_buf
        else:
            buf = self._bufs.get(window)
            if buf is None:
                buf = self._bufs[window] = [[], timestamp, time.monotonic()]
            self._last_window, self._last_buf = window, buf
        buf_rows = buf[0]
        before = len(buf_rows)
        buf_rows.extend(rows)
        buf[1] = timestamp
        n = len(buf_rows)
        # The clock is read once per 256 rows, not per row.
        if n >= self.chunk_rows or ((n >> 8) != (before >> 8)
                                    and time.monotonic() - buf[2] >= self.max_buffer_s):
            del self._bufs[window]
            self._last_buf = None
            chunk = self.chunk_rows
            if n <= chunk:
                out.append((self._shard(), buf_rows))
            else:  # a long list filled several chunks
                out.extend((self._shard(), buf_rows[i:i + chunk]) for i in range(0, n, chunk))
        return out

    def finish_bundle(self) -> Iterator[WindowedValue]:
        bufs, self._bufs, self._last_buf = self._bufs, {}, None
        for window, (rows, ts, _) in bufs.items():
            yield WindowedValue((self._shard(), rows), ts, [window])


def _conversion_dead_letter(element: Any, exc: Exception) -> dict[str, Any]:
    src = element.get("src") if isinstance(element, dict) else None
    topic, partition, offset, index = (src if isinstance(src, (list, tuple)) and len(src) == 4
                                       else (None, None, None, None))
    payload = orjson.dumps(element, default=repr, option=orjson.OPT_NON_STR_KEYS)
    return dead_letter(SINK_REJECTED, f"row conversion: {type(exc).__name__}: {exc}", topic=topic,
                       partition=partition, offset=offset, index=index, payload=payload, stage=STAGE)


class _InsertBatches(beam.DoFn):
    """(shard, rows) -> one insert; yields dead letters of refused rows."""

    def __init__(self, cfg: ClickHouseConfig, layout: TableLayout, create_schema: bool,
                 chunked: bool) -> None:
        self.cfg = cfg
        self.layout = layout
        self.create_schema = create_schema
        self.chunked = chunked

    def setup(self) -> None:
        self._writer = BatchWriter(self.cfg, self.layout, create_schema=self.create_schema)

    def process(self, element: tuple[int, Iterable]) -> Iterator[dict[str, Any]]:
        if self.chunked:  # (shard, [chunk, ...]) from GroupIntoBatches
            rows = [row for chunk in element[1] for row in chunk]
        else:  # (shard, rows) straight from the bundle
            rows = element[1]
        yield from self._writer.write(rows)

    def teardown(self) -> None:
        self._writer.close()


# State mode: a batch is assembled from this many chunks, so chunk_rows = batch_rows / CHUNKS_PER_BATCH
# (at most MAX_CHUNK_ROWS). Chunks make Beam state costs per row vanish, and several chunks per batch let a
# batch gather rows of many bundles when bundles are small (streaming).
CHUNKS_PER_BATCH = 25
MAX_CHUNK_ROWS = 2000


def chunking(batch_rows: int) -> tuple[int, int]:
    """(rows per chunk, chunks per batch): batches never exceed batch_rows."""
    chunk_rows = max(1, min(MAX_CHUNK_ROWS, batch_rows // CHUNKS_PER_BATCH))
    return chunk_rows, max(1, batch_rows // chunk_rows)


class WriteToClickHouse(beam.PTransform):
    """Write event / window-aggregate / dead-letter dicts to ClickHouse; returns the dead letters of rows
    ClickHouse refused for good (code SINK_REJECTED, stage "clickhouse", reason = the server's message).

    batching "state" (default): rows -> chunks in the bundle -> GroupIntoBatches of chunks (<= batch_rows
    rows) across bundles in Beam state, keyed by `shards` shard ids -> one insert per batch.
    batching "bundle": batches never outlive a bundle (flushed at batch_rows, max_buffer_s, bundle end), for
    runners without state and timers.
    create_schema: create the database and tables on first connect (idempotent, IF NOT EXISTS).
    """

    def __init__(self, cfg: ClickHouseConfig, table: str = "events", *, create_schema: bool = True,
                 label: str | None = None) -> None:
        super().__init__(label)
        if table not in TABLES:
            raise ValueError(f"table must be one of {sorted(TABLES)}, got {table!r}")
        self.cfg = cfg
        self.layout = TABLES[table]
        self.create_schema = create_schema

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        cfg, layout = self.cfg, self.layout
        state = cfg.batching == "state"
        chunk_rows, chunks_per_batch = chunking(cfg.batch_rows) if state else (cfg.batch_rows, 1)
        rows = pcoll | "ToRows" >> beam.ParDo(
            _ToRowChunks(layout, cfg.shards, chunk_rows, cfg.max_buffer_s)
        ).with_output_types(tuple[int, Batch]).with_outputs(DLQ_TAG, main="rows")
        batches = rows.rows
        if state:
            # GroupIntoBatches (not a stateful DoFn of ours): runners implement it natively (Prism, Dataflow);
            # Prism stalled on a hand-written equivalent with processing-time timers.
            batches = batches | "Batch" >> beam.GroupIntoBatches(chunks_per_batch,
                                                               max_buffering_duration_secs=cfg.max_buffer_s)
        rejected = batches | "Insert" >> beam.ParDo(_InsertBatches(cfg, layout, self.create_schema, state))
        return (rows[DLQ_TAG], rejected) | "DeadLetters" >> beam.Flatten()
