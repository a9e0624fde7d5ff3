"""Restoring a shard's state from S3: lost disk, stale disk, and child shards after a reshard."""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest
from moto import mock_aws

from aggregators.customer_state import CustomerState, StateOptions
from consumer import shard_processor
from consumer.s3_sink import S3ParquetSink
from consumer.shard_processor import FlushPolicy, RawRecord, ShardProcessor
from consumer.state_recovery import ParentShard, StateRecovery, kinesis_parent_lookup
from producer.generator import ClickstreamGenerator
from producer.kinesis_put import partition_key_for
from runtime.settings import Settings, load_settings
from schemas.control import SnapshotPointer
from schemas.positions import BEFORE_FIRST_RECORD, Position, chain_position
from tests.moto_support import WriteLandsThen412
from tests.parquet_support import dictionary_columns

SHARD = "shardId-000000000000"
ARRIVAL_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)


class RecordingCheckpointer:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, int | None]] = []

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        self.calls.append((sequence_number, sub_sequence_number))


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Settings]]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="recovery-bucket")
        yield s3, load_settings(bucket="recovery-bucket", prefix="rfm")


def _records(customers: int, events: int, seed: int, first_sequence: int = 1) -> list[RawRecord]:
    payloads = list(ClickstreamGenerator(customers, events, seed, duplicate_rate=0.02).events())
    return [
        RawRecord(str(first_sequence + i), 0, partition_key_for(data), ARRIVAL_MS, data)
        for i, data in enumerate(payloads)
    ]


def _processor(
    s3: Any,
    settings: Settings,
    database: Path,
    snapshot_every: int,
    options: StateOptions | None = None,
    *,
    shard_id: str = SHARD,
    recovery: StateRecovery | None = None,
    max_records: int = 500,
) -> ShardProcessor:
    state = CustomerState(shard_id, database, options=options)
    return ShardProcessor(
        shard_id,
        state,
        S3ParquetSink(s3, settings),
        FlushPolicy(max_records=max_records, max_bytes=10**9, max_seconds=10**6),
        recovery=recovery or StateRecovery(s3, settings),
        snapshot_every_flushes=snapshot_every,
    )


def _ended_parent(s3: Any, settings: Settings, tmp_path: Path, seed: int, events: int) -> ShardProcessor:
    """SHARD processed, then closed by a reshard: flushed, snapshotted, at SHARD_END."""
    parent = _processor(s3, settings, tmp_path / "parent.journal", snapshot_every=10**6)
    parent.start("TRIM_HORIZON")
    _feed(parent, _records(40, events, seed=seed))
    parent.on_shard_ended(RecordingCheckpointer())
    return parent


def _feed(processor: ShardProcessor, records: list[RawRecord]) -> None:
    checkpointer = RecordingCheckpointer()
    for start in range(0, len(records), 200):
        processor.on_records(records[start : start + 200], 0, checkpointer)
    processor.flush(checkpointer, reason="test")


def _rows(state: CustomerState) -> list[dict[str, Any]]:
    return state.snapshot_rows().drop_columns(["updated_through_sequence"]).to_pylist()


def test_lost_disk_is_restored_from_snapshot_plus_later_commits(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=4)
    original.start("TRIM_HORIZON")
    _feed(original, _records(60, 3_000, seed=1))
    assert original.metrics.flushes > 4 and original.metrics.flushes % 4, (
        "some commits follow the last snapshot"
    )
    expected = _rows(original.state)

    fresh = _processor(s3, settings, tmp_path / "empty.journal", snapshot_every=4)
    report = StateRecovery(s3, settings).restore(fresh.state)
    assert report.source == "snapshot"
    assert 0 < report.commits_applied < original.metrics.flushes, "only the commits after the snapshot"
    assert _rows(fresh.state) == expected
    assert fresh.state.position() == original.state.position()


def test_restore_without_snapshot_replays_every_commit(s3_env: tuple[Any, Settings], tmp_path: Path) -> None:
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=10**6)
    original.start("TRIM_HORIZON")
    _feed(original, _records(40, 1_500, seed=2))
    fresh = CustomerState(SHARD, tmp_path / "b.journal")
    report = StateRecovery(s3, settings).restore(fresh)
    assert report.source == "empty" and report.commits_applied == original.metrics.flushes
    assert _rows(fresh) == _rows(original.state)


def test_a_copy_of_a_commit_record_under_another_name_does_not_stop_a_restore(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Copies put in a shard's commit folder by hand (``start-backup.json``, or a commit's record under another
    commit's name) are no commits: the restore skips them, saying so, and the shard is processed (a refusal, not
    retried, made the shard processor fail on every start)."""
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=10**6)
    original.start("TRIM_HORIZON")
    _feed(original, _records(40, 1_500, seed=2))
    layout = settings.layout
    start = layout.commit_key(SHARD, None)
    for copy in (
        start.replace("start.json", "start-backup.json"),
        layout.commit_key(SHARD, Position("999999", 0)),
    ):
        s3.copy_object(Bucket=settings.bucket, Key=copy, CopySource={"Bucket": settings.bucket, "Key": start})
    fresh = CustomerState(SHARD, tmp_path / "b.journal")
    with caplog.at_level(logging.WARNING):
        report = StateRecovery(s3, settings).restore(fresh)
    assert report.source == "empty" and report.commits_applied == original.metrics.flushes
    assert _rows(fresh) == _rows(original.state)
    assert caplog.text.count("skipped; move it out of") == 2, caplog.text


def test_stale_local_state_catches_up_with_commits_made_elsewhere(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    s3, settings = s3_env
    records = _records(50, 2_000, seed=3)
    first = _processor(s3, settings, tmp_path / "stale.journal", snapshot_every=10**6)
    first.start("TRIM_HORIZON")
    _feed(first, records[:800])
    first.state.close()
    shutil.copytree(tmp_path / "stale.journal", tmp_path / "stale-copy.journal")

    # another worker (its own disk) continues the shard
    second = _processor(s3, settings, tmp_path / "stale.journal", snapshot_every=10**6)
    second.start("800")
    _feed(second, records[800:])

    behind = CustomerState(SHARD, tmp_path / "stale-copy.journal")
    report = StateRecovery(s3, settings).restore(behind)
    assert report.source == "local" and report.commits_applied >= 1
    assert _rows(behind) == _rows(second.state)


def test_after_a_crash_the_restore_re_applies_what_the_local_file_had_not_written_yet(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """The worker writes its local file every CLICKSTREAM_STATE_SYNC_RECORDS: a kill in between leaves the file
    behind the commit chain, on it, and the restore catches it up from S3."""
    s3, settings = s3_env
    options = StateOptions(sync_every_records=1_000, sync_every_seconds=3600)
    path = tmp_path / "shard.journal"
    original = _processor(s3, settings, path, snapshot_every=10**6, options=options)
    original.start("TRIM_HORIZON")
    # flushes of 600, 600, 600, 200: the file is written at 1,200
    _feed(original, _records(50, 2_000, seed=4))
    expected, tip = _rows(original.state), original.state.position()
    original.state.close(sync=False)  # killed: what the state had queued for the file is gone

    reopened = CustomerState(SHARD, path, options=options)
    behind = reopened.position()
    assert behind is not None and tip is not None and behind < tip, "the file stopped at its last write"
    report = StateRecovery(s3, settings).restore(reopened)
    assert report.source == "local" and report.commits_applied == 2
    assert reopened.position() == tip
    assert _rows(reopened) == expected


def _hash(customer_id: str) -> int:
    return int(hashlib.md5(customer_id.encode(), usedforsecurity=False).hexdigest(), 16)


def test_child_shards_start_from_their_parents_customers_in_their_hash_range(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    s3, settings = s3_env
    parent = _processor(s3, settings, tmp_path / "parent.journal", snapshot_every=10**6)
    parent.start("TRIM_HORIZON")
    _feed(parent, _records(80, 2_000, seed=4))
    parent.on_shard_ended(RecordingCheckpointer())  # flush + final snapshot before SHARD_END
    parent_rows = {row["customer_id"]: row for row in _rows(parent.state)}

    middle = 2**127
    children = {
        "shardId-000000000001": ParentShard(SHARD, 0, middle - 1),
        "shardId-000000000002": ParentShard(SHARD, middle, 2**128 - 1),
    }
    seen: set[str] = set()
    for child_id, parent_info in children.items():
        recovery = StateRecovery(s3, settings, parents=lambda _id, p=parent_info: [p])
        child = CustomerState(child_id, tmp_path / f"{child_id}.journal")
        assert recovery.restore(child).source == "parents"
        rows = {row["customer_id"]: row for row in _rows(child)}
        assert all(parent_info.child_start_hash <= _hash(c) <= parent_info.child_end_hash for c in rows)
        for customer, row in rows.items():
            want = dict(parent_rows[customer], shard_id=child_id)
            assert row == want
        seen |= set(rows)
        assert child.as_of() == parent.state.as_of()
        assert child.position() is not None and int(child.position().sequence_number) == 0
    assert seen == set(parent_rows), "every customer continues in exactly one child"


def test_a_childs_local_state_off_its_chain_is_not_said_to_have_nothing_committed(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A child shard's first snapshot (its parents' customers) is at no record yet: its restore found no commit
    and said "nothing is committed for this shard" although a snapshot was there."""
    s3, settings = s3_env
    _ended_parent(s3, settings, tmp_path, seed=4, events=1_000)
    child_id = "shardId-000000000001"
    recovery = StateRecovery(s3, settings, parents=lambda _id: [ParentShard(SHARD, 0, 2**128 - 1)])
    child = _processor(s3, settings, tmp_path / "child.journal", 10**6, shard_id=child_id, recovery=recovery)
    child.start("TRIM_HORIZON")  # inherits, and snapshots what it inherited
    assert recovery._read_pointer(child_id)[0] is not None, "the child's first snapshot"
    leftover = CustomerState(child_id, tmp_path / "leftover.journal")
    leftover.set_position(Position("123456", 0), None)
    with caplog.at_level(logging.WARNING):
        recovery.restore(leftover)
    assert "is not on the S3 commit chain" in caplog.text and "nothing is committed" not in caplog.text


def test_a_child_settles_what_a_late_attempt_of_its_closed_parent_left(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """A closed parent has no next commit to settle a late attempt (a paused writer that resumed after the parent's
    last flush, wrote its intent and files, and died): its files stayed for good under the prefix, seen by every
    reader that scans it. The child settles them as it takes over from the parent."""
    from schemas.control import FlushIntent
    from schemas.layout import FlushName

    s3, settings = s3_env
    parent = _processor(s3, settings, tmp_path / "parent.journal", snapshot_every=10**6)
    parent.start("TRIM_HORIZON")
    _feed(parent, _records(40, 1_000, seed=6))
    parent.on_shard_ended(RecordingCheckpointer())
    sink = parent.sink
    # the late attempt continued from the chain's start, which the parent's first commit holds
    late = FlushName(SHARD, Position("1", 0), Position("1000", 0), "late0attempt")
    leftover = sink.layout.data_key("events", datetime(2026, 6, 1, tzinfo=UTC).date(), late)
    s3.put_object(Bucket=settings.bucket, Key=leftover, Body=b"not committed")
    intent = FlushIntent(SHARD, "late0attempt", None, {"events": [leftover]}, datetime.now(UTC))
    intent_key = sink.layout.intent_key(SHARD, intent.attempt_id)
    s3.put_object(Bucket=settings.bucket, Key=intent_key, Body=intent.to_json())

    child = ShardProcessor(
        "shardId-000000000001",
        CustomerState("shardId-000000000001", tmp_path / "child.journal"),
        S3ParquetSink(s3, settings),
        FlushPolicy(max_records=500, max_bytes=10**9, max_seconds=10**6),
        recovery=StateRecovery(s3, settings, parents=lambda _id: [ParentShard(SHARD, 0, 2**128 - 1)]),
    )
    child.start("TRIM_HORIZON")
    assert child.state.customer_count() == parent.state.customer_count() > 0, "the child inherited its parent"
    left = {obj["Key"] for obj in s3.list_objects_v2(Bucket=settings.bucket).get("Contents", [])}
    assert leftover not in left and intent_key not in left, "the late attempt's files and intent are deleted"
    assert any(key.endswith(".parquet") and "/events/" in key for key in left), "committed files are kept"


def test_child_of_a_merge_takes_both_parents(s3_env: tuple[Any, Settings], tmp_path: Path) -> None:
    s3, settings = s3_env
    parents = []
    for index, seed in ((1, 5), (2, 6)):
        shard = f"shardId-00000000000{index}"
        state = CustomerState(shard, tmp_path / f"{shard}.journal")
        processor = ShardProcessor(
            shard,
            state,
            S3ParquetSink(s3, settings),
            FlushPolicy(500, 10**9, 10**6),
            recovery=StateRecovery(s3, settings),
        )
        processor.start("TRIM_HORIZON")
        # disjoint customers per parent: offset the generated ids
        records = [
            RawRecord(
                r.sequence_number,
                0,
                r.partition_key + f"-p{index}",
                r.arrival_millis,
                r.data.replace(r.partition_key.encode(), (r.partition_key + f"-p{index}").encode()),
            )
            for r in _records(30, 800, seed=seed)
        ]
        _feed(processor, records)
        processor.on_shard_ended(RecordingCheckpointer())
        parents.append((shard, state))
    lookup = [ParentShard(shard, 0, 2**128 - 1) for shard, _ in parents]
    child_id = "shardId-000000000003"
    child = CustomerState(child_id, tmp_path / "child.journal")
    StateRecovery(s3, settings, parents=lambda _id: lookup).restore(child)

    # every parent's customers with their whole rows (as of the later parent's high-water mark)
    as_of = max(state.as_of() for _, state in parents)
    assert as_of is not None and child.as_of() == as_of
    first = parents[0][1].as_of()
    assert first is not None and first != as_of, "the parents' marks differ, so taking the later one is shown"
    moved = ("as_of", "T", "shard_id")  # the observation end and the owner change with the shard
    expected = {
        row["customer_id"]: {k: v for k, v in row.items() if k not in moved}
        for _, state in parents
        for row in _rows(state)
    }
    rows = {row["customer_id"]: row for row in _rows(child)}
    assert {c: {k: v for k, v in row.items() if k not in moved} for c, row in rows.items()} == expected
    assert {row["shard_id"] for row in rows.values()} == {child_id}
    assert sum(state.event_id_count() for _, state in parents) == child.event_id_count() > 0, (
        "both parents' remembered event ids: a re-send of either parent's events is still a duplicate"
    )


def test_a_missing_events_file_is_not_blamed_on_the_snapshot(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a snapshot's own table sends the restore to the chain's start; a commit's events file that is gone
    is raised as it is (the rebuild would need it too), with no SnapshotUnreadable to mislead."""
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=2)
    original.start("TRIM_HORIZON")
    _feed(original, _records(40, 2_500, seed=12))
    pointer = _latest_snapshot(s3, settings)
    after = StateRecovery(s3, settings).chain_from(SHARD, chain_position(pointer.position))
    assert after, "some commits follow the snapshot"
    s3.delete_object(Bucket="recovery-bucket", Key=after[0].files["events"][0])
    with caplog.at_level(logging.INFO), pytest.raises(FileNotFoundError):
        StateRecovery(s3, settings).restore(CustomerState(SHARD, tmp_path / "fresh.journal"))
    assert not [r for r in caplog.records if "SnapshotUnreadable" in getattr(r, "emf", {})]


def _record_snapshots(processor: ShardProcessor) -> list[int]:
    """The flush count at each snapshot ``processor`` writes from now on."""
    assert processor.recovery is not None
    written: list[int] = []
    write_snapshot = processor.recovery.write_snapshot

    def recording(state: CustomerState) -> Any:
        written.append(processor.metrics.flushes)
        return write_snapshot(state)

    processor.recovery.write_snapshot = recording  # type: ignore[method-assign]
    return written


def _latest_snapshot(s3: Any, settings: Settings) -> SnapshotPointer:
    pointer, _ = StateRecovery(s3, settings)._read_pointer(SHARD)
    assert pointer is not None, "a snapshot was written"
    return pointer


def test_snapshot_replaces_the_previous_one(s3_env: tuple[Any, Settings], tmp_path: Path) -> None:
    s3, settings = s3_env
    processor = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=2)
    written = _record_snapshots(processor)
    processor.start("TRIM_HORIZON")
    _feed(processor, _records(30, 2_500, seed=7))
    assert len(written) >= 2, f"snapshots after flushes {written}: a later one is to replace an earlier one"
    keys = [
        obj["Key"]
        for obj in s3.list_objects_v2(Bucket="recovery-bucket", Prefix="rfm/_control/snapshots/").get(
            "Contents", []
        )
    ]
    folders = {key.rsplit("/", 1)[0] for key in keys if key.endswith(".parquet")}
    assert len(folders) == 1, "old snapshots are deleted once the new pointer is written"
    assert any(key.endswith("latest.json") for key in keys)
    pointer = _latest_snapshot(s3, settings)
    assert {key.rsplit("/", 1)[0] for key in pointer.tables.values()} == folders, "latest.json names it"
    after = StateRecovery(s3, settings).chain_from(SHARD, chain_position(pointer.position))
    assert len(after) == processor.metrics.flushes - written[-1], "latest.json is the last snapshot written"


class _BeforeCall:
    """A real S3 client; ``before[method]`` runs once, before the next call of that method its predicate accepts."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.before: dict[str, tuple[Any, Any]] = {}  # method -> (predicate on the call's kwargs, action)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in ("put_object", "delete_objects"):
            return method

        def call(**kwargs: Any) -> Any:
            hook = self.before.get(name)
            if hook is not None and hook[0](kwargs):
                del self.before[name]
                hook[1]()
            return method(**kwargs)

        return call


def _snapshot_keys(s3: Any) -> set[str]:
    listing = s3.list_objects_v2(Bucket="recovery-bucket", Prefix="rfm/_control/snapshots/")
    return {obj["Key"] for obj in listing.get("Contents", [])}


def test_a_snapshot_whose_pointer_write_landed_unanswered_is_kept_and_replaces_the_old_one(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry's 412 read as another writer's pointer: the snapshot was said dropped, and the tables it replaced
    stayed until the next one."""
    s3, settings = s3_env
    owner = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=10**6)
    owner.start("TRIM_HORIZON")
    records = _records(30, 1_000, seed=13)
    _feed(owner, records[:500])
    assert StateRecovery(s3, settings).write_snapshot(owner.state) is not None
    _feed(owner, records[500:])
    flaky = WriteLandsThen412(s3, StateRecovery(s3, settings).layout.snapshot_pointer_key(SHARD))
    with caplog.at_level(logging.INFO, logger="consumer.state_recovery"):
        pointer = StateRecovery(flaky, settings).write_snapshot(owner.state)

    assert flaky.answered, "the pointer's write landed and answered 412"
    assert pointer is not None and pointer.position == owner.state.position()
    assert "dropped" not in caplog.text
    folders = {key.rsplit("/", 1)[0] for key in _snapshot_keys(s3) if key.endswith(".parquet")}
    assert len(folders) == 1, "the replaced snapshot's tables are deleted"
    assert set(pointer.tables.values()) <= _snapshot_keys(s3)


def test_a_writer_whose_snapshot_lost_deletes_only_its_own_tables(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """Three snapshot writers of one shard (a paused one, then the owners after it): the paused writer at X loses
    its pointer update to a writer at W, and before it tidies up, another reaches X too and moves the pointer
    there. With the tables of both X-writers at the same keys, the loser's tidy-up deleted the tables the pointer
    then named: every restore failed for good (a parent's children never started). (Found by review.)"""
    s3, settings = s3_env
    owner = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=10**6)
    owner.start("TRIM_HORIZON")
    records = _records(30, 1_500, seed=11)
    _feed(owner, records[:1_000])  # two commits: W is the first one's end, X the second's
    at_x = CustomerState(SHARD, tmp_path / "x.journal")
    StateRecovery(s3, settings).restore(at_x)
    chain = StateRecovery(s3, settings).chain_from(SHARD, None)
    assert len(chain) == 2
    at_w = CustomerState(SHARD, tmp_path / "w.journal")
    at_w.apply_events(
        pa.concat_tables([S3ParquetSink(s3, settings).get_parquet(k) for k in chain[0].files["events"]]),
        chain[0].last,
    )
    other = StateRecovery(s3, settings)
    hooked = _BeforeCall(s3)
    paused = StateRecovery(hooked, settings)
    pointer_key = paused.layout.snapshot_pointer_key(SHARD)
    # The paused writer has written its tables at X; before its pointer PUT, another writer snapshots at W ...
    hooked.before["put_object"] = (
        lambda call: call["Key"] == pointer_key,
        lambda: other.write_snapshot(at_w),
    )
    # ... and before the paused one deletes its dropped tables, the shard's next owner snapshots at X.
    hooked.before["delete_objects"] = (lambda call: True, lambda: other.write_snapshot(at_x))
    assert paused.write_snapshot(at_x) is None, "the paused writer's pointer update lost"

    pointer = _latest_snapshot(s3, settings)
    assert pointer.position == at_x.position()
    assert set(pointer.tables.values()) <= _snapshot_keys(s3), "the pointer names only tables that exist"
    assert len({key.rsplit("/", 1)[0] for key in _snapshot_keys(s3) if key.endswith(".parquet")}) == 1
    fresh = CustomerState(SHARD, tmp_path / "fresh.journal")
    assert StateRecovery(s3, settings).restore(fresh).source == "snapshot"
    assert _rows(fresh) == _rows(owner.state)


def test_a_snapshot_deletes_the_tables_of_writers_that_died_before_their_pointer(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """A writer killed (kill -9, out of memory) between its tables and its pointer update left them for good: a full
    copy of the shard's state each time. The next snapshot deletes every unnamed table at or before its position;
    a table past it may be a live writer's, about to move the pointer, and stays."""
    s3, settings = s3_env
    owner = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=10**6)
    owner.start("TRIM_HORIZON")
    _feed(owner, _records(30, 1_500, seed=12))
    recovery = StateRecovery(s3, settings)
    position = owner.state.position()
    assert position is not None
    layout = recovery.layout
    before, ahead = (
        Position(str(int(position.sequence_number) - 5), 0),
        Position(str(int(position.sequence_number) + 5), 0),
    )
    # BEFORE_FIRST_RECORD: a child shard's inherited state, snapshot before its first record (a negative sub-sequence
    # number in its key, which the parse used to refuse: those tables stayed for good after every reshard)
    died = {
        layout.snapshot_table_key(SHARD, at, write_id, "customers")
        for at, write_id in (
            (BEFORE_FIRST_RECORD, "deadbeef0000"),
            (before, "deadbeef0001"),
            (position, "deadbeef0002"),
        )
    }
    live = layout.snapshot_table_key(SHARD, ahead, "5eeab1e00003", "customers")
    for key in (*died, live):
        s3.put_object(Bucket="recovery-bucket", Key=key, Body=b"a table")

    pointer = recovery.write_snapshot(owner.state)

    assert pointer is not None and pointer.position == position
    assert _snapshot_keys(s3) == {*pointer.tables.values(), live, layout.snapshot_pointer_key(SHARD)}
    assert {layout.snapshot_table_position(key) for key in died} == {BEFORE_FIRST_RECORD, before, position}
    assert layout.snapshot_table_position(layout.snapshot_pointer_key(SHARD)) is None


def test_a_snapshot_whose_tables_are_gone_is_rebuilt_from_the_chain_start(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pointer naming deleted tables (a lifecycle rule on _control/, a hand, an older version's race) costs a
    slower restore, not a shard that never starts again."""
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=2)
    original.start("TRIM_HORIZON")
    _feed(original, _records(40, 2_500, seed=12))
    pointer = _latest_snapshot(s3, settings)
    s3.delete_object(Bucket="recovery-bucket", Key=pointer.tables["customers"])
    fresh = CustomerState(SHARD, tmp_path / "fresh.journal")
    with caplog.at_level(logging.INFO):
        report = StateRecovery(s3, settings).restore(fresh)
    assert report.source == "empty" and report.commits_applied == original.metrics.flushes, "from the start"
    assert _rows(fresh) == _rows(original.state)
    assert fresh.position() == original.state.position()
    emitted = [
        r.emf["SnapshotUnreadable"] for r in caplog.records if "SnapshotUnreadable" in getattr(r, "emf", {})
    ]
    assert emitted == [1]
    assert any(
        r.levelno == logging.ERROR and "without the snapshot" in r.getMessage() for r in caplog.records
    )


def test_a_local_state_older_than_a_snapshot_whose_tables_are_gone_is_caught_up_not_thrown_away(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease that moved and came back, its snapshot's tables deleted meanwhile: the local state was reset before
    the tables were found missing, so the fallback re-applied the whole chain instead of the commits after it."""
    s3, settings = s3_env
    records = _records(50, 2_000, seed=21)
    first = _processor(s3, settings, tmp_path / "local.journal", snapshot_every=10**6)
    first.start("TRIM_HORIZON")
    _feed(first, records[:800])
    first_flushes = first.metrics.flushes
    first.state.close()
    shutil.copytree(tmp_path / "local.journal", tmp_path / "local-copy.journal")
    # another worker continues the shard and snapshots it past the local state
    second = _processor(s3, settings, tmp_path / "local.journal", snapshot_every=2)
    second.start("800")
    _feed(second, records[800:])
    pointer = _latest_snapshot(s3, settings)
    assert pointer.position > first.state.position()  # type: ignore[operator]
    s3.delete_object(Bucket="recovery-bucket", Key=pointer.tables["customers"])

    back = CustomerState(SHARD, tmp_path / "local-copy.journal")
    with caplog.at_level(logging.INFO):
        report = StateRecovery(s3, settings).restore(back)
    assert report.source == "local" and report.commits_applied == second.metrics.flushes, (
        f"the commits after the local state, not all {first_flushes + second.metrics.flushes}"
    )
    assert _rows(back) == _rows(second.state)
    assert not any("older than the shard's snapshot" in r.getMessage() for r in caplog.records), "it was used"

    # a local state off the chain (another stream's file, a hand's): discarded, and said so once, not per retry
    caplog.clear()
    foreign = CustomerState(SHARD, tmp_path / "foreign.journal")
    foreign.set_position(Position(first.state.position().sequence_number, 7), None)  # type: ignore[union-attr]
    with caplog.at_level(logging.INFO):
        report = StateRecovery(s3, settings).restore(foreign)
    assert report.source == "empty" and report.discarded_local is not None
    assert _rows(foreign) == _rows(second.state)
    emitted = [r.emf for r in caplog.records if "LocalStateDiscarded" in getattr(r, "emf", {})]
    assert len(emitted) == 1, emitted


def test_a_snapshot_whose_tables_are_gone_is_written_again_at_the_same_position(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """A shard idle at its snapshot's position (or ended) with the tables deleted: the pointer was never replaced,
    as no newer position came, so every restart rebuilt the shard from the chain's start again."""
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=10**6)
    original.start("TRIM_HORIZON")
    _feed(original, _records(40, 1_500, seed=22))
    recovery = StateRecovery(s3, settings)
    assert recovery.write_snapshot(original.state) is not None
    broken = _latest_snapshot(s3, settings)
    s3.delete_object(Bucket="recovery-bucket", Key=broken.tables["customers"])

    restarted = CustomerState(SHARD, tmp_path / "restarted.journal")
    assert recovery.restore(restarted).source == "empty", "rebuilt from the chain's start"
    assert restarted.position() == broken.position
    rewritten = recovery.write_snapshot(restarted)
    assert rewritten is not None and rewritten.position == broken.position
    assert rewritten.tables != broken.tables
    again = CustomerState(SHARD, tmp_path / "again.journal")
    report = recovery.restore(again)
    assert report.source == "snapshot" and report.commits_applied == 0
    assert _rows(again) == _rows(original.state)
    # a usable snapshot at the same position is left as it is
    assert recovery.write_snapshot(again) is None


@pytest.mark.parametrize("damaged", ["pointer", "table"])
def test_an_unreadable_snapshot_is_rebuilt_from_the_chain_start_and_replaced(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture, damaged: str
) -> None:
    """A pointer or a table that is there but not readable (changed by hand, or a table this version cannot
    import) stopped the shard at every restart: the snapshot is a cache, and the chain's start leads to the tip."""
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=10**6)
    original.start("TRIM_HORIZON")
    _feed(original, _records(40, 1_500, seed=23))
    recovery = StateRecovery(s3, settings)
    pointer = recovery.write_snapshot(original.state)
    assert pointer is not None
    key = recovery.layout.snapshot_pointer_key(SHARD) if damaged == "pointer" else pointer.tables["customers"]
    s3.put_object(Bucket="recovery-bucket", Key=key, Body=b"not what it was")

    fresh = CustomerState(SHARD, tmp_path / "fresh.journal")
    with caplog.at_level(logging.INFO):
        report = recovery.restore(fresh)
    assert report.source == "empty" and report.commits_applied == original.metrics.flushes, "from the start"
    assert _rows(fresh) == _rows(original.state)
    assert not any("starting over" in r.getMessage() for r in caplog.records), "no retry of what fails again"
    assert any("SnapshotUnreadable" in getattr(r, "emf", {}) for r in caplog.records)
    if (
        damaged == "pointer"
    ):  # replaced by the next snapshot (a damaged table at an unchanged position is not)
        assert recovery.write_snapshot(fresh) is not None
        report = recovery.restore(CustomerState(SHARD, tmp_path / "again.journal"))
        assert report.source == "snapshot" and report.commits_applied == 0


def test_snapshot_tables_write_ids_and_one_row_per_customer_without_a_dictionary(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """The random event-id halves, session ids and money, and the customer id of the one-row-per-customer table, gain
    nothing from a dictionary (measured: a quarter of a snapshot's write time); repeated customer ids keep theirs."""
    s3, settings = s3_env
    processor = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=1)
    processor.start("TRIM_HORIZON")
    _feed(processor, _records(30, 600, seed=7))
    expected = {  # table: (without a dictionary, with one)
        "customers": ({"customer_id", "revenue_cents", "first_event_at"}, {"events"}),
        "customer_sessions": ({"session_id"}, {"customer_id"}),
        "applied_events": ({"id_high", "id_low"}, {"customer_id"}),
    }
    tables = _latest_snapshot(s3, settings).tables
    for table, (plain, repeated) in expected.items():
        parquet = s3.get_object(Bucket="recovery-bucket", Key=tables[table])["Body"].read()
        dictionary = dictionary_columns(parquet)
        assert not dictionary & plain, table
        assert repeated <= dictionary, table


def test_a_crash_during_restore_is_finished_by_the_next_restore(
    s3_env: tuple[Any, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, settings = s3_env
    original = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=4)
    original.start("TRIM_HORIZON")
    _feed(original, _records(50, 3_000, seed=8))
    assert original.metrics.flushes % 4 >= 2, "at least two commits follow the last snapshot"
    expected = _rows(original.state)

    applied: list[str] = []
    real_apply = CustomerState.apply_events

    def crash_after_first_commit(self: CustomerState, events: pa.Table, position: Any) -> Any:
        if applied:
            raise RuntimeError("process killed during restore")
        applied.append(position.sequence_number)
        return real_apply(self, events, position)

    database = tmp_path / "restoring.journal"
    interrupted = CustomerState(SHARD, database)
    with monkeypatch.context() as patch:
        patch.setattr(CustomerState, "apply_events", crash_after_first_commit)
        with pytest.raises(RuntimeError, match="killed during restore"):
            StateRecovery(s3, settings).restore(interrupted)
    interrupted.close()

    resumed = CustomerState(SHARD, database)  # the same disk, partially caught up
    assert resumed.position() is not None and resumed.position().sequence_number == applied[0]
    report = StateRecovery(s3, settings).restore(resumed)
    assert report.source == "local" and report.commits_applied >= 1
    assert _rows(resumed) == expected


def test_snapshots_wait_for_new_events_in_proportion_to_the_state(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """With a minimum new fraction, a snapshot is due only once the commits since the last one hold that many new
    events against the rows a snapshot writes: fewer snapshots as the state grows, and restores still exact."""
    s3, settings = s3_env
    processor = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=1)
    processor.snapshot_min_new_fraction = 0.5
    written = _record_snapshots(processor)
    processor.start("TRIM_HORIZON")
    records = _records(60, 6_000, seed=5)
    _feed(processor, records)
    flushes = processor.metrics.flushes
    assert written[0] == 1, "the first flush is all new against an empty state"
    gaps = [later - earlier for earlier, later in itertools.pairwise(written)]
    assert 2 <= len(written) < flushes and max(gaps) > 1, "snapshots thin out as the state grows"
    assert written[-1] < flushes, "commits follow the last snapshot"
    fresh = CustomerState(SHARD, tmp_path / "b.journal")
    report = StateRecovery(s3, settings).restore(fresh)
    assert report.source == "snapshot" and report.commits_applied == flushes - written[-1]
    assert _rows(fresh) == _rows(processor.state)


def test_a_stop_soon_after_a_snapshot_writes_none_and_the_next_owner_restores_exactly(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A graceful stop writes the whole state only when the commits since the last snapshot hold enough new events
    (as a periodic snapshot would); otherwise the next owner re-applies those few commits."""
    s3, settings = s3_env
    records = _records(40, 1_600, seed=11)
    processor = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=2)
    processor.snapshot_min_new_fraction = 0.25
    written = _record_snapshots(processor)
    processor.start("TRIM_HORIZON")
    _feed(processor, records[:1_000])
    assert written == [2], "the periodic snapshot, after two flushes"
    snapshot_at = _latest_snapshot(s3, settings).position.sequence_number
    _feed(processor, records[1_000:1_050])  # 50 new events: far less than a quarter of the state's rows
    with caplog.at_level(logging.INFO, logger="consumer.shard_processor"):
        processor.on_shutdown_requested(RecordingCheckpointer())
    assert "no snapshot at this stop" in caplog.text
    expected = _rows(processor.state)
    processor.state.close()
    assert written == [2], "no snapshot at the stop"
    assert _latest_snapshot(s3, settings).position.sequence_number == snapshot_at

    # the next owner, on another host, restores from that snapshot and the commits after it
    fresh = CustomerState(SHARD, tmp_path / "b.journal")
    report = StateRecovery(s3, settings).restore(fresh)
    assert report.source == "snapshot" and report.commits_applied == 1
    assert report.events_since_snapshot == report.events_applied > 0
    assert _rows(fresh) == expected


def _stopping_processor(
    s3: Any,
    settings: Settings,
    tmp_path: Path,
    clock: Callable[[], float],
    snapshot_every: int,
    stop_budget_seconds: float,
) -> ShardProcessor:
    """A processor whose stop has ``stop_budget_seconds`` for its flush and snapshot, on ``clock``."""
    return ShardProcessor(
        SHARD,
        CustomerState(SHARD, tmp_path / "a.journal"),
        S3ParquetSink(s3, settings),
        FlushPolicy(max_records=500, max_bytes=10**9, max_seconds=10**6),
        recovery=StateRecovery(s3, settings),
        snapshot_every_flushes=snapshot_every,
        clock=clock,
        stop_budget_seconds=stop_budget_seconds,
    )


@pytest.mark.parametrize("budget_seconds", [60.0, 0.002])
def test_a_stop_snapshot_is_written_only_when_it_fits_in_the_kcl_grace(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture, budget_seconds: float
) -> None:
    """A large state's stop snapshot ran past the KCL's grace and the worker's stop deadline: the stop ended in an
    error and exit 1 (the checkpoint was made: nothing lost), and the snapshot was lost anyway."""
    s3, settings = s3_env
    records = _records(40, 1_000, seed=12)
    clock = iter(itertools.count(step=0.001))  # a millisecond each time the processor looks
    processor = _stopping_processor(s3, settings, tmp_path, lambda: next(clock), 10**6, budget_seconds)
    written = _record_snapshots(processor)
    processor.start("TRIM_HORIZON")
    _feed(processor, records)
    assert processor.state.row_count() * 1e-6 > 0.001, (
        "the state's expected snapshot time exceeds half the budget"
    )
    with caplog.at_level(logging.WARNING, logger="consumer.shard_processor"):
        processor.on_shutdown_requested(RecordingCheckpointer())
    processor.state.close()

    fits = budget_seconds == 60.0
    assert written == ([processor.metrics.flushes] if fits else [])
    assert ("more than half the" in caplog.text) is not fits, caplog.text
    assert (StateRecovery(s3, settings)._read_pointer(SHARD)[0] is not None) is fits


def test_a_restarted_owner_counts_the_commits_since_the_snapshot_toward_its_stop_snapshot(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """The events committed after the last snapshot by earlier runs count: a run that applies nothing itself still
    writes the snapshot at its stop when those are enough."""
    s3, settings = s3_env
    records = _records(40, 1_600, seed=11)
    first = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=2)
    first.snapshot_min_new_fraction = 0.25
    first.start("TRIM_HORIZON")
    _feed(first, records[:1_000])
    _feed(first, records[1_000:1_050])
    first.on_shutdown_requested(RecordingCheckpointer())
    first.state.close()
    # the same disk: the state is local, 50 events past the snapshot, and half a percent of its rows is enough now
    second = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=2)
    second.snapshot_min_new_fraction = 0.005
    written = _record_snapshots(second)
    second.start(records[1_049].sequence_number)
    second.on_shutdown_requested(RecordingCheckpointer())
    second.state.close()
    assert written == [0], "a snapshot at the stop, with no flush of its own"
    assert _latest_snapshot(s3, settings).position.sequence_number == records[1_049].sequence_number


def test_a_failed_snapshot_is_written_at_the_stop(s3_env: tuple[Any, Settings], tmp_path: Path) -> None:
    """A periodic snapshot that fails keeps its count of new events, so the stop writes it."""
    s3, settings = s3_env
    records = _records(40, 1_600, seed=11)
    processor = _processor(s3, settings, tmp_path / "a.journal", snapshot_every=1)
    processor.snapshot_min_new_fraction = 0.0
    assert processor.recovery is not None
    write_snapshot = processor.recovery.write_snapshot
    attempts: list[int] = []
    s3_down = True

    def failing_after_the_first(state: CustomerState) -> Any:
        attempts.append(processor.metrics.flushes)
        if s3_down and len(attempts) > 1:
            raise OSError("S3 unavailable")
        return write_snapshot(state)

    processor.recovery.write_snapshot = failing_after_the_first  # type: ignore[method-assign]
    processor.start("TRIM_HORIZON")
    _feed(processor, records)
    flushes = processor.metrics.flushes
    assert len(attempts) >= 2 and attempts[-1] <= flushes, "a periodic snapshot failed"
    s3_down = False
    tried = len(attempts)
    processor.on_shutdown_requested(RecordingCheckpointer())
    processor.state.close()
    assert len(attempts) == tried + 1, "written at the stop"
    assert _latest_snapshot(s3, settings).position.sequence_number == records[-1].sequence_number


def test_a_child_keeps_its_inheritance_after_its_parents_leave_list_shards(
    s3_env: tuple[Any, Settings], tmp_path: Path
) -> None:
    """Parents stay listed only for the stream's retention: a child that crashes later, with no local file and
    no snapshot of its own flushes yet, must still start from its parents' state, not from nothing."""
    s3, settings = s3_env
    _ended_parent(s3, settings, tmp_path, seed=7, events=1_500)
    child_id = "shardId-000000000001"
    listed = [ParentShard(SHARD, 0, 2**128 - 1)]
    child = _processor(
        s3,
        settings,
        tmp_path / "child.journal",
        10**6,
        shard_id=child_id,
        recovery=StateRecovery(s3, settings, parents=lambda _id: listed),
        max_records=300,
    )
    child.start("TRIM_HORIZON")
    own = _records(40, 600, seed=8)
    _feed(child, own)
    assert child.metrics.flushes >= 2
    expected = _rows(child.state)
    child.state.close(sync=False)  # the child's process is killed; its host and local file are gone with it
    listed.clear()  # ... and its parent has left ListShards since

    fresh = CustomerState(child_id, tmp_path / "new-host.journal")
    report = StateRecovery(s3, settings, parents=lambda _id: list(listed)).restore(fresh)

    assert report.source == "snapshot" and report.has_snapshot, (
        "a snapshot at the child's start counts as one"
    )
    assert _rows(fresh) == expected
    assert sum(row["events"] for row in expected) > len(own), "the parent's events are in it"


def test_parent_lookup_reads_list_shards_and_keeps_parents_that_are_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    whole = {"StartingHashKey": "0", "EndingHashKey": str(2**128 - 1)}
    child = {"ShardId": "shardId-000000000003", "HashKeyRange": whole}

    class ListShards:
        def __init__(self, shards: list[dict[str, Any]]) -> None:
            self.shards = shards

        def list_shards(self, **_: Any) -> dict[str, Any]:
            return {"Shards": self.shards}

    merged = {
        **child,
        "ParentShardId": "shardId-000000000001",
        "AdjacentParentShardId": "shardId-000000000002",
    }
    one_listed = [merged, {"ShardId": "shardId-000000000001", "HashKeyRange": whole}]
    found = kinesis_parent_lookup(ListShards(one_listed), "stream")("shardId-000000000003")
    # a parent past the retention is still a parent: its state is on S3, taken by the child's own range
    assert found == [
        ParentShard("shardId-000000000001", 0, 2**128 - 1),
        ParentShard("shardId-000000000002", 0, 2**128 - 1, listed=False),
    ]
    assert kinesis_parent_lookup(ListShards([child]), "stream")("shardId-000000000003") == []
    assert "not in ListShards" not in caplog.text, "an original shard, listed: no parents, nothing to say"
    with caplog.at_level(logging.WARNING, logger="consumer.state_recovery"):
        assert kinesis_parent_lookup(ListShards([]), "stream")("shardId-000000000003") == []
    assert "shard shardId-000000000003 is not in ListShards of stream" in caplog.text


def test_a_child_takes_its_parents_from_s3_after_they_left_list_shards(
    s3_env: tuple[Any, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A child first started after its parents passed the stream's retention (a worker down that long): the
    parents' snapshots and commits are still on S3, so the child continues their customers' history (it started
    empty, and the current-row views then kept the parents' rows, which had the higher versions)."""
    s3, settings = s3_env
    parent = _processor(s3, settings, tmp_path / "parent.journal", snapshot_every=10**6)
    parent.start("TRIM_HORIZON")
    _feed(parent, _records(40, 1_500, seed=7))
    parent.on_shard_ended(RecordingCheckpointer())
    expected = [dict(row, shard_id="shardId-000000000001") for row in _rows(parent.state)]
    gone = [
        ParentShard(SHARD, 0, 2**128 - 1, listed=False),
        ParentShard("shardId-000000000009", 0, 2**128 - 1, listed=False),
    ]

    child = CustomerState("shardId-000000000001", tmp_path / "child.journal")
    with caplog.at_level(logging.INFO):
        lookup = StateRecovery(s3, settings, parents=lambda shard: gone if shard == child.shard_id else [])
        report = lookup.restore(child)
    assert report.source == "parents"
    assert _rows(child) == expected
    # both parents are said to be past the retention: one restored from the prefix, one it holds nothing of
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("no longer listed" in warning for warning in warnings)
    restored, missing = sorted(warnings, key=lambda warning: "shardId-000000000009" in warning)
    assert SHARD in restored and "restored from this prefix" in restored
    assert "shardId-000000000009" in missing and "holds no snapshot or commit" in missing
    emitted = [
        r.emf["ParentStateMissing"] for r in caplog.records if "ParentStateMissing" in getattr(r, "emf", {})
    ]
    assert emitted == [1, 1]

    # the processor retries a restore that failed after the parents were read (a transient S3 error): the same
    # parents are inherited again, and said to be missing once, not once a try
    caplog.clear()
    again = CustomerState("shardId-000000000001", tmp_path / "child-again.journal")
    with caplog.at_level(logging.INFO):
        lookup.restore(again)
    assert _rows(again) == expected
    assert not [r for r in caplog.records if "ParentStateMissing" in getattr(r, "emf", {})]


@pytest.mark.parametrize("earlier", ["written in 8 s", "written by no one in 8 s"])
def test_the_stop_snapshot_is_judged_by_the_time_the_last_written_one_took(
    s3_env: tuple[Any, Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    earlier: str,
) -> None:
    """A snapshot that stopped early (an equal or newer one existed) is no measure of the next one's time."""
    monkeypatch.setattr(shard_processor, "_TIMED_SNAPSHOT_MIN_ROWS", 1)  # this small state is timed too
    s3, settings = s3_env
    now = [0.0]
    processor = _stopping_processor(s3, settings, tmp_path, lambda: now[0], 2, 10.0)
    assert processor.recovery is not None
    real = processor.recovery.write_snapshot
    snapshots: list[str] = []

    def timed(state: CustomerState) -> Any:
        if not snapshots:  # the periodic one: 8 s, written or not
            snapshots.append(earlier)
            now[0] += 8.0
            return real(state) if earlier == "written in 8 s" else None
        snapshots.append("at the stop")
        return real(state)

    processor.recovery.write_snapshot = timed  # type: ignore[method-assign]
    processor.start("TRIM_HORIZON")
    records = _records(40, 1_200, seed=14)
    _feed(processor, records[:1_000])  # two flushes: the periodic snapshot
    _feed(processor, records[1_000:])  # new events since it: a stop snapshot is due
    with caplog.at_level(logging.WARNING, logger="consumer.shard_processor"):
        processor.on_shutdown_requested(RecordingCheckpointer())
    processor.state.close()

    assert snapshots[0] == earlier
    if earlier == "written in 8 s":  # about 8 s again, more than half the 10 s left
        assert snapshots == [earlier] and "more than half the" in caplog.text
    else:  # no measure: 1 µs a row, a few ms here
        assert snapshots == [earlier, "at the stop"] and "more than half the" not in caplog.text
