"""``make bench``: the aggregation core, the record-processor path, a naive peer and the DuckDB ceiling, side by side.

One generated input (or ``--input FILE``, JSONL, one record per line) is used by every measurement; each runs in its
own process so its peak RSS is its own. Nothing here is asserted (benchmarks measure, tests assert), except that the
naive peer and the DuckDB ceiling give the same customer rows as the core (else their speed would mean nothing).

- core: ``CustomerState.apply`` (decode + validate + de-duplicate + aggregate + rows of changed customers) on a
  file-backed state written as the worker writes it (every ``CLICKSTREAM_STATE_SYNC_RECORDS``, and once at the
  end), 50k-record batches and 10k-record batches, DuckDB on one thread;
- naive: ``bench/naive.py``, record by record in plain Python (per-record json.loads, dicts and sets);
- ceiling: DuckDB alone, one ``GROUP BY`` with exact de-duplication over the same NDJSON, one thread;
- processor: MultiLangDaemon protocol messages through ``ColumnarKCLProcess`` (amazon_kclpy's KCLProcess
  reading processRecords into columns, as ``consumer.record_processor.main`` runs it) and RecordProcessor, flushing
  Parquet to an in-memory S3 stand-in; freshness is the time from a record's message being read to the commit
  record that makes it durable;
- flush scaling: the apply time of batches changing 100 / 1,000 / 5,000 customers, on states of 5,000 and 50,000
  customers (100 / 1,000 on 2,000 and 20,000 with --quick).

The throughput runs are timed warm, as a shard processor runs for hours: each first processes the input's first
100,000 records (all of it, if smaller) on a throwaway instance of itself, untimed, then the whole input on a fresh
one, timed. What a process pays once when it starts (its heap growing to its working size, DuckDB's first
statements) is not spread over the throughput; the core's is printed as its own figure, the extra CPU its first
100,000 records took over what they take warm.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa

from schemas import RAW_RECORD_SCHEMA, UTC_MICROS

if TYPE_CHECKING:
    from aggregators.customer_state import StateOptions
    from runtime.settings import Settings

ARRIVAL = datetime(2026, 6, 1, tzinfo=UTC)
SHARD = "shardId-000000000000"
#: Columns every peer must agree on (the set-determined ones the naive peer computes).
COMPARED = ("events", "sessions", "active_days", "revenue", "purchase_days", "frequency", "recency")
#: Records each throughput run first processes, untimed, on a throwaway instance of itself (see the docstring).
WARM_UP_RECORDS: Final = 100_000


def _generate(customers: int, events: int, seed: int, malformed_rate: float = 0.0) -> list[bytes]:
    from producer.generator import ClickstreamGenerator

    return list(
        ClickstreamGenerator(
            customers, events, seed, duplicate_rate=0.01, malformed_rate=malformed_rate
        ).events()
    )


def _read(path: str) -> list[bytes]:
    with open(path, "rb") as lines:
        return [line.rstrip(b"\r\n") for line in lines if line.strip()]


def _raw_batches(payloads: list[bytes], batch: int, first_sequence: int = 1) -> list[pa.Table]:
    from producer.kinesis_put import partition_key_for

    arrival = int(ARRIVAL.timestamp() * 1_000_000)
    tables = []
    for start in range(0, len(payloads), batch):
        chunk = payloads[start : start + batch]
        count = len(chunk)
        tables.append(
            pa.table(
                {
                    "shard_id": pa.array([SHARD] * count),
                    "sequence_number": pa.array([str(first_sequence + start + i) for i in range(count)]),
                    "sub_sequence_number": pa.array([0] * count, pa.int64()),
                    "partition_key": pa.array([partition_key_for(data) for data in chunk]),
                    "approximate_arrival_at": pa.array([arrival] * count, pa.int64()).cast(UTC_MICROS),
                    "data": pa.array(chunk, pa.binary()),
                },
                schema=RAW_RECORD_SCHEMA,
            )
        )
    return tables


def _proc_mib(path: str, field: str) -> float | None:
    """A ``<field>: <n> kB`` figure of this process from /proc, in MiB (None where /proc has no such line)."""
    try:
        for line in Path(path).read_text(encoding="ascii").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM resets on exec; ru_maxrss would carry the parent's from the fork)."""
    peak = _proc_mib("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    return _proc_mib("/proc/self/status", "VmRSS") or 0.0


def _anonymous_mib() -> float:
    """This process's anonymous (heap) memory now: its own, unlike the shared libraries RSS also counts, which
    every shard processor on a host maps once (libarrow, libduckdb and the rest are file-backed, shared pages)."""
    return _proc_mib("/proc/self/smaps_rollup", "Anonymous") or 0.0


def _worker_state_options() -> StateOptions:
    """The state options the worker runs with (its settings' defaults, or the environment's)."""
    from consumer.state_recovery import state_options
    from runtime.settings import Settings

    return state_options(Settings())


def _rows_file(rows: dict[str, dict[str, Any]], directory: str, name: str) -> str:
    path = str(Path(directory) / f"{name}.json")
    Path(path).write_text(json.dumps(rows, default=str, sort_keys=True), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- measurements


def bench_core(
    input: str | None = None,
    batch: int = 50_000,
    rows_dir: str | None = None,
    events: int = 0,
    customers: int = 0,
) -> dict[str, Any]:
    """CustomerState.apply over the input in ``batch``-record batches, on a file-backed state."""
    from aggregators.customer_state import CustomerState

    payloads = _read(input) if input else _generate(customers, events, seed=1)
    batches = _raw_batches(payloads, batch)
    del payloads
    with tempfile.TemporaryDirectory() as directory:
        warm_records, warm_cpu_seconds = _warm_up_core(batches, Path(directory) / "warm-up.journal")
        state = CustomerState(SHARD, Path(directory) / "state.journal", options=_worker_state_options())
        started, cpu_started = time.perf_counter(), time.process_time()
        applied = 0
        for table in batches:
            applied += state.apply(table).events.num_rows
        applying_cpu_seconds = time.process_time() - cpu_started  # as the warm-up's, which has no final sync
        state.sync()  # the local file holds everything, as after a graceful stop
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        records = sum(table.num_rows for table in batches)
        memory = state.memory_bytes()
        result = {
            "records": records,
            "seconds": seconds,
            "events_per_second": records / seconds,
            "events_per_cpu_second": records / cpu_seconds,
            # what the first records cost a fresh process over what they cost warm: paid once per shard processor
            "start_cpu_ms": (warm_cpu_seconds - warm_records * applying_cpu_seconds / records) * 1000,
            "applied": applied,
            "customers": state.customer_count(),
            "event_ids": state.event_id_count(),
            "bytes_per_customer": memory["customers"] / max(1, state.customer_count()),
            "bytes_per_event_id": memory["event_ids"] / max(1, state.event_id_count()),
            "state_bytes": sum(memory.values()),
            "peak_rss_mib": _peak_rss_mib(),
        }
        if rows_dir:
            snapshot = state.snapshot_rows().select(["customer_id", *COMPARED]).to_pylist()
            result["rows"] = _rows_file({r.pop("customer_id"): r for r in snapshot}, rows_dir, "core")
        state.close()
    return result


def _warm_up_core(batches: list[pa.Table], path: Path) -> tuple[int, float]:
    """The first ``WARM_UP_RECORDS`` records applied to a throwaway state, as a fresh process would: the records
    and the CPU-seconds they took."""
    from aggregators.customer_state import CustomerState

    state = CustomerState(SHARD, path, options=_worker_state_options())
    records, cpu_started = 0, time.process_time()
    for table in batches:
        if records >= WARM_UP_RECORDS:
            break
        state.apply(table)
        records += table.num_rows
    cpu_seconds = time.process_time() - cpu_started
    state.close(sync=False)
    return records, cpu_seconds


def bench_naive(input: str, rows_dir: str | None = None, per_call: int = 1_000) -> dict[str, Any]:
    """The naive peer, fed KCL-sized calls of (data, partition key)."""
    from bench.naive import NaiveProcessor
    from producer.kinesis_put import partition_key_for

    payloads = _read(input)
    calls = [
        [(data, partition_key_for(data)) for data in payloads[i : i + per_call]]
        for i in range(0, len(payloads), per_call)
    ]
    warm_up = NaiveProcessor(arrival=ARRIVAL)
    for call in calls[: -(-WARM_UP_RECORDS // per_call)]:
        warm_up.process(call)
    del warm_up
    processor = NaiveProcessor(arrival=ARRIVAL)
    started, cpu_started = time.perf_counter(), time.process_time()
    for call in calls:
        processor.process(call)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    result = {
        "records": len(payloads),
        "seconds": seconds,
        "events_per_second": len(payloads) / seconds,
        "events_per_cpu_second": len(payloads) / cpu_seconds,
    }
    result["peak_rss_mib"] = _peak_rss_mib()
    if rows_dir:
        result["rows"] = _rows_file(processor.rows(), rows_dir, "naive")
    return result


def bench_ceiling(input: str, rows_dir: str | None = None) -> dict[str, Any]:
    """DuckDB alone: one GROUP BY over the NDJSON with exact de-duplication (no per-record validation rules)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.execute("SET TimeZone = 'UTC'")
    columns = {
        "schema_version": "BIGINT",
        "event_id": "VARCHAR",
        "event_type": "VARCHAR",
        "customer_id": "VARCHAR",
        "session_id": "VARCHAR",
        "event_time": "TIMESTAMPTZ",
        "revenue": "DECIMAL(18,2)",
        "order_id": "VARCHAR",
        "product_id": "VARCHAR",
        "search_query": "VARCHAR",
    }
    sql = """
    WITH events AS (
        SELECT DISTINCT ON (customer_id, lower(event_id)) * FROM read_json(
            '{input}', format = 'newline_delimited', columns = {columns}, ignore_errors = true,
            maximum_object_size = 32768)
        WHERE schema_version = 1 AND event_id IS NOT NULL AND customer_id IS NOT NULL AND session_id IS NOT NULL
          AND event_time >= TIMESTAMPTZ '2000-01-01 00:00:00+00'
          AND event_time <= TIMESTAMPTZ '{arrival}' + INTERVAL 1 HOUR
          AND event_type IN ('page_view', 'product_view', 'search', 'add_to_cart', 'checkout', 'purchase')
          AND coalesce(revenue BETWEEN 0 AND 1000000, true)
          AND (event_type <> 'purchase' OR (order_id IS NOT NULL AND revenue IS NOT NULL))
          AND (event_type <> 'checkout' OR order_id IS NOT NULL)
          AND (event_type NOT IN ('product_view', 'add_to_cart') OR product_id IS NOT NULL)
          AND (event_type <> 'search' OR search_query IS NOT NULL)
    ), days AS (
        SELECT customer_id, CAST(event_time AS DATE) AS day, sum(revenue) FILTER (event_type = 'purchase') AS revenue
        FROM events GROUP BY ALL
    ), per_day AS (
        SELECT customer_id, count(*) AS active_days, count(revenue) AS purchase_days,
               min(day) FILTER (revenue IS NOT NULL) AS first_day, max(day) FILTER (revenue IS NOT NULL) AS last_day,
               arg_min(revenue, day) FILTER (revenue IS NOT NULL) AS first_day_revenue
        FROM days GROUP BY customer_id
    )
    SELECT e.customer_id, count(*) AS events, count(DISTINCT session_id) AS sessions,
           any_value(d.active_days) AS active_days,
           coalesce(sum(revenue) FILTER (event_type = 'purchase'), 0) AS revenue,
           any_value(d.purchase_days) AS purchase_days,
           CASE WHEN any_value(d.purchase_days) > 0 THEN any_value(d.purchase_days) - 1 END AS frequency,
           date_diff('day', any_value(d.first_day), any_value(d.last_day)) AS recency
    FROM events e JOIN per_day d USING (customer_id) GROUP BY e.customer_id
    """

    def over(path: str) -> str:
        return sql.format(input=path, columns=columns, arrival=ARRIVAL.isoformat())

    with open(input, "rb") as lines:
        head = [line for _, line in zip(range(WARM_UP_RECORDS), lines, strict=False)]
        records = len(head) + sum(1 for _ in lines)
    with tempfile.TemporaryDirectory() as directory:
        warm_up = Path(directory) / "warm-up.jsonl"
        warm_up.write_bytes(b"".join(head))
        con.sql(over(str(warm_up))).to_arrow_table()
    started, cpu_started = time.perf_counter(), time.process_time()
    table = con.sql(over(input)).to_arrow_table()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    result = {
        "records": records,
        "seconds": seconds,
        "events_per_second": records / seconds,
        "events_per_cpu_second": records / cpu_seconds,
    }
    result["peak_rss_mib"] = _peak_rss_mib()
    if rows_dir:
        rows = {r.pop("customer_id"): r for r in table.to_pylist()}
        result["rows"] = _rows_file(rows, rows_dir, "ceiling")
    return result


def bench_flush_scaling(state_customers: int, changed: int, rounds: int = 5) -> dict[str, Any]:
    """Load a state of ``state_customers``, then time batches touching ``changed`` customers each."""
    from aggregators.customer_state import CustomerState
    from producer.generator import ClickstreamGenerator

    load = _generate(state_customers, state_customers * 6, seed=2)
    with tempfile.TemporaryDirectory() as directory:
        state = CustomerState(SHARD, Path(directory) / "state.journal", options=_worker_state_options())
        next_sequence = 1
        for table in _raw_batches(load, 50_000, next_sequence):
            state.apply(table)
        next_sequence += len(load)
        later = list(ClickstreamGenerator(changed, changed * 4 * rounds, seed=3).events())
        timings = []
        touched = []
        for round_number in range(rounds):
            chunk = later[round_number * changed * 4 : (round_number + 1) * changed * 4]
            (table,) = _raw_batches(chunk, len(chunk), next_sequence)
            next_sequence += len(chunk)
            started = time.perf_counter()
            result = state.apply(table)
            timings.append(time.perf_counter() - started)
            touched.append(result.customer_rows.num_rows)
        customers = state.customer_count()
        state.close()
    return {
        "state_customers": customers,
        "changed": int(statistics.median(touched)),
        "batch_events": changed * 4,
        "median_ms": statistics.median(timings) * 1000,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _state_tables(customers: int, event_ids: int, rng: np.random.Generator) -> dict[str, pa.Table]:
    """Snapshot tables (``CustomerState.export_tables``) of a synthetic state: random owners and values."""
    from aggregators.customer_state import KEPT_FOR_GOOD, RUNNING_COLUMNS

    names = pa.array([f"c-{index:07d}" for index in range(customers)], pa.string())

    def owners(count: int) -> pa.Array:
        return names.take(pa.array(rng.integers(0, customers, count)))

    sessions, days = event_ids // 4, event_ids // 3
    return {
        "customers": pa.table(
            {
                "customer_id": names,
                **{name: pa.array(rng.integers(1, 1_000, customers), pa.int64()) for name in RUNNING_COLUMNS},
            }
        ),
        "customer_sessions": pa.table(
            {
                "customer_id": owners(sessions),
                "session_id": pa.array([f"s-{index:016x}" for index in range(sessions)], pa.string()),
                "arrival_day": pa.array(np.full(sessions, 20_600, dtype=np.int32)),
            }
        ),
        "customer_days": pa.table(
            {
                "customer_id": owners(days),
                "day": pa.array(20_000 + np.arange(days) % 400, pa.int32()),
                "purchase": pa.array(np.arange(days) % 5 == 0),
                "arrival_day": pa.array(
                    np.where(np.arange(days) % 5 == 0, KEPT_FOR_GOOD, 20_600), pa.int32()
                ),
            }
        ),
        "applied_events": pa.table(
            {
                "customer_id": owners(event_ids),
                "id_high": pa.array(rng.integers(0, 2**63, event_ids, dtype=np.uint64)),
                "id_low": pa.array(rng.integers(0, 2**63, event_ids, dtype=np.uint64)),
                "day": pa.array(np.full(event_ids, 20_600, dtype=np.int32)),
            }
        ),
    }


def bench_state_size(customers: int, event_ids: int, seed: int = 5) -> dict[str, Any]:
    """RSS of a shard state holding ``customers`` and ``event_ids`` (built as snapshot tables and imported, as a
    restore does; freed memory is given back to the OS after it, as the shard processor does after a restore), then
    after it applied one 50k-record batch (whose working memory the process keeps for the next). The batch is built
    before the first figure, so that neither counts the benchmark's own input."""
    import gc

    from aggregators.customer_state import CustomerState
    from runtime.memory import release_free_memory

    (batch,) = _raw_batches(_generate(min(customers, 45_000), 50_000, seed=seed)[:50_000], 50_000)
    tables = _state_tables(customers, event_ids, np.random.default_rng(seed))
    state = CustomerState(SHARD)
    started = time.perf_counter()
    state.import_tables(tables)
    load_seconds = time.perf_counter() - started
    tables.clear()
    gc.collect()
    release_free_memory()
    loaded_rss = _current_rss_mib()
    memory = state.memory_bytes()
    started = time.perf_counter()
    state.apply(batch)
    apply_seconds = time.perf_counter() - started
    return {
        "customers": state.customer_count(),
        "event_ids": state.event_id_count(),
        "state_mib": sum(memory.values()) / 2**20,
        "rss_after_load_mib": loaded_rss,
        "rss_after_flush_mib": _current_rss_mib(),
        "load_seconds": load_seconds,
        "apply_seconds": apply_seconds,
    }


class _MemoryS3:
    """Just enough of the S3 client for S3ParquetSink, in memory (we measure our code, not the network)."""

    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions namespace
        class NoSuchKey(Exception):  # noqa: N818 - the name boto3 uses
            pass

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.put_times: dict[str, float] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        self.objects[Key] = Body if isinstance(Body, bytes) else bytes(Body)
        self.put_times.setdefault(Key, time.perf_counter())
        return {"ETag": '"0"'}

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        if Key not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        # with its ETag: the snapshot pointer is replaced only if nobody moved it meanwhile (If-Match)
        return {"Body": io.BytesIO(self.objects[Key]), "ETag": '"0"'}

    def head_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        if Key not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        return {"ContentLength": len(self.objects[Key])}

    def delete_object(self, Bucket: str, Key: str, **_: Any) -> None:
        self.objects.pop(Key, None)

    def delete_objects(self, Bucket: str, Delete: dict[str, Any], **_: Any) -> dict[str, Any]:
        for item in Delete.get("Objects", []):
            self.objects.pop(item["Key"], None)
        return {}

    def get_paginator(self, operation: str) -> Any:
        assert operation == "list_objects_v2"
        objects = self.objects

        class _Pages:
            def paginate(self, Bucket: str, Prefix: str = "", StartAfter: str = "", **_: Any) -> list[Any]:
                keys = sorted(k for k in objects if k.startswith(Prefix) and k > StartAfter)
                return [{"Contents": [{"Key": k, "Size": len(objects[k])} for k in keys]}]

        return _Pages()


def _pipe_line(message: dict[str, Any]) -> str:
    """One message as the daemon writes it to the pipe: JSON, then a newline."""
    return json.dumps(message) + "\n"


class _StampedMessages(io.TextIOBase):
    """The daemon's pipe: hands KCLProcess one line at a time and notes when each processRecords line was read
    (its records counted beforehand: that work is the harness's, not the processor's)."""

    def __init__(self, lines: list[str], last_sequences: list[int | None], record_counts: list[int]) -> None:
        self.lines = lines  # each ended with its newline already, as the pipe hands it over
        self.last_sequences = last_sequences
        self.record_counts = record_counts
        self.position = 0
        self.read_at: list[tuple[float, int, int]] = []  # (time read, last sequence in it, records in it)

    def readline(self, size: int | None = -1) -> str:
        if self.position >= len(self.lines):
            return ""
        line = self.lines[self.position]
        sequence = self.last_sequences[self.position]
        count = self.record_counts[self.position]
        self.position += 1
        if sequence is not None:
            self.read_at.append((time.perf_counter(), sequence, count))
        return line


def _kcl_lines(
    payloads: list[bytes], per_message: int, flush_every: int
) -> tuple[list[str], list[int | None]]:
    """The daemon's messages for one shard's run over ``payloads``, and the last sequence number of each
    processRecords message (None for the others)."""
    from producer.kinesis_put import partition_key_for

    arrival_millis = int(ARRIVAL.timestamp() * 1000)
    lines = [
        _pipe_line(
            {
                "action": "initialize",
                "shardId": SHARD,
                "sequenceNumber": "TRIM_HORIZON",
                "subSequenceNumber": 0,
            }
        )
    ]
    last_sequences: list[int | None] = [None]
    for start in range(0, len(payloads), per_message):
        chunk = payloads[start : start + per_message]
        records = [
            {
                "action": "record",
                "data": base64.b64encode(data).decode(),
                "partitionKey": partition_key_for(data),
                "sequenceNumber": str(start + i + 1),
                "subSequenceNumber": 0,
                "approximateArrivalTimestamp": arrival_millis,
            }
            for i, data in enumerate(chunk)
        ]
        lines.append(_pipe_line({"action": "processRecords", "records": records, "millisBehindLatest": 0}))
        last_sequences.append(start + len(chunk))
        if (start + per_message) % flush_every == 0:
            # the processor checkpoints after each flush and waits for the daemon's answer
            lines.append(
                _pipe_line(
                    {
                        "action": "checkpoint",
                        "sequenceNumber": str(start + len(chunk)),
                        "subSequenceNumber": 0,
                    }
                )
            )
            last_sequences.append(None)
    # at the tip: an empty delivery, 0 ms behind, on which the rest is flushed at once and checkpointed
    lines.append(_pipe_line({"action": "processRecords", "records": [], "millisBehindLatest": 0}))
    last_sequences.append(None)
    if len(payloads) % flush_every:
        lines.append(
            _pipe_line({"action": "checkpoint", "sequenceNumber": str(len(payloads)), "subSequenceNumber": 0})
        )
        last_sequences.append(None)
    lines.append(_pipe_line({"action": "shutdownRequested"}))
    last_sequences.append(None)
    return lines, last_sequences


@dataclass
class _KCLRun:
    """One record processor's run over the daemon's messages, and what it left behind."""

    settings: Settings
    s3: _MemoryS3
    messages: _StampedMessages
    output: io.StringIO
    seconds: float
    cpu_seconds: float


def _run_kcl(lines: list[str], last_sequences: list[int | None], flush_every: int) -> _KCLRun:
    """A fresh RecordProcessor, on a fresh state directory and S3 stand-in, fed ``lines`` as the daemon would."""
    from consumer.kcl_messages import ColumnarKCLProcess
    from consumer.record_processor import RecordProcessor
    from runtime.settings import load_settings

    with tempfile.TemporaryDirectory() as directory:
        settings = load_settings(
            state_dir=Path(directory),
            flush_max_records=flush_every,
            flush_max_seconds=3600,
            # the harness cannot let seconds pass at the tip: the rest is flushed on the empty delivery there
            flush_caught_up_min_seconds=0,
            stuck_shard_seconds=7200,
            bucket="bench-bucket",
        )
        s3 = _MemoryS3()
        processor = RecordProcessor(settings, s3_client=s3, parent_lookup=lambda _shard: [])
        record_counts = [line.count('"action": "record"') for line in lines]
        messages = _StampedMessages(lines, last_sequences, record_counts)
        output = io.StringIO()
        started, cpu_started = time.perf_counter(), time.process_time()
        ColumnarKCLProcess(processor, messages, output, sys.stderr).run()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return _KCLRun(settings, s3, messages, output, seconds, cpu_seconds)


def bench_processor(
    input: str | None = None,
    per_message: int = 1_000,
    events: int = 0,
    customers: int = 0,
    warm_up: bool = True,
) -> dict[str, Any]:
    """KCL protocol lines -> KCLProcess -> RecordProcessor -> Parquet in an in-memory S3."""
    started_import = time.perf_counter()
    from consumer.record_processor import keep_pandas_out

    keep_pandas_out()  # as the processor's main() does
    for module in ("consumer.kcl_messages", "producer.kinesis_put", "runtime.settings"):
        importlib.import_module(module)  # timed with the rest

    import_seconds = time.perf_counter() - started_import
    payloads = _read(input) if input else _generate(customers, events, seed=4)
    flush_every = 50_000
    if warm_up:
        _run_kcl(*_kcl_lines(payloads[:WARM_UP_RECORDS], per_message, flush_every), flush_every)
    lines, last_sequences = _kcl_lines(payloads, per_message, flush_every)
    del payloads
    run = _run_kcl(lines, last_sequences, flush_every)
    s3, messages, seconds, cpu_seconds = run.s3, run.messages, run.seconds, run.cpu_seconds
    records = sum(count for _, _, count in messages.read_at)
    from schemas.control import CommitRecord

    layout = run.settings.layout
    durable = sorted(
        (s3.put_times[key], int(CommitRecord.from_json(s3.objects[key]).last.sequence_number))
        for key in s3.objects
        if key.startswith(layout.all_commits_prefix)
    )
    freshness: list[float] = []
    for read_at, last_sequence, count in messages.read_at:
        done = next((at for at, sequence in durable if sequence >= last_sequence), None)
        if done is not None:
            freshness.extend([done - read_at] * count)
    data_files = {key: len(body) for key, body in s3.objects.items() if layout.flush_name_of(key) is not None}
    import pyarrow.parquet as pq

    rows_per_file = [pq.ParquetFile(io.BytesIO(s3.objects[key])).metadata.num_rows for key in data_files]
    quantiles = statistics.quantiles(freshness, n=100) if len(freshness) > 1 else [0.0] * 99
    return {
        "records": records,
        "seconds": seconds,
        "events_per_second": records / seconds,
        "events_per_cpu_second": records / cpu_seconds,
        "files": len(data_files),
        "rows_per_file": statistics.mean(rows_per_file) if rows_per_file else 0,
        "bytes_per_file": statistics.mean(data_files.values()) if data_files else 0,
        "commits": len(durable),
        "checkpoints": run.output.getvalue().count('"action": "checkpoint"'),
        "freshness_p50_s": quantiles[49],
        "freshness_p99_s": quantiles[98],
        "import_seconds": import_seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "anonymous_mib": _anonymous_mib(),
        # pyarrow imports pandas whenever it is installed (the dev environment has it for pymc-marketing; the
        # container image does not): reported so the figure can be read for the image
        "pandas_loaded": "pandas" in sys.modules,
    }


def bench_idle_processor() -> dict[str, Any]:
    """RSS of a shard processor process at small state: imports plus a state with a few hundred customers."""
    result = bench_processor(events=5_000, customers=300, per_message=500, warm_up=False)
    keys = ("peak_rss_mib", "anonymous_mib", "pandas_loaded", "import_seconds")
    return {key: result[key] for key in keys}


# ---------------------------------------------------------------------------------------------------- driver


def _child(name: str, **arguments: Any) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench", "--child", name, "--arguments", json.dumps(arguments)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _compare(core_rows: str, other_rows: str, name: str) -> int:
    """Customers whose compared columns differ between the core and a peer (0 expected)."""
    core = json.loads(Path(core_rows).read_text(encoding="utf-8"))
    other = json.loads(Path(other_rows).read_text(encoding="utf-8"))
    differing = set(core) ^ set(other)
    for customer in set(core) & set(other):
        for column in COMPARED:
            a, b = core[customer][column], other[customer][column]
            if a is None or b is None:
                if a != b:
                    differing.add(customer)
            elif abs(float(a) - float(b)) > 1e-6:
                differing.add(customer)
    if differing:
        print(f"WARNING: {name} differs from the core for {len(differing)} customers", file=sys.stderr)
        for customer in sorted(differing)[:3]:
            mine, theirs = core.get(customer, {}), other.get(customer, {})
            columns = [c for c in COMPARED if mine.get(c) != theirs.get(c)]
            print(
                f"  {customer}: "
                + ", ".join(f"{c} core={mine.get(c)} {name}={theirs.get(c)}" for c in columns),
                file=sys.stderr,
            )
    return len(differing)


#: The runs compared side by side, each in its own process, one after the other in every round.
_PEERS: Final = ("core", "core10k", "naive", "ceiling", "processor")


def _peer_round(input_path: str, rows_dir: str | None) -> dict[str, dict[str, Any]]:
    """One run of every peer on the input (``rows_dir``: where the core, naive and ceiling write their rows)."""
    return {
        "core": _child("core", input=input_path, batch=50_000, rows_dir=rows_dir),
        "core10k": _child("core", input=input_path, batch=10_000),
        "naive": _child("naive", input=input_path, rows_dir=rows_dir),
        "ceiling": _child("ceiling", input=input_path, rows_dir=rows_dir),
        "processor": _child("processor", input=input_path),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events per CPU-second (the lower middle one of an even count)."""
    return sorted(runs, key=lambda run: run["events_per_cpu_second"])[(len(runs) - 1) // 2]


def median_ratio(rounds: list[dict[str, dict[str, Any]]], peer: str, other: str, key: str) -> float:
    """The median over rounds of ``peer``'s ``key`` over ``other``'s in the same round: on a machine whose speed
    drifts, a ratio taken within a round holds where figures from different moments do not."""
    return float(statistics.median(round_[peer][key] / round_[other][key] for round_ in rounds))


def run(input_path: str, quick: bool, rounds: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as rows_dir:
        peer_rounds = [_peer_round(input_path, rows_dir if number == 0 else None) for number in range(rounds)]
        first = peer_rounds[0]
        naive_mismatches = _compare(first["core"]["rows"], first["naive"]["rows"], "naive peer")
        ceiling_mismatches = _compare(first["core"]["rows"], first["ceiling"]["rows"], "DuckDB ceiling")
        core, core10k, naive, ceiling, processor = (
            median_run([round_[peer] for round_ in peer_rounds]) for peer in _PEERS
        )
        idle = _child("idle")
    flush = [
        _child("flush", state_customers=state_customers, changed=changed, rounds=3 if quick else 5)
        for state_customers in ((2_000, 20_000) if quick else (5_000, 50_000))
        for changed in ((100, 1_000) if quick else (100, 1_000, 5_000))
    ]
    state_size = _child(
        "state_size",
        customers=200_000 if quick else 1_000_000,
        event_ids=2_000_000 if quick else 10_000_000,
    )
    return {
        "records": core["records"],
        "core_events_per_s": core["events_per_second"],
        "core_10k_batches_events_per_s": core10k["events_per_second"],
        "processor_events_per_s": processor["events_per_second"],
        "naive_events_per_s": naive["events_per_second"],
        "ceiling_events_per_s": ceiling["events_per_second"],
        "rounds": rounds,
        "events_per_cpu_s_by_round": {
            peer: [round_[peer]["events_per_cpu_second"] for round_ in peer_rounds] for peer in _PEERS
        },
        "core_over_naive": median_ratio(peer_rounds, "core", "naive", "events_per_second"),
        "core_over_ceiling": median_ratio(peer_rounds, "core", "ceiling", "events_per_second"),
        # events per CPU-second of the run's own process: on a shared machine, waiting for a core is not counted
        "core_events_per_cpu_s": core["events_per_cpu_second"],
        # a difference of two timings, noisy: the median over the rounds (may come out below 0 on a noisy machine)
        "core_start_cpu_ms": statistics.median(round_["core"]["start_cpu_ms"] for round_ in peer_rounds),
        "core_10k_batches_events_per_cpu_s": core10k["events_per_cpu_second"],
        "processor_events_per_cpu_s": processor["events_per_cpu_second"],
        "naive_events_per_cpu_s": naive["events_per_cpu_second"],
        "ceiling_events_per_cpu_s": ceiling["events_per_cpu_second"],
        "core_over_naive_cpu": median_ratio(peer_rounds, "core", "naive", "events_per_cpu_second"),
        "core_over_ceiling_cpu": median_ratio(peer_rounds, "core", "ceiling", "events_per_cpu_second"),
        "naive_rows_differing": naive_mismatches,
        "ceiling_rows_differing": ceiling_mismatches,
        "peak_rss_mib": core["peak_rss_mib"],
        "peak_rss_mib_by_run": {
            "core": core["peak_rss_mib"],
            "naive": naive["peak_rss_mib"],
            "ceiling": ceiling["peak_rss_mib"],
            "processor": processor["peak_rss_mib"],
            "processor_small_state": idle["peak_rss_mib"],
        },
        "customers": core["customers"],
        "event_ids": core["event_ids"],
        "state_bytes_per_customer": core["bytes_per_customer"],
        "state_bytes_per_event_id": core["bytes_per_event_id"],
        "flush_ms_by_customers_changed": flush,
        "large_state": state_size,
        "freshness_p50_s": processor["freshness_p50_s"],
        "freshness_p99_s": processor["freshness_p99_s"],
        "files": processor["files"],
        "rows_per_file": processor["rows_per_file"],
        "bytes_per_file": processor["bytes_per_file"],
        "processor_import_seconds": idle["import_seconds"],
        "processor_small_state_anonymous_mib": idle["anonymous_mib"],
        "processor_small_state_pandas_loaded": idle["pandas_loaded"],
    }


def _print_table(result: dict[str, Any], input_label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=130)
    console.print(f"[bold]clickstream-rfm benchmarks[/] on {input_label}: {result['records']:,} records")
    throughput = Table(
        title=f"Throughput, one core (each row in its own process; the median of {result['rounds']} rounds, "
        "each round running every row in turn)"
    )
    for column in ("run", "events/s", "events/CPU-s", "vs core (CPU)", "peak RSS MiB"):
        throughput.add_column(column, justify="right")
    rss = result["peak_rss_mib_by_run"]
    core = result["core_events_per_cpu_s"]
    for label, key, rss_key in (
        ("core, 50k-record batches", "core_events_per_s", "core"),
        ("core, 10k-record batches", "core_10k_batches_events_per_s", None),
        ("record-processor path (KCL protocol -> S3 stand-in)", "processor_events_per_s", "processor"),
        ("naive per-record Python peer", "naive_events_per_s", "naive"),
        ("DuckDB batch ceiling (one GROUP BY)", "ceiling_events_per_s", "ceiling"),
    ):
        cpu_key = key.replace("_events_per_s", "_events_per_cpu_s")
        throughput.add_row(
            label,
            f"{result[key]:,.0f}",
            f"{result[cpu_key]:,.0f}",
            f"{core / result[cpu_key]:.2f}x",
            f"{rss[rss_key]:,.0f}" if rss_key else "",
        )
    console.print(throughput)
    by_round = result["events_per_cpu_s_by_round"]
    console.print(
        "events per CPU-second by round: "
        + "; ".join(
            f"{peer} " + ", ".join(f"{value:,.0f}" for value in values) for peer, values in by_round.items()
        )
    )
    console.print(
        f"core / naive = {result['core_over_naive']:.2f}x, core / ceiling = {result['core_over_ceiling']:.2f}x "
        f"(per CPU-second: {result['core_over_naive_cpu']:.2f}x, {result['core_over_ceiling_cpu']:.2f}x; "
        "each the median of the rounds' own ratios); "
        f"rows differing from the core: naive {result['naive_rows_differing']}, "
        f"ceiling {result['ceiling_rows_differing']}"
    )
    console.print(
        f"timed warm: every run first processed the input's first {WARM_UP_RECORDS:,} records on a throwaway "
        "instance, untimed; what those records cost a fresh core process beyond what they cost warm, paid once "
        f"per shard processor: {result['core_start_cpu_ms']:,.0f} CPU-ms (the median of the rounds')"
    )
    console.print(
        f"state: {result['customers']:,} customers, {result['event_ids']:,} event ids; "
        f"{result['state_bytes_per_customer']:,.0f} bytes per customer, "
        f"{result['state_bytes_per_event_id']:,.1f} bytes per event id"
    )
    console.print(
        f"processor: freshness p50 {result['freshness_p50_s']:.2f} s, p99 {result['freshness_p99_s']:.2f} s "
        f"(message read -> commit record); {result['files']:,} data files, "
        f"{result['rows_per_file']:,.0f} rows and {result['bytes_per_file'] / 1024:,.0f} KiB per file; "
        f"a shard processor at small state peaks at {rss['processor_small_state']:,.0f} MiB RSS, of which "
        f"{result['processor_small_state_anonymous_mib']:,.0f} MiB its own heap (the rest: shared libraries, "
        f"mapped once per host{'; pandas loaded' if result['processor_small_state_pandas_loaded'] else ''}) "
        f"(imports {result['processor_import_seconds']:.2f} s)"
    )
    flush = Table(
        title="Apply time of one batch by customers changed (flush cost follows the batch, not history)"
    )
    for column in ("customers in state", "customers changed", "batch events", "median apply ms"):
        flush.add_column(column, justify="right")
    for row in result["flush_ms_by_customers_changed"]:
        flush.add_row(
            f"{row['state_customers']:,}",
            f"{row['changed']:,}",
            f"{row['batch_events']:,}",
            f"{row['median_ms']:.1f}",
        )
    console.print(flush)
    large = result["large_state"]
    console.print(
        f"a state of {large['customers']:,} customers and {large['event_ids']:,} event ids (built as a restore "
        f"would load it): {large['state_mib']:,.0f} MiB of state, {large['rss_after_load_mib']:,.0f} MiB RSS at rest, "
        f"{large['rss_after_flush_mib']:,.0f} MiB after applying a 50k-record batch ({large['apply_seconds']:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", help="JSONL file, one record per line (default: generate one)")
    parser.add_argument("--events", type=int, help="events to generate without --input (default 600,000)")
    parser.add_argument(
        "--customers", type=int, help="customers to generate without --input (default 45,000)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller, faster run: 200,000 events of 15,384 customers (--events and --customers not used)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of the throughput runs, each peer once per round (default 3; 1 with --quick); the figures "
        "are the median round's, the ratios the median of the rounds' own",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--arguments", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        functions = {
            "core": bench_core,
            "naive": bench_naive,
            "ceiling": bench_ceiling,
            "flush": bench_flush_scaling,
            "processor": bench_processor,
            "idle": bench_idle_processor,
            "state_size": bench_state_size,
        }
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(functions[options.child](**json.loads(options.arguments or "{}"))))
        return

    if options.rounds is not None and options.rounds < 1:
        parser.error("--rounds must be at least 1")
    if options.input is not None and not Path(options.input).is_file():
        parser.error(f"--input {options.input}: no such file")
    from producer.generator import MAX_CUSTOMERS, MAX_EVENTS

    if options.events is not None and not 1 <= options.events <= MAX_EVENTS:
        parser.error(f"--events must be within 1 and {MAX_EVENTS:,}")
    if options.customers is not None and not 1 <= options.customers <= MAX_CUSTOMERS:
        parser.error(f"--customers must be within 1 and {MAX_CUSTOMERS:,}")
    if options.quick and (options.events is not None or options.customers is not None):
        parser.error("--quick sets its own size: leave out --events and --customers")
    rounds = options.rounds or (1 if options.quick else 3)
    with tempfile.TemporaryDirectory() as directory:
        input_path = options.input
        label = options.input or ""
        if input_path is None:
            events = 200_000 if options.quick else options.events or 600_000
            customers = max(1_000, events // 13) if options.quick else options.customers or 45_000
            input_path = str(Path(directory) / "input.jsonl")
            if not options.json:
                print(f"generating {events:,} events for {customers:,} customers ...", file=sys.stderr)
            payloads = _generate(customers, events, seed=1, malformed_rate=0.002)
            Path(input_path).write_bytes(b"\n".join(payloads) + b"\n")
            del payloads
            label = f"generated input ({customers:,} customers, 1% duplicates, 0.2% malformed)"
        result = run(os.path.abspath(input_path), options.quick, rounds)
    if options.json:
        print(json.dumps(result))
    else:
        _print_table(result, label)


if __name__ == "__main__":
    main()
