"""The readers' commit records, read incrementally: the kept records plus the commits since equal a read of every
commit record, and a run reads only the commits made since."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from clickstream.commit_ledger import read_all_commits
from consumer.s3_sink import read_commit_records
from runtime.settings import Settings
from schemas.control import CommitRecord, KeptReadPointer
from schemas.layout import OutputLayout
from schemas.positions import Position
from tests.moto_support import CountingReads, moto_bucket
from tests.test_current_rows import HidingOneCommit, ReadOnly, Worker, purchases

BUCKET = "ledger"
LAYOUT = OutputLayout("rfm")
SHARDS = ("shardId-000000000000", "shardId-000000000001", "shardId-000000000002")
POINTER = LAYOUT.kept_pointer_key("commit_ledger")


@pytest.fixture
def s3() -> Iterator[Any]:
    with moto_bucket(BUCKET) as client:
        yield client


@pytest.fixture
def settings() -> Settings:
    return Settings(bucket=BUCKET, prefix="rfm")


def everything(s3: Any) -> list[CommitRecord]:
    """A read of every commit record, one by one: what the kept records must reproduce."""
    return read_commit_records(s3, BUCKET, LAYOUT)


def commits_read(client: CountingReads) -> list[str]:
    return [key for key in client.read if key.startswith(LAYOUT.all_commits_prefix)]


def pointer(s3: Any) -> KeptReadPointer:
    return KeptReadPointer.from_json(s3.get_object(Bucket=BUCKET, Key=POINTER)["Body"].read())


def test_a_read_takes_the_kept_records_and_only_the_commits_since(s3: Any, settings: Settings) -> None:
    worker = Worker(s3, settings)
    for day, shard in enumerate([SHARDS[0], SHARDS[1], SHARDS[0]], start=1):
        worker.flush(shard, purchases(range(4), day, shard[-1]))

    first = CountingReads(s3)
    assert read_all_commits(first, settings, max_workers=4) == everything(s3)
    assert len(commits_read(first)) == 3, "nothing kept yet: every commit"
    assert pointer(s3).rows == 3

    covers = {cover.commit_key for cover in pointer(s3).shards.values()}
    # new commits on a known shard, and a shard that appears (a reshard's child)
    worker.flush(SHARDS[0], purchases(range(2), 4, "a"))
    worker.flush(SHARDS[2], purchases(range(3), 4, "c"))
    second = CountingReads(s3)
    assert read_all_commits(second, settings, max_workers=4) == everything(s3)
    new = {LAYOUT.commit_key(name.shard_id, previous) for name, previous in worker.flushed[3:]}
    # the covered commits are checked (one each), the new ones read; none of the others
    assert set(commits_read(second)) == new | covers
    assert pointer(s3).rows == 5

    third = CountingReads(s3)
    tag = s3.head_object(Bucket=BUCKET, Key=POINTER)["ETag"]
    assert read_all_commits(third, settings, max_workers=4) == everything(s3)
    assert s3.head_object(Bucket=BUCKET, Key=POINTER)["ETag"] == tag, "nothing new: nothing kept again"
    kept_files = [
        obj["Key"]
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.kept_prefix("commit_ledger"))["Contents"]
    ]
    assert sorted(kept_files) == sorted([POINTER, pointer(s3).data_key]), "the replaced file is deleted"


def test_a_prefix_written_again_is_read_again_whole(s3: Any, settings: Settings) -> None:
    """Its first commit is start.json again, by another attempt: the kept records are another chain's."""
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(4), 1, "a"))
    read_all_commits(s3, settings, max_workers=4)
    for key in [
        obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.all_commits_prefix)["Contents"]
    ]:
        s3.delete_object(Bucket=BUCKET, Key=key)
    again = Worker(s3, settings)
    again.flushes = 100  # other attempt ids
    again.flush(SHARDS[0], purchases(range(2), 2, "b"))
    assert read_all_commits(s3, settings, max_workers=4) == everything(s3)
    assert [record.attempt_id for record in everything(s3)] == ["attempt101"]


@pytest.mark.parametrize("kept_first", [False, True], ids=["whole read", "read since the kept records"])
def test_a_copy_of_a_commit_record_under_another_name_is_skipped_naming_it(
    s3: Any, settings: Settings, kept_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy (``start-backup.json``) was read as one more commit: a manifest listed its files twice, and kept them
    twice for good; read from the kept records on, its name failed as "not a position key part"."""
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(4), 1, "a"))
    worker.flush(SHARDS[0], purchases(range(4), 2, "a"))
    before = everything(s3)
    if kept_first:
        read_all_commits(s3, settings, max_workers=4)
    start = LAYOUT.commit_key(SHARDS[0], None)
    backup = start.replace("start.json", "start-backup.json")  # a name no commit has
    # a commit's name, another commit's record
    moved = LAYOUT.commit_key(SHARDS[0], Position("99999999999", 0))
    for copy in (backup, moved):
        s3.copy_object(Bucket=BUCKET, Key=copy, CopySource={"Bucket": BUCKET, "Key": start})
    with caplog.at_level(logging.WARNING, logger="consumer.s3_sink"):
        assert read_all_commits(s3, settings, max_workers=4) == before
        assert read_commit_records(s3, BUCKET, LAYOUT) == before
    said = caplog.text
    assert f"s3://{BUCKET}/{moved}: holds the commit record whose key is {start} (a copy" in said
    assert f"move it out of {LAYOUT.all_commits_prefix}" in said
    assert f"s3://{BUCKET}/{backup}: not a commit record's name" in said


def test_kept_records_holding_a_commit_twice_are_taken_once() -> None:
    """What the reading of such a copy kept (by a version before the copy was refused) counts once."""
    from clickstream.commit_ledger import _dump, _load

    with moto_bucket(BUCKET) as client:
        settings = Settings(bucket=BUCKET, prefix="rfm")
        worker = Worker(client, settings)
        worker.flush(SHARDS[0], purchases(range(4), 1, "a"))
        worker.flush(SHARDS[1], purchases(range(4), 1, "b"))
        first, second = read_commit_records(client, BUCKET, LAYOUT)
    assert _load(_dump([first, first, second, first])) == [first, second]


@pytest.mark.parametrize("damage", ["not gzip", "not records", "another rule"])
def test_kept_records_that_do_not_hold_are_ignored_and_replaced(
    s3: Any, settings: Settings, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(4), 1, "a"))
    read_all_commits(s3, settings, max_workers=4)
    kept = pointer(s3)
    if damage == "another rule":
        s3.put_object(
            Bucket=BUCKET,
            Key=POINTER,
            Body=KeptReadPointer(
                kept.data_key, kept.shards, kept.rows, kept.written_at, "older-rule"
            ).to_json(),
        )
    else:
        body = b"\x00 damaged" if damage == "not gzip" else gzip.compress(b'{"format": 2}\n')
        s3.put_object(Bucket=BUCKET, Key=kept.data_key, Body=body)
    worker.flush(SHARDS[1], purchases(range(3), 2, "b"))
    with caplog.at_level(logging.WARNING):
        assert read_all_commits(s3, settings, max_workers=4) == everything(s3)
    assert "the kept commit records do not hold" in caplog.text
    assert pointer(s3).rows == 2 and pointer(s3).data_key != kept.data_key, "replaced by a whole read"


def test_a_reader_that_may_not_write_reads_everything_and_warns(
    s3: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(4), 1, "a"))
    with caplog.at_level(logging.WARNING):
        assert read_all_commits(ReadOnly(s3), settings, max_workers=4) == everything(s3)
    assert "the kept commit records could not be kept for the next run" in caplog.text
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.kept_prefix("commit_ledger"))


def test_no_commit_keeps_nothing(s3: Any, settings: Settings) -> None:
    assert read_all_commits(s3, settings, max_workers=4) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.control_prefix)


def test_a_commit_listed_late_is_read_by_the_same_run(s3: Any, settings: Settings) -> None:
    """A replay or a manifest whose listing missed a commit in the middle of a chain left its file out of that run
    (only the next run read it): the commits after it show the gap, and the run lists again."""
    worker = Worker(s3, settings)
    for day in (1, 2, 3):
        worker.flush(SHARDS[0], purchases(range(3), day, "a"))
    name, previous = worker.flushed[1]
    once = HidingOneCommit(s3, LAYOUT.commit_key(name.shard_id, previous), once=True)
    assert read_all_commits(once, settings, max_workers=4) == everything(s3)
    assert once.hidden == "", "the first listing left it out"
    assert pointer(s3).rows == 3


def test_a_commit_missed_by_one_read_is_not_missed_for_good(
    s3: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit can be listed late (keys of one sequence number sort by the text of their sub-sequence number, so
    one made during a listing can sort behind it). The kept records covered past it, and every later read missed it
    (a review). Missing from two listings, it is said."""
    worker = Worker(s3, settings)
    for day in (1, 2, 3, 4):
        worker.flush(SHARDS[0], purchases(range(3), day, "a"))
    name, previous = worker.flushed[1]
    late = LAYOUT.commit_key(name.shard_id, previous)
    with caplog.at_level(logging.WARNING, logger="clickstream.commit_ledger"):
        read = read_all_commits(HidingOneCommit(s3, late), settings, max_workers=4)
    assert read == [record for record in everything(s3) if record.attempt_id != name.attempt_id], (
        "a read then is a read of what was listed"
    )
    [warning] = caplog.records
    gap = f"of {SHARDS[0]} leave a gap in its chain before the commit that continues from sequence number"
    assert f"{gap} {worker.flushed[2][1].sequence_number}," in warning.getMessage()
    assert "the 2 records past a gap are read as found" in warning.getMessage()
    assert pointer(s3).rows == 1, "kept: the chain up to its gap"
    assert read_all_commits(s3, settings, max_workers=4) == everything(s3)
    assert pointer(s3).rows == 4


def test_a_gap_for_good_is_read_past_but_does_not_rewrite_the_kept_records_every_run(
    s3: Any, settings: Settings
) -> None:
    """A commit record deleted for good: every run read the records past it again (as it must) and rewrote the
    whole kept file for them, with no new commit at all. Kept again only once a new commit is chained."""
    worker = Worker(s3, settings)
    for day in (1, 2, 3):
        worker.flush(SHARDS[0], purchases(range(3), day, "a"))
    worker.flush(SHARDS[1], purchases(range(3), 1, "b"))
    name, previous = worker.flushed[1]
    s3.delete_object(Bucket=BUCKET, Key=LAYOUT.commit_key(name.shard_id, previous))
    read_all_commits(s3, settings, max_workers=4)
    kept = pointer(s3)
    assert read_all_commits(s3, settings, max_workers=4) == everything(s3)
    assert pointer(s3) == kept, "nothing new chained: the same kept file"
    worker.flush(SHARDS[1], purchases(range(3), 2, "b"))
    assert read_all_commits(s3, settings, max_workers=4) == everything(s3)
    assert pointer(s3).data_key != kept.data_key and pointer(s3).rows == kept.rows + 1


class AnswerLost:
    """An S3 client whose first PUT of the ledger's pointer is applied, but answered as a 412 (the answer lost and a
    retry finding the object there, as botocore retries)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def put_object(self, **kwargs: Any) -> Any:
        answer = self.client.put_object(**kwargs)
        if kwargs["Key"] == POINTER and not self.lost:
            self.lost = True
            raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "lost"}}, "PutObject")
        return answer


def test_a_pointer_write_whose_answer_was_lost_keeps_its_file(s3: Any, settings: Settings) -> None:
    """The run took the 412 for another reader's write and deleted the file its own pointer named: the next run
    found it missing and read everything again (a review)."""
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(3), 1, "a"))
    read_all_commits(AnswerLost(s3), settings, max_workers=4)
    s3.get_object(Bucket=BUCKET, Key=pointer(s3).data_key)  # still there
    counting = CountingReads(s3)
    assert read_all_commits(counting, settings, max_workers=4) == everything(s3)
    assert len(commits_read(counting)) == 1, "the kept records hold: only the covered commit is checked"


def test_a_reader_that_may_not_write_does_not_make_the_file_it_cannot_keep(
    s3: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only role made the whole kept file (minutes and gigabytes for a long history) before PutObject was
    refused."""
    from clickstream import commit_ledger

    made: list[int] = []
    dump = commit_ledger._dump
    monkeypatch.setattr(commit_ledger, "_dump", lambda records: made.append(len(records)) or dump(records))
    Worker(s3, settings).flush(SHARDS[0], purchases(range(4), 1, "a"))
    assert read_all_commits(ReadOnly(s3), settings, max_workers=4) == everything(s3)
    assert made == []
    assert read_all_commits(s3, settings, max_workers=4) == everything(s3)
    assert made == [1], "a role that may write makes and keeps it"
