"""Bring a shard's local state in line with the commit chain on S3, trusting nothing local.

S3 holds the truth; the local state (``aggregators/state_journal.py``) is only a shortcut:

- every flush's commit record sits at the key of the chain position it continues from and names its ``events/``
  file, which holds exactly the new, de-duplicated events of that flush; re-applying the chain reproduces the state
  (the core is deterministic);
- a *snapshot* of the shard's tables is written every few flushes and when a shard stops or ends; its pointer
  (``latest.json``) only ever moves forward (a conditional PUT on its ETag), so a restore is "snapshot + the chain
  after it": its cost follows the shard's state and the recent changes, not history.

``restore`` reads the snapshot pointer and walks the chain from it to its tip. The local state is used only when
its position lies on that walk (then just the commits after it are applied); otherwise (older than the snapshot,
or at a position the chain never reached: a stale or foreign file) it is discarded and the shard is rebuilt from the
snapshot, or from its parents' state for a new child shard after a split or merge. The KCL checkpoint is compared
with the tip last: a checkpoint beyond the chain means records were checkpointed that S3 does not hold.
Each snapshot writer's tables have keys of their own (a write id): a writer whose pointer update lost deletes only
what it wrote, never tables the pointer names. Should the pointer still name tables that are gone (deleted by hand,
a lifecycle rule, or an older version's race), the restore rebuilds from the chain's start instead of failing.
A local file that cannot be opened or read is moved aside (``open_shard_state``) and the shard restored from S3.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from botocore.exceptions import ClientError

from aggregators.customer_state import CustomerState, StateOptions
from aggregators.state_journal import DISK_REFUSES_WRITES, JournalLockedError
from aggregators.validation import RecordValidator
from consumer.metrics import Metric
from consumer.metrics import emit as emit_metrics
from consumer.s3_sink import S3ParquetSink, is_precondition_failed, missing_object, read_commit_records
from runtime.aws import list_all_shards
from runtime.logs import one_line
from runtime.settings import Settings
from schemas import EVENTS_SCHEMA
from schemas.control import CommitRecord, ControlRecordError, SnapshotPointer
from schemas.positions import BEFORE_FIRST_RECORD, Position, chain_position, checkpoint_position

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ParentShard:
    """A parent of a child shard and the child's hash-key range (inclusive)."""

    shard_id: str
    child_start_hash: int
    child_end_hash: int
    listed: bool = True  # still in ListShards (a closed shard stays listed for the stream's retention period)


@dataclass(slots=True)
class RestoreReport:
    source: str  # "local" | "snapshot" | "parents" | "empty"
    commits_applied: int = 0
    events_applied: int = 0
    seconds: float = 0.0
    discarded_local: Position | None = None  # a local position that was not on the chain
    tip: Position | None = None  # where the chain ends (None: no commit yet)
    snapshot: Position | None = None  # the chain position the snapshot continues from (None: the start)
    has_snapshot: bool = False  # whether there is one at all (a child's first is at the start)
    events_since_snapshot: int = 0  # new events the commits after it archived (no snapshot: all commits)
    parents: list[str] = field(default_factory=list)  # the shards a child inherited from (source "parents")


#: Finds the parents of a shard (Kinesis ListShards); empty for an original shard.
ParentLookup = Callable[[str], list[ParentShard]]


class SnapshotTableMissingError(FileNotFoundError):
    """A table the snapshot pointer names is not there (replaced meanwhile, or deleted)."""


class SnapshotUnreadableError(RuntimeError):
    """A table the snapshot pointer names is there but cannot be read as one (changed by hand, or written by a
    version whose tables this one cannot import): reading it again would fail the same way."""

    def __init__(self, pointer: SnapshotPointer, error: Exception) -> None:
        super().__init__(f"{one_line(error)}, in {sorted(pointer.tables.values())}")


#: How often a restore starts over when a snapshot it was loading was replaced (and deleted) meanwhile.
_RESTORE_ATTEMPTS = 3


class ChainError(RuntimeError):
    """The commit chain on S3 does not continue where it must (an object was deleted by hand, or a foreign
    writer used the same prefix): the shard stops instead of guessing."""


def state_path(state_dir: Path, shard_id: str, *, stream_name: str, bucket: str, prefix: str) -> Path:
    """Where a shard's local state (its journal directory) lives: in a folder of the stream and the S3 prefix it
    belongs to.

    Shard ids repeat across streams, and a state directory may be reused for another stream or prefix (one worker
    at a time holds it): a file of the other's would be trusted whenever its position happens to lie on this chain,
    and its events counted again. In its own folder, the other's file is never opened."""
    owner = hashlib.sha256(f"{stream_name}\n{bucket}\n{prefix}".encode()).hexdigest()[:12]
    return state_dir / "shards" / f"{stream_name}-{owner}" / f"{shard_id}.journal"


def open_shard_state(
    path: Path,
    shard_id: str,
    validator: RecordValidator,
    metric_dimensions: Mapping[str, str] | None = None,
    options: StateOptions | None = None,
) -> CustomerState:
    """Open the shard's local state (a journal directory); one that cannot be read is moved aside (kept for
    inspection) and a fresh one is opened, which the restore then rebuilds from S3. A journal another process holds
    is an error (``JournalLockedError``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_legacy_file(path, shard_id)
        return CustomerState(shard_id, path, validator, options)
    except JournalLockedError:
        raise  # another process holds it: not damage (the KCL will retry the lease)
    except MemoryError as error:
        # reading the whole journal peaks at about three times the state: not damage, so it stays for a start with
        # more memory, and this one restores from S3 (a snapshot and the commits after it) without it
        return _without_local_state(shard_id, path, validator, options, error)
    except OSError as error:
        if error.errno in DISK_REFUSES_WRITES:  # a full disk is not damage: the shard goes on from memory
            return _without_local_state(shard_id, path, validator, options, error)
        cause = one_line(error)
    except Exception as error:  # noqa: BLE001 - whatever stops the read, the cache is rebuilt from S3
        cause = one_line(error)
    target = path.with_name(f"{path.name}.unreadable-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    if path.exists() or path.is_symlink():
        # the newest is kept: each is a whole state
        for earlier in path.parent.glob(f"{path.name}.unreadable-*"):
            if earlier.is_dir():
                shutil.rmtree(earlier, ignore_errors=True)
            else:
                earlier.unlink(missing_ok=True)
        path.rename(target)
    log.error(
        "local state %s is unreadable (%s); moved aside as %s, restoring the shard from S3",
        path,
        cause,
        target.name if target.exists() else "(nothing to move)",
        extra={"shard_id": shard_id},
    )
    emit_metrics({Metric.STATE_FILES_QUARANTINED: 1}, dict(metric_dimensions or {}))
    return CustomerState(shard_id, path, validator, options)


def state_options(settings: Settings) -> StateOptions:
    """The worker's state options, from its settings."""
    return StateOptions(
        dedupe_window=timedelta(days=settings.dedupe_window_days),
        distinct_window=timedelta(days=settings.distinct_window_days),
        sync_every_records=settings.state_sync_records,
        sync_every_seconds=settings.state_sync_seconds,
    )


def _without_local_state(
    shard_id: str,
    path: Path,
    validator: RecordValidator,
    options: StateOptions | None,
    error: OSError | MemoryError,
) -> CustomerState:
    """A state in memory only, for a shard whose local state the disk refuses to hold, or that does not fit the
    memory left to read it (reported at its first flush as LocalStateWriteFailed, as a refused sync is): S3 holds
    every commit, and the restore rebuilds from there."""
    log.error(
        "the local state %s could not be opened (%s): the shard goes on from memory without it; S3 holds every "
        "commit, and the restore rebuilds the state from there",
        path,
        one_line(error),
        extra={"shard_id": shard_id},
    )
    return CustomerState.without_local_state(shard_id, one_line(error), validator, options)


def _remove_legacy_file(path: Path, shard_id: str) -> None:
    """Delete the DuckDB file earlier versions kept for the shard beside its journal: a cache nothing reads now (a
    first start after the upgrade restores from S3), which would otherwise hold its disk forever."""
    for legacy in (path.with_suffix(".duckdb"), path.with_suffix(".duckdb.wal")):
        if legacy.is_file():
            legacy.unlink()
            log.info(
                "deleted %s, the local state of an earlier version", legacy, extra={"shard_id": shard_id}
            )


class StateRecovery:
    """Snapshots and restores of shard state on S3 (thin adapter; the state logic is CustomerState's)."""

    def __init__(self, s3_client: Any, settings: Settings, parents: ParentLookup | None = None) -> None:
        self.s3 = s3_client
        self.settings = settings
        self.bucket = settings.bucket
        self.parents = parents
        self._sink = S3ParquetSink(s3_client, settings)
        self._parents_reported: set[tuple[str, str]] = set()  # (child, parent) said to be past the retention
        self.layout = self._sink.layout

    # ------------------------------------------------------------------ snapshots
    def _read_pointer(self, shard_id: str) -> tuple[SnapshotPointer | None, str | None]:
        """The snapshot pointer and its ETag (for the conditional replace). An unreadable pointer reads as none,
        with its ETag: the snapshot is a cache (the chain's start leads to the tip), and the next snapshot replaces
        it; raising would stop the shard at every restart, and every snapshot with it."""
        key = self.layout.snapshot_pointer_key(shard_id)
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.NoSuchKey:
            return None, None
        etag = str(response["ETag"])
        try:
            return SnapshotPointer.from_json(response["Body"].read()), etag
        except ControlRecordError as unreadable:
            error = unreadable
        log.error(
            "the snapshot pointer s3://%s/%s is unreadable (%s); going on without it (a restore re-applies "
            "every commit) until the next snapshot replaces it",
            self.bucket,
            key,
            error,
            extra={"shard_id": shard_id},
        )
        emit_metrics({Metric.SNAPSHOT_UNREADABLE: 1}, self.settings.metric_dimensions)
        return None, etag

    def write_snapshot(self, state: CustomerState) -> SnapshotPointer | None:
        """Tables as Parquet, then the pointer, moved forward only and only if nobody moved it meanwhile (a
        conditional PUT); the previous snapshot's tables are deleted once the new pointer is in place."""
        position = state.position()
        if position is None:
            return None
        shard_id = state.shard_id
        current, etag = self._read_pointer(shard_id)
        if current is not None and current.position >= position:
            # an equal or newer snapshot exists (another owner went further), unless it is this position's and its
            # tables are gone: a shard that stays here (idle, or ended) would otherwise be rebuilt from its
            # chain's start at every restore
            if current.position > position or self._missing_table(current) is None:
                return None
            log.warning(
                "the snapshot pointer at %s names tables that are gone; writing the snapshot again",
                position.sequence_number,
                extra={"shard_id": shard_id},
            )
        tables = state.export_tables()
        write_id = uuid.uuid4().hex[:12]
        keys = {
            table: self.layout.snapshot_table_key(shard_id, position, write_id, table) for table in tables
        }
        for table, data in tables.items():
            self._sink.put_parquet(keys[table], data, kind=table)
        pointer = SnapshotPointer(shard_id, position, state.as_of(), keys, datetime.now(UTC))
        try:
            self._sink.put_bytes(
                self.layout.snapshot_pointer_key(shard_id),
                pointer.to_json(),
                "json",
                if_none_match=etag is None,
                if_match=etag,
            )
        except Exception as error:
            if not is_precondition_failed(error):
                raise
            latest, _ = self._read_pointer(shard_id)
            if latest is None or latest.tables != keys:
                self._sink.delete_files_kept_on_refusal(list(keys.values()), "a dropped snapshot", shard_id)
                log.info(
                    "another writer moved the snapshot pointer first; this snapshot is dropped",
                    extra={"shard_id": shard_id},
                )
                return None
            # it names this snapshot's tables: this write landed, and its retry met the pointer it had written
        # the pointer moved already: this snapshot is written whatever becomes of older tables
        try:
            self._delete_unnamed_tables(pointer, replaced=current)
        except ClientError as error:
            log.warning(
                "older snapshot tables could not be deleted (%s): left behind, no restore reads them",
                error,
                extra={"shard_id": shard_id},
            )
        log.info(
            "snapshot of %d customers at %s",
            state.customer_count(),
            position.sequence_number,
            extra={"shard_id": shard_id, "sequence_number": position.sequence_number},
        )
        return pointer

    def _missing_table(self, pointer: SnapshotPointer) -> str | None:
        """The key of a table the pointer names that S3 does not hold, if any (HEADs: nothing is downloaded)."""
        return next((key for key in pointer.tables.values() if not self._sink.exists(key)), None)

    def _delete_unnamed_tables(self, pointer: SnapshotPointer, replaced: SnapshotPointer | None) -> None:
        """Delete every table of the shard's snapshots at or before the pointer's position that it does not name:
        the replaced snapshot's, and those of writers that died (kill -9, out of memory) or were paused between
        their tables and their pointer update, which nothing else would ever delete. None of them can be named
        later: a writer at an earlier or equal position either sees this pointer and writes nothing, or loses its
        conditional pointer update. Tables past the pointer's position may be a live writer's, about to move the
        pointer: they stay."""
        named = set(pointer.tables.values())
        unnamed = {
            key
            for key in self._sink.list_keys(self.layout.snapshots_prefix(pointer.shard_id))
            if key not in named
            and (position := self.layout.snapshot_table_position(key)) is not None
            and position <= pointer.position
        }
        # by name too: an older version's keys (no write id) do not parse as positions
        if replaced is not None:
            unnamed.update(key for key in replaced.tables.values() if key not in named)
        self._sink.delete_keys(sorted(unnamed))

    # ------------------------------------------------------------------ the chain
    def chain_from(self, shard_id: str, base: Position | None) -> list[CommitRecord]:
        """The commits that continue the shard's chain from ``base`` (None: its start) to its tip, in order."""
        records = read_commit_records(self.s3, self.bucket, self.layout, shard_id, continuing_from=base)
        by_previous = {record.previous: record for record in records}
        chain: list[CommitRecord] = []
        cursor = base
        while cursor in by_previous:
            record = by_previous.pop(cursor)
            chain.append(record)
            cursor = record.last
        stray = [
            r for r in by_previous.values() if base is None or (r.previous is not None and r.previous > base)
        ]
        if stray:
            raise ChainError(
                f"shard {shard_id}: {len(stray)} commit records do not continue the chain from "
                f"{base.sequence_number if base else 'its start'} (first: after "
                f"{stray[0].previous.sequence_number if stray[0].previous else 'the start'}); "
                "the prefix holds foreign or hand-edited control records"
            )
        return chain

    def _apply_commits(
        self, state: CustomerState, commits: list[CommitRecord], report: RestoreReport
    ) -> None:
        for record in commits:
            tables = [self._sink.get_parquet(key) for key in record.files.get("events", [])]
            events = pa.concat_tables(tables) if tables else EVENTS_SCHEMA.empty_table()
            state.apply_events(events, record.last)
            report.commits_applied += 1
            report.events_applied += events.num_rows

    # ------------------------------------------------------------------ restore
    def restore(
        self, state: CustomerState, checkpoint: str | None = None, checkpoint_sub: int = 0
    ) -> RestoreReport:
        """Make ``state`` equal to the shard's chain tip (see the module docstring)."""
        unusable: SnapshotTableMissingError | SnapshotUnreadableError
        for attempt in range(1, _RESTORE_ATTEMPTS + 1):
            try:
                return self._restore(state, checkpoint, checkpoint_sub)
            except SnapshotUnreadableError as error:
                unusable = error  # read again, it fails again
                break
            except FileNotFoundError as error:  # a snapshot replaced while we read it: start over
                if attempt == _RESTORE_ATTEMPTS:
                    if not isinstance(error, SnapshotTableMissingError):
                        raise  # an events file of a commit: nothing to rebuild from
                    unusable = error
                    break
                log.warning(
                    "restore read a file that is gone (%s); starting over",
                    error,
                    extra={"shard_id": state.shard_id},
                )
        # The snapshot's table gone every time (not a replaced snapshot), or unreadable. The chain's start still
        # leads to the tip (committed events files are never deleted).
        log.error(
            "the snapshot pointer names a table that is gone or unreadable (%s); rebuilding the shard from its "
            "chain's start without the snapshot (slower: every commit is re-applied)",
            unusable,
            extra={"shard_id": state.shard_id},
        )
        emit_metrics({Metric.SNAPSHOT_UNREADABLE: 1}, self.settings.metric_dimensions)
        return self._restore(state, checkpoint, checkpoint_sub, use_snapshot=False)

    def _restore(
        self, state: CustomerState, checkpoint: str | None, checkpoint_sub: int, *, use_snapshot: bool = True
    ) -> RestoreReport:
        started = time.perf_counter()
        shard_id = state.shard_id
        pointer, _ = self._read_pointer(shard_id) if use_snapshot else (None, None)
        base = chain_position(pointer.position) if pointer else None
        chain = self.chain_from(shard_id, base)
        walk = [base, *(record.last for record in chain)]
        local = state.position()
        report = RestoreReport(
            source="local",
            tip=walk[-1],
            snapshot=base,
            has_snapshot=pointer is not None,
            events_since_snapshot=sum(record.accepted - record.duplicates for record in chain),
        )
        if local is not None and chain_position(local) in walk:
            todo = chain[walk.index(chain_position(local)) :]
        else:
            # a snapshot whose tables are gone is found before the local state is reported or reset: the fallback
            # from the chain's start then still takes the local state where it lies on the chain, and says once
            # what it discards
            missing = self._missing_table(pointer) if pointer is not None else None
            if missing is not None:
                raise SnapshotTableMissingError(str(missing_object(self.bucket, missing)))
            if local is not None:
                report.discarded_local = local
                if base is not None and self._sink.get_commit(
                    self.layout.commit_key(shard_id, chain_position(local))
                ):
                    # on the chain, before the snapshot: the shard was processed elsewhere meanwhile (a lease that
                    # moved and came back), the usual course of a rebalance, not a stale or foreign file
                    log.info(
                        "local state at %s is older than the shard's snapshot at %s; restoring from the snapshot",
                        local.sequence_number,
                        base.sequence_number,
                        extra={"shard_id": shard_id},
                    )
                else:
                    log.warning(
                        "local state at %s is not on the S3 commit chain (snapshot at %s, tip at %s); rebuilding%s",
                        local.sequence_number,
                        base.sequence_number if base else "none",
                        walk[-1].sequence_number if walk[-1] else "the start",
                        # nothing committed at all: the local state of another bucket or stream, or of an
                        # emulator since restarted; said, since the usual cause then is not a fault
                        " (nothing is committed for this shard: a state directory of another bucket or stream, "
                        "or of an emulator restarted since?)"
                        if pointer is None and not chain  # (a child shard's first snapshot is at no position)
                        else "",
                        extra={"shard_id": shard_id},
                    )
                    emit_metrics({Metric.LOCAL_STATE_DISCARDED: 1}, self.settings.metric_dimensions)
            state.reset()
            if pointer is not None:
                try:
                    tables = {name: self._sink.get_parquet(key) for name, key in pointer.tables.items()}
                except FileNotFoundError as error:
                    raise SnapshotTableMissingError(str(error)) from error
                except pa.ArrowInvalid as error:  # not Parquet
                    raise SnapshotUnreadableError(pointer, error) from error
                try:
                    state.import_tables(tables, replace=True)
                except KeyError as error:  # not the tables this version imports: a column it lacks
                    raise SnapshotUnreadableError(pointer, error) from error
                state.set_position(pointer.position, pointer.as_of)
                report.source = "snapshot"
            else:
                report.source = self._start_from_parents(state, report)
            todo = chain
        self._apply_commits(state, todo, report)
        report.seconds = time.perf_counter() - started
        self._compare_checkpoint(shard_id, checkpoint, checkpoint_sub, walk[-1])
        if report.source != "local" or report.commits_applied:
            log.info(
                "restored shard state from %s: %d commits, %d events re-applied in %.2fs",
                report.source,
                report.commits_applied,
                report.events_applied,
                report.seconds,
                extra={"shard_id": shard_id},
            )
        return report

    def _compare_checkpoint(
        self, shard_id: str, checkpoint: str | None, checkpoint_sub: int, tip: Position | None
    ) -> None:
        """A KCL checkpoint beyond the chain's tip: those records will not be delivered again, and S3 lacks them.
        Compared as positions: inside a KPL aggregate, sub-sequence numbers tell them apart."""
        position = checkpoint_position(checkpoint, checkpoint_sub)
        if position is None:
            return  # TRIM_HORIZON, LATEST, AT_TIMESTAMP, SHARD_END: nothing to compare
        if tip is None or position > tip:
            log.error(
                "the KCL checkpoint (%s) is beyond the last committed record (%s): the records between are not "
                "in this prefix and will not be redelivered (`replay` cannot bring them back: they are not in "
                "events/); read them again from the stream: move the shard's checkpoint in the lease table back "
                "while the stream still holds them",
                checkpoint,
                tip.sequence_number if tip else "none",
                extra={"shard_id": shard_id, "sequence_number": checkpoint},
            )
            emit_metrics({Metric.CHECKPOINT_AHEAD_OF_COMMITS: 1}, self.settings.metric_dimensions)

    def _start_from_parents(self, state: CustomerState, report: RestoreReport) -> str:
        """A child shard: its parents' final state, restricted to the customers that now hash to this shard."""
        parents = self.parents(state.shard_id) if self.parents else []
        report.parents = [parent.shard_id for parent in parents]
        if not parents:
            return "empty"
        as_of_values: list[datetime] = []
        for index, parent in enumerate(parents):
            parent_state = CustomerState(parent.shard_id, options=state_options(self.settings))
            try:
                # snapshot + commits of the parent, up to its SHARD_END flush: on S3 whether or not Kinesis still
                # lists the parent
                parent_report = self.restore(parent_state)
                if not parent.listed:
                    self._parent_unlisted(state.shard_id, parent.shard_id, parent_report)
                tables = parent_state.export_tables()
                as_of = parent_state.as_of()
                if as_of is not None:
                    as_of_values.append(as_of)
            finally:
                parent_state.close()
            in_range = (parent.child_start_hash, parent.child_end_hash)
            state.import_tables(tables, hash_key_range=in_range, replace=index == 0)
        # Before any record of its own, a child stands "before the first sequence number" of the shard.
        state.set_position(BEFORE_FIRST_RECORD, max(as_of_values) if as_of_values else None)
        return "parents"

    def _parent_unlisted(self, shard_id: str, parent_id: str, parent: RestoreReport) -> None:
        """A parent past the stream's retention: what this prefix holds of it is all there is (the KCL takes a
        shard it cannot list for ended, so records the parent had not committed expired unread). Said once per
        parent: a restore retried after a transient failure inherits the same parents again."""
        if (shard_id, parent_id) in self._parents_reported:
            return
        self._parents_reported.add((shard_id, parent_id))
        if parent.source == "empty" and parent.tip is None:
            held = "this prefix holds no snapshot or commit of it: the child starts without its history"
        else:
            held = "restored from this prefix's snapshot and commits of it; any records it had not committed expired"
        log.warning(
            "parent shard %s of %s is no longer listed (past the stream's retention): %s (expected if this "
            "application was stopped that long or never read that parent; `clickstream replay` rebuilds what the "
            "archive holds)",
            parent_id,
            shard_id,
            held,
            extra={"shard_id": shard_id},
        )
        emit_metrics({Metric.PARENT_STATE_MISSING: 1}, self.settings.metric_dimensions)


def kinesis_parent_lookup(kinesis: Any, stream_name: str) -> ParentLookup:
    """Parents of a shard from ListShards (closed shards stay listed for the stream's retention period)."""

    def lookup(shard_id: str) -> list[ParentShard]:
        by_id = {s["ShardId"]: s for s in list_all_shards(kinesis, stream_name)}
        child = by_id.get(shard_id)
        # asked only for a shard without a snapshot (one with a snapshot does not need the listing)
        if child is None:
            log.warning(
                "shard %s is not in ListShards of %s (past the stream's retention?): whether it has parent shards "
                "cannot be told, so it starts from its own commits on S3 only (a child of a reshard would lack its "
                "parents' customers)",
                shard_id,
                stream_name,
                extra={"shard_id": shard_id},
            )
            return []
        start = int(child["HashKeyRange"]["StartingHashKey"])
        end = int(child["HashKeyRange"]["EndingHashKey"])
        parent_ids = [pid for pid in (child.get("ParentShardId"), child.get("AdjacentParentShardId")) if pid]
        # a parent past the stream's retention is no longer listed, but its state is still on S3: the child
        # takes it by the child's own hash range, so the parent's listing is not needed
        return [ParentShard(pid, start, end, listed=pid in by_id) for pid in parent_ids]

    return lookup
