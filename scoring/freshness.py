"""Freshness as a service-level indicator, from the worker's commit records.

Each commit record carries its flush's freshness (``schemas.control.Freshness``): percentiles of the seconds from
Kinesis arrival to durable for the records of that flush, and the age of the newest event it made durable. Across
flushes:

- arrival-to-durable p50 is the median of the flushes' p50s weighted by their records (each record counted once): an
  estimate;
- arrival-to-durable p99 is an upper bound of the records' p99 (``quantile_upper_bound``): whatever each flush's
  records were within its p50, p99 and max, at most 1 % of all records took longer, so an alarm on it errs on the
  safe side. (A percentile of the flushes' p99s is no bound: 99 flushes each with 0.9 % slow records and one
  all slow have a true p99 that is slow while every flush but one reports a fast p99.)
- newest-event age p50 / p99 are percentiles over flushes (one value per flush).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas.control import CommitRecord


@dataclass(frozen=True, slots=True)
class FreshnessPoint:
    committed_at: datetime
    shard_id: str
    records: int
    arrival_to_durable_p50: float
    arrival_to_durable_p99: float
    arrival_to_durable_max: float
    newest_event_age: float | None


@dataclass(frozen=True, slots=True)
class FreshnessSummary:
    flushes: int  # flushes with freshness fields
    arrival_to_durable_p50: float
    arrival_to_durable_p99: float
    arrival_to_durable_max: float
    newest_event_age_p50: float | None
    newest_event_age_p99: float | None

    def old_events_note(self) -> str | None:
        """In words, when the newest event of a flush is a day old or more at its commit (p50): a live stream's is
        seconds to minutes, so a figure in millions of seconds reads as a fault where it is the data's."""
        age = self.newest_event_age_p50
        if age is None or age < OLD_EVENTS_SECONDS:
            return None
        return (
            f"the newest event of a flush is {age / 86_400:,.1f} days old at its commit (p50): the events carry "
            "old times (a backfill put on the stream, generated demo data) or their producers' clocks are off"
        )


#: A newest-event age (p50) from which the readers say in words that the events carry old times.
OLD_EVENTS_SECONDS: Final = 86_400


def weighted_quantile(values: npt.ArrayLike, weights: npt.ArrayLike, quantile: float) -> float:
    """The smallest value whose cumulative weight reaches ``quantile`` of the total (inverted CDF)."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values")
    order = np.argsort(v, kind="stable")
    cumulative = np.cumsum(w[order])
    index = int(np.searchsorted(cumulative, quantile * cumulative[-1], side="left"))
    return float(v[order][min(index, v.size - 1)])


def quantile_upper_bound(points: Sequence[FreshnessPoint], quantile: float = 0.99) -> float:
    """The smallest flush percentile or max ``x`` such that at most ``1 - quantile`` of all records can exceed it.

    Of a flush's records, none exceed its max, at most 1 % its p99 and at most half its p50 (percentiles taken as
    the higher record, as ``consumer.s3_sink.freshness_of`` does); below its p50, all of them may.
    """
    if not points:
        raise ValueError("no values")
    records = np.array([point.records for point in points], dtype=np.float64)
    p50 = np.array([point.arrival_to_durable_p50 for point in points])
    p99 = np.array([point.arrival_to_durable_p99 for point in points])
    high = np.array([point.arrival_to_durable_max for point in points])
    # the records that may exceed x fall in steps as x passes each flush's p50 (all -> half), p99 (half -> 1 %) and
    # max (1 % -> none): one sort of the steps, not a pass over the flushes per candidate x
    at = np.concatenate([p50, p99, high])
    drop = np.concatenate([records * 0.5, records * 0.49, records * 0.01])
    order = np.argsort(at, kind="stable")
    at, drop = at[order], drop[order]
    last_of_value = np.flatnonzero(np.append(at[1:] != at[:-1], True))
    # may exceed each distinct x, every step at x taken
    above = records.sum() - np.cumsum(drop)[last_of_value]
    allowed = (1.0 - quantile) * records.sum()
    first = int(np.argmax(above <= allowed * (1 + 1e-12)))  # reached at the largest max at the latest
    return float(at[last_of_value][first])


def freshness_points(records: Sequence[CommitRecord]) -> list[FreshnessPoint]:
    """One point per flush that recorded its freshness, in commit time order."""
    points = [
        FreshnessPoint(
            committed_at=record.committed_at,
            shard_id=record.shard_id,
            # the records its percentiles were taken over: new events and rejects (not duplicates, not redeliveries)
            records=max(record.accepted - record.duplicates + record.rejected, 1),
            arrival_to_durable_p50=record.freshness.arrival_to_durable_p50,
            arrival_to_durable_p99=record.freshness.arrival_to_durable_p99,
            arrival_to_durable_max=record.freshness.arrival_to_durable_max,
            newest_event_age=record.freshness.newest_event_age,
        )
        for record in records
        if record.freshness is not None
    ]
    return sorted(points, key=lambda point: point.committed_at)


def summarize_freshness(records: Sequence[CommitRecord]) -> FreshnessSummary | None:
    """p50 / p99 of arrival-to-durable and newest-event age over the commit records (None without any)."""
    points = freshness_points(records)
    if not points:
        return None
    weights = [point.records for point in points]
    ages = [point.newest_event_age for point in points if point.newest_event_age is not None]
    return FreshnessSummary(
        flushes=len(points),
        arrival_to_durable_p50=weighted_quantile([p.arrival_to_durable_p50 for p in points], weights, 0.5),
        arrival_to_durable_p99=quantile_upper_bound(points, 0.99),
        arrival_to_durable_max=max(point.arrival_to_durable_max for point in points),
        newest_event_age_p50=float(np.quantile(ages, 0.5, method="inverted_cdf")) if ages else None,
        newest_event_age_p99=float(np.quantile(ages, 0.99, method="inverted_cdf")) if ages else None,
    )
