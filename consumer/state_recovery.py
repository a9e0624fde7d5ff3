"""Bring a shard's local DuckDB state in line with what S3 says was committed, whatever the local disk holds.

ECS tasks lose their disk, and a lease can move to a worker whose local copy is old. S3 holds the truth:

- every flush's commit record names its ``events/`` files, which are exactly the new, de-duplicated events of that
  flush, so re-applying the commits after a point reproduces the state (the core is deterministic);
- a *snapshot* of the shard's tables is written every few flushes and when a shard stops or ends, so a restore is
  "latest snapshot + the commits after it": its cost follows the shard's state and the recent changes, not history.

At initialize, ``restore`` lists only the commit records *after* the local position (one LIST with StartAfter).
None: the local state is current. Some: it is stale (another worker went further) and is caught up. No local state:
load the snapshot first. A new child shard after a split or merge starts from its parents' final state, keeping the
customers whose hash key falls in its own range.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from aggregators.customer_state import CustomerState
from consumer.s3_sink import SEQUENCE_DIGITS, S3ParquetSink
from runtime.settings import Settings
from schemas import EVENTS_SCHEMA
from schemas.positions import Position

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ParentShard:
    """A parent of a child shard and the child's hash-key range (inclusive)."""

    shard_id: str
    child_start_hash: int
    child_end_hash: int


@dataclass(slots=True)
class RestoreReport:
    source: str  # "local" | "snapshot" | "parents" | "empty"
    commits_applied: int = 0
    events_applied: int = 0
    seconds: float = 0.0


#: Finds the parents of a shard (Kinesis ListShards); empty for an original shard.
ParentLookup = Callable[[str], list[ParentShard]]


class StateRecovery:
    """Snapshots and restores of shard state on S3 (thin adapter; the state logic is CustomerState's)."""

    def __init__(self, s3_client: Any, settings: Settings, parents: ParentLookup | None = None) -> None:
        self.s3 = s3_client
        self.settings = settings
        self.bucket = settings.bucket
        self.parents = parents
        self._sink = S3ParquetSink(s3_client, settings)

    # ------------------------------------------------------------------ keys
    def _control(self, path: str) -> str:
        return f"{self.settings.output_prefix('_control')}{path}"

    def commits_prefix(self, shard_id: str) -> str:
        return self._control(f"commits/{shard_id}/")

    def snapshot_pointer(self, shard_id: str) -> str:
        return self._control(f"snapshots/{shard_id}/latest.json")

    # ------------------------------------------------------------------ snapshots
    def write_snapshot(self, state: CustomerState) -> str | None:
        """Tables as Parquet, then the pointer; the previous snapshot is deleted once the new one is in place."""
        position = state.position()
        if position is None:
            return None
        previous = self._sink.get_json(self.snapshot_pointer(state.shard_id))
        folder = self._control(
            f"snapshots/{state.shard_id}/{int(position.sequence_number):0{SEQUENCE_DIGITS}d}-"
            f"{position.sub_sequence_number}/"
        )
        keys = {}
        for table, data in state.export_tables().items():
            keys[table] = f"{folder}{table}.parquet"
            self._sink.put_parquet(keys[table], data)
        as_of = state.as_of()
        pointer = {
            "shard_id": state.shard_id,
            "sequence_number": position.sequence_number,
            "sub_sequence_number": position.sub_sequence_number,
            "as_of": as_of.isoformat() if as_of is not None else None,
            "tables": keys,
            "written_at": time.time(),
        }
        self._sink.put_json(self.snapshot_pointer(state.shard_id), pointer)
        if previous and previous.get("tables") and previous["tables"] != keys:
            for key in previous["tables"].values():
                self.s3.delete_object(Bucket=self.bucket, Key=key)
        log.info(
            "snapshot of %d customers at %s",
            state.customer_count(),
            position.sequence_number,
            extra={"shard_id": state.shard_id, "sequence_number": position.sequence_number},
        )
        return self.snapshot_pointer(state.shard_id)

    def _load_snapshot(
        self,
        state: CustomerState,
        pointer: dict[str, Any],
        customer_filter: str | None = None,
        replace: bool = True,
    ) -> None:
        tables = {name: self._sink.get_parquet(key) for name, key in pointer["tables"].items()}
        state.import_tables(tables, customer_filter=customer_filter, replace=replace)

    # ------------------------------------------------------------------ commits
    def commits_after(self, shard_id: str, position: Position | None) -> list[dict[str, Any]]:
        """Commit records of flushes that start after ``position``, in stream order."""
        prefix = self.commits_prefix(shard_id)
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if position is not None:
            arguments["StartAfter"] = (
                f"{prefix}{shard_id}-{int(position.sequence_number):0{SEQUENCE_DIGITS}d}"
            )
        commits = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(**arguments):
            for obj in page.get("Contents", []):
                manifest = self._sink.get_json(obj["Key"])
                if manifest is None:
                    continue
                first = (int(manifest["first_sequence"]), int(manifest.get("first_sub_sequence", 0)))
                if position is None or first > position.sort_key():
                    commits.append(manifest)
        commits.sort(key=lambda m: (int(m["first_sequence"]), int(m.get("first_sub_sequence", 0))))
        return commits

    def _apply_commits(
        self, state: CustomerState, commits: list[dict[str, Any]], report: RestoreReport
    ) -> None:
        for manifest in commits:
            keys = manifest["files"].get("events", [])
            tables = [self._sink.get_parquet(key) for key in keys]
            events = pa.concat_tables(tables) if tables else EVENTS_SCHEMA.empty_table()
            position = Position(manifest["last_sequence"], int(manifest["last_sub_sequence"]))
            state.apply_events(events, position)
            report.commits_applied += 1
            report.events_applied += events.num_rows

    # ------------------------------------------------------------------ restore
    def restore(self, state: CustomerState) -> RestoreReport:
        """Make ``state`` reflect every committed flush of its shard (see the module docstring)."""
        started = time.perf_counter()
        shard_id = state.shard_id
        local = state.position()
        report = RestoreReport(source="local")
        if local is None:
            pointer = self._sink.get_json(self.snapshot_pointer(shard_id))
            if pointer is not None:
                self._load_snapshot(state, pointer)
                local = Position(pointer["sequence_number"], int(pointer["sub_sequence_number"]))
                state.set_position(local, pointer["as_of"])
                report.source = "snapshot"
        commits = self.commits_after(shard_id, local)
        if local is None and not commits:
            report.source = self._start_from_parents(state)
        self._apply_commits(state, commits, report)
        report.seconds = time.perf_counter() - started
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

    def _start_from_parents(self, state: CustomerState) -> str:
        """A child shard: its parents' final state, restricted to the customers that now hash to this shard."""
        parents = self.parents(state.shard_id) if self.parents else []
        if not parents:
            return "empty"
        as_of_values: list[datetime | None] = []
        for index, parent in enumerate(parents):
            parent_state = CustomerState(parent.shard_id)
            try:
                self.restore(parent_state)  # snapshot + commits of the parent, up to its SHARD_END flush
                tables = parent_state.export_tables()
                as_of_values.append(parent_state.as_of())
            finally:
                parent_state.close()
            in_range = (
                f"CAST('0x' || md5(customer_id) AS UHUGEINT) BETWEEN CAST('{parent.child_start_hash}' AS UHUGEINT) "
                f"AND CAST('{parent.child_end_hash}' AS UHUGEINT)"
            )
            state.import_tables(tables, customer_filter=in_range, replace=index == 0)
        known = [value for value in as_of_values if value is not None]
        # Before any record of its own, a child stands "before the first sequence number" of the shard.
        state.set_position(Position("0", -1), max(known) if known else None)
        return "parents"


def kinesis_parent_lookup(kinesis: Any, stream_name: str) -> ParentLookup:
    """Parents of a shard from ListShards (closed shards stay listed for the stream's retention period)."""

    def lookup(shard_id: str) -> list[ParentShard]:
        response = kinesis.list_shards(StreamName=stream_name)
        shards = list(response["Shards"])
        while response.get("NextToken"):
            response = kinesis.list_shards(NextToken=response["NextToken"])
            shards += response["Shards"]
        by_id = {s["ShardId"]: s for s in shards}
        child = by_id.get(shard_id)
        if child is None:
            return []
        start = int(child["HashKeyRange"]["StartingHashKey"])
        end = int(child["HashKeyRange"]["EndingHashKey"])
        parent_ids = [child.get("ParentShardId"), child.get("AdjacentParentShardId")]
        return [ParentShard(pid, start, end) for pid in parent_ids if pid and pid in by_id]

    return lookup
