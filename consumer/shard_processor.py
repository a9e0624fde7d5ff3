"""One shard's buffer -> flush -> checkpoint loop, independent of the KCL wire protocol (so it is testable alone).

The commit order of a flush (each step only starts when the previous one succeeded):

1. **Stage** - apply the buffered records to the shard's DuckDB state inside an open transaction. Records at or
   below the state's stored position are skipped (redeliveries), duplicate event ids are dropped.
2. **Intent** - write ``_control/intents/<shard>.json`` naming every data object this flush will write.
3. **Data** - PUT the Parquet files (events/, customer_aggregates/, errors/) with server-side encryption.
   Names are derived from the shard and the sequence range, so a retry overwrites rather than duplicates.
4. **Commit record** - PUT ``_control/commits/<shard>/<range>.json``: from here on the flush is durable.
5. **State commit** - COMMIT the DuckDB transaction (aggregates + the position they include, atomically).
6. **Checkpoint** - tell the KCL the last flushed sequence number.

A crash before 4 leaves orphan files that the next owner deletes using the intent (``discard_uncommitted``) and the
records are redelivered from the last checkpoint; a crash between 4 and 6 redelivers records that step 1 then
skips. Nothing is checkpointed before it is durable, and nothing is applied twice.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from aggregators.customer_state import CustomerState
from consumer.metrics import emit as emit_metrics
from consumer.retry import is_transient
from consumer.s3_sink import FlushManifest, FlushRange, S3ParquetSink
from consumer.state_recovery import StateRecovery
from consumer.status import ShardStatus, StatusWriter
from schemas import RAW_RECORD_SCHEMA, UTC_MICROS
from schemas.positions import Position

log = logging.getLogger(__name__)


class Checkpointer(Protocol):
    """The part of the KCL checkpointer we use."""

    def checkpoint(
        self, sequence_number: str | None = None, sub_sequence_number: int | None = None
    ) -> None: ...


class LeaseLostError(Exception):
    """The KCL refused a checkpoint because this worker no longer holds the shard's lease."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as delivered by the KCL (data already base64-decoded, KPL already de-aggregated)."""

    sequence_number: str
    sub_sequence_number: int
    partition_key: str
    arrival_millis: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    max_records: int
    max_bytes: int
    max_seconds: float


class RecordBuffer:
    """Records received since the last flush, kept as columns so the flush builds one Arrow table."""

    def __init__(self, shard_id: str) -> None:
        self.shard_id = shard_id
        self.clear()

    def clear(self) -> None:
        self.sequences: list[str] = []
        self.subs: list[int] = []
        self.keys: list[str] = []
        self.arrivals: list[int] = []
        self.payloads: list[bytes] = []
        self.bytes = 0
        self.started_at: float | None = None

    def __len__(self) -> int:
        return len(self.sequences)

    def extend(self, records: Sequence[RawRecord], now: float) -> None:
        if records and self.started_at is None:
            self.started_at = now
        for record in records:
            self.sequences.append(record.sequence_number)
            self.subs.append(record.sub_sequence_number)
            self.keys.append(record.partition_key)
            self.arrivals.append(record.arrival_millis * 1000)
            self.payloads.append(record.data)
            self.bytes += len(record.data)

    def range(self) -> FlushRange:
        pairs = list(zip(self.sequences, self.subs, strict=True))
        first = min(pairs, key=lambda pair: (int(pair[0]), pair[1]))
        last = max(pairs, key=lambda pair: (int(pair[0]), pair[1]))
        return FlushRange(self.shard_id, Position(first[0], first[1]), Position(last[0], last[1]))

    def to_table(self) -> pa.Table:
        count = len(self.sequences)
        return pa.table(
            {
                "shard_id": pa.array([self.shard_id] * count, pa.string()),
                "sequence_number": pa.array(self.sequences, pa.string()),
                "sub_sequence_number": pa.array(self.subs, pa.int64()),
                "partition_key": pa.array(self.keys, pa.string()),
                "approximate_arrival_at": pa.array(self.arrivals, pa.int64()).cast(UTC_MICROS),
                "data": pa.array(self.payloads, pa.binary()),
            },
            schema=RAW_RECORD_SCHEMA,
        )


class ShardProcessor:
    """Drives one shard: buffer records, flush by count / bytes / age, checkpoint only what is durable."""

    def __init__(
        self,
        shard_id: str,
        state: CustomerState,
        sink: S3ParquetSink,
        policy: FlushPolicy,
        *,
        status: StatusWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_backoff_seconds: float = 30.0,
        stream_name: str = "",
        recovery: StateRecovery | None = None,
        snapshot_every_flushes: int = 10,
    ) -> None:
        self.shard_id = shard_id
        self.stream_name = stream_name
        self.recovery = recovery
        self.snapshot_every_flushes = snapshot_every_flushes
        self.state = state
        self.sink = sink
        self.policy = policy
        self.status = status
        self.clock = clock
        self.sleep = sleep
        self.max_backoff_seconds = max_backoff_seconds
        self.buffer = RecordBuffer(shard_id)
        self.metrics = ShardStatus(shard_id=shard_id, pid=os.getpid())
        self.lease_lost = False

    # ------------------------------------------------------------------ KCL lifecycle
    def start(self, checkpoint: str | None) -> None:
        """Before the first record: delete files of a flush that died before its commit record, then bring the
        local state up to every committed flush (restore from S3 when the disk is empty or stale)."""
        self._retrying("discard uncommitted flush", lambda: self.sink.discard_uncommitted(self.shard_id))
        if self.recovery is not None:
            recovery = self.recovery
            self._retrying("restore state", lambda: recovery.restore(self.state))
        self.metrics.phase = "processing"
        self.metrics.checkpointed_sequence = checkpoint
        position = self.state.position()
        self.metrics.applied_sequence = position.sequence_number if position else None
        self._report(force=True)

    def on_records(
        self, records: Sequence[RawRecord], millis_behind: int | None, checkpointer: Checkpointer
    ) -> None:
        now = self.clock()
        self.metrics.last_call_at = time.time()
        if millis_behind is not None:
            self.metrics.millis_behind_latest = millis_behind
        if records:
            self.buffer.extend(records, now)
            self.metrics.records_received += len(records)
            self.metrics.last_record_at = time.time()
        behind = bool(self.metrics.millis_behind_latest)
        if (self.buffer or behind) and self.metrics.waiting_since is None:
            self.metrics.waiting_since = time.time()  # the stuck-shard clock starts when work appears
        elif not self.buffer and not behind:
            self.metrics.waiting_since = None
        if self._flush_due(now):
            self.flush(checkpointer, reason="threshold")
        self.metrics.buffered_records = len(self.buffer)
        self._report(force=bool(records))  # idle detection must never see a stale "nothing buffered"

    def on_shard_ended(self, checkpointer: Checkpointer) -> None:
        """Flush, then checkpoint SHARD_END so the KCL starts the child shards."""
        self.flush(checkpointer, reason="shard_end")
        self._snapshot()  # before SHARD_END: the child shards start from this state
        self._retrying("checkpoint SHARD_END", lambda: self._checkpoint(checkpointer, None))
        self.metrics.phase = "ended"
        self._report(force=True)

    def on_shutdown_requested(self, checkpointer: Checkpointer) -> None:
        """Graceful stop: flush what is buffered and checkpoint it."""
        self.flush(checkpointer, reason="shutdown")
        self._snapshot()  # the next owner (maybe on another host, without this disk) restores quickly
        self.metrics.phase = "shut_down"
        self._report(force=True)

    def on_lease_lost(self) -> None:
        """Another worker owns the shard now: drop the buffer, never checkpoint (it would fail or regress)."""
        dropped = len(self.buffer)
        self.buffer.clear()
        self.lease_lost = True
        self.metrics.waiting_since = None
        self.metrics.buffered_records = 0
        # After a graceful shutdown the KCL always ends with lease_lost; only dropped records are news.
        level = logging.WARNING if dropped or self.metrics.phase != "shut_down" else logging.INFO
        log.log(
            level,
            "lease lost; dropped %d unflushed records (they will be redelivered to the new owner)",
            dropped,
            extra={"shard_id": self.shard_id},
        )
        self.metrics.phase = "lease_lost"
        self._report(force=True)

    # ------------------------------------------------------------------ flushing
    def _flush_due(self, now: float) -> bool:
        if not self.buffer:
            return False
        age = now - (self.buffer.started_at or now)
        return (
            len(self.buffer) >= self.policy.max_records
            or self.buffer.bytes >= self.policy.max_bytes
            or age >= self.policy.max_seconds
        )

    def flush(self, checkpointer: Checkpointer, reason: str) -> FlushManifest | None:
        """Steps 1-6 of the commit order; transient failures are retried with backoff, the buffer is kept."""
        if not self.buffer or self.lease_lost:
            return None
        buffered = self.buffer.range()
        raw = self.buffer.to_table()
        started = time.perf_counter()
        manifest: FlushManifest | None = self._retrying(
            f"flush {buffered.stem}", lambda: self._flush_once(raw)
        )
        # Every buffered record is durable now: written by this flush, or (redeliveries) by an earlier one.
        self._retrying("checkpoint", lambda: self._checkpoint(checkpointer, buffered.last))
        seconds = time.perf_counter() - started
        self.buffer.clear()
        self.metrics.waiting_since = time.time() if self.metrics.millis_behind_latest else None
        if manifest is None:
            log.info(
                "all %d buffered records were redeliveries of committed flushes; checkpointed only",
                raw.num_rows,
                extra={"shard_id": self.shard_id, "sequence_number": buffered.last.sequence_number},
            )
            self.metrics.skipped += raw.num_rows
            self._report(force=True)
            return None
        self._record_flush(manifest, seconds)
        if self.metrics.flushes % self.snapshot_every_flushes == 0:
            self._snapshot()
        emit_metrics(
            {
                "RecordsIn": manifest.records_in - manifest.records_skipped,
                "RecordsAccepted": manifest.accepted,
                "RecordsRejected": manifest.rejected,
                "DuplicateEvents": manifest.duplicates,
                "CustomersChanged": manifest.customers_changed,
                "FlushLatency": seconds * 1000,
                "FlushBytes": manifest.bytes_written,
                "FilesWritten": sum(len(keys) for keys in manifest.files.values()),
            },
            {"StreamName": self.stream_name},
        )
        log.info(
            "flushed %s records (%s accepted, %s duplicates, %s rejected, %s customers) in %.3fs [%s]",
            manifest.records_in,
            manifest.accepted,
            manifest.duplicates,
            manifest.rejected,
            manifest.customers_changed,
            seconds,
            reason,
            extra={"shard_id": self.shard_id, "sequence_number": manifest.last_sequence},
        )
        return manifest

    def _flush_once(self, raw: pa.Table) -> FlushManifest | None:
        with self.state.staged(raw) as applied:  # step 1 (and step 5 when the block exits cleanly)
            if applied.position is None or applied.first_position is None:
                return None  # nothing new: writing would replace an earlier flush's commit record
            # A flush is named by the records it applied, never by redelivered ones it skipped.
            flush_range = FlushRange(self.shard_id, applied.first_position, applied.position)
            manifest = self.sink.write(flush_range, applied)  # steps 2-4
        return manifest

    def _checkpoint(self, checkpointer: Checkpointer, position: Position | None) -> None:
        from amazon_kclpy.checkpoint_error import CheckpointError

        try:
            if position is None:
                checkpointer.checkpoint()
            else:
                checkpointer.checkpoint(position.sequence_number, position.sub_sequence_number)
        except CheckpointError as error:
            if error.value in ("ShutdownException", "InvalidStateException"):
                self.on_lease_lost()
                raise LeaseLostError(error.value) from error
            raise
        if position is not None:
            self.metrics.checkpointed_sequence = position.sequence_number
        self.metrics.last_checkpoint_at = time.time()

    def _retrying(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; retry transient failures with capped exponential backoff and jitter, forever.

        A shard must not skip data, so there is no give-up: the liveness check reports a shard that stays stuck.
        Non-transient errors propagate (the processor exits and the KCL redelivers from the last checkpoint).
        """
        attempt = 0
        while True:
            try:
                result = action()
            except LeaseLostError:
                raise
            except Exception as error:
                if not is_transient(error):
                    self.metrics.last_error = f"{type(error).__name__}: {error}"
                    self._report(force=True)
                    raise
                attempt += 1
                jitter = 0.5 + random.random() / 2  # noqa: S311 - backoff jitter, not security
                delay = min(self.max_backoff_seconds, 0.2 * 2 ** min(attempt, 10)) * jitter
                self.metrics.last_error = f"{type(error).__name__}: {error}"
                self.metrics.retries += 1
                self._report(force=True)
                emit_metrics({"FlushRetries": 1}, {"StreamName": self.stream_name})
                log.warning(
                    "%s failed (attempt %d, retrying in %.1fs): %s",
                    what,
                    attempt,
                    delay,
                    error,
                    extra={"shard_id": self.shard_id},
                )
                self.sleep(delay)
            else:
                if attempt:
                    self.metrics.last_error = None
                return result

    def _snapshot(self) -> None:
        """Best effort: a failed snapshot only makes a later restore re-apply more commits."""
        if self.recovery is None or self.lease_lost:
            return
        try:
            self.recovery.write_snapshot(self.state)
        except Exception as error:  # noqa: BLE001 - never let an optimisation stop the shard
            log.warning(
                "snapshot failed (a restore will re-apply more commits): %s",
                error,
                extra={"shard_id": self.shard_id},
            )

    # ------------------------------------------------------------------ status
    def _record_flush(self, manifest: FlushManifest, seconds: float) -> None:
        m = self.metrics
        m.flushes += 1
        m.records_flushed += manifest.records_in
        m.accepted += manifest.accepted
        m.duplicates += manifest.duplicates
        m.rejected += manifest.rejected
        m.skipped += manifest.records_skipped
        m.files_written += sum(len(keys) for keys in manifest.files.values())
        m.bytes_written += manifest.bytes_written
        m.last_flush_seconds = seconds
        m.last_flush_at = time.time()
        m.applied_sequence = manifest.last_sequence
        m.buffered_records = 0
        self._report(force=True)

    def _report(self, force: bool = False) -> None:
        if self.status is not None:
            self.status.write(self.metrics, force=force)


def state_path(state_dir: Path, shard_id: str) -> Path:
    """Where a shard's DuckDB state lives on local disk."""
    return state_dir / "shards" / f"{shard_id}.duckdb"
