"""The local journal (aggregators/state_journal.py): a sync is read whole or not at all, a sync that replaces hides
what came before it, a damaged file is refused before Arrow parses it, and one process holds it at a time."""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from pathlib import Path

import pyarrow as pa
import pytest

from aggregators.customer_state import CustomerState
from aggregators.state_journal import (
    JOURNAL_FORMAT,
    JournalDamagedError,
    JournalLockedError,
    StateJournal,
    read_journal,
)
from aggregators.validation import RecordValidator
from consumer.state_recovery import open_shard_state
from tests.test_customer_state import SHARD, _three_batches, apply_all


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
    journal.write({"applied_events": _ids(1, 2)}, {"sequence_number": "10"}, replaces=False)
    journal.write(
        {"applied_events": _ids(3), "customers": _ids(0)}, {"sequence_number": "20"}, replaces=False
    )
    journal.close()

    contents = read_journal(tmp_path / "j")
    assert _read_ids(tmp_path / "j") == [1, 2, 3]
    assert contents.progress == {"sequence_number": "20"} and contents.rows == 4


def test_a_sync_that_replaces_hides_and_deletes_the_syncs_before_it(tmp_path: Path) -> None:
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1, 2)}, {}, replaces=False)
    older = tmp_path / "older-copy"
    shutil.copytree(tmp_path / "j" / "sync-000000000000", older)
    journal.write({"applied_events": _ids(7)}, {"sequence_number": "5"}, replaces=True)
    journal.close()
    assert sorted(p.name for p in (tmp_path / "j").glob("sync-*")) == ["sync-000000000001"]

    # a crash between the rename and the deletions: the older sync is still there, half deleted
    shutil.copytree(older, tmp_path / "j" / "sync-000000000000")
    (tmp_path / "j" / "sync-000000000000" / "manifest.json").unlink()
    assert _read_ids(tmp_path / "j") == [7]


def test_a_sync_cut_short_before_its_rename_is_never_read_and_is_cleared_at_open(tmp_path: Path) -> None:
    journal = StateJournal(tmp_path / "j")
    journal.write({"applied_events": _ids(1)}, {"sequence_number": "1"}, replaces=False)
    journal.close()
    cut = tmp_path / "j" / "sync-000000000001.tmp"
    shutil.copytree(tmp_path / "j" / "sync-000000000000", cut)  # written whole, but the rename never came

    assert read_journal(tmp_path / "j").progress == {"sequence_number": "1"} and _read_ids(
        tmp_path / "j"
    ) == [1]
    StateJournal(tmp_path / "j").close()
    assert not cut.exists()


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
    journal.write({"applied_events": _ids(1)}, {}, replaces=False)
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
