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
