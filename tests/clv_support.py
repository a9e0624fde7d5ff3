"""Worker output in the new commit-record format, made by the real aggregation core, for the scoring tests.

``worker_bucket`` routes generated events to shards by partition key, applies them in batches with ``CustomerState``
and lays each batch out as the worker does (``schemas.layout`` keys, Parquet data files, then a
``schemas.control.CommitRecord`` with freshness naming them), so ``clickstream score`` and ``clickstream report`` can
be tested on S3 content as the worker writes it, without a KCL run.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggregators.customer_state import CustomerState
from producer.generator import DEFAULT_START, ClickstreamGenerator
from schemas import RAW_RECORD_SCHEMA
from schemas.control import CommitRecord, Freshness
from schemas.layout import FlushName, OutputLayout
from schemas.positions import Position

SHARDS = ("shardId-000000000000", "shardId-000000000001")
ARRIVAL_DELAY = timedelta(seconds=2)


def shard_of(partition_key: str) -> str:
    return SHARDS[int(hashlib.md5(partition_key.encode()).hexdigest(), 16) * len(SHARDS) >> 128]


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class WorkerBucket:
    objects: dict[str, bytes]
    generator: ClickstreamGenerator
    layout: OutputLayout

    def write_to(self, s3: object, bucket: str) -> None:
        for key, body in self.objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)  # type: ignore[attr-defined]


def worker_bucket(
    *,
    customers: int,
    events: int,
    seed: int,
    prefix: str = "rfm",
    batches: int = 5,
    malformed_rate: float = 0.01,
    days: int = 60,
) -> WorkerBucket:
    layout = OutputLayout(prefix)
    generator = ClickstreamGenerator(customers, events, seed, days=days, malformed_rate=malformed_rate)
    per_shard: dict[str, list[tuple[str, datetime, bytes]]] = {shard: [] for shard in SHARDS}
    arrival = DEFAULT_START
    for label, data in generator.records():
        if label == "valid" or label == "duplicate":
            document = json.loads(data)
            customer = str(document["customer_id"])
            arrival = datetime.fromisoformat(document["event_time"].replace("Z", "+00:00")) + ARRIVAL_DELAY
        else:
            customer = "c-000001"  # a malformed record: it arrives with the previous one and is rejected
        per_shard[shard_of(customer)].append((customer, arrival, data))
    objects: dict[str, bytes] = {}
    for shard, records in per_shard.items():
        records.sort(key=lambda record: record[1])
        state = CustomerState(shard)
        size = -(-len(records) // batches)
        previous: Position | None = None
        for number, start in enumerate(range(0, len(records), size)):
            batch = records[start : start + size]
            sequences = [str(1000 + start + i) for i in range(len(batch))]
            raw = pa.table(
                {
                    "shard_id": [shard] * len(batch),
                    "sequence_number": sequences,
                    "sub_sequence_number": [0] * len(batch),
                    "partition_key": [customer for customer, _, _ in batch],
                    "approximate_arrival_at": [arrival for _, arrival, _ in batch],
                    "data": [data for _, _, data in batch],
                },
                schema=RAW_RECORD_SCHEMA,
            )
            first, last = Position(sequences[0]), Position(sequences[-1])
            name = FlushName(shard, first, last, f"attempt{number}")
            arrivals = [arrival for _, arrival, _ in batch]
            committed_at = max(arrivals) + timedelta(seconds=5 + number)
            with state.staged(raw) as applied:
                files: dict[str, list[str]] = {}
                sizes: dict[str, int] = {}
                for output, table in (
                    ("events", applied.events),
                    ("customer_aggregates", applied.customer_rows),
                    ("errors", applied.rejects),
                ):
                    if table.num_rows:
                        key = layout.data_key(output, arrivals[0].date(), name)  # type: ignore[arg-type]
                        objects[key] = parquet(table)
                        files[output] = [key]
                        sizes[key] = len(objects[key])
                delays = np.array([(committed_at - arrival).total_seconds() for arrival in arrivals])
                newest = max(arrival - ARRIVAL_DELAY for arrival in arrivals)
                record = CommitRecord(
                    shard_id=shard,
                    attempt_id=name.attempt_id,
                    worker_id="test-worker",
                    previous=previous,
                    first=first,
                    last=last,
                    records_in=applied.records_in,
                    records_skipped=applied.records_skipped,
                    accepted=applied.accepted,
                    duplicates=applied.duplicates,
                    rejected=applied.rejects.num_rows,
                    customers_changed=applied.customer_rows.num_rows,
                    files=files,
                    file_bytes=sizes,
                    bytes_written=sum(sizes.values()),
                    committed_at=committed_at,
                    oldest_event_at=min(arrival - ARRIVAL_DELAY for arrival in arrivals),
                    newest_event_at=newest,
                    freshness=Freshness(
                        arrival_to_durable_p50=float(np.percentile(delays, 50)),
                        arrival_to_durable_p99=float(np.percentile(delays, 99)),
                        arrival_to_durable_max=float(delays.max()),
                        newest_event_age=(committed_at - newest).total_seconds(),
                    ),
                )
                objects[layout.commit_key(shard, previous)] = record.to_json()
            previous = last
        state.close()
    return WorkerBucket(objects, generator, layout)
