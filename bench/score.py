"""Benchmark of `clickstream score`: the whole run (read, fit, predict, segment, write, commit) on N customers.

``python -m bench.score`` scores 100,000 and 1,000,000 synthetic customers side by side in one run (the machine is
shared and noisy: compare the two, and the steps within a run). Customers are current customer_aggregates rows
drawn from BG/NBD (r=0.75, alpha=10, a=0.8, b=2.5) and Gamma-Gamma (p=6, q=4, v=40) over 1-365 days.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clickstream.score import LocalStore, read_local_rows, score_customers
from runtime.settings import Settings
from schemas.contract import CUSTOMER_AGGREGATES_SCHEMA

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def synthetic_rows(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    t_days = rng.integers(1, 366, n)
    lam, p = rng.gamma(0.75, 1 / 10.0, n), rng.beta(0.8, 2.5, n)
    x, t_x, t, alive = np.zeros(n, np.int64), np.zeros(n), np.zeros(n), np.ones(n, bool)
    while alive.any():
        t[alive] += rng.exponential(1 / lam[alive])
        buy = alive & (t <= t_days)
        x[buy] += 1
        t_x[buy] = t[buy]
        alive = buy & (rng.random(n) > p)
    recency = np.floor(t_x).astype(np.int64)
    nu = rng.gamma(4.0, 1 / 40.0, n)
    mean_value = np.where(x > 0, rng.gamma(6.0 * np.maximum(x, 1), 1 / (nu * np.maximum(x, 1))), 0.0).round(2)
    first = np.array(
        [(AS_OF - timedelta(days=int(d))).replace(tzinfo=None) for d in t_days], dtype="datetime64[us]"
    )
    last = first + recency.astype("timedelta64[D]")
    first_value = rng.gamma(6.0, 1 / nu).round(2)
    revenue = [Decimal(str(round(a + b * k, 2))) for a, b, k in zip(first_value, mean_value, x, strict=True)]
    zeros = np.zeros(n, np.int64)
    columns = {
        "customer_id": pa.array([f"c-{i:07d}" for i in range(n)]),
        "version": pa.array(x + 1),
        "as_of": pa.array(last, pa.timestamp("us", tz="UTC")),
        "first_event_at": pa.array(first, pa.timestamp("us", tz="UTC")),
        "last_event_at": pa.array(last, pa.timestamp("us", tz="UTC")),
        "purchases": pa.array(x + 1),
        "revenue": pa.array(revenue, pa.decimal128(18, 2)),
        "first_purchase_at": pa.array(first, pa.timestamp("us", tz="UTC")),
        "last_purchase_at": pa.array(last, pa.timestamp("us", tz="UTC")),
        "purchase_days": pa.array(x + 1),
        "frequency": pa.array(x),
        "recency": pa.array(recency),
        "T": pa.array(recency),
        "monetary_value": pa.array(mean_value),
        "engagement_score": pa.array(np.ones(n)),
        "shard_id": pa.array(["shardId-000000000000"] * n),
        "updated_through_sequence": pa.array(["1"] * n),
    }
    arrays = []
    for field in CUSTOMER_AGGREGATES_SCHEMA:
        if field.name in columns:
            arrays.append(columns[field.name].cast(field.type))
        elif field.name == "repeat_revenue":
            arrays.append(pa.nulls(n, field.type))
        else:
            arrays.append(pa.array(zeros).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=CUSTOMER_AGGREGATES_SCHEMA)


def run(n: int, workdir: Path) -> dict[str, float]:
    source = workdir / f"in-{n}"
    source.mkdir()
    pq.write_table(synthetic_rows(n), source / "part.parquet")
    settings = Settings(prefix="rfm")
    started = time.perf_counter()
    outcome = score_customers(
        lambda: read_local_rows(source, settings),
        LocalStore(workdir / f"out-{n}"),
        settings,
        say=lambda _: None,
    )
    return {"total": time.perf_counter() - started, **outcome.seconds, "buyers": float(outcome.commit.rows)}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sizes",
        nargs="*",
        type=_customers,
        metavar="CUSTOMERS",
        help="customer counts to score, one run each (default: 100000 1000000; the larger needs about 2.4 GB)",
    )
    sizes = parser.parse_args().sizes or [100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as workdir:
        for n in sizes:
            result = run(n, Path(workdir))
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.items() if k not in ("total", "buyers"))
            print(f"score {n:>9,} customers: {result['total']:6.1f}s total ({steps})", flush=True)


def _customers(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of customers") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1 customer")
    return value


if __name__ == "__main__":
    main()
