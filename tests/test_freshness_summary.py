"""The freshness SLI over commit records: its p99 is an upper bound of the records' p99, whatever the flushes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from scoring.freshness import FreshnessPoint, quantile_upper_bound

AT = datetime(2026, 5, 1, tzinfo=UTC)


def point(delays: np.ndarray) -> FreshnessPoint:
    """A flush's summary as ``consumer.s3_sink.freshness_of`` takes it (percentiles as the higher record)."""
    p50, p99 = np.quantile(delays, [0.5, 0.99], method="higher")
    return FreshnessPoint(AT, "shard", len(delays), float(p50), float(p99), float(delays.max()), None)


def test_one_slow_flush_among_flushes_with_a_few_slow_records_is_not_hidden() -> None:
    """99 flushes of 1,000 records with 9 slow each, and one flush all slow: 1.9 % of records are slow, so the
    true p99 is slow though 99 of the 100 flushes report a fast p99."""
    few_slow = np.array([1.0] * 991 + [100.0] * 9)
    flushes = [point(few_slow)] * 99 + [point(np.full(1_000, 100.0))]
    records = np.concatenate([few_slow] * 99 + [np.full(1_000, 100.0)])
    assert np.quantile(records, 0.99, method="higher") == 100.0
    assert quantile_upper_bound(flushes) == 100.0


def test_the_bound_holds_on_random_flushes_and_is_tight_when_they_agree() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        batches = [
            rng.lognormal(rng.uniform(-1, 2), rng.uniform(0.1, 1.5), rng.integers(1, 3_000))
            for _ in range(20)
        ]
        bound = quantile_upper_bound([point(delays) for delays in batches])
        everything = np.concatenate(batches)
        assert bound >= np.quantile(everything, 0.99, method="higher")
        assert bound <= everything.max()
    same = np.linspace(0.1, 2.0, 1_000)
    assert quantile_upper_bound([point(same)] * 10) == point(same).arrival_to_durable_p99


def brute_force_bound(points: list[FreshnessPoint], quantile: float = 0.99) -> float:
    """The definition, candidate by candidate: the smallest flush value x with at most 1 - quantile above it."""
    records = np.array([point.records for point in points], dtype=np.float64)
    p50 = np.array([point.arrival_to_durable_p50 for point in points])
    p99 = np.array([point.arrival_to_durable_p99 for point in points])
    high = np.array([point.arrival_to_durable_max for point in points])
    for x in np.unique(np.concatenate([p50, p99, high])):
        above = np.where(x >= high, 0.0, np.where(x >= p99, 0.01, np.where(x >= p50, 0.5, 1.0)))
        if (records * above).sum() <= (1 - quantile) * records.sum() * (1 + 1e-12):
            return float(x)
    raise AssertionError("unreachable")


def test_the_bound_is_the_definitions_on_many_flushes_with_shared_values() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        count = int(rng.integers(1, 60))
        values = np.round(rng.lognormal(0, 1, (count, 3)), 1)  # rounded: many flushes share values
        values.sort(axis=1)
        points = [
            FreshnessPoint(AT, "s", int(rng.integers(1, 5_000)), float(v[0]), float(v[1]), float(v[2]), None)
            for v in values
        ]
        assert quantile_upper_bound(points) == brute_force_bound(points)


def test_a_flush_is_weighted_by_the_records_its_percentiles_cover_not_its_duplicates() -> None:
    """A retry storm: one fast new event among 9,999 duplicates must not outweigh 100 slow new events."""
    from schemas.control import CommitRecord, Freshness
    from schemas.positions import Position
    from scoring.freshness import summarize_freshness

    def commit(new: int, duplicates: int, seconds: float) -> CommitRecord:
        return CommitRecord(
            shard_id="s", attempt_id="a", worker_id="w", previous=None, first=Position("1", 0),
            last=Position("2", 0), records_in=new + duplicates, records_skipped=0, accepted=new + duplicates,
            duplicates=duplicates, rejected=0, customers_changed=1, files={}, file_bytes={}, bytes_written=0,
            committed_at=AT, oldest_event_at=None, newest_event_at=None,
            freshness=Freshness(seconds, seconds, seconds, None),
        )  # fmt: skip

    summary = summarize_freshness([commit(100, 0, 100.0), commit(1, 9_999, 1.0)])
    assert summary is not None and summary.arrival_to_durable_p99 == 100.0
