"""Freshness as a service-level indicator, from the worker's commit records.

Each commit record carries its flush's freshness (``schemas.control.Freshness``): percentiles of the seconds from
Kinesis arrival to durable for the records of that flush, and the age of the newest event it made durable. Across
flushes:

- arrival-to-durable p50 is the median of the flushes' p50s weighted by their records (each record counted once);
- arrival-to-durable p99 is the records-weighted 99th percentile of the flushes' p99s: an upper estimate of the
  records' p99 (a flush's p99 is at least the p99 of its own records), so an alarm on it errs on the safe side;
- newest-event age p50 / p99 are percentiles over flushes (one value per flush).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

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
    newest_event_age: float | None


@dataclass(frozen=True, slots=True)
class FreshnessSummary:
    flushes: int  # flushes with freshness fields
    flushes_without: int  # commit records without them (older worker versions)
    arrival_to_durable_p50: float
    arrival_to_durable_p99: float
    arrival_to_durable_max: float
    newest_event_age_p50: float | None
    newest_event_age_p99: float | None


def weighted_quantile(values: npt.ArrayLike, weights: npt.ArrayLike, quantile: float) -> float:
    """The smallest value whose cumulative weight reaches ``quantile`` of the total (inverted CDF)."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values")
    order = np.argsort(v, kind="stable")
    cumulative = np.cumsum(w[order])
    index = int(np.searchsorted(cumulative, quantile * cumulative[-1], side="left"))
    return float(v[order][min(index, v.size - 1)])


def freshness_points(records: Sequence[CommitRecord]) -> list[FreshnessPoint]:
    """One point per flush that recorded its freshness, in commit time order."""
    points = [
        FreshnessPoint(
            committed_at=record.committed_at,
            shard_id=record.shard_id,
            records=max(record.records_in, 1),
            arrival_to_durable_p50=record.freshness.arrival_to_durable_p50,
            arrival_to_durable_p99=record.freshness.arrival_to_durable_p99,
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
    with_freshness = [record for record in records if record.freshness is not None]
    return FreshnessSummary(
        flushes=len(points),
        flushes_without=len(records) - len(points),
        arrival_to_durable_p50=weighted_quantile([p.arrival_to_durable_p50 for p in points], weights, 0.5),
        arrival_to_durable_p99=weighted_quantile([p.arrival_to_durable_p99 for p in points], weights, 0.99),
        arrival_to_durable_max=max(
            record.freshness.arrival_to_durable_max for record in with_freshness if record.freshness
        ),
        newest_event_age_p50=float(np.quantile(ages, 0.5, method="inverted_cdf")) if ages else None,
        newest_event_age_p99=float(np.quantile(ages, 0.99, method="inverted_cdf")) if ages else None,
    )
