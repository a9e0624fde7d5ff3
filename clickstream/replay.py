"""``clickstream replay``: rebuild customer aggregates from the S3 ``events/`` archive over a time range.

The archive holds every valid event exactly once, so feeding it through the same core (``CustomerState``) into an
empty state rebuilds the aggregates. The result goes to ``<prefix>/replays/<name>/customer_aggregates/`` — never to
the live outputs, the live state or the KCL checkpoints — under a name fixed by the range, so a re-run overwrites it.
Files of a flush that never committed (named in an intent without a commit record) are left out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from aggregators.customer_state import CustomerState
from clickstream.outputs import list_keys
from consumer.s3_sink import S3ParquetSink
from runtime.settings import Settings
from schemas import EVENTS_SCHEMA
from schemas.positions import Position

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"event_date=(\d{4}-\d{2}-\d{2})/event_hour=(\d{2})/")


@dataclass(slots=True)
class ReplayPlan:
    start: datetime
    end: datetime
    name: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (key, bytes) in event-hour order
    skipped_uncommitted: list[str] = field(default_factory=list)
    output_key: str = ""

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        hours = len({_PARTITION.search(key).group(0) for key, _ in self.files if _PARTITION.search(key)})  # type: ignore[union-attr]
        return (
            f"replay {self.name}: events from {self.start:%Y-%m-%d %H:00} to {self.end:%Y-%m-%d %H:00} UTC (end "
            f"exclusive): {len(self.files):,} files, {self.bytes:,} bytes, {hours:,} event hours; "
            f"{len(self.skipped_uncommitted)} files of uncommitted flushes left out; output "
            f"s3://…/{self.output_key}"
        )


@dataclass(slots=True)
class ReplayResult:
    events_read: int
    events_applied: int
    customers: int
    output_key: str


def _dates(start: datetime, end: datetime) -> Iterator[str]:
    day = start.date()
    while datetime.combine(day, datetime.min.time(), UTC) < end:
        yield day.isoformat()
        day += timedelta(days=1)


def _uncommitted_keys(s3: Any, settings: Settings) -> set[str]:
    """Data files of flushes that wrote an intent but no commit record, on any shard."""
    sink = S3ParquetSink(s3, settings)
    shards = [
        obj["Key"].rsplit("/", 1)[-1].removesuffix(".json")
        for obj in list_keys(s3, settings.bucket, f"{settings.output_prefix('_control')}intents/")
    ]
    return {key for shard_id in shards for key in sink.uncommitted_files(shard_id)}


def plan_replay(
    s3: Any, settings: Settings, start: datetime, end: datetime, name: str | None = None
) -> ReplayPlan:
    """Which archive files a replay of [start, end) reads, and where it writes."""
    if end <= start:
        raise ValueError(f"--to ({end:%Y-%m-%d %H:%M}) must be after --from ({start:%Y-%m-%d %H:%M})")
    name = name or f"{start:%Y%m%dT%H}-{end:%Y%m%dT%H}"
    if not re.fullmatch(r"[A-Za-z0-9_.=-]+", name):
        raise ValueError("--name may contain only letters, digits and _ . = -")
    plan = ReplayPlan(start=start, end=end, name=name)
    orphans = _uncommitted_keys(s3, settings)
    found = []
    for day in _dates(start, end):
        for obj in list_keys(s3, settings.bucket, f"{settings.output_prefix('events')}event_date={day}/"):
            match = _PARTITION.search(obj["Key"])
            if match is None or not obj["Key"].endswith(".parquet"):
                continue
            hour = datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}:00:00+00:00")
            if start <= hour < end:
                if obj["Key"] in orphans:
                    plan.skipped_uncommitted.append(obj["Key"])
                else:
                    found.append((hour, obj["Key"], int(obj["Size"])))
    plan.files = [(key, size) for _, key, size in sorted(found)]
    plan.output_key = (
        f"{settings.output_prefix('replays')}{name}/customer_aggregates/"
        f"replay-{start:%Y%m%dT%H}-{end:%Y%m%dT%H}.parquet"
    )
    return plan


def run_replay(
    s3: Any,
    settings: Settings,
    plan: ReplayPlan,
    work_dir: Path,
    *,
    progress: bool = True,
    batch_events: int = 50_000,
) -> ReplayResult:
    """Apply every planned file through the core into an empty state; write each customer's final row."""
    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / f"replay-{plan.name}.duckdb"
    database.unlink(missing_ok=True)  # always from empty state: a re-run gives the same result
    state = CustomerState("replay", database)
    sink = S3ParquetSink(s3, settings)
    read = applied = batches = 0
    pending: list[pa.Table] = []

    def apply_pending() -> None:
        nonlocal applied, batches
        if pending:  # one transaction per ~batch_events, not per (small, hourly) file
            batches += 1
            applied += state.apply_events(
                pa.concat_tables(pending), Position(str(batches), 0)
            ).events.num_rows
            pending.clear()

    try:
        with tqdm(
            total=plan.bytes, unit="B", unit_scale=True, desc=f"replay {plan.name}", disable=not progress
        ) as bar:
            for key, size in plan.files:
                pending.append(sink.get_parquet(key).select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA))
                read += pending[-1].num_rows
                if sum(table.num_rows for table in pending) >= batch_events:
                    apply_pending()
                bar.update(size)
            apply_pending()
        rows = state.snapshot_rows()
        sink.put_parquet(plan.output_key, rows)
        return ReplayResult(
            events_read=read, events_applied=applied, customers=rows.num_rows, output_key=plan.output_key
        )
    finally:
        state.close()
        database.unlink(missing_ok=True)


def parse_time(text: str) -> datetime:
    """A date (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH[:MM]) in UTC."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
