"""Make one flush durable on S3: Parquet data files, then a commit record. Thin adapter; no aggregation here.

Object names are a pure function of (shard, first sequence, last sequence) so a retried flush overwrites instead of
duplicating. An *intent* object, written before any data file, lists the keys a flush is about to write; if the
process dies before the commit record exists, the next owner of the shard deletes those orphans before replaying
(see ``discard_uncommitted``).
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aggregators.customer_state import AppliedBatch
from runtime.settings import Settings
from schemas.control import CommitRecord
from schemas.layout import OutputLayout
from schemas.positions import Position

log = logging.getLogger(__name__)

SEQUENCE_DIGITS = 56  # zero-padded so object names sort in stream order


@dataclass(frozen=True, slots=True)
class FlushRange:
    """The records a flush covers, inclusive, within one shard."""

    shard_id: str
    first: Position
    last: Position

    @property
    def stem(self) -> str:
        return (
            f"{self.shard_id}-{int(self.first.sequence_number):0{SEQUENCE_DIGITS}d}-{self.first.sub_sequence_number}"
            f"-{int(self.last.sequence_number):0{SEQUENCE_DIGITS}d}-{self.last.sub_sequence_number}"
        )


@dataclass(slots=True)
class FlushManifest:
    """The commit record of one flush: what was written and what it counted."""

    shard_id: str
    first_sequence: str
    first_sub_sequence: int
    last_sequence: str
    last_sub_sequence: int
    records_in: int
    records_skipped: int
    accepted: int
    duplicates: int
    rejected: int
    customers_changed: int
    files: dict[str, list[str]] = field(default_factory=dict)
    bytes_written: int = 0


class S3ParquetSink:
    """Writes the outputs of an applied batch under ``<prefix>/events|customer_aggregates|errors/``."""

    def __init__(self, s3_client: Any, settings: Settings) -> None:
        self.s3 = s3_client
        self.settings = settings
        self.bucket = settings.bucket
        self._encryption: dict[str, str] = {"ServerSideEncryption": settings.sse}
        if settings.sse == "aws:kms" and settings.sse_kms_key_id:
            self._encryption["SSEKMSKeyId"] = settings.sse_kms_key_id

    # ------------------------------------------------------------------ keys
    def intent_key(self, shard_id: str) -> str:
        return f"{self.settings.output_prefix('_control')}intents/{shard_id}.json"

    def commit_key(self, flush: FlushRange) -> str:
        return f"{self.settings.output_prefix('_control')}commits/{flush.shard_id}/{flush.stem}.json"

    def planned_keys(self, flush: FlushRange, applied: AppliedBatch) -> dict[str, list[str]]:
        """The data object keys this flush writes, by output."""
        keys: dict[str, list[str]] = {"events": [], "customer_aggregates": [], "errors": []}
        for partition, _ in _split_by_hour(applied.events):
            keys["events"].append(f"{self.settings.output_prefix('events')}{partition}/{flush.stem}.parquet")
        if applied.customer_rows.num_rows:
            as_of = applied.customer_rows.column("as_of")[0].as_py()
            keys["customer_aggregates"].append(
                f"{self.settings.output_prefix('customer_aggregates')}as_of_date={as_of:%Y-%m-%d}/{flush.stem}.parquet"
            )
        if applied.rejects.num_rows:
            arrival = pc.min(applied.rejects.column("approximate_arrival_at")).as_py()
            keys["errors"].append(
                f"{self.settings.output_prefix('errors')}arrival_date={arrival:%Y-%m-%d}/{flush.stem}.parquet"
            )
        return keys

    # ------------------------------------------------------------------ the commit order (steps 2-4)
    def write(self, flush: FlushRange, applied: AppliedBatch) -> FlushManifest:
        """Intent, then data files, then the commit record. Raises on any failure (nothing is committed)."""
        keys = self.planned_keys(flush, applied)
        self.put_json(self.intent_key(flush.shard_id), {"range": flush.stem, "keys": keys})
        written = 0
        for (_, part), key in zip(_split_by_hour(applied.events), keys["events"], strict=True):
            written += self.put_parquet(key, part)
        for key in keys["customer_aggregates"]:
            written += self.put_parquet(key, applied.customer_rows)
        for key in keys["errors"]:
            written += self.put_parquet(key, applied.rejects)
        manifest = FlushManifest(
            shard_id=flush.shard_id,
            first_sequence=flush.first.sequence_number,
            first_sub_sequence=flush.first.sub_sequence_number,
            last_sequence=flush.last.sequence_number,
            last_sub_sequence=flush.last.sub_sequence_number,
            records_in=applied.records_in,
            records_skipped=applied.records_skipped,
            accepted=applied.accepted,
            duplicates=applied.duplicates,
            rejected=applied.rejects.num_rows,
            customers_changed=applied.customer_rows.num_rows,
            files=keys,
            bytes_written=written,
        )
        self.put_json(self.commit_key(flush), asdict(manifest))
        return manifest

    def uncommitted_files(self, shard_id: str) -> list[str]:
        """Data files named by the shard's intent when its commit record does not exist (a flush that died)."""
        intent = self.get_json(self.intent_key(shard_id))
        if intent is None:
            return []
        commit_key = f"{self.settings.output_prefix('_control')}commits/{shard_id}/{intent['range']}.json"
        if self.get_json(commit_key) is not None:
            return []
        return [key for keys in intent["keys"].values() for key in keys]

    def discard_uncommitted(self, shard_id: str) -> int:
        """Delete data files of a flush that wrote its intent but never its commit record. Returns files deleted."""
        orphans = self.uncommitted_files(shard_id)
        if not orphans:
            return 0
        for key in orphans:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        log.warning(
            "deleted %d files of an uncommitted flush",
            len(orphans),
            extra={"shard_id": shard_id},
        )
        return len(orphans)

    # ------------------------------------------------------------------ S3 I/O
    def put_parquet(self, key: str, table: pa.Table) -> int:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", coerce_timestamps="us", use_dictionary=True)
        body = buffer.getvalue()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **self._encryption)
        return len(body)

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        body = json.dumps(document, sort_keys=True, default=str).encode()
        self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **self._encryption
        )

    def get_parquet(self, key: str) -> pa.Table:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return pq.read_table(io.BytesIO(body))

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.NoSuchKey:
            return None
        loaded: dict[str, Any] = json.loads(response["Body"].read())
        return loaded


def _split_by_hour(events: pa.Table) -> list[tuple[str, pa.Table]]:
    """Events grouped into Hive partitions ``event_date=YYYY-MM-DD/event_hour=HH``, in time order (one sort)."""
    if events.num_rows == 0:
        return []
    hours = pc.floor_temporal(events.column("event_time").combine_chunks(), unit="hour")
    order = pc.sort_indices(hours)
    events, hours = events.take(order), hours.take(order)
    runs = pc.run_end_encode(hours)
    parts = []
    start = 0
    for hour, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        parts.append((f"event_date={hour:%Y-%m-%d}/event_hour={hour:%H}", events.slice(start, end - start)))
        start = end
    return parts


def read_commit_records(
    s3: Any, bucket: str, layout: OutputLayout, shard_id: str | None = None, max_workers: int = 16
) -> list[CommitRecord]:
    """Every commit record (of one shard, or of all), in chain order per shard: the manifest of committed data.

    Objects are fetched in parallel; a record that does not parse raises ``ControlRecordError`` (never skipped).
    """
    prefix = layout.commits_prefix(shard_id) if shard_id else layout.all_commits_prefix
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
        if obj["Key"].endswith(".json")
    ]

    def fetch(key: str) -> CommitRecord:
        return CommitRecord.from_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        records = list(pool.map(fetch, keys))
    return sorted(
        records,
        key=lambda r: (r.shard_id, r.previous is not None, r.previous.sort_key() if r.previous else (0, 0)),
    )
