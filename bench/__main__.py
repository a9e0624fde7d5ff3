"""``make bench``: throughput and memory of the aggregation core and of the record-processor path.

Each measurement runs in its own subprocess so its peak RSS is its own. Results are printed as a table; nothing
here is asserted (benchmarks measure, tests assert).

- core: events/s of CustomerState.apply (decode + validate + de-duplicate + aggregate) over >= 1M generated events
  in batches of the default flush size, with DuckDB on one thread ("one core") and on all cores;
- flush scaling: the time to apply a batch that touches a fixed number of customers, with a small and a large
  state, to show that the cost follows the customers changed and not all customers ever seen;
- processor: events/s through amazon_kclpy's KCLProcess, fed MultiLangDaemon protocol messages (JSON lines with
  base64 data), through RecordProcessor, flushing Parquet to an in-memory S3 stand-in.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas import RAW_RECORD_SCHEMA, UTC_MICROS

ARRIVAL = datetime(2026, 6, 1, tzinfo=UTC)


def _generate(customers: int, events: int, seed: int) -> list[bytes]:
    from producer.generator import ClickstreamGenerator

    return list(ClickstreamGenerator(customers, events, seed).events())


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
                    "shard_id": pa.array(["shardId-000000000000"] * count),
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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_core(events: int, customers: int, batch: int, threads: int | None) -> dict[str, Any]:
    from aggregators.customer_state import CustomerState

    batches = _raw_batches(_generate(customers, events, seed=1), batch)
    with tempfile.TemporaryDirectory() as directory:
        state = CustomerState("shardId-000000000000", Path(directory) / "state.duckdb")
        if threads:
            state.con.execute(f"SET threads = {threads}")
        started = time.perf_counter()
        applied = 0
        for table in batches:
            applied += state.apply(table).events.num_rows
        seconds = time.perf_counter() - started
        customers_seen = state.customer_count()
        state.close()
    return {
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds,
        "applied": applied,
        "customers": customers_seen,
        "peak_rss_mib": _peak_rss_mib(),
    }


def bench_flush_scaling(state_customers: int, changed: int, threads: int) -> dict[str, Any]:
    """Load a state of ``state_customers``, then time batches touching ``changed`` customers each."""
    from aggregators.customer_state import CustomerState
    from producer.generator import ClickstreamGenerator

    load = _generate(state_customers, state_customers * 6, seed=2)
    state = CustomerState("shardId-000000000000")
    state.con.execute(f"SET threads = {threads}")
    next_sequence = 1
    for table in _raw_batches(load, 50_000, next_sequence):
        state.apply(table)
    next_sequence += len(load)
    # later traffic from `changed` customers (ids within the loaded range; fresh event ids)
    later = [data for data in ClickstreamGenerator(changed, changed * 20, seed=3).events()]
    timings = []
    for round_number in range(5):
        chunk = later[round_number * changed * 4 : (round_number + 1) * changed * 4]
        (table,) = _raw_batches(chunk, len(chunk), next_sequence)
        next_sequence += len(chunk)
        started = time.perf_counter()
        result = state.apply(table)
        timings.append(time.perf_counter() - started)
        assert result.customer_rows.num_rows <= changed
    return {
        "state_customers": state.customer_count(),
        "changed": changed,
        "batch_events": changed * 4,
        "median_ms": statistics.median(timings) * 1000,
        "peak_rss_mib": _peak_rss_mib(),
    }


class _MemoryS3:
    """Just enough of the S3 client for S3ParquetSink, in memory (we measure our code, not the network)."""

    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions namespace
        class NoSuchKey(Exception):  # noqa: N818 - the name boto3 uses
            pass

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[Key] = Body

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        return {"Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, Bucket: str, Key: str) -> None:
        self.objects.pop(Key, None)

    def get_paginator(self, operation: str) -> Any:
        assert operation == "list_objects_v2"
        objects = self.objects

        class _Pages:
            def paginate(self, Bucket: str, Prefix: str = "", StartAfter: str = "") -> list[dict[str, Any]]:
                keys = sorted(k for k in objects if k.startswith(Prefix) and k > StartAfter)
                return [{"Contents": [{"Key": k, "Size": len(objects[k])} for k in keys]}]

        return _Pages()


def bench_processor(events: int, customers: int, per_message: int) -> dict[str, Any]:
    """KCL protocol lines -> KCLProcess -> RecordProcessor -> Parquet in an in-memory S3."""
    from amazon_kclpy import kcl

    from consumer.record_processor import RecordProcessor
    from runtime.settings import load_settings

    payloads = _generate(customers, events, seed=4)
    arrival_millis = int(ARRIVAL.timestamp() * 1000)
    lines = [
        json.dumps(
            {
                "action": "initialize",
                "shardId": "shardId-000000000000",
                "sequenceNumber": "TRIM_HORIZON",
                "subSequenceNumber": 0,
            }
        )
    ]
    from producer.kinesis_put import partition_key_for

    for start in range(0, len(payloads), per_message):
        records = [
            {
                "action": "record",
                "data": base64.b64encode(data).decode(),
                "partitionKey": partition_key_for(data),
                "sequenceNumber": str(start + i + 1),
                "subSequenceNumber": 0,
                "approximateArrivalTimestamp": arrival_millis,
            }
            for i, data in enumerate(payloads[start : start + per_message])
        ]
        lines.append(json.dumps({"action": "processRecords", "records": records, "millisBehindLatest": 0}))
        if (start + per_message) % 50_000 == 0:
            # the processor checkpoints after each flush and waits for the daemon's answer
            lines.append(
                json.dumps(
                    {
                        "action": "checkpoint",
                        "sequenceNumber": str(start + per_message),
                        "subSequenceNumber": 0,
                        "error": None,
                    }
                )
            )
    lines.append(json.dumps({"action": "shutdownRequested"}))
    if len(payloads) % 50_000:  # the rest is flushed and checkpointed on shutdown
        lines.append(
            json.dumps(
                {
                    "action": "checkpoint",
                    "sequenceNumber": str(len(payloads)),
                    "subSequenceNumber": 0,
                    "error": None,
                }
            )
        )
    with tempfile.TemporaryDirectory() as directory:
        settings = load_settings(
            state_dir=Path(directory),
            flush_max_records=50_000,
            flush_max_seconds=3600,
            stuck_shard_seconds=7200,
            bucket="bench-bucket",
        )
        s3 = _MemoryS3()
        processor = RecordProcessor(settings, s3_client=s3, parent_lookup=lambda _shard: [])
        messages = Path(directory) / "messages.jsonl"
        messages.write_text("\n".join(lines) + "\n", encoding="utf-8")
        del lines, payloads  # the daemon's messages come from a pipe, not from our memory
        output = io.StringIO()
        with messages.open(encoding="utf-8") as input_file:
            started = time.perf_counter()
            kcl.KCLProcess(processor, input_file=input_file, output_file=output, error_file=sys.stderr).run()
            seconds = time.perf_counter() - started
    checkpoints = output.getvalue().count('"action": "checkpoint"')
    return {
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds,
        "objects": len(s3.objects),
        "checkpoints": checkpoints,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _child(name: str, **arguments: Any) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench", "--child", name, "--arguments", json.dumps(arguments)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the core benchmark")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (200k events)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--arguments", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        functions = {"core": bench_core, "flush": bench_flush_scaling, "processor": bench_processor}
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(functions[options.child](**json.loads(options.arguments))))
        return

    from rich.console import Console
    from rich.table import Table

    events = 200_000 if options.quick else options.events
    console = Console()
    if not console.is_terminal:
        console = Console(width=130)
    console.print(f"[bold]clickstream-rfm benchmarks[/] ({events:,} events; each row in its own process)")

    core = Table(title="Aggregation core: CustomerState.apply (decode + validate + dedupe + aggregate)")
    for column in ("DuckDB threads", "events", "batch", "seconds", "events/s", "customers", "peak RSS MiB"):
        core.add_column(column, justify="right")
    for threads in (1, None):
        console.print(f"core, threads={threads or 'all'} ...")
        result = _child(
            "core", events=events, customers=max(1000, events // 50), batch=50_000, threads=threads
        )
        core.add_row(
            str(threads or "all"),
            f"{result['events']:,}",
            "50,000",
            f"{result['seconds']:.1f}",
            f"{result['events_per_second']:,.0f}",
            f"{result['customers']:,}",
            f"{result['peak_rss_mib']:,.0f}",
        )
    console.print(core)

    flush = Table(title="Flush cost follows customers changed, not customers ever seen (1 DuckDB thread)")
    for column in (
        "customers in state",
        "customers changed",
        "batch events",
        "median apply ms",
        "peak RSS MiB",
    ):
        flush.add_column(column, justify="right")
    for state_customers in (5_000, 50_000) if options.quick else (10_000, 200_000):
        console.print(f"flush scaling, state of {state_customers:,} customers ...")
        result = _child("flush", state_customers=state_customers, changed=500, threads=1)
        flush.add_row(
            f"{result['state_customers']:,}",
            f"{result['changed']:,}",
            f"{result['batch_events']:,}",
            f"{result['median_ms']:.1f}",
            f"{result['peak_rss_mib']:,.0f}",
        )
    console.print(flush)

    processor = Table(
        title="Record-processor path: KCL protocol messages -> KCLProcess -> flush to in-memory S3"
    )
    for column in (
        "events",
        "records/message",
        "seconds",
        "events/s",
        "objects",
        "checkpoints",
        "peak RSS MiB",
    ):
        processor.add_column(column, justify="right")
    console.print("record processor ...")
    result = _child("processor", events=min(events, 300_000), customers=5_000, per_message=1_000)
    processor.add_row(
        f"{result['events']:,}",
        "1,000",
        f"{result['seconds']:.1f}",
        f"{result['events_per_second']:,.0f}",
        f"{result['objects']:,}",
        str(result["checkpoints"]),
        f"{result['peak_rss_mib']:,.0f}",
    )
    console.print(processor)


if __name__ == "__main__":
    main()
