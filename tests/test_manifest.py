"""``clickstream manifest``: a day's manifest reads that day's commits only, and lists what a read of every commit
lists for that day."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from aggregators.customer_state import CustomerState
from clickstream.manifest import copy_manifest
from consumer.s3_sink import FlushAttempt, S3ParquetSink
from consumer.state_recovery import state_options
from runtime.settings import Settings
from schemas.layout import FlushName, OutputLayout
from schemas.positions import Position, chain_position
from tests.moto_support import moto_bucket
from tests.test_customer_state import Stream, event

BUCKET = "manifests"
LAYOUT = OutputLayout("rfm")
SHARDS = ("shardId-000000000000", "shardId-000000000001", "shardId-000000000002")
DAYS = (20260601, 20260602, 20260603)
OUTPUTS = ("events", "customer_aggregates", "errors")


@pytest.fixture
def s3() -> Iterator[Any]:
    with moto_bucket(BUCKET) as client:
        yield client


class Worker:
    """Each ``flush`` is one commit on its shard's chain, of records that arrived on ``day``."""

    def __init__(self, s3: Any, settings: Settings) -> None:
        self.sink = S3ParquetSink(s3, settings)
        self.settings = settings
        self.states: dict[str, CustomerState] = {}
        self.streams: dict[str, Stream] = {}
        self.flushes = 0
        self.names: list[tuple[int, FlushName, Position | None]] = []

    def flush(self, shard: str, day: int, customers: int = 3, *, bad: bool = False) -> None:
        state = self.states.setdefault(shard, CustomerState(shard, options=state_options(self.settings)))
        documents: list[dict[str, Any] | bytes] = [
            event(f"c-{shard[-1]}{number:02d}", "page_view", "2026-05-30T10:00:00Z")
            for number in range(customers)
        ]
        if bad:
            documents.append(b"{not json")
        delivered = self.streams.setdefault(shard, Stream()).batch(documents)
        arrival = datetime.strptime(str(day), "%Y%m%d").replace(hour=12, tzinfo=UTC)
        batch = delivered.set_column(
            delivered.schema.get_field_index("shard_id"), "shard_id", pa.array([shard] * delivered.num_rows)
        ).set_column(
            delivered.schema.get_field_index("approximate_arrival_at"),
            "approximate_arrival_at",
            pa.array([arrival] * delivered.num_rows, delivered.schema.field("approximate_arrival_at").type),
        )
        previous = chain_position(state.position())
        with state.staged(batch) as applied:
            assert applied.first_position is not None and applied.position is not None
            self.flushes += 1
            name = FlushName(shard, applied.first_position, applied.position, f"attempt{self.flushes}")
            self.sink.write(FlushAttempt(previous, name), applied)
            self.names.append((day, name, previous))


class CountingReads:
    """An S3 client that records the keys read with GetObject."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_object(self, **kwargs: Any) -> Any:
        self.read.append(kwargs["Key"])
        return self.client.get_object(**kwargs)


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
        worker.flush(shard, day, bad=shard == SHARDS[0])
    # files no commit names: a writer that lost the position of shard 0's last flush, one that died before its
    # commit at the tip of shard 2's chain, and an object that is no flush's file at all
    day, lost, _ = worker.names[-1]
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
        LAYOUT.commit_key(name.shard_id, previous) for day, name, previous in worker.names if day == DAYS[1]
    }
    for output in OUTPUTS:
        for day in DAYS:
            counting = CountingReads(s3)
            manifest = copy_manifest(counting, settings, output, day)
            assert manifest == full_read_of_day(s3, settings, output, day), (output, day)
            commits_read = {key for key in counting.read if key.startswith(LAYOUT.all_commits_prefix)}
            # every flush of the day wrote events and rows; only shard 0's held a bad record
            flushes = [
                name
                for flush_day, name, _ in worker.names
                if flush_day == day and (output != "errors" or name.shard_id == SHARDS[0])
            ]
            assert len(manifest["entries"]) == len(flushes), (output, day)
            if day == DAYS[1] and output == "events":
                # the commits of that day's flushes only (the lost writer's file leads to one of them), none of
                # the first day's
                assert commits_read == second_day_commits
    urls = {entry["url"] for entry in copy_manifest(s3, settings, "events", DAYS[1])["entries"]}
    assert not {f"s3://{BUCKET}/{key}" for key in orphans} & urls
