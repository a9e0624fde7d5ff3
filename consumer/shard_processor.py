"""One shard's buffer -> flush -> checkpoint loop, independent of the KCL wire protocol (so it is testable alone).

The commit order of a flush (each step only starts when the previous one succeeded):

1. **Stage** - work the buffered records out against the shard's state without installing them (``staged``).
   Records at or below the state's position are skipped (redeliveries); duplicate events are dropped. The state's
   position before the stage, ``P``, is the chain position this flush continues from.
2. **Intent** - PUT ``_control/intents/<shard>/<attempt>.json`` naming the data files this attempt will write.
3. **Data** - PUT one Parquet file per output (events/, customer_aggregates/, errors/), named by the shard, the
   records applied and the attempt id, with server-side encryption. A retry of the attempt overwrites them.
4. **Commit** - create ``_control/commits/<shard>/<P>.json`` with ``If-None-Match: *``. From here the flush is
   durable. If S3 answers 412 and the record there is another attempt's, this attempt *lost*: roll the stage back,
   delete its files and intent, restore the state from S3 (it now ends at the winner's last record) and start over
   with what is left of the buffer (records the winner covered are now redeliveries and are skipped).
5. **State commit** - install the stage: aggregates and the position they include, atomically, in memory. The local
   file (a cache for fast restarts) is written every ``state_sync_records`` / ``state_sync_seconds``, exact at its
   own position: after a crash it is on the chain, behind the tip, and the restore re-applies the rest from S3.
6. **Checkpoint** - tell the KCL the last flushed record. If the KCL says the lease is gone, the processor takes
   no more records (``LeaseLostError``) and waits for the KCL's ``lease_lost``, which ends it.
7. **Tidy** - delete this attempt's intent, and the files of attempts that lost the position (``settle_intents``).

Why no two writers can both commit a flush, and why the chain has no fork: the commit records of a shard form a
chain, each at the key of the position it continues from. S3 creates a key at most once, so each position has at
most one successor. A writer's ``P`` is always a position on the chain: its state only moves in step 5 after its
own commit at ``P`` succeeded, or in a restore that walks the chain from S3 (and a local state whose position is
not on the chain is discarded, see consumer/state_recovery.py). Two writers of one shard (a zombie whose lease
moved, a paused JVM, a rebalance during a slow flush) either continue from the same ``P``, and exactly one
commit is created, or one of them is behind: then the successor of its ``P`` exists already and its commit fails.
Every commit's records start after its ``P`` (step 1 skips the rest), so the chain's ranges never overlap.

What a zombie can still do: write intent and data files under its attempt's names, which no commit names; it
deletes them itself when it loses (step 4), or the shard's owner deletes them after its next commit (step 7). A
crash before step 4 leaves the same kind of files until then. Strict readers read only the files that commit records
name (README: reading the outputs); nothing is checkpointed before it is durable, and nothing is applied twice.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, overload

import pyarrow as pa
import pyarrow.compute as pc

from aggregators.customer_state import CustomerState
from consumer.metrics import Metric
from consumer.metrics import emit as emit_metrics
from consumer.retry import is_transient
from consumer.s3_sink import CommitConflict, FlushAttempt, S3ParquetSink
from consumer.state_recovery import RestoreReport, StateRecovery
from consumer.status import ShardStatus, StatusWriter
from runtime.memory import release_free_memory
from schemas import RAW_RECORD_SCHEMA, UTC_MICROS
from schemas.control import CommitRecord
from schemas.layout import FlushName
from schemas.positions import Position, chain_position, position_range

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


#: The columns of a batch of raw records before the shard id is added (RAW_RECORD_SCHEMA without ``shard_id``).
RAW_BATCH_SCHEMA: Final = pa.schema([field for field in RAW_RECORD_SCHEMA if field.name != "shard_id"])
#: Commit races one flush may lose before the processor gives up. A lost race restores the state to the chain's
#: tip, after which the flush commits, or finds its records committed already: one or two losses. More means the
#: chain keeps moving ahead of every restore (another writer committing the shard all along, or a restore that
#: ends short of the tip): the processor stops, so the shard restarts from its checkpoint, instead of spinning.
MAX_LOST_COMMITS_PER_FLUSH: Final = 8
#: What a snapshot is expected to cost a state row before one was timed in this process: about three times the
#: 0.33 µs measured alone (1M customers and 10M ids in 5.6 s), as the shards of a task snapshot at once at a stop.
ASSUMED_SNAPSHOT_SECONDS_PER_ROW: Final = 1e-6
#: A snapshot of at least this many rows times the rate per row for the next stop.
_TIMED_SNAPSHOT_MIN_ROWS: Final = 100_000


class RawRecordBatch(Sequence[RawRecord]):
    """The records of one KCL call as Arrow columns (``RAW_BATCH_SCHEMA``), built in bulk.

    Why: a Python object per record costs microseconds an event on the hot path; the buffer keeps these columns
    as they are and the flush concatenates them. Indexing builds a ``RawRecord`` on demand (tests, logs).
    """

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table.cast(RAW_BATCH_SCHEMA)

    @classmethod
    def of(cls, records: Iterable[RawRecord]) -> RawRecordBatch:
        """Columns of ``RawRecord`` objects (the per-record path: tests, KPL aggregates)."""
        rows = list(records)
        return cls(
            pa.table(
                {
                    "sequence_number": pa.array([r.sequence_number for r in rows], pa.string()),
                    "sub_sequence_number": pa.array([r.sub_sequence_number for r in rows], pa.int64()),
                    "partition_key": pa.array([r.partition_key for r in rows], pa.string()),
                    "approximate_arrival_at": pa.array(
                        [r.arrival_millis * 1000 for r in rows], pa.int64()
                    ).cast(UTC_MICROS),
                    "data": pa.array([r.data for r in rows], pa.binary()),
                }
            )
        )

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @overload
    def __getitem__(self, index: int) -> RawRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RawRecord]: ...

    def __getitem__(self, index: int | slice) -> RawRecord | list[RawRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = self.table.slice(index % len(self), 1)
        return RawRecord(
            sequence_number=row.column("sequence_number")[0].as_py(),
            sub_sequence_number=row.column("sub_sequence_number")[0].as_py(),
            partition_key=row.column("partition_key")[0].as_py(),
            arrival_millis=row.column("approximate_arrival_at").cast(pa.int64())[0].as_py() // 1000,
            data=row.column("data")[0].as_py(),
        )

    @property
    def data_bytes(self) -> int:
        """Payload bytes of all records (from the offsets: no per-record work)."""
        return int(pc.sum(pc.binary_length(self.table.column("data"))).as_py() or 0)


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    max_records: int
    max_bytes: int
    max_seconds: float
    when_caught_up: bool = True  # flush when nothing more is delivered and the shard is at the tip...
    #: ...once the oldest buffered record has waited this long: a trickle makes one flush per this many seconds,
    #: not one per record (each flush is about five S3 requests and a commit record every reader lists)
    caught_up_min_seconds: float = 0.0


class RecordBuffer:
    """Records received since the last flush, kept as the Arrow columns of each call so the flush concatenates them
    (no per-record Python work between the KCL message and the core)."""

    def __init__(self, shard_id: str) -> None:
        self.shard_id = shard_id
        self.clear()

    def clear(self) -> None:
        self.batches: list[pa.Table] = []
        self.count = 0
        self.bytes = 0
        self.started_at: float | None = None

    def __len__(self) -> int:
        return self.count

    def extend(self, records: Sequence[RawRecord], now: float) -> None:
        if not records:
            return
        if self.started_at is None:
            self.started_at = now
        batch = records if isinstance(records, RawRecordBatch) else RawRecordBatch.of(records)
        self.batches.append(batch.table)
        self.count += len(batch)
        self.bytes += batch.data_bytes

    def range(self) -> tuple[Position, Position]:
        """The first and last buffered positions (compared as numbers), computed on the Arrow columns."""
        if not self.count:
            raise ValueError("the buffer is empty")
        sequences = self._column("sequence_number")
        subs = self._column("sub_sequence_number")
        return position_range(sequences, subs)

    def _column(self, name: str) -> pa.ChunkedArray:
        # From the chunks: pa.chunked_array() given ChunkedArrays walks them value by value (~100 ms per 50k).
        chunks = [chunk for batch in self.batches for chunk in batch.column(name).chunks]
        return pa.chunked_array(chunks, RAW_BATCH_SCHEMA.field(name).type)

    def to_table(self) -> pa.Table:
        table = (
            pa.concat_tables(self.batches) if self.batches else RAW_BATCH_SCHEMA.empty_table()
        ).combine_chunks()
        shard = pa.nulls(table.num_rows, pa.string()).fill_null(self.shard_id)
        return table.add_column(0, RAW_RECORD_SCHEMA.field("shard_id"), shard).cast(RAW_RECORD_SCHEMA)


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
        metric_dimensions: Mapping[str, str] | None = None,
        recovery: StateRecovery | None = None,
        snapshot_every_flushes: int = 10,
        snapshot_min_new_fraction: float = 0.0,
        stop_budget_seconds: float | None = None,
    ) -> None:
        """``stop_budget_seconds``: what a graceful stop has for its flush and snapshot (the KCL's shutdown grace;
        None: no limit), so a stop snapshot that cannot finish in it is not started."""
        self.shard_id = shard_id
        self.metric_dimensions = dict(metric_dimensions or {})
        self.recovery = recovery
        self.snapshot_every_flushes = snapshot_every_flushes
        self.snapshot_min_new_fraction = snapshot_min_new_fraction
        self.stop_budget_seconds = stop_budget_seconds
        self._snapshot_seconds_per_row = ASSUMED_SNAPSHOT_SECONDS_PER_ROW  # timed again at each snapshot
        self._flushes_since_snapshot = 0
        self._events_since_snapshot = 0  # new events the commits since the last snapshot archived
        self._has_snapshot = False  # whether S3 holds a snapshot of this shard (known from the restore)
        self._local_file_error_reported = False
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
        self._reported_work = False  # whether the last status written showed work (``_has_work``)

    # ------------------------------------------------------------------ KCL lifecycle
    def start(self, checkpoint: str | None, checkpoint_sub: int = 0) -> None:
        """Before the first record: delete the files of attempts that lost their chain position, then bring the
        local state to the tip of the shard's commit chain on S3 (see consumer/state_recovery.py). The status says
        "initializing" meanwhile: a restore that takes minutes holds its lease all the same."""
        self._report(force=True)
        self._retrying("settle earlier flush attempts", lambda: self.sink.settle_intents(self.shard_id))
        if self.recovery is not None:
            recovery = self.recovery
            report = self._retrying(
                "restore state", lambda: recovery.restore(self.state, checkpoint, checkpoint_sub)
            )
            self._note_snapshot(report)
            if report.source == "parents":
                # a closed parent has no next commit to settle what a late attempt of it left (a paused writer that
                # resumed after the parent's last flush): its child does, as it takes over (before its snapshot,
                # after which it no longer starts from its parents)
                for parent_id in report.parents:
                    self._retrying(
                        f"settle flush attempts of parent shard {parent_id}",
                        functools.partial(self.sink.settle_intents, parent_id),
                    )
                # the inheritance becomes the child's own snapshot: a later restore with no local file then needs no
                # parent (they leave ListShards after the stream's retention, and their own objects may go too)
                self._snapshot()
            release_free_memory()  # a restore's working memory is many times the state it leaves
        self.metrics.phase = "processing"
        # the clocks of stuck and quiet shards start now, not when the restore began: a restore longer than
        # CLICKSTREAM_STUCK_SHARD_SECONDS read as "not called by the KCL" until its first records came
        self.metrics.started_at = time.time()
        self.metrics.checkpointed_sequence = checkpoint
        self._report_state()

    def on_records(
        self, records: Sequence[RawRecord], millis_behind: int | None, checkpointer: Checkpointer
    ) -> None:
        now = self.clock()
        self.metrics.last_call_at = time.time()
        if self.lease_lost:
            return  # never flushed here: the shard's owner reads them again from the last checkpoint
        lag_before = self.metrics.millis_behind_latest
        if millis_behind is not None:
            self.metrics.millis_behind_latest = millis_behind
        if records:
            self.buffer.extend(records, now)
            # counted before a flush that may retry (and write the status) for as long as S3 refuses it
            self.metrics.buffered_records = len(self.buffer)
            self.metrics.records_received += len(records)
            self.metrics.last_record_at = time.time()
        behind = bool(self.metrics.millis_behind_latest)
        if (self.buffer or behind) and self.metrics.waiting_since is None:
            self.metrics.waiting_since = time.time()  # the stuck-shard clock starts when work appears
        elif not self.buffer and not behind:
            self.metrics.waiting_since = None
        elif (
            not self.buffer
            and lag_before is not None
            and millis_behind is not None
            and millis_behind < lag_before
        ):
            # nothing held, the lag shrinking: the KCL reads through a stretch of the shard with no records (empty
            # GetRecords while behind), which is progress, not a stuck shard
            self.metrics.waiting_since = time.time()
        reason = self._flush_due(now, caught_up=not records and millis_behind == 0)
        if reason is not None:
            self.flush(checkpointer, reason=reason)
        self.metrics.buffered_records = len(self.buffer)
        # Idle detection must never read a stale "nothing to do": when work appears, report at once; otherwise the
        # writer's rate limit holds (a rewrite per KCL call cost milliseconds each).
        self._report(force=self._has_work() and not self._reported_work)

    def on_shard_ended(self, checkpointer: Checkpointer) -> None:
        """Flush, snapshot, then checkpoint SHARD_END so the KCL starts the child shards (never after a lost lease:
        its buffer was dropped, and SHARD_END would let the children start past it).

        The flush does not checkpoint its last record: that record is the shard's last, and the KCL stores a
        checkpoint there as SHARD_END already, which would start the children before the snapshot they restore
        from is written."""
        self.flush(checkpointer, reason="shard_end", checkpoint=False)
        if self.lease_lost:
            raise LeaseLostError("shard ended after the lease was lost: SHARD_END is not checkpointed")
        self._snapshot()  # before SHARD_END: the child shards start from this state
        self._retrying("checkpoint SHARD_END", lambda: self._checkpoint(checkpointer, None))
        self.metrics.phase = "ended"
        self._report(force=True)

    def on_shutdown_requested(self, checkpointer: Checkpointer) -> None:
        """Graceful stop: flush what is buffered and checkpoint it, then a snapshot if one is due and fits the time
        left (the checkpoint is made already: a snapshot cut short by the worker's stop deadline only costs the
        stop its clean exit)."""
        started = self.clock()
        # what is held now, on disk before the flush: a stop cut short during it must not read as clean
        self._report(force=True)
        self.flush(checkpointer, reason="shutdown")
        if self._stop_snapshot_due():
            budget = self.stop_budget_seconds
            left = None if budget is None else budget - (self.clock() - started)
            rows = self.state.row_count()
            needs = rows * self._snapshot_seconds_per_row
            # half: the shards of a task stop side by side, on shared cores
            if left is None or needs <= left / 2:
                self._snapshot()  # the next owner (maybe on another host, without this disk) restores quickly
            else:
                log.warning(
                    "no snapshot at this stop: its %d rows would take about %.0f s, more than half the %.0f s left "
                    "of the KCL's shutdown grace (CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS, under the worker's stop "
                    "deadline); the next owner re-applies the %d new events committed since the last snapshot",
                    rows,
                    needs,
                    max(0.0, left),
                    self._events_since_snapshot,
                    extra={"shard_id": self.shard_id},
                )
        elif self.state.position() is not None:  # (an empty state has nothing to write)
            log.info(
                "no snapshot at this stop: the commits since the last one hold %d new events, under %.0f%% of the "
                "%d rows a snapshot writes (the next owner re-applies them)",
                self._events_since_snapshot,
                self.snapshot_min_new_fraction * 100,
                self.state.row_count(),
                extra={"shard_id": self.shard_id},
            )
        self.metrics.phase = "shut_down"
        self._report(force=True)

    def on_lease_lost(self) -> None:
        """Another worker owns the shard now: drop the buffer, never checkpoint (it would fail or regress)."""
        dropped = len(self.buffer)
        self.buffer.clear()
        self.lease_lost = True
        self.metrics.waiting_since = None
        self.metrics.buffered_records = 0
        if dropped:
            log.warning(
                "lease lost; dropped %d unflushed records (the new owner gets them from the last checkpoint)",
                dropped,
                extra={"shard_id": self.shard_id},
            )
        elif self.metrics.phase == "shut_down":  # the KCL ends every graceful shutdown with lease_lost
            log.debug("lease released after a graceful shutdown", extra={"shard_id": self.shard_id})
        else:
            log.info(
                "lease lost with nothing buffered (another worker took the shard, or this one could not renew its "
                "lease: DynamoDB throttled or out of reach); its new owner goes on from the last checkpoint and "
                "skips what was committed after it",
                extra={"shard_id": self.shard_id},
            )
        # a graceful stop stays one in the status (its lease was released)
        if self.metrics.phase != "shut_down":
            self.metrics.phase = "lease_lost"
        self._report(force=True)

    # ------------------------------------------------------------------ flushing
    def _flush_due(self, now: float, caught_up: bool) -> str | None:
        """Which limit makes a flush due now (the reason is logged with the flush), or None."""
        if not self.buffer:
            return None
        if len(self.buffer) >= self.policy.max_records:
            return "max_records"
        if self.buffer.bytes >= self.policy.max_bytes:
            return "max_bytes"
        started = self.buffer.started_at if self.buffer.started_at is not None else now
        if now - started >= self.policy.max_seconds:
            return "max_seconds"
        if caught_up and self.policy.when_caught_up and now - started >= self.policy.caught_up_min_seconds:
            return "caught_up"  # nothing more to read: waiting would only delay freshness
        return None

    def flush(
        self, checkpointer: Checkpointer, reason: str, *, checkpoint: bool = True
    ) -> CommitRecord | None:
        """Steps 1-7 of the commit order; transient failures are retried with backoff, the buffer is kept.
        ``checkpoint=False``: the caller checkpoints (at shard end, SHARD_END after the final snapshot)."""
        if not self.buffer or self.lease_lost:
            return None
        _, buffered_last = self.buffer.range()
        raw = self.buffer.to_table()
        started = time.perf_counter()
        record: CommitRecord | None = None
        attempts = 0
        while True:
            attempt_id = secrets.token_hex(8)  # one per try at a chain position; retries of it overwrite
            attempts += 1
            try:
                record = self._retrying(
                    f"flush up to {buffered_last.sequence_number}",
                    functools.partial(self._flush_once, raw, attempt_id),
                )
                break
            except CommitConflict as conflict:
                self._lost(conflict, attempt_id)
                if attempts >= MAX_LOST_COMMITS_PER_FLUSH:
                    raise RuntimeError(
                        f"lost the commit race {attempts} times in a row for one flush: the commit chain keeps "
                        "moving ahead of this processor's restores (another writer committing the shard, or a "
                        "restore that ends short of the chain's tip); stopping so that the shard restarts from "
                        "its checkpoint"
                    ) from conflict
                if attempts > 1:  # a second loss in a row: pause, not a hot loop of refused S3 writes
                    self.sleep(min(self.max_backoff_seconds, 0.05 * 2**attempts))
        # Every buffered record is durable now: committed by this flush, or by an earlier one or another writer's.
        self.buffer.clear()
        if reason == "caught_up":
            release_free_memory()  # the shard waits at the tip now: its flush's working memory can go back
        if checkpoint:
            try:
                self._retrying("checkpoint", lambda: self._checkpoint(checkpointer, buffered_last))
            except Exception:
                # the flush is durable whatever becomes of its checkpoint (a lease lost, a failure the processor
                # exits on): its records and metrics count now, or never (the next owner skips them as applied)
                if record is not None:
                    seconds = time.perf_counter() - started
                    self._record_flush(record, seconds)
                    self._report_flush(record, seconds, reason, attempts, checkpoint_failed=True)
                raise
        seconds = time.perf_counter() - started
        self.metrics.waiting_since = time.time() if self.metrics.millis_behind_latest else None
        if record is None:
            log.info(
                "all %d buffered records were already committed; checkpointed only",
                raw.num_rows,
                extra={"shard_id": self.shard_id, "sequence_number": buffered_last.sequence_number},
            )
            self.metrics.skipped += raw.num_rows
            self._report(force=True)
            return None
        self._retrying("tidy flush attempts", lambda: self._tidy(record, attempt_id))
        self._record_flush(record, seconds)
        self._flushes_since_snapshot += 1
        self._events_since_snapshot += record.accepted - record.duplicates
        if self._snapshot_due():
            self._snapshot()
        self._report_flush(record, seconds, reason, attempts)
        return record

    def _report_flush(
        self,
        record: CommitRecord,
        seconds: float,
        reason: str,
        attempts: int,
        *,
        checkpoint_failed: bool = False,
    ) -> None:
        """A committed flush's metrics and log line."""
        metrics: dict[Metric, float] = {
            Metric.RECORDS_IN: record.records_new,
            Metric.RECORDS_ACCEPTED: record.accepted,
            Metric.RECORDS_REJECTED: record.rejected,
            Metric.DUPLICATE_EVENTS: record.duplicates,
            Metric.CUSTOMERS_CHANGED: record.customers_changed,
            Metric.FLUSH_LATENCY: seconds * 1000,
            Metric.FLUSH_BYTES: record.bytes_written,
            Metric.FILES_WRITTEN: record.file_count,
        }
        if self.state.local_file_error is not None and not self._local_file_error_reported:
            # once: the shard goes on without its local file from now on
            metrics[Metric.LOCAL_STATE_WRITE_FAILED] = 1
            self._local_file_error_reported = True
        if record.freshness is not None:
            metrics[Metric.ARRIVAL_TO_DURABLE_P99] = record.freshness.arrival_to_durable_p99
            if record.freshness.newest_event_age is not None:
                metrics[Metric.NEWEST_EVENT_AGE] = record.freshness.newest_event_age
        emit_metrics(metrics, self.metric_dimensions)
        log.info(
            "flushed %s records (%s accepted, %s duplicates, %s rejected, %s customers) in %.3fs [%s]%s%s",
            record.records_in,
            record.accepted,
            record.duplicates,
            record.rejected,
            record.customers_changed,
            seconds,
            reason,
            f" after {attempts - 1} lost commits" if attempts > 1 else "",
            "; not checkpointed: the next owner gets them again and skips them as applied"
            if checkpoint_failed
            else "",
            extra={"shard_id": self.shard_id, "sequence_number": record.last.sequence_number},
        )

    def _flush_once(self, raw: pa.Table, attempt_id: str) -> CommitRecord | None:
        previous = chain_position(self.state.position())
        with self.state.staged(raw) as applied:  # step 1 (and step 5 when the block exits cleanly)
            if applied.position is None or applied.first_position is None:
                return None  # nothing new: every record is at or below the chain position
            name = FlushName(self.shard_id, applied.first_position, applied.position, attempt_id)
            return self.sink.write(FlushAttempt(previous, name), applied)  # steps 2-4

    def _lost(self, conflict: CommitConflict, attempt_id: str) -> None:
        """Step 4 lost: the stage is rolled back already; delete this attempt's files, catch up from S3."""
        self.metrics.commit_conflicts += 1
        self._report(force=True)  # now: a zombie's next step (its checkpoint) may block until its JVM resumes
        emit_metrics({Metric.COMMIT_CONFLICTS: 1}, self.metric_dimensions)
        log.warning(
            "lost the commit race (%s); discarding this attempt and catching up from S3",
            conflict,
            extra={"shard_id": self.shard_id},
        )
        self._retrying(
            "discard the losing attempt",
            lambda: self.sink.discard_attempt(self.shard_id, attempt_id, conflict.lost_files),
        )
        if self.recovery is None:
            raise RuntimeError("a shard processor without recovery cannot continue after a lost commit")
        recovery = self.recovery
        self._note_snapshot(
            self._retrying("restore after a lost commit", lambda: recovery.restore(self.state))
        )
        self._report_state()

    def _tidy(self, record: CommitRecord, attempt_id: str) -> None:
        """Step 7: this attempt's intent, and the leftovers of attempts that can no longer commit."""
        if record.attempt_id == attempt_id:
            self.sink.forget_intent(self.shard_id, attempt_id)
        self.sink.settle_intents(self.shard_id)

    def _checkpoint(self, checkpointer: Checkpointer, position: Position | None) -> None:
        from amazon_kclpy.checkpoint_error import CheckpointError

        try:
            if position is None:
                checkpointer.checkpoint()
            else:
                checkpointer.checkpoint(position.sequence_number, position.sub_sequence_number)
        except CheckpointError as error:
            # ShutdownException: another worker holds the lease now. Anything else (InvalidStateException: the
            # lease table cannot store it) is terminal: the processor exits and the shard resumes from the last
            # checkpoint, rather than run on unable to checkpoint.
            if error.value == "ShutdownException":
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
                if attempt == 1:
                    self.metrics.failing_since = time.time()
                self.metrics.last_error = f"{type(error).__name__}: {error}"
                self.metrics.retries += 1
                self._report(force=True)
                emit_metrics({Metric.FLUSH_RETRIES: 1}, self.metric_dimensions)
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
                    self.metrics.last_error = self.metrics.failing_since = None
                return result

    def _snapshot_due(self) -> bool:
        """Every ``snapshot_every_flushes`` flushes, once the commits since the last snapshot hold enough new events
        (``_enough_new_events``)."""
        return self._flushes_since_snapshot >= self.snapshot_every_flushes and self._enough_new_events()

    def _enough_new_events(self) -> bool:
        """The commits since the last snapshot hold new events of at least ``snapshot_min_new_fraction`` of the rows
        a snapshot writes. A snapshot writes the whole state, so this keeps its cost per event bounded as the state
        grows; a restore re-applies about that fraction at most."""
        return self._events_since_snapshot >= self.snapshot_min_new_fraction * self.state.row_count()

    def _stop_snapshot_due(self) -> bool:
        """At a graceful stop: a snapshot when the shard has none yet, or when the commits since its last one hold
        new events, enough of them (``_enough_new_events``). The next owner then re-applies no more than it would
        while running, and a stop soon after a snapshot does not write the whole state again (for a large state,
        seconds of the task's stop timeout)."""
        if not self._has_snapshot:
            return self.state.position() is not None
        return self._events_since_snapshot > 0 and self._enough_new_events()

    def _note_snapshot(self, report: RestoreReport | None) -> None:
        """What a restore found: whether a snapshot exists and the new events committed after it."""
        if report is not None:
            self._has_snapshot = report.has_snapshot
            self._events_since_snapshot = report.events_since_snapshot

    def _snapshot(self) -> None:
        """Best effort: a failed snapshot only makes a later restore re-apply more commits (and is tried again
        after ``snapshot_every_flushes`` more flushes, or at the stop)."""
        self._flushes_since_snapshot = 0
        if self.recovery is None or self.lease_lost:
            return
        rows, started = self.state.row_count(), self.clock()
        try:
            written = self.recovery.write_snapshot(self.state)
        except Exception as error:  # noqa: BLE001 - never let an optimisation stop the shard
            log.warning(
                "snapshot failed (a restore will re-apply more commits): %s",
                error,
                extra={"shard_id": self.shard_id},
            )
            return
        self._events_since_snapshot = 0
        # timed when written whole (not when an equal or newer one made it stop early), and large enough that its
        # time is mostly per row
        if written is not None and rows >= _TIMED_SNAPSHOT_MIN_ROWS:
            self._snapshot_seconds_per_row = (self.clock() - started) / rows
        # written, or an equal or newer one exists (an empty state has none to write)
        if self.state.position() is not None:
            self._has_snapshot = True

    # ------------------------------------------------------------------ status
    def _record_flush(self, record: CommitRecord, seconds: float) -> None:
        m = self.metrics
        m.flushes += 1
        m.records_flushed += record.records_in
        m.accepted += record.accepted
        m.duplicates += record.duplicates
        m.rejected += record.rejected
        m.skipped += record.records_skipped
        m.files_written += record.file_count
        m.bytes_written += record.bytes_written
        m.last_flush_seconds = seconds
        m.last_flush_at = time.time()
        m.applied_sequence = record.last.sequence_number
        if record.freshness is not None:
            m.arrival_to_durable_p99 = record.freshness.arrival_to_durable_p99
            m.newest_event_age = record.freshness.newest_event_age
        m.buffered_records = 0
        self._note_state()
        self._report(force=True)

    def _report_state(self) -> None:
        """The state's position and size in the status file at once (after a start or a restore)."""
        position = self.state.position()
        self.metrics.applied_sequence = position.sequence_number if position else None
        self._note_state()
        self._report(force=True)

    def _note_state(self) -> None:
        """The state's size and whether it runs without its local state, for the status file."""
        self.metrics.state_bytes = self.state.memory_total()
        self.metrics.local_state_error = self.state.local_file_error

    def _report(self, force: bool = False) -> None:
        if self.status is not None and self.status.write(self.metrics, force=force):
            self._reported_work = self._has_work()

    def _has_work(self) -> bool:
        """Records buffered or the shard behind the tip, as the status shows them: what idle detection reads."""
        return bool(self.metrics.buffered_records) or bool(self.metrics.millis_behind_latest)
