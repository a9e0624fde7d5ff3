"""score's input read incrementally: the kept current rows plus the commits since equal a read of everything."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from aggregators.customer_state import CustomerState
from clickstream import kept_reads
from clickstream.current_rows import CurrentRows, read_committed_rows
from consumer.s3_sink import FlushAttempt, S3ParquetSink
from consumer.state_recovery import state_options
from runtime.settings import Settings
from schemas.control import KeptReadPointer
from schemas.layout import FlushName, OutputLayout
from schemas.positions import Position, chain_position
from tests.moto_support import moto_bucket
from tests.test_customer_state import Stream, event

BUCKET = "current-rows"
LAYOUT = OutputLayout("rfm")
SHARDS = ("shardId-000000000000", "shardId-000000000001", "shardId-000000000002")


@pytest.fixture
def s3() -> Iterator[Any]:
    with moto_bucket(BUCKET) as client:
        yield client


class Worker:
    """The worker's core and sink, shard by shard: each ``flush`` is one commit on that shard's chain (of records
    that arrived at ``arrival``, or at the test stream's fixed time); ``flushed`` holds each one's name and the chain
    position it continued from."""

    def __init__(self, s3: Any, settings: Settings) -> None:
        self.sink = S3ParquetSink(s3, settings)
        self.settings = settings
        self.states: dict[str, CustomerState] = {}
        self.streams: dict[str, Stream] = {}
        self.flushes = 0
        self.flushed: list[tuple[FlushName, Position | None]] = []

    def flush(
        self, shard: str, documents: Sequence[dict[str, Any] | bytes], arrival: datetime | None = None
    ) -> FlushName:
        state = self.states.setdefault(shard, CustomerState(shard, options=state_options(self.settings)))
        batch = self.streams.setdefault(shard, Stream()).batch(documents)
        batch = batch.set_column(
            batch.schema.get_field_index("shard_id"), "shard_id", pa.array([shard] * len(batch))
        )
        if arrival is not None:
            column = batch.schema.get_field_index("approximate_arrival_at")
            times = pa.array([arrival] * batch.num_rows, batch.schema.field(column).type)
            batch = batch.set_column(column, "approximate_arrival_at", times)
        previous = chain_position(state.position())
        with state.staged(batch) as applied:
            assert applied.first_position is not None and applied.position is not None
            self.flushes += 1
            name = FlushName(shard, applied.first_position, applied.position, f"attempt{self.flushes}")
            self.sink.write(FlushAttempt(previous, name), applied)
        self.flushed.append((name, previous))
        return name


def purchases(customers: range, day: int, shard_tag: str) -> list[dict[str, Any]]:
    return [
        event(
            f"c-{shard_tag}{number:03d}", "purchase", f"2026-03-{day:02d}T10:00:00Z", revenue=f"{number}.50"
        )
        for number in customers
    ]


def read(s3: Any, settings: Settings, workdir: Path) -> CurrentRows:
    workdir.mkdir(parents=True, exist_ok=True)
    return read_committed_rows(s3, settings, workdir, progress=False)


class ReadOnly:
    """An S3 client whose PutObject is denied (a role that may only read)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        if name == "put_object":

            def denied(**_: Any) -> None:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")

            return denied
        return getattr(self.client, name)


class WithoutKeptRows(ReadOnly):
    """A read-only client that finds no kept rows: a read of the whole history."""

    def get_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"] == LAYOUT.kept_pointer_key("current_rows"):
            raise self.client.exceptions.NoSuchKey({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        return self.client.get_object(**kwargs)


class HidingOneCommit:
    """An S3 client whose listings leave out one commit key: a commit made while a listing went past its key.
    ``once``: only the first listing that holds it leaves it out (``hidden`` is then emptied), as the next listing
    of such a commit finds it."""

    def __init__(self, client: Any, hidden: str, *, once: bool = False) -> None:
        self.client = client
        self.hidden = hidden
        self.once = once

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_paginator(self, operation: str) -> Any:
        pages = self.client.get_paginator(operation)
        owner = self

        class Hiding:
            def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
                for page in pages.paginate(**kwargs):
                    listed, hidden = page.get("Contents", []), owner.hidden
                    if not hidden or all(obj["Key"] != hidden for obj in listed):
                        yield page
                        continue
                    if owner.once:
                        owner.hidden = ""
                    yield {**page, "Contents": [obj for obj in listed if obj["Key"] != hidden]}

        return Hiding()


def read_everything(s3: Any, settings: Settings, workdir: Path) -> CurrentRows:
    """A read of the whole history, writing nothing: what the kept rows must reproduce."""
    return read(WithoutKeptRows(s3), settings, workdir)


def sorted_rows(rows: CurrentRows) -> list[dict[str, Any]]:
    return sorted(rows.table.to_pylist(), key=lambda row: row["customer_id"])


def pointer(s3: Any) -> KeptReadPointer:
    return KeptReadPointer.from_json(
        s3.get_object(Bucket=BUCKET, Key=LAYOUT.kept_pointer_key("current_rows"))["Body"].read()
    )


def test_a_run_reads_only_the_commits_since_the_last_and_gets_the_rows_of_a_full_read(
    s3: Any, tmp_path: Path
) -> None:
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(10), 1, "a"))
    worker.flush(SHARDS[0], purchases(range(5), 2, "a"))
    worker.flush(SHARDS[1], purchases(range(8), 1, "b"))

    first = read(s3, settings, tmp_path / "1")
    assert (first.kept_rows, first.commits, first.table.num_rows) == (None, 3, 18)
    kept = pointer(s3)
    assert kept.rows == 18 and set(kept.shards) == set(SHARDS[:2])

    # repeat purchases (new versions of kept customers), new customers, and a shard that appeared since (a reshard)
    worker.flush(SHARDS[0], purchases(range(3, 12), 3, "a"))
    worker.flush(SHARDS[2], purchases(range(4), 3, "c"))
    second = read(s3, settings, tmp_path / "2")
    assert (second.kept_rows, second.commits) == (18, 2), "only the two commits made since"
    everything = read_everything(s3, settings, tmp_path / "all")
    assert sorted_rows(second) == sorted_rows(everything) and second.fingerprint == everything.fingerprint
    assert second.table.num_rows == 24
    moved = pointer(s3)
    assert set(moved.shards) == set(SHARDS) and moved.shards[SHARDS[1]] == kept.shards[SHARDS[1]]
    assert moved.shards[SHARDS[0]].last > kept.shards[SHARDS[0]].last
    kept_files = [
        obj["Key"]
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.kept_prefix("current_rows"))["Contents"]
    ]
    assert sorted(kept_files) == sorted([moved.data_key, LAYOUT.kept_pointer_key("current_rows")]), (
        "the replaced file goes"
    )

    third = read(s3, settings, tmp_path / "3")
    assert (third.kept_rows, third.commits, third.fingerprint) == (24, 0, second.fingerprint)
    assert pointer(s3) == moved, "nothing new: the kept rows stay as they are"


def test_a_gap_for_good_does_not_rewrite_the_kept_rows_every_run(s3: Any, tmp_path: Path) -> None:
    """A commit record deleted for good: the commits past it are read by every run, and their rows were written
    into a new kept file every run, with no new commit at all."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    for day in (1, 2, 3):
        worker.flush(SHARDS[0], purchases(range(4), day, "a"))
    name, previous = worker.flushed[1]
    s3.delete_object(Bucket=BUCKET, Key=LAYOUT.commit_key(name.shard_id, previous))
    first = read(s3, settings, tmp_path / "1")
    kept = pointer(s3)
    second = read(s3, settings, tmp_path / "2")
    assert second.fingerprint == first.fingerprint and pointer(s3) == kept, "the same kept file"
    worker.flush(SHARDS[1], purchases(range(2), 1, "b"))
    read(s3, settings, tmp_path / "3")
    assert pointer(s3).data_key != kept.data_key, "a new commit chained: kept again"


def test_the_commits_since_taken_from_records_read_already_are_those_a_listing_reads(s3: Any) -> None:
    from clickstream.current_rows import _since
    from consumer.s3_sink import read_commit_records, read_commits_since

    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    for day in (1, 2, 3):
        worker.flush(SHARDS[0], purchases(range(3), day, "a"))
    worker.flush(SHARDS[1], purchases(range(3), 1, "b"))
    every = read_commit_records(s3, BUCKET, LAYOUT)
    for covered in ({}, {SHARDS[0]: every[0].last}, {SHARDS[0]: every[2].last, SHARDS[1]: every[3].last}):
        assert _since(every, covered) == read_commits_since(s3, BUCKET, LAYOUT, covered), covered


def test_kept_rows_that_cover_a_commit_gone_are_ignored(
    s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The prefix emptied and written again (its commits are new ones): the kept rows would mix two histories."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(6), 1, "a"))
    worker.flush(SHARDS[0], purchases(range(2), 2, "a"))
    read(s3, settings, tmp_path / "1")
    (cover,) = pointer(s3).shards.values()
    s3.delete_object(Bucket=BUCKET, Key=cover.commit_key)
    with caplog.at_level(logging.WARNING):
        again = read(s3, settings, tmp_path / "2")
    assert again.kept_rows is None and "reading every commit" in caplog.text
    assert (
        again.commits == 1
        and again.fingerprint == read_everything(s3, settings, tmp_path / "all").fingerprint
    )
    assert read(s3, settings, tmp_path / "3").kept_rows == 6, "the pointer was replaced: kept again"


def test_kept_rows_of_a_prefix_emptied_and_written_again_are_ignored(s3: Any, tmp_path: Path) -> None:
    """A shard's first commit is always start.json: the key the kept rows cover exists again, but it is another
    commit. Checking the key alone gave the old customers and none of the new ones (found by review)."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    Worker(s3, settings).flush(SHARDS[0], purchases(range(5), 1, "a"))
    read(s3, settings, tmp_path / "1")
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="rfm/")["Contents"]:
        if not obj["Key"].startswith(LAYOUT.kept_prefix("current_rows")):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    again = Worker(s3, settings)  # a new stream: its shard ids and first keys repeat
    again.flush(SHARDS[0], purchases(range(3), 2, "z"))
    again.flush(SHARDS[0], purchases(range(3), 3, "z"))

    rows = read(s3, settings, tmp_path / "2")

    assert rows.kept_rows is None and rows.commits == 2
    assert sorted(rows.table.column("customer_id").to_pylist()) == ["c-z000", "c-z001", "c-z002"]
    assert rows.fingerprint == read_everything(s3, settings, tmp_path / "all").fingerprint


def test_a_run_that_may_not_write_still_reads_and_one_that_lost_the_race_drops_its_copy(
    s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(6), 1, "a"))

    with caplog.at_level(logging.WARNING):
        rows = read(ReadOnly(s3), settings, tmp_path / "ro")
    assert rows.table.num_rows == 6 and "could not be kept" in caplog.text
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.kept_prefix("current_rows"))

    read(s3, settings, tmp_path / "1")
    worker.flush(SHARDS[0], purchases(range(6, 9), 2, "a"))

    class RacedBy:
        """Another run moves the pointer between this run's read of it and its update."""

        def __init__(self, client: Any) -> None:
            self.client = client

        def __getattr__(self, name: str) -> Any:
            method = getattr(self.client, name)
            if name != "put_object":
                return method

            def put(**kwargs: Any) -> Any:
                if kwargs["Key"] == LAYOUT.kept_pointer_key("current_rows"):
                    read(self.client, settings, tmp_path / "other")
                return method(**kwargs)

            return put

    raced = read(RacedBy(s3), settings, tmp_path / "2")
    assert raced.table.num_rows == 9
    winner = pointer(s3)
    listed = [
        obj["Key"]
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.kept_prefix("current_rows"))["Contents"]
    ]
    assert sorted(listed) == sorted([winner.data_key, LAYOUT.kept_pointer_key("current_rows")])


def test_the_files_of_runs_that_died_before_their_pointer_are_deleted_once_old(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed between its file and its pointer left the file for good; a young one may be a concurrent
    run's, about to be named, and stays."""

    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(6), 1, "a"))
    dead = LAYOUT.kept_data_key("current_rows", "deadrun", ".parquet")
    s3.put_object(Bucket=BUCKET, Key=dead, Body=b"a file")

    def listed() -> set[str]:
        return {
            obj["Key"]
            for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.kept_prefix("current_rows"))[
                "Contents"
            ]
        }

    read(s3, settings, tmp_path / "1")
    assert dead in listed(), "young: maybe a concurrent run's"
    worker.flush(SHARDS[0], purchases(range(2), 2, "a"))
    monkeypatch.setattr(kept_reads, "LEFTOVER_SECONDS", -1)
    read(s3, settings, tmp_path / "2")
    assert listed() == {pointer(s3).data_key, LAYOUT.kept_pointer_key("current_rows")}


def test_kept_rows_that_do_not_read_or_may_not_be_read_are_ignored(
    s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache: a damaged kept file, or a role that may not read _control/current_rows/, reads everything."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    worker.flush(SHARDS[0], purchases(range(6), 1, "a"))
    worker.flush(SHARDS[1], purchases(range(3), 1, "b"))
    whole = read(s3, settings, tmp_path / "1")
    s3.put_object(Bucket=BUCKET, Key=pointer(s3).data_key, Body=b"not parquet")
    with caplog.at_level(logging.WARNING):
        damaged = read(s3, settings, tmp_path / "2")
    assert "do not hold" in caplog.text and "Parquet" in caplog.text
    assert (damaged.kept_rows, damaged.commits, damaged.fingerprint) == (None, 2, whole.fingerprint)
    assert read(s3, settings, tmp_path / "3").kept_rows == 9, "kept again, readable"

    # damaged inside, its footer intact: the pages fail to decode (a footer check alone let it fail the run)
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=pointer(s3).data_key)["Body"].read())
    page = pq.read_metadata(pa.BufferReader(bytes(body))).row_group(0).column(0).data_page_offset
    body[page + 8 : page + 40] = bytes(32)
    s3.put_object(Bucket=BUCKET, Key=pointer(s3).data_key, Body=bytes(body))
    assert read(s3, settings, tmp_path / "4").fingerprint == whole.fingerprint
    # a pointer that is not text at all (a foreign object)
    s3.put_object(Bucket=BUCKET, Key=LAYOUT.kept_pointer_key("current_rows"), Body=b'{"a": "\xff"}')
    assert read(s3, settings, tmp_path / "5").kept_rows is None

    class PointerDenied(ReadOnly):
        def get_object(self, **kwargs: Any) -> Any:
            if kwargs["Key"] == LAYOUT.kept_pointer_key("current_rows"):
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")
            return self.client.get_object(**kwargs)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        denied = read(PointerDenied(s3), settings, tmp_path / "4")
    assert (
        denied.kept_rows is None and denied.fingerprint == whole.fingerprint and "AccessDenied" in caplog.text
    )


def test_a_connection_lost_while_keeping_the_rows_does_not_fail_the_read(
    s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Keeping them is best effort: an endpoint that stops answering at that moment failed the whole score run."""
    from botocore.exceptions import EndpointConnectionError

    settings = Settings(bucket=BUCKET, prefix="rfm")
    Worker(s3, settings).flush(SHARDS[0], purchases(range(4), 1, "a"))

    class Unreachable(ReadOnly):
        def put_object(self, **_: Any) -> None:
            raise EndpointConnectionError(endpoint_url="https://s3.example")

    with caplog.at_level(logging.WARNING):
        rows = read(Unreachable(s3), settings, tmp_path / "1")
    assert rows.table.num_rows == 4 and "could not be kept" in caplog.text


def test_kept_rows_chosen_by_another_rule_are_read_again(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version that chooses the current row differently must not merge with rows the old rule chose (customers
    that do not change would keep the old choice for good)."""
    import clickstream.current_rows as current_rows

    settings = Settings(bucket=BUCKET, prefix="rfm")
    Worker(s3, settings).flush(SHARDS[0], purchases(range(4), 1, "a"))
    read(s3, settings, tmp_path / "1")
    monkeypatch.setattr(current_rows, "_RULE", "another-rule")
    rows = read(s3, settings, tmp_path / "2")
    assert rows.kept_rows is None and pointer(s3).rule == "another-rule", (
        "read again, kept under the new rule"
    )


def test_rows_of_a_commit_missed_by_one_run_are_not_missed_for_good(s3: Any, tmp_path: Path) -> None:
    """The kept rows covered past a commit listed late (a review): later runs never read it."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    for day in (1, 2, 3):
        worker.flush(SHARDS[0], purchases(range(day * 2, day * 2 + 2), day, "a"))
    name, previous = worker.flushed[1]
    read(HidingOneCommit(s3, LAYOUT.commit_key(name.shard_id, previous)), settings, tmp_path / "1")
    assert sorted_rows(read(s3, settings, tmp_path / "2")) == sorted_rows(
        read_everything(s3, settings, tmp_path / "3")
    )
