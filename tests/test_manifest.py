"""``clickstream manifest``: a day's manifest reads that day's commits only, and lists what a read of every commit
lists for that day."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from clickstream.cli import main
from clickstream.errors import FrontDoorError
from clickstream.manifest import copy_manifest, day_manifest
from runtime.settings import Settings
from schemas.layout import FlushName, OutputLayout
from schemas.positions import Position
from tests.moto_support import CountingReads, moto_bucket
from tests.test_current_rows import Worker
from tests.test_customer_state import event

BUCKET = "manifests"
LAYOUT = OutputLayout("rfm")
SHARDS = ("shardId-000000000000", "shardId-000000000001", "shardId-000000000002")
DAYS = (20260601, 20260602, 20260603)
OUTPUTS = ("events", "customer_aggregates", "errors")


@pytest.fixture
def s3() -> Iterator[Any]:
    with moto_bucket(BUCKET) as client:
        yield client


def flush(
    worker: Worker,
    shard: str,
    day: int,
    *,
    bad: bool = False,
    documents: list[dict[str, Any] | bytes] | None = None,
) -> list[dict[str, Any] | bytes]:
    """Three customers' page views (and a record that is no JSON where ``bad``), or ``documents``, that arrived on
    ``day``; returns the documents."""
    if documents is None:
        documents = [
            event(f"c-{shard[-1]}{number:02d}", "page_view", "2026-05-30T10:00:00Z") for number in range(3)
        ]
        if bad:
            documents.append(b"{not json")
    worker.flush(shard, documents, datetime.strptime(str(day), "%Y%m%d").replace(hour=12, tzinfo=UTC))
    return documents


def full_read_of_day(s3: Any, settings: Settings, output: str, day: int) -> dict[str, Any]:
    """The manifest of every committed file, kept to ``day``: what a day's manifest must equal."""
    everything = copy_manifest(s3, settings, output)
    return {
        "entries": [
            entry
            for entry in everything["entries"]
            if LAYOUT.arrival_day_of(entry["url"].removeprefix(f"s3://{BUCKET}/")) == day
        ]
    }


def test_a_days_manifest_reads_the_days_commits_and_lists_what_a_read_of_every_commit_lists(s3: Any) -> None:
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    flush_days: list[int] = []
    # shard 0 flushes on both days; shard 1 only on the first; shard 2 starts on the second (its chain's start)
    for shard, day in [
        (SHARDS[0], DAYS[0]),
        (SHARDS[1], DAYS[0]),
        (SHARDS[0], DAYS[0]),
        (SHARDS[1], DAYS[0]),
        (SHARDS[0], DAYS[1]),
        (SHARDS[2], DAYS[1]),
        (SHARDS[0], DAYS[1]),
    ]:
        flush(worker, shard, day, bad=shard == SHARDS[0])
        flush_days.append(day)
    flushed = [
        (day, name, previous) for day, (name, previous) in zip(flush_days, worker.flushed, strict=True)
    ]
    # files no commit names: a writer that lost the position of shard 0's last flush, one that died before its
    # commit at the tip of shard 2's chain, and an object that is no flush's file at all
    _, lost, _ = flushed[-1]
    tip = worker.states[SHARDS[2]].position()
    assert tip is not None
    orphans = [
        LAYOUT.data_key(
            "events", datetime(2026, 6, 2).date(), FlushName(lost.shard_id, lost.first, lost.last, "lost1")
        ),
        LAYOUT.data_key(
            "events",
            datetime(2026, 6, 2).date(),
            FlushName(
                SHARDS[2],
                Position(str(int(tip.sequence_number) + 1)),
                Position(str(int(tip.sequence_number) + 5)),
                "died1",
            ),
        ),
        f"{LAYOUT.partition_prefix('events', DAYS[1])}notes.txt",
    ]
    for key in orphans:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"PAR1")

    second_day_commits = {
        LAYOUT.commit_key(name.shard_id, previous) for day, name, previous in flushed if day == DAYS[1]
    }
    (last_first_day_commit,) = [
        LAYOUT.commit_key(name.shard_id, previous)
        for day, name, previous in flushed
        if day == DAYS[0] and name.shard_id == SHARDS[0]
    ][-1:]
    for output in OUTPUTS:
        for day in DAYS:
            counting = CountingReads(s3)
            manifest = copy_manifest(counting, settings, output, day)
            assert manifest == full_read_of_day(s3, settings, output, day), (output, day)
            commits_read = {key for key in counting.read if key.startswith(LAYOUT.all_commits_prefix)}
            # every flush of the day wrote events and rows; only shard 0's held a bad record
            flushes = [
                name
                for flush_day, name, _ in flushed
                if flush_day == day and (output != "errors" or name.shard_id == SHARDS[0])
            ]
            assert len(manifest["entries"]) == len(flushes), (output, day)
            if day == DAYS[1] and output == "events":
                # the commits of that day's flushes (the lost writer's file leads to one of them), and of the first
                # day's only shard 0's last: the neighbour that ends the day's run in its chain
                assert commits_read == second_day_commits | {last_first_day_commit}
    urls = {entry["url"] for entry in copy_manifest(s3, settings, "events", DAYS[1])["entries"]}
    assert not {f"s3://{BUCKET}/{key}" for key in orphans} & urls


@pytest.mark.parametrize("gone", [0, 1, 2], ids=["first", "middle", "last"])
def test_a_days_manifest_refuses_a_committed_flush_of_the_day_whose_files_are_all_gone(
    s3: Any, gone: int
) -> None:
    """No listed file leads to such a flush's commit: the day's run in the chain does (a day manifest listed the
    files still there, and its COPY loaded less without a word)."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    for day in (DAYS[0], DAYS[1], DAYS[1], DAYS[1], DAYS[2]):
        flush(worker, SHARDS[0], day, bad=True)
    name, _ = worker.flushed[1 + gone]
    deleted = [LAYOUT.data_key(output, datetime(2026, 6, 2).date(), name) for output in OUTPUTS]
    for key in deleted:
        s3.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(FrontDoorError) as refused:
        copy_manifest(s3, settings, "events", DAYS[1])
    assert f"1 committed events file is missing from s3://{BUCKET}/ (the first: {deleted[0]})" in str(
        refused.value
    )
    assert copy_manifest(s3, settings, "events", DAYS[0])["entries"], "another day is whole"


@pytest.mark.parametrize("arrival_day", [None, DAYS[0]], ids=["every-file", "day"])
def test_a_manifest_refuses_a_committed_file_written_over_since(s3: Any, arrival_day: int | None) -> None:
    """Its entry kept the length of the commit record: the COPY failed on the file, reading its footer there."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    for shard in SHARDS[:2]:
        flush(worker, shard, DAYS[0])
    name, _ = worker.flushed[1]
    key = LAYOUT.data_key("events", datetime(2026, 6, 1).date(), name)
    committed = len(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"garbage")
    with pytest.raises(FrontDoorError) as refused:
        copy_manifest(s3, settings, "events", arrival_day)
    assert (
        f"1 committed events file is not as their commit records wrote them (the first: {key}, "
        f"{committed:,} bytes when committed, 7 now): written over after they were committed"
        in str(refused.value)
    )
    assert copy_manifest(s3, settings, "customer_aggregates", arrival_day)["entries"], (
        "another output is whole"
    )


class _FlushAfterTheDaysListing:
    """An S3 client on which a live worker commits a flush of the day right after the day's last partition listing
    (errors/), before the manifest lists the shard's commit names."""

    def __init__(self, client: Any, commit: Callable[[], object]) -> None:
        self.client, self.commit = client, commit

    def get_paginator(self, name: str) -> Any:
        real, racing = self.client.get_paginator(name), self

        class Paginator:
            def paginate(self, **kwargs: Any) -> Any:
                pages = list(real.paginate(**kwargs))
                if "/errors/arrival_yyyymmdd=" in kwargs.get("Prefix", "") and racing.commit is not None:
                    commit, racing.commit = racing.commit, None
                    commit()
                return iter(pages)

        return Paginator()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_days_manifest_takes_a_flush_committed_while_it_ran(s3: Any) -> None:
    """Its files came after the day's listing and its commit before the commits were read: the manifest said they
    were deleted after they were committed (a lifecycle rule?), exit 1, whenever a shard flushed meanwhile."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    flush(worker, SHARDS[0], DAYS[0])
    racing = _FlushAfterTheDaysListing(s3, lambda: flush(worker, SHARDS[0], DAYS[0]))
    document, _ = day_manifest(racing, settings, "events", DAYS[0])
    assert racing.commit is None, "the second flush committed while the manifest ran"
    assert len(worker.flushed) == 2 and document == full_read_of_day(s3, settings, "events", DAYS[0])
    assert len(document["entries"]) == 2


def test_a_days_manifest_walks_past_a_flush_of_duplicates_only(s3: Any) -> None:
    """A flush whose records were all applied before writes no file: its commit names none. The walk stopped there
    and missed a gone flush of the day beyond it (a review)."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    flush(worker, SHARDS[0], DAYS[0])
    again = flush(worker, SHARDS[0], DAYS[1])
    flush(worker, SHARDS[0], DAYS[1], documents=again)  # the same events again
    flush(worker, SHARDS[0], DAYS[1])
    flush(worker, SHARDS[0], DAYS[2])
    (_, previous), (gone, _) = worker.flushed[2], worker.flushed[3]
    commit = s3.get_object(Bucket=BUCKET, Key=LAYOUT.commit_key(SHARDS[0], previous))["Body"].read()
    assert '"files": {}' in commit.decode(), "the premise: a commit that names no file"
    deleted = [
        LAYOUT.data_key(output, datetime(2026, 6, 2).date(), gone)
        for output in ("events", "customer_aggregates")
    ]
    for key in deleted:
        s3.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(FrontDoorError) as refused:
        copy_manifest(s3, settings, "events", DAYS[1])
    assert deleted[0] in str(refused.value)


def test_a_days_manifest_names_the_shards_whose_newest_commit_is_of_the_day(s3: Any) -> None:
    """A flush writes into the day its earliest record arrived on: a shard with no commit after the day (idle since,
    or behind), or with files of the day and no commit yet (its first flush under way), may still add files to it."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    for shard, day in [
        (SHARDS[0], DAYS[0]),
        (SHARDS[1], DAYS[0]),
        (SHARDS[0], DAYS[1]),
        (SHARDS[2], DAYS[1]),
    ]:
        flush(worker, shard, day)
    new_shard = "shardId-000000000009"  # a child's first flush: its files written, its commit not yet
    first_flush = FlushName(new_shard, Position("1"), Position("5"), "first1")
    s3.put_object(
        Bucket=BUCKET, Key=LAYOUT.data_key("events", datetime(2026, 6, 3).date(), first_flush), Body=b""
    )
    assert day_manifest(s3, settings, "events", DAYS[0])[1] == {SHARDS[1]}
    assert day_manifest(s3, settings, "events", DAYS[1])[1] == {SHARDS[0], SHARDS[2]}
    assert day_manifest(s3, settings, "events", DAYS[2]) == ({"entries": []}, {new_shard})


def manifest_cli(*arguments: str) -> Any:
    return CliRunner().invoke(main, ["manifest", "--bucket", BUCKET, "--prefix", "rfm", *arguments])


def test_the_cli_says_when_more_files_may_come_into_a_day(s3: Any) -> None:
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    flush(worker, SHARDS[0], DAYS[0])
    flush(worker, SHARDS[1], DAYS[0])
    flush(worker, SHARDS[0], DAYS[1])
    over = manifest_cli("--output", "events", "--arrival-day", str(DAYS[0]))
    assert over.exit_code == 0, over.output
    assert f"1 shard(s) committed nothing after arrival day {DAYS[0]} (e.g. {SHARDS[1]})" in over.output
    assert "load it again then" in over.output
    today = datetime.now(UTC).strftime("%Y%m%d")
    under_way = manifest_cli("--output", "events", "--arrival-day", today)
    assert under_way.exit_code == 0, under_way.output
    assert (
        f"arrival day {today} is not over: flushes begun on it write into it until about" in under_way.output
    )


def test_an_empty_manifest_is_not_uploaded(s3: Any) -> None:
    """Redshift's COPY fails on a manifest of no entries: none is stored, and the warning says to skip it."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    worker = Worker(s3, settings)
    flush(worker, SHARDS[0], DAYS[0])
    empty = manifest_cli("--output", "events", "--arrival-day", str(DAYS[1]), "--upload")
    assert empty.exit_code == 0, empty.output
    assert "nothing uploaded: a COPY of an empty manifest fails" in empty.output
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{LAYOUT.control_prefix}manifests/")
    assert listing.get("KeyCount", 0) == 0
    loaded = manifest_cli("--output", "events", "--arrival-day", str(DAYS[0]), "--upload")
    assert loaded.exit_code == 0, loaded.output
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{LAYOUT.control_prefix}manifests/")["KeyCount"] == 1


def test_a_listing_of_many_pages_reports_its_progress_toward_the_committed_files() -> None:
    """A data prefix of a long history holds millions of files, listed 1,000 a request: each page is reported,
    against the files the commit records name (or what is listed already, once past them)."""
    from clickstream.outputs import list_keys

    pages = [{"Contents": [{"Key": f"k{page}-{n}"} for n in range(3)]} for page in range(3)] + [{}]

    class Paginator:
        def paginate(self, **_arguments: Any) -> list[dict[str, Any]]:
            return pages

    class Listing:
        def get_paginator(self, name: str) -> Paginator:
            assert name == "list_objects_v2"
            return Paginator()

    seen: list[tuple[int, int]] = []
    listed = list_keys(Listing(), "b", "p/", lambda done, total: seen.append((done, total)), expected=7)
    assert len(listed) == 9
    assert seen == [(3, 7), (6, 7), (9, 9), (9, 9)]
