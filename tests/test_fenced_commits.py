"""Specification of the fence: two writers of one shard never both make a flush durable, and local state is
never trusted beyond what the S3 commit chain says.

Each test runs two ShardProcessors of the same shard (each with its own DuckDB state, as two workers would) against
one moto S3, interleaving them the way a paused JVM, a lease rebalance during a slow flush or a zombie would. The
outcome is always compared with a run that never had a second writer: every valid event id once in the committed
events/ files, no two commits covering one record, every data file named by a commit, equal state.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError

from aggregators.customer_state import AppliedBatch, CustomerState
from aggregators.state_journal import StateJournal
from aggregators.validation import RecordValidator
from consumer import state_recovery
from consumer.s3_sink import CommitConflict, FlushAttempt, S3ParquetSink
from consumer.shard_processor import FlushPolicy, RawRecord, RecordBuffer, ShardProcessor
from consumer.state_recovery import StateRecovery, open_shard_state
from runtime.settings import Settings, load_settings
from schemas.control import CommitRecord
from schemas.layout import FlushName
from schemas.positions import Position
from tests.moto_support import isolate_environment, moto_bucket
from tests.test_shard_processor import (
    BUCKET,
    NEVER,
    PREFIX,
    SHARD,
    FaultyS3,
    RecordingCheckpointer,
    SleepRecorder,
    applied_once,
    client_error,
    commit_records,
    committed_event_ids,
    data_keys,
    intents,
    keys_under,
    no_sleep,
    payloads,
    to_records,
    valid_event_ids,
)

EVERY = FlushPolicy(max_records=20, max_bytes=10**12, max_seconds=10**9)


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    with moto_bucket(BUCKET) as client:
        yield client


@pytest.fixture
def s3(aws: Any) -> Iterator[Any]:
    assert keys_under(aws, f"{PREFIX}/") == set()
    yield aws
    for key in keys_under(aws, f"{PREFIX}/"):
        aws.delete_object(Bucket=BUCKET, Key=key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(bucket=BUCKET, prefix=PREFIX, state_dir=tmp_path / "state")


def writer(
    s3: Any,
    settings: Settings,
    local_dir: Path | None = None,
    policy: FlushPolicy = EVERY,
    *,
    sink: S3ParquetSink | None = None,
    sleep: Callable[[float], None] = no_sleep,
) -> ShardProcessor:
    """A processor wired as in production (recovery from S3), as one worker holding the shard."""
    return ShardProcessor(
        SHARD,
        CustomerState(SHARD, local_dir),
        sink or S3ParquetSink(s3, settings),
        policy,
        clock=lambda: 0.0,
        sleep=sleep,
        max_backoff_seconds=0.01,
        recovery=StateRecovery(s3, settings),
        snapshot_every_flushes=10**6,
    )


def assert_exactly_once(s3: Any, records: list[RawRecord], *states: CustomerState) -> None:
    """The outcome of a run without a second writer: ids once, no overlapping commits, no stray file, same state."""
    assert committed_event_ids(s3) == Counter(dict.fromkeys(valid_event_ids(), 1))
    chain = commit_records(s3)
    for before, after in itertools.pairwise(chain):
        assert after.previous == before.last, "the chain continues from its predecessor's last record"
        assert after.first > before.last, "two commits cover one record"
    committed = {key for record in chain for keys in record.files.values() for key in keys}
    assert data_keys(s3) == committed, "a data file that no commit names"
    expected = applied_once(records).snapshot_rows()
    for state in states:
        assert state.snapshot_rows().equals(expected)
    restored = CustomerState(SHARD)
    StateRecovery(s3, load_settings(bucket=BUCKET, prefix=PREFIX)).restore(restored)
    assert restored.snapshot_rows().equals(expected), "a fresh restore from S3 alone is exact"


class PauseBeforeCommit(S3ParquetSink):
    """Runs ``meanwhile`` once, after this writer's data files are written and before its commit PUT: the window
    in which a paused JVM or a slow S3 lets another worker take the shard over."""

    def __init__(self, s3: Any, settings: Settings, meanwhile: Callable[[], None]) -> None:
        super().__init__(s3, settings)
        self.meanwhile: Callable[[], None] | None = meanwhile

    def _commit(self, attempt: FlushAttempt, record: CommitRecord) -> CommitRecord:
        if self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return super()._commit(attempt, record)


# ---------------------------------------------------------------------------------------------------- two writers
def test_a_paused_owner_loses_the_commit_to_the_new_owner_and_catches_up(s3: Any, settings: Settings) -> None:
    records = to_records(payloads())
    new_owner = writer(s3, settings.model_copy(update={"worker_id": "new-owner"}), policy=NEVER)

    def takeover() -> None:  # the lease moves while the old owner sits between its data files and its commit
        new_owner.start(None)
        new_owner.on_records(records, 0, RecordingCheckpointer())
        new_owner.on_shutdown_requested(RecordingCheckpointer())

    old_owner = writer(s3, settings, policy=NEVER, sink=PauseBeforeCommit(s3, settings, takeover))
    old_owner.start(None)
    old_checkpointer = RecordingCheckpointer()
    old_owner.on_records(records[:35], 0, old_checkpointer)
    old_owner.flush(old_checkpointer, reason="test")

    assert old_owner.metrics.commit_conflicts == 1
    assert [c.worker_id for c in commit_records(s3)] == ["new-owner"], (
        "only the new owner's flush is committed"
    )
    assert old_checkpointer.calls == [(records[34].sequence_number, 0)], (
        "covered by the winner: checkpoint only"
    )
    assert intents(s3) == [], "the loser deleted its files and its intent"
    assert_exactly_once(s3, records, new_owner.state)
    assert old_owner.state.position() == new_owner.state.position(), "the loser caught up from S3"
    position = new_owner.state.position()
    assert position is not None and old_owner.metrics.applied_sequence == position.sequence_number, (
        "the loser's status reports the position it caught up to"
    )


class StaysBehind(StateRecovery):
    """A restore that ends short of the chain's tip (as a listing that missed the tip would)."""

    def restore(self, state: CustomerState, checkpoint: str | None = None, checkpoint_sub: int = 0) -> Any:
        return None


def test_a_flush_that_keeps_losing_the_commit_race_stops_instead_of_spinning(
    s3: Any, settings: Settings
) -> None:
    """Each lost race restored the state and tried again, with no pause and no limit: a restore that ended short
    of the tip turned the processor into a hot loop of S3 writes, every one refused."""
    from consumer.shard_processor import MAX_LOST_COMMITS_PER_FLUSH

    records = to_records(payloads())
    ahead = writer(s3, settings.model_copy(update={"worker_id": "ahead"}), policy=NEVER)
    ahead.start(None)
    ahead.on_records(records, 0, RecordingCheckpointer())
    ahead.on_shutdown_requested(RecordingCheckpointer())
    sleeps: list[float] = []
    behind = writer(s3, settings, policy=NEVER, sleep=sleeps.append)
    behind.recovery = StaysBehind(s3, settings)
    behind.on_records(records[:35], 0, RecordingCheckpointer())

    with pytest.raises(RuntimeError, match="lost the commit race 8 times in a row"):
        behind.flush(RecordingCheckpointer(), reason="test")
    assert behind.metrics.commit_conflicts == MAX_LOST_COMMITS_PER_FLUSH
    # no pause after the first loss (the usual one: the flush then commits), one after each other but the last
    assert len(sleeps) == MAX_LOST_COMMITS_PER_FLUSH - 2 and all(pause > 0 for pause in sleeps)
    assert intents(s3) == [], "every losing attempt deleted its files and its intent"
    assert [c.worker_id for c in commit_records(s3)] == ["ahead"]


def test_a_restore_refuses_a_chain_with_a_hole(s3: Any, settings: Settings) -> None:
    """A commit deleted from the middle of a chain: the restore stopped at the hole, and the next flush could
    take the freed position and commit records that later commits hold already."""
    from consumer.state_recovery import ChainError
    from schemas.layout import OutputLayout

    records = to_records(payloads())
    owner = writer(s3, settings)  # a commit per call
    owner.start(None)
    for start in range(0, 60, 20):
        owner.on_records(records[start : start + 20], 0, RecordingCheckpointer())
    chain = commit_records(s3)
    assert len(chain) == 3
    s3.delete_object(Bucket=BUCKET, Key=OutputLayout(settings.prefix).commit_key(SHARD, chain[1].previous))
    with pytest.raises(ChainError):
        StateRecovery(s3, settings).restore(CustomerState(SHARD))


def test_a_restore_refuses_a_hole_in_the_chain_after_its_snapshot(s3: Any, settings: Settings) -> None:
    """The same hole, after a snapshot: the walk starts at the snapshot's position, and must still stop at the
    hole rather than go on from a later commit."""
    from consumer.state_recovery import ChainError
    from schemas.layout import OutputLayout

    records = to_records(payloads())
    owner = writer(s3, settings)
    owner.start(None)
    for start in range(0, 20, 10):  # a commit per flush
        owner.on_records(records[start : start + 10], 0, RecordingCheckpointer())
        owner.flush(RecordingCheckpointer(), reason="test")
    assert StateRecovery(s3, settings).write_snapshot(owner.state) is not None
    for start in range(20, 60, 10):
        owner.on_records(records[start : start + 10], 0, RecordingCheckpointer())
        owner.flush(RecordingCheckpointer(), reason="test")
    chain = commit_records(s3)
    assert len(chain) == 6
    restored = CustomerState(SHARD)
    assert StateRecovery(s3, settings).restore(restored).commits_applied == 4, "from the snapshot on"
    s3.delete_object(Bucket=BUCKET, Key=OutputLayout(settings.prefix).commit_key(SHARD, chain[4].previous))
    with pytest.raises(ChainError):
        StateRecovery(s3, settings).restore(CustomerState(SHARD))


def test_a_zombie_behind_the_chain_commits_only_records_the_chain_does_not_hold(
    s3: Any, settings: Settings
) -> None:
    records = to_records(payloads())
    zombie = writer(s3, settings, policy=NEVER)
    zombie.start(None)
    zombie.on_records(records[:50], 0, RecordingCheckpointer())  # buffered, not flushed: its JVM is paused
    owner = writer(s3, settings)  # flushes every 20 records
    owner.start(None)
    owner.on_records(records[:20], 0, RecordingCheckpointer())
    owner.on_records(records[20:40], 0, RecordingCheckpointer())
    assert len(commit_records(s3)) == 2

    zombie.flush(RecordingCheckpointer(), reason="test")  # the zombie wakes up with 50 records

    chain = commit_records(s3)
    assert zombie.metrics.commit_conflicts == 1
    assert [(c.first.sequence_number, c.last.sequence_number) for c in chain] == [
        (records[0].sequence_number, records[19].sequence_number),
        (records[20].sequence_number, records[39].sequence_number),
        (records[40].sequence_number, records[49].sequence_number),
    ], "the zombie's retry continues the chain from the owner's tip with only records 40..49"
    owner.on_lease_lost()  # (in the real race the zombie's next checkpoint fails instead; either way:)
    zombie_rest = RecordingCheckpointer()
    zombie.on_records(records[50:], 0, zombie_rest)
    zombie.flush(zombie_rest, reason="test")
    assert_exactly_once(s3, records, zombie.state)


def test_a_zombie_paused_between_its_intent_and_its_data_deletes_the_data_it_wrote_after_losing(
    s3: Any, settings: Settings
) -> None:
    """The owner settles the zombie's intent (deleting the files it names, not written yet) while the zombie is paused
    after its intent PUT; the zombie then writes its data and loses the commit. Only the zombie knows those files."""
    records = to_records(payloads())
    owner = writer(s3, settings)  # flushes every 20 records
    settled: list[bool] = []

    class PausedAfterIntent(S3ParquetSink):
        def put_parquet(self, key: str, table: pa.Table, *, kind: str) -> int:
            if not settled:
                settled.append(True)
                owner.start(None)  # settles intents at start
                owner.on_records(records[:20], 0, RecordingCheckpointer())  # commits, then settles again
                assert not intents(s3), "the zombie's intent was settled before its data exists"
            return super().put_parquet(key, table, kind=kind)

    zombie = writer(s3, settings, policy=NEVER, sink=PausedAfterIntent(s3, settings))
    zombie.start(None)
    zombie.on_records(records[:10], 0, RecordingCheckpointer())
    zombie.flush(RecordingCheckpointer(), reason="test")

    assert settled and zombie.metrics.commit_conflicts == 1
    named = {key for record in commit_records(s3) for keys in record.files.values() for key in keys}
    assert data_keys(s3) == named, "no data file outside the commit chain"


def test_a_commit_put_racing_another_conditional_write_is_retried_not_terminal(
    s3: Any, settings: Settings
) -> None:
    """S3 answers 409 ConditionalRequestConflict when two conditional PUTs of one key overlap: retry, then commit."""
    records = to_records(payloads())
    race = FaultyS3(
        s3, client_error("ConditionalRequestConflict", 409), times=1, key_contains="/_control/commits/"
    )
    sleeps = SleepRecorder()
    processor = writer(s3, settings, sink=S3ParquetSink(race, settings), sleep=sleeps)
    processor.start(None)
    checkpointer = RecordingCheckpointer()
    processor.on_records(records, 0, checkpointer)
    processor.flush(checkpointer, reason="test")
    assert race.failures == 1 and len(sleeps.delays) == 1
    assert checkpointer.calls[-1] == (records[-1].sequence_number, 0)
    assert_exactly_once(s3, records, processor.state)


def test_a_flush_retrying_through_an_s3_outage_loses_to_the_owner_that_took_over(
    s3: Any, settings: Settings
) -> None:
    """A rebalance while a flush retries: the new owner commits during the old owner's backoff."""
    records = to_records(payloads())
    new_owner = writer(s3, settings.model_copy(update={"worker_id": "new-owner"}), policy=NEVER)
    took_over: list[bool] = []

    def during_backoff() -> None:
        if not took_over:
            took_over.append(True)
            new_owner.start(None)
            new_owner.on_records(records[:30], 0, RecordingCheckpointer())
            new_owner.flush(RecordingCheckpointer(), reason="test")

    outage = FaultyS3(s3, client_error("ServiceUnavailable", 503), times=3, key_contains="/events/")
    old_owner = writer(
        s3, settings, policy=NEVER, sink=S3ParquetSink(outage, settings), sleep=SleepRecorder(during_backoff)
    )
    old_owner.start(None)
    old_owner.on_records(records[:45], 0, RecordingCheckpointer())
    old_owner.flush(RecordingCheckpointer(), reason="test")

    assert outage.failures == 3 and took_over
    chain = commit_records(s3)
    assert [c.worker_id for c in chain] == ["new-owner", settings.worker_id], "the old owner commits after it"
    assert chain[1].first == Position(records[30].sequence_number)
    new_owner.on_lease_lost()
    old_owner.on_records(records[45:], 0, RecordingCheckpointer())
    old_owner.flush(RecordingCheckpointer(), reason="test")
    assert_exactly_once(s3, records, old_owner.state)


class CrashOnDiscard(S3ParquetSink):
    def discard_attempt(self, shard_id: str, attempt_id: str, written: Sequence[str] = ()) -> int:
        raise SystemExit("the loser died before deleting its files")


def test_files_of_a_loser_that_died_before_cleaning_up_go_with_the_next_commit(
    s3: Any, settings: Settings
) -> None:
    records = to_records(payloads())
    owner = writer(s3, settings)
    loser_sink = CrashOnDiscard(s3, settings)
    loser = writer(s3, settings, policy=NEVER, sink=loser_sink)
    loser.start(None)
    loser.on_records(records[:10], 0, RecordingCheckpointer())
    owner.start(None)
    # commits the position the loser continues from
    owner.on_records(records[:20], 0, RecordingCheckpointer())

    with pytest.raises(SystemExit):
        loser.flush(RecordingCheckpointer(), reason="test")
    (orphaned,) = intents(s3)
    orphans = {key for keys in orphaned.files.values() for key in keys}
    assert orphans, "the intent names the files the loser wrote"
    assert orphans <= data_keys(s3), "the dead loser's files are still there"

    owner.on_records(records[20:], 0, RecordingCheckpointer())  # its next commit settles the lost attempt

    assert orphans.isdisjoint(data_keys(s3))
    assert intents(s3) == []
    assert_exactly_once(s3, records, owner.state)


def test_the_sink_refuses_a_commit_at_a_taken_position_even_with_identical_content(
    s3: Any, settings: Settings
) -> None:
    """Deterministic data is not enough: two attempts with the same records still get exactly one commit."""
    records = to_records(payloads()[:20])
    first = writer(s3, settings)
    first.start(None)
    first.on_records(records, 0, RecordingCheckpointer())
    state = CustomerState(SHARD)
    with pytest.raises(CommitConflict), state.staged(records_table(records)) as applied:
        S3ParquetSink(s3, settings).write(attempt_of(applied, previous=None, attempt_id="again"), applied)
    assert state.position() is None, "the losing stage was rolled back"
    assert len(commit_records(s3)) == 1


def records_table(records: list[RawRecord]) -> pa.Table:
    buffer = RecordBuffer(SHARD)
    buffer.extend(records, 0.0)
    return buffer.to_table()


def attempt_of(applied: AppliedBatch, previous: Position | None, attempt_id: str) -> FlushAttempt:
    assert applied.first_position is not None and applied.position is not None
    return FlushAttempt(previous, FlushName(SHARD, applied.first_position, applied.position, attempt_id))


# ---------------------------------------------------------------------------------------------------- local state
@pytest.fixture
def recovery_metrics(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the metrics state recovery emits, in order."""
    names: list[str] = []
    monkeypatch.setattr(
        state_recovery, "emit_metrics", lambda metrics, _: names.extend(m.value for m in metrics)
    )
    return names


def test_a_local_state_that_is_not_on_the_chain_is_discarded_and_rebuilt(
    s3: Any, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture, recovery_metrics: list[str]
) -> None:
    records = to_records(payloads())
    owner = writer(s3, settings)
    owner.start(None)
    owner.on_records(records[:20], 0, RecordingCheckpointer())
    owner.on_records(records[20:40], 0, RecordingCheckpointer())
    foreign = CustomerState(SHARD, tmp_path / "foreign.journal")
    foreign.apply(records_table(records[:30]))  # position 29: a flush this prefix never committed

    with caplog.at_level(logging.WARNING):
        report = StateRecovery(s3, settings).restore(foreign)

    assert report.discarded_local == Position(records[29].sequence_number)
    assert report.source == "empty" and report.commits_applied == 2
    assert "not on the S3 commit chain" in caplog.text and recovery_metrics == ["LocalStateDiscarded"]
    assert "nothing is committed for this shard" not in caplog.text  # the shard has commits: no such guess
    assert foreign.snapshot_rows().equals(owner.state.snapshot_rows())


def test_a_local_state_where_nothing_is_committed_says_what_the_usual_cause_is(
    s3: Any, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An emulator restarted under the same state directory (the README's clean slate) warned once a shard that
    its local state was "not on the S3 commit chain", and nothing more, which read as a fault."""
    records = to_records(payloads())
    leftover = CustomerState(SHARD, tmp_path / "leftover.journal")
    leftover.apply(records_table(records[:30]))

    with caplog.at_level(logging.WARNING):
        report = StateRecovery(s3, settings).restore(leftover)

    assert report.source == "empty" and report.discarded_local == Position(records[29].sequence_number)
    assert (
        "not on the S3 commit chain (snapshot at none, tip at the start); rebuilding (nothing is committed"
        in (caplog.text)
    )
    assert "an emulator restarted since?" in caplog.text and leftover.customer_count() == 0


def test_a_local_state_older_than_the_snapshot_is_restored_from_it_without_the_discard_alarm(
    s3: Any, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture, recovery_metrics: list[str]
) -> None:
    """A's journal at 19, the lease to B, which committed to 39 and snapshotted, the lease back to A: a rebalance's
    usual course was logged as "not on the S3 commit chain" and raised LocalStateDiscarded, an alarm on "any"."""
    records = to_records(payloads())
    first = writer(s3, settings, tmp_path / "host-a")
    first.start(None)
    first.on_records(records[:20], 0, RecordingCheckpointer())
    first.on_lease_lost()
    first.state.close()
    second = writer(s3, settings, tmp_path / "host-b")
    second.snapshot_every_flushes = 1
    second.start(records[19].sequence_number)
    second.on_records(records[20:40], 0, RecordingCheckpointer())
    second.on_lease_lost()
    second.state.close()
    back = CustomerState(SHARD, tmp_path / "host-a")
    assert back.position() == Position(records[19].sequence_number), "A's journal holds its own flush"

    with caplog.at_level(logging.INFO, logger="consumer.state_recovery"):
        report = StateRecovery(s3, settings).restore(back)

    assert report.source == "snapshot" and report.snapshot == Position(records[39].sequence_number), report
    assert (
        "older than the shard's snapshot" in caplog.text and "not on the S3 commit chain" not in caplog.text
    )
    assert recovery_metrics == []
    assert back.snapshot_rows().equals(second.state.snapshot_rows())


def damage_journal(journal: Path, damage: str) -> None:
    """A local journal's files cut short, a manifest overwritten, one bit flipped in each data file, or a sync's
    file gone: each as a disk or a hand may leave it."""
    data_files = sorted(journal.glob("sync-*/*.arrow"))
    assert data_files, "nothing to damage"
    for path in data_files:
        content = path.read_bytes()
        if damage == "truncated":
            path.write_bytes(content[: len(content) // 3])
        elif damage == "bit flips":
            flipped = bytearray(content)
            flipped[len(flipped) // 2] ^= 0x01
            path.write_bytes(bytes(flipped))
        elif damage == "missing":
            path.unlink()
    if damage == "garbage":
        for manifest in journal.glob("sync-*/manifest.json"):
            manifest.write_bytes(b"\x00garbage" * 64)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bit flips", "missing"])
def test_an_unreadable_state_file_is_moved_aside_and_the_shard_restored_exactly(
    s3: Any, settings: Settings, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    records = to_records(payloads())
    path = tmp_path / "shards" / f"{SHARD}.journal"
    path.parent.mkdir()
    first = writer(s3, settings, path)
    first.start(None)
    first.on_records(records[:40], 0, RecordingCheckpointer())
    first.state.close()
    damage_journal(path, damage)

    with caplog.at_level(logging.ERROR):
        state = open_shard_state(path, SHARD, RecordValidator(), {"StreamName": "stream"})
    processor = ShardProcessor(
        SHARD,
        state,
        S3ParquetSink(s3, settings),
        EVERY,
        clock=lambda: 0.0,
        sleep=no_sleep,
        recovery=StateRecovery(s3, settings),
    )
    processor.start(records[39].sequence_number)
    processor.on_records(records[40:], 0, RecordingCheckpointer())

    moved = [p for p in path.parent.iterdir() if ".unreadable-" in p.name]
    assert len(moved) == 1 and list(moved[0].glob("sync-*")), "the damaged journal is kept for inspection"
    assert [r.levelname for r in caplog.records if "unreadable" in r.getMessage()] == ["ERROR"]
    assert_exactly_once(s3, records, state)


def test_the_snapshot_pointer_never_moves_backwards(s3: Any, settings: Settings) -> None:
    records = to_records(payloads())
    ahead, behind = writer(s3, settings), writer(s3, settings)
    behind.start(None)
    behind.on_records(records[:20], 0, RecordingCheckpointer())
    ahead.start(None)
    ahead.on_records(records[:40], 0, RecordingCheckpointer())
    recovery = StateRecovery(s3, settings)
    assert recovery.write_snapshot(ahead.state) is not None

    assert recovery.write_snapshot(behind.state) is None

    pointer = recovery._read_pointer(SHARD)[0]
    assert pointer is not None and pointer.position == ahead.state.position()
    snapshot_files = keys_under(s3, f"{PREFIX}/_control/snapshots/")
    assert all(ahead.state.position().key_part() in key for key in snapshot_files if key.endswith(".parquet"))


def test_a_checkpoint_beyond_the_chain_is_reported(
    s3: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    records = to_records(payloads())
    owner = writer(s3, settings)
    owner.start(None)
    owner.on_records(records[:20], 0, RecordingCheckpointer())

    with caplog.at_level(logging.INFO):
        StateRecovery(s3, settings).restore(CustomerState(SHARD), checkpoint=records[50].sequence_number)
        StateRecovery(s3, settings).restore(CustomerState(SHARD), checkpoint=records[19].sequence_number)

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "beyond the last committed record" in errors[0]
    assert [
        r.emf["CheckpointAheadOfCommits"]
        for r in caplog.records
        if "CheckpointAheadOfCommits" in getattr(r, "emf", {})
    ] == [1]


def test_a_local_file_the_disk_refuses_is_reported_once_and_nothing_is_lost(
    s3: Any,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = to_records(payloads())
    owner = writer(s3, settings, tmp_path / "shard.journal")  # flushes every 20 records
    owner.start(None)
    owner.on_records(records[:20], 0, RecordingCheckpointer())

    def disk_full(self: StateJournal, *_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StateJournal, "write", disk_full)
    checkpointer = RecordingCheckpointer()
    with caplog.at_level(logging.INFO):
        owner.on_records(records[20:], 0, checkpointer)
        owner.flush(checkpointer, reason="test")

    assert checkpointer.calls[-1] == (records[-1].sequence_number, 0), "the shard went on to the end"
    assert_exactly_once(s3, records, owner.state)
    failed = [
        r.emf["LocalStateWriteFailed"]
        for r in caplog.records
        if "LocalStateWriteFailed" in getattr(r, "emf", {})
    ]
    assert failed == [1], "reported once, at the flush after it"
    assert "No space left on device" in (owner.metrics.local_state_error or ""), (
        "the status says it while it lasts"
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0]


# ---------------------------------------------------------------------------------------------------- freshness
def test_a_caught_up_shard_flushes_at_once_instead_of_waiting_for_the_age_limit(
    s3: Any, settings: Settings
) -> None:
    records = to_records(payloads()[:7])
    processor = writer(s3, settings, policy=FlushPolicy(10**6, 10**12, 60.0))
    processor.start(None)
    checkpointer = RecordingCheckpointer()
    processor.on_records(records, 2_000, checkpointer)
    processor.on_records([], 500, checkpointer)  # still behind the tip: keep buffering
    assert checkpointer.calls == []

    processor.on_records([], 0, checkpointer)  # nothing more delivered and at the tip: flush now

    assert checkpointer.calls == [(records[-1].sequence_number, 0)]
    (record,) = commit_records(s3)
    assert record.freshness is not None and record.freshness.arrival_to_durable_p99 > 0


def test_memory_goes_back_to_the_os_when_a_flush_finds_the_shard_caught_up_not_while_it_catches_up(
    s3: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import consumer.shard_processor as shard_processor

    released: list[int] = []
    monkeypatch.setattr(shard_processor, "release_free_memory", lambda: released.append(len(released)))
    records = to_records(payloads()[:14])
    processor = writer(s3, settings, policy=FlushPolicy(7, 10**12, 60.0))
    processor.start(None)
    after_restore = len(released)
    checkpointer = RecordingCheckpointer()
    processor.on_records(records[:7], 2_000, checkpointer)  # a flush by size while behind: memory kept
    assert len(checkpointer.calls) == 1 and len(released) == after_restore
    processor.on_records(records[7:10], 0, checkpointer)
    processor.on_records([], 0, checkpointer)  # at the tip: flush now, then give the working memory back
    assert len(checkpointer.calls) == 2 and len(released) == after_restore + 1


def test_with_caught_up_flushes_off_a_caught_up_shard_waits_for_the_limits(
    s3: Any, settings: Settings
) -> None:
    now = [0.0]
    processor = writer(s3, settings, policy=FlushPolicy(10**6, 10**12, 60.0, when_caught_up=False))
    processor.clock = lambda: now[0]
    processor.start(None)
    checkpointer = RecordingCheckpointer()
    processor.on_records(to_records(payloads()[:7]), 0, checkpointer)
    processor.on_records([], 0, checkpointer)
    assert checkpointer.calls == []
    now[0] = 60.0
    processor.on_records([], 0, checkpointer)
    assert len(checkpointer.calls) == 1


def test_a_trickle_at_the_tip_flushes_once_its_oldest_record_has_waited_the_minimum(
    s3: Any, settings: Settings
) -> None:
    """One record every two seconds, each followed by an empty call at the tip: one flush per 10 s, not per record."""
    now = [0.0]
    processor = writer(s3, settings, policy=FlushPolicy(10**6, 10**12, 60.0, caught_up_min_seconds=10.0))
    processor.clock = lambda: now[0]
    processor.start(None)
    checkpointer = RecordingCheckpointer()
    records = to_records(payloads()[:12])
    for record in records:
        processor.on_records([record], 0, checkpointer)
        now[0] += 1.0
        processor.on_records([], 0, checkpointer)
        now[0] += 1.0
    assert [c.records_in for c in commit_records(s3)] == [6, 6]
    assert len(checkpointer.calls) == 2


def test_client_error_412_is_what_the_embedded_s3_answers_to_a_second_create(s3: Any) -> None:
    """The fence relies on S3 refusing a second conditional create; check that the endpoint we test on does."""
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/probe", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/probe", Body=b"2", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/probe")["Body"].read() == b"1"


class BrokenReads:
    """S3 whose GETs of matching keys break off ``times`` times as a dropped connection does: the answer's body
    stops mid-read (botocore's own retries do not cover reading a body)."""

    def __init__(self, client: Any, error: Exception, *, times: int, key_contains: str) -> None:
        self.client, self.error, self.remaining, self.key_contains = client, error, times, key_contains

    def get_object(self, **kwargs: Any) -> Any:
        answer = self.client.get_object(**kwargs)
        if self.key_contains in kwargs["Key"] and self.remaining:
            self.remaining -= 1
            error = self.error

            class Broken:
                def read(self, *_: Any) -> bytes:
                    raise error

            answer["Body"] = Broken()
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.mark.parametrize(
    "error",
    [
        ResponseStreamingError(error=ConnectionResetError("Connection reset by peer")),
        IncompleteReadError(actual_bytes=10, expected_bytes=400),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_connection_dropped_while_reading_the_chain_is_retried(
    s3: Any, settings: Settings, error: Exception
) -> None:
    records = to_records(payloads())
    first = writer(s3, settings)
    first.start(None)
    first.on_records(records[:40], 0, RecordingCheckpointer())
    broken = BrokenReads(s3, error, times=2, key_contains="/_control/commits/")
    sleep = SleepRecorder()

    taker = writer(broken, settings, sink=S3ParquetSink(broken, settings), sleep=sleep)
    taker.start(records[39].sequence_number)  # a new owner restores from the chain
    taker.on_records(records[40:], 0, RecordingCheckpointer())

    assert broken.remaining == 0 and len(sleep.delays) == 2, "both broken reads were retried"
    assert taker.metrics.retries == 2
    assert_exactly_once(s3, records, taker.state)


def test_a_checkpoint_beyond_the_chain_inside_a_kpl_aggregate_is_reported(
    s3: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The KCL checkpoints user records: (S, 5) is beyond a chain ending at (S, 2) though the sequence numbers tie."""
    records = [
        RawRecord("700", sub, record.partition_key, record.arrival_millis, record.data)
        for sub, record in enumerate(to_records(payloads())[:3])
    ]
    owner = writer(s3, settings)
    owner.start(None)
    owner.on_records(records, 0, RecordingCheckpointer())
    owner.flush(RecordingCheckpointer(), reason="test")
    assert owner.state.position() == Position("700", 2)

    with caplog.at_level(logging.INFO):
        StateRecovery(s3, settings).restore(CustomerState(SHARD), checkpoint="700", checkpoint_sub=5)
        StateRecovery(s3, settings).restore(CustomerState(SHARD), checkpoint="700", checkpoint_sub=2)

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "beyond the last committed record" in errors[0]
