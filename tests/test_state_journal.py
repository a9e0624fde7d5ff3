"""The local journal (aggregators/state_journal.py): a sync is read whole or not at all, a sync that replaces hides
what came before it, a damaged file is refused before Arrow parses it, and one process holds it at a time."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, NoReturn

import pyarrow as pa
import pytest

from aggregators import state_journal
from aggregators.customer_state import CustomerState, StateOptions
from aggregators.state_journal import (
    JOURNAL_FORMAT,
    JournalDamagedError,
    JournalLockedError,
    JournalProgress,
    StateJournal,
    read_journal,
)
from aggregators.validation import RecordValidator
from consumer.record_processor import sibling_holding_lock
from consumer.state_recovery import open_shard_state
from schemas.positions import Position
from tests.test_customer_state import SHARD, Stream, _arriving, _three_batches, apply_all, event


def _ids(*values: int) -> pa.Table:
    return pa.table({"idx": pa.array(values, pa.int64())})


def _read_ids(directory: Path) -> list[int]:
    return [
        v
        for table in read_journal(directory).tables.get("applied_events", [])
        for v in table["idx"].to_pylist()
    ]


def test_appended_syncs_read_back_in_order_with_the_last_progress(tmp_path: Path) -> None:
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1, 2)}, JournalProgress(Position("10")), replaces=False)
    journal.write(
        {"applied_events": _ids(3), "customers": _ids(0)}, JournalProgress(Position("20")), replaces=False
    )
    journal.close()

    contents = read_journal(tmp_path / "j")
    assert _read_ids(tmp_path / "j") == [1, 2, 3]
    assert contents.progress == JournalProgress(Position("20"))
    assert sum(table.num_rows for tables in contents.tables.values() for table in tables) == 4


def test_a_sync_that_replaces_hides_and_deletes_the_syncs_before_it(tmp_path: Path) -> None:
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1, 2)}, JournalProgress(), replaces=False)
    older = tmp_path / "older-copy"
    shutil.copytree(tmp_path / "j" / "sync-000000000000", older)
    journal.write({"applied_events": _ids(7)}, JournalProgress(Position("5")), replaces=True)
    journal.close()
    assert sorted(p.name for p in (tmp_path / "j").glob("sync-*")) == ["sync-000000000001"]

    # a crash between the rename and the deletions: the older sync is still there, half deleted
    shutil.copytree(older, tmp_path / "j" / "sync-000000000000")
    (tmp_path / "j" / "sync-000000000000" / "manifest.json").unlink()
    assert _read_ids(tmp_path / "j") == [7]


def test_a_value_flipped_on_disk_is_refused_by_its_crc_not_read_as_another_value(tmp_path: Path) -> None:
    """A flip inside a value buffer still parses as Arrow (the damage test's flip landed in Arrow's own metadata,
    which Arrow refuses by itself): only the CRC32 tells 1234567 from 1234566."""
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1_234_567)}, JournalProgress(), replaces=False)
    journal.close()
    (table_file,) = (tmp_path / "j").glob("sync-*/applied_events.arrow")
    content = bytearray(table_file.read_bytes())
    at = bytes(content).find((1_234_567).to_bytes(8, "little"))
    assert at > 0 and bytes(content).count((1_234_567).to_bytes(8, "little")) == 1
    content[at] ^= 0x01
    table_file.write_bytes(bytes(content))
    with pytest.raises(JournalDamagedError, match="CRC32"):
        read_journal(tmp_path / "j")


def test_a_sync_fsyncs_every_file_it_writes_and_both_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole or not at all after a power cut, not only after a crash: each file and the sync's directory before the
    rename, the journal's directory after it (else the rename itself may not survive)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    journal = StateJournal(tmp_path / "j")
    monkeypatch.setattr(state_journal.os, "fsync", fsync)
    journal.write({"applied_events": _ids(1, 2), "customers": _ids(0)}, JournalProgress(), replaces=False)
    monkeypatch.undo()
    journal.close()
    pending = str(tmp_path / "j" / "sync-000000000000.tmp")
    assert sorted(synced[:-1]) == sorted(
        [f"{pending}/applied_events.arrow", f"{pending}/customers.arrow", f"{pending}/manifest.json", pending]
    )
    assert synced[-1] == str(tmp_path / "j"), "the journal's directory, after the rename"


@pytest.mark.parametrize("gone", ["sync-000000000001", "sync-000000000000"])
def test_a_sync_gone_from_the_middle_or_the_start_is_damage_not_a_shorter_journal(
    tmp_path: Path, gone: str
) -> None:
    """A sync folder deleted from the middle was read as if it had never been: the state came back without its rows
    and went on, at an unchanged position, publishing wrong aggregates."""
    journal = StateJournal(tmp_path / "j")
    for value in (1, 2, 3):
        journal.write({"applied_events": _ids(value)}, JournalProgress(Position(str(value))), replaces=False)
    journal.close()
    shutil.rmtree(tmp_path / "j" / gone)
    with pytest.raises(JournalDamagedError, match="missing"):
        read_journal(tmp_path / "j")


def test_a_shard_whose_journal_lost_a_sync_is_restored_not_trusted(tmp_path: Path) -> None:
    batches = _three_batches()
    state = CustomerState(SHARD, tmp_path / f"{SHARD}.journal")
    apply_all(state, batches)  # a sync a batch
    state.close()
    syncs = sorted((tmp_path / f"{SHARD}.journal").glob("sync-*"))
    assert len(syncs) == 3
    shutil.rmtree(syncs[1])
    reopened = open_shard_state(tmp_path / f"{SHARD}.journal", SHARD, RecordValidator())
    assert reopened.position() is None and reopened.customer_count() == 0, "moved aside: S3 rebuilds it"
    assert len(list(tmp_path.glob("*.unreadable-*"))) == 1
    reopened.close()


def test_only_the_newest_damaged_journal_of_a_shard_is_kept_aside(tmp_path: Path) -> None:
    """Each quarantined copy is a whole state, and they were kept forever on the disk the journal needs."""
    path = tmp_path / f"{SHARD}.journal"
    for attempt in range(3):
        state = CustomerState(SHARD, path)
        apply_all(state, _three_batches())
        state.close()
        (next(path.glob("sync-*")) / "manifest.json").write_text(f"damaged {attempt}")
        open_shard_state(path, SHARD, RecordValidator()).close()
        shutil.rmtree(path)
    (kept,) = tmp_path.glob("*.unreadable-*")
    assert "damaged 2" in next(kept.glob("sync-*/manifest.json")).read_text()


def test_a_journal_too_large_for_the_memory_left_is_not_moved_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running out of memory is not damage: the good journal stays for a start with more memory, and so does the
    copy kept aside earlier; this start goes on in memory (the restore rebuilds from S3), said as a refused write."""
    import consumer.state_recovery

    path = tmp_path / f"{SHARD}.journal"
    state = CustomerState(SHARD, path)
    apply_all(state, _three_batches())
    state.close()
    kept_aside = tmp_path / f"{SHARD}.journal.unreadable-20260101T000000Z"
    kept_aside.mkdir()

    class TooLargeToRead(CustomerState):
        def __init__(self, shard_id: str, path: Path | None = None, *arguments: Any, **options: Any) -> None:
            if path is not None:
                raise MemoryError
            super().__init__(shard_id, path, *arguments, **options)

    monkeypatch.setattr(consumer.state_recovery, "CustomerState", TooLargeToRead)
    state = open_shard_state(path, SHARD, RecordValidator())
    assert state.position() is None and (state.local_file_error or "").startswith("MemoryError")
    assert path.is_dir() and kept_aside.is_dir()
    assert len(list(tmp_path.glob("*.unreadable-*"))) == 1


def test_a_sync_cut_short_before_its_rename_is_never_read_and_is_cleared_at_open(tmp_path: Path) -> None:
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1)}, JournalProgress(Position("1")), replaces=False)
    journal.close()
    cut = tmp_path / "j" / "sync-000000000001.tmp"
    shutil.copytree(tmp_path / "j" / "sync-000000000000", cut)  # written whole, but the rename never came

    assert read_journal(tmp_path / "j").progress == JournalProgress(Position("1")) and _read_ids(
        tmp_path / "j"
    ) == [1]
    StateJournal(tmp_path / "j").close()
    assert not cut.exists()


@pytest.mark.parametrize(
    "progress",
    [
        ["10"],
        {"sequence_number": 10, "sub_sequence_number": 0, "as_of_micros": None},
        {"sequence_number": "10", "sub_sequence_number": "0", "as_of_micros": None},
        {"sequence_number": "ten", "sub_sequence_number": 0, "as_of_micros": None},
        {"sequence_number": "10", "sub_sequence_number": 0, "as_of_micros": "2026-03-01"},
    ],
)
def test_a_progress_that_is_not_a_position_and_a_time_is_damage(tmp_path: Path, progress: object) -> None:
    """It read back as a bare KeyError or ValueError, not as damage the caller moves aside."""
    StateJournal(tmp_path / "j").close()
    (tmp_path / "j" / "sync-000000000000").mkdir()
    manifest = {"format": JOURNAL_FORMAT, "replaces": True, "progress": progress, "files": {}}
    (tmp_path / "j" / "sync-000000000000" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(JournalDamagedError, match="progress"):
        read_journal(tmp_path / "j")


@pytest.mark.parametrize(
    "manifest",
    [
        {"format": JOURNAL_FORMAT + 1, "replaces": True, "progress": {}, "files": {}},
        {"format": JOURNAL_FORMAT, "replaces": "yes", "progress": {}, "files": {}},
        {"format": JOURNAL_FORMAT, "replaces": True, "progress": {}, "files": {"customers": {"rows": 1}}},
        ["not", "an", "object"],
    ],
)
def test_a_manifest_not_of_this_format_is_damage(tmp_path: Path, manifest: object) -> None:
    StateJournal(tmp_path / "j").close()
    (tmp_path / "j" / "sync-000000000000").mkdir()
    (tmp_path / "j" / "sync-000000000000" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(JournalDamagedError, match="manifest"):
        read_journal(tmp_path / "j")


def test_a_file_of_the_right_size_and_crc_that_is_not_arrow_is_damage(tmp_path: Path) -> None:
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1)}, JournalProgress(), replaces=False)
    journal.close()
    sync = tmp_path / "j" / "sync-000000000000"
    manifest = json.loads((sync / "manifest.json").read_text())
    junk = b"not an arrow file"
    (sync / "applied_events.arrow").write_bytes(junk)
    manifest["files"]["applied_events"].update(bytes=len(junk), crc32=zlib.crc32(junk))
    (sync / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(JournalDamagedError, match="not an Arrow IPC file"):
        read_journal(tmp_path / "j")


def test_one_holder_at_a_time_and_the_lock_goes_with_close(tmp_path: Path) -> None:
    state = CustomerState(SHARD, tmp_path / "j")
    with pytest.raises(JournalLockedError) as raised:
        CustomerState(SHARD, tmp_path / "j")
    assert raised.value.holder_pid == os.getpid()
    state.close()
    CustomerState(SHARD, tmp_path / "j").close()


def test_opening_a_shard_deletes_the_duckdb_file_of_an_earlier_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first start after the upgrade restores from S3; the old cache would hold its disk forever."""
    path = tmp_path / f"{SHARD}.journal"
    legacy = [tmp_path / f"{SHARD}.duckdb", tmp_path / f"{SHARD}.duckdb.wal"]
    for file in legacy:
        file.write_bytes(b"an earlier version's state")
    other = tmp_path / "shardId-000000000099.duckdb"
    other.write_bytes(b"another shard's: left to its own processor")
    with caplog.at_level(logging.INFO, logger="consumer.state_recovery"):
        state = open_shard_state(path, SHARD, RecordValidator())
    state.close()
    assert not any(file.exists() for file in legacy) and other.exists()
    assert sum("an earlier version" in record.getMessage() for record in caplog.records) == 2


def test_the_state_reads_back_exactly_after_a_rewrite_and_more_appends(tmp_path: Path) -> None:
    batches = _three_batches()
    state = CustomerState(SHARD, tmp_path / "j")
    apply_all(state, batches[:1])
    state.reset()  # a rewrite of nothing: the journal is that sync alone now
    apply_all(state, batches)
    state._rewrite_journal()
    expected = state.snapshot_rows()
    state.close()
    assert len(list((tmp_path / "j").glob("sync-*"))) == 1

    reopened = CustomerState(SHARD, tmp_path / "j")
    assert reopened.snapshot_rows().equals(expected)
    reopened.close()


# ---------------------------------------------------------------------------------------------------- crash points
class _Crash(BaseException):
    """The process dying at a point of a sync."""


def _batches() -> list[pa.Table]:
    stream = Stream()
    return [
        stream.batch(
            [
                event(f"c-{i % 7}", "purchase", f"2026-03-0{1 + i % 5}T10:00:00Z", revenue="2.00")
                for i in range(n * 5, n * 5 + 5)
            ]
        )
        for n in range(6)
    ]


def _die(state: CustomerState) -> None:
    """A process that died: nothing runs but the kernel dropping its lock."""
    state.close(sync=False)


#: (where, which call, the sync replaces): a crash at each step of a sync, appended or replacing.
_CRASH_POINTS: Final = [
    *(
        (where, nth, replaces)
        for replaces in (False, True)
        for where, nth in (
            ("write", 1),  # the first table's file, cut short
            ("write", 3),  # a later table's file, cut short
            ("write", -1),  # the manifest, cut short
            ("rename", 1),  # before the rename that lands the sync
            ("fsync_dir", 2),  # after the rename, before the directory is fsynced
        )
    ),
    ("rmtree", 1, True),  # while a replacing sync deletes those before it
]


@pytest.mark.parametrize(("where", "nth", "replaces"), _CRASH_POINTS)
def test_a_crash_at_each_point_of_a_sync_reopens_at_the_state_before_or_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, nth: int, replaces: bool
) -> None:
    batches = _batches()
    path = tmp_path / "j"
    state = CustomerState(SHARD, path)
    apply_all(state, batches[:3])
    before = state.snapshot_rows()
    model = CustomerState(SHARD)
    apply_all(model, batches[:4])
    after = model.snapshot_rows()
    if replaces:  # the fourth batch appended whole; the crash comes in the rewrite after it
        state.apply(batches[3])
        before = after
    calls = dict.fromkeys(("write", "rename", "fsync_dir", "rmtree"), 0)
    real_write, real_fsync = state_journal._write_durably, state_journal._fsync_directory
    real_rmtree, real_rename = shutil.rmtree, Path.rename
    crashed = False

    def crash() -> NoReturn:
        nonlocal crashed
        crashed = True
        raise _Crash

    def write(target: Path, data: Any) -> None:
        calls["write"] += 1
        if where == "write" and ((nth == -1 and target.name == "manifest.json") or calls["write"] == nth):
            real_write(target, bytes(data)[: len(data) // 2])
            crash()
        real_write(target, data)

    def fsync_dir(target: Path) -> None:
        calls["fsync_dir"] += 1
        if where == "fsync_dir" and calls["fsync_dir"] == nth:
            crash()
        real_fsync(target)

    def rmtree(target: Any, *args: Any, **kwargs: Any) -> None:
        if str(target).endswith(".tmp"):
            if not crashed:  # a process killed (-9) runs none of its handlers: its half-written sync stays
                real_rmtree(target, *args, **kwargs)
            return
        calls["rmtree"] += 1
        real_rmtree(target, *args, **kwargs)
        if where == "rmtree" and calls["rmtree"] == nth:
            crash()

    def rename(self: Path, target: Any) -> Any:
        calls["rename"] += 1
        if where == "rename" and calls["rename"] == nth:
            crash()
        return real_rename(self, target)

    monkeypatch.setattr(state_journal, "_write_durably", write)
    monkeypatch.setattr(state_journal, "_fsync_directory", fsync_dir)
    monkeypatch.setattr(state_journal.shutil, "rmtree", rmtree)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(_Crash):
        if replaces:
            state._rewrite_journal()
        else:
            state.apply(batches[3])
    monkeypatch.undo()
    _die(state)
    assert calls[where] >= max(nth, 1), "the crash came where it was placed"
    if where in ("write", "rename"):  # before the rename: the killed process left its half-written sync
        assert list(path.glob("sync-*.tmp")), sorted(p.name for p in path.iterdir())

    reopened = CustomerState(SHARD, path)
    rows = reopened.snapshot_rows()
    assert rows.equals(before) or rows.equals(after), rows.to_pylist()[:1]
    # ... and it goes on: later syncs, a rewrite, a redelivery, a reopen
    apply_all(reopened, batches[3:])
    reopened._rewrite_journal()
    reopened.apply(batches[0])
    reopened.close()
    apply_all(model, batches[4:])
    final = CustomerState(SHARD, path)
    assert final.snapshot_rows().equals(model.snapshot_rows())
    final.close()


# ---------------------------------------------------------------------------------------------------- full disks
def test_a_sync_the_disk_refuses_leaves_nothing_of_itself_on_the_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shard went on from memory, but the half-written sync stayed on the full disk (up to the whole state, for a
    rewrite), holding the space the other shards of the host needed, until the process restarted."""
    state = CustomerState(SHARD, tmp_path / "j")
    apply_all(state, _batches()[:3])
    real = state_journal._write_durably
    written = [0]

    def full(target: Path, data: Any) -> None:
        written[0] += 1
        if written[0] == 2:
            real(target, bytes(data)[:10])  # what fitted
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, data)

    monkeypatch.setattr(state_journal, "_write_durably", full)
    state._rewrite_journal()
    assert state.local_file_error is not None and not state.persistent
    assert written[0] >= 2, "the disk refused a write"
    assert list((tmp_path / "j").glob("sync-*.tmp")) == []
    state.close()


def test_a_full_disk_at_open_is_not_damage_the_shard_goes_on_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A shard opened on a full disk (a lease moved here, a child after a reshard) was said unreadable, moved aside,
    and failed to open anyway: the whole MultiLangDaemon stopped with it."""
    real = state_journal._acquire

    def full(directory: Path) -> Any:
        real(directory).close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_journal, "_acquire", full)
    with caplog.at_level(logging.ERROR, logger="consumer.state_recovery"):
        state = open_shard_state(tmp_path / f"{SHARD}.journal", SHARD, RecordValidator())
    assert not state.persistent and "No space left on device" in (state.local_file_error or "")
    assert list(tmp_path.glob("*.unreadable-*")) == [] and "unreadable" not in caplog.text
    assert "goes on from memory" in caplog.text
    apply_all(state, _batches()[:1])
    state.close()


# ---------------------------------------------------------------------------------------------------- readers
def test_a_reader_beside_the_owner_reads_again_when_a_replace_lands_as_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replace deletes the syncs a reader listed: it took a healthy journal for a damaged one."""
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1)}, JournalProgress(), replaces=False)
    journal.write({"applied_events": _ids(2)}, JournalProgress(), replaces=False)
    real = state_journal._read_manifest
    replaced: list[bool] = []

    def replace_as_it_reads(path: Path) -> Any:
        if not replaced:
            replaced.append(True)
            journal.write({"applied_events": _ids(3)}, JournalProgress(Position("3")), replaces=True)
        return real(path)

    monkeypatch.setattr(state_journal, "_read_manifest", replace_as_it_reads)
    assert _read_ids(tmp_path / "j") == [3] and replaced
    journal.close()


def test_a_journal_held_by_this_very_process_is_not_a_sibling_to_wait_for(tmp_path: Path) -> None:
    """The record processor waits for an earlier processor of its shard; its own process would be waited for
    forever (two states of one journal in one process, as an in-process harness makes)."""
    first = CustomerState(SHARD, tmp_path / "j")
    with pytest.raises(JournalLockedError) as raised:
        CustomerState(SHARD, tmp_path / "j")
    assert raised.value.holder_pid == os.getpid()
    assert sibling_holding_lock(raised.value) is None
    first.close()


def test_the_journal_stays_within_three_times_the_state_in_bytes(tmp_path: Path) -> None:
    """The rewrite was weighed in rows, and a changed customer's row is five times an event id's bytes: a shard that
    changes many customers a sync held a journal of six to eight times its state (found by the operator's review)."""
    options = StateOptions(dedupe_window=timedelta(days=1), sync_every_records=1)
    state = CustomerState(SHARD, tmp_path / "j", options=options)
    stream = Stream()
    over: list[int] = []
    # 2,000 customers changed a sync, 2,000 ids a sync; the window holds about three days' ids
    for day in range(60):
        documents = [event(f"c-{n}", "page_view", "2026-05-01T10:00:00Z") for n in range(2_000)]
        state.apply(_arriving(stream.batch(documents), day))
        on_disk = sum(f.stat().st_size for f in (tmp_path / "j").rglob("*.arrow"))
        over.append(on_disk - 3 * state.memory_total())
    state.close()
    assert max(over) <= 256 * 1024, f"{max(over):,} bytes over three times the state"
