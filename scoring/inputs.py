"""From each customer's current aggregates row to the model inputs, on one observation end for every customer.

A customer's current row carries ``frequency``, ``recency`` and ``T`` in days, but ``T`` runs to that row's own
``as_of`` (its shard's high-water mark when the row was written): quiet customers have old rows and short ``T``.
BG/NBD reads "no purchase since" as evidence of dropout, so every customer must share one observation end. Here it is
``as_of`` (default: the latest event time seen in the rows, not past the run's clock), and ``T`` and the days since
the last purchase are recomputed from it, in whole UTC days as the aggregation core counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.logs import count_of

#: The columns of customer_aggregates/ that scoring reads.
REQUIRED_COLUMNS: Final = (
    "customer_id",
    "last_event_at",
    "first_purchase_at",
    "last_purchase_at",
    "purchase_days",
    "frequency",
    "recency",
    "monetary_value",
    "revenue",
)

_EPOCH_DAY: Final = date(1970, 1, 1)


class InputError(ValueError):
    """The rows cannot be scored as asked (e.g. an observation end before purchases in the data)."""


@dataclass(frozen=True, slots=True)
class ModelInputs:
    """One row per buyer, sorted by customer_id; ``customers`` counts every current row (buyers or not)."""

    as_of: datetime
    customers: int
    buyers: pa.Table  # customer_id, frequency, recency, T, monetary_value, days_since_last_purchase,
    #                   purchase_days, revenue (decimal), first_purchase_at, last_purchase_at

    @property
    def as_of_day(self) -> date:
        return self.as_of.astimezone(UTC).date()

    @property
    def repeat_buyers(self) -> int:
        return int(pc.sum(pc.greater(self.buyers.column("frequency"), 0)).as_py() or 0)


def observation_end(
    current: pa.Table, as_of: datetime | None = None, not_after: datetime | None = None
) -> datetime:
    """``as_of`` if given (must carry a time zone), else the latest ``last_event_at`` of the rows, but not past
    ``not_after`` (the run's clock) unless a purchase is: events are taken up to a skew after their arrival, so a
    client clock ahead may stamp a page view in a day not yet begun, which the models would count as a whole day
    observed without purchases (a purchase so stamped is in the aggregates, and no end before it can be taken).
    For the same reason a given ``as_of`` may not fall in a day after both ``not_after``'s and the last purchase's."""
    last_purchase: datetime | None = (
        pc.max(current.column("last_purchase_at")).as_py() if current.num_rows else None
    )
    if as_of is not None:
        if as_of.tzinfo is None:
            raise InputError("--as-of needs a time zone, e.g. 2026-04-30T00:00:00Z")
        end = as_of.astimezone(UTC)
        if not_after is not None:
            latest_day = not_after.astimezone(UTC).date()
            if last_purchase is not None:
                latest_day = max(latest_day, last_purchase.astimezone(UTC).date())
            if end.date() > latest_day:
                raise InputError(
                    f"--as-of {end.date()} is a UTC day not yet begun (today is {not_after.astimezone(UTC).date()}) "
                    "and no purchase in the aggregates is in it: the models would count it whole as observed with "
                    "no purchase, lowering every customer's P(alive) and CLV; score at today or earlier"
                )
        return end
    latest: datetime | None = pc.max(current.column("last_event_at")).as_py() if current.num_rows else None
    if latest is None:
        raise InputError("no customer rows to score")
    if not_after is not None and latest > not_after:
        latest = not_after if last_purchase is None else max(not_after, last_purchase)
    return latest.astimezone(UTC)


def _day_numbers(column: pa.ChunkedArray) -> np.ndarray:
    """UTC day numbers (days since 1970-01-01) of a timestamp[us, UTC] column."""
    days = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.date32())
    return np.asarray(pc.cast(days, pa.int32()).to_numpy(zero_copy_only=False), dtype=np.int64)


def model_inputs(
    current: pa.Table, as_of: datetime | None = None, *, not_after: datetime | None = None
) -> ModelInputs:
    """The buyers' BG/NBD and Gamma-Gamma inputs and RFM measures against one observation end (``as_of``, else
    the latest event time, not past ``not_after``: see ``observation_end``)."""
    missing = [name for name in REQUIRED_COLUMNS if name not in current.column_names]
    if missing:
        raise InputError(f"customer rows lack the columns {missing}")
    end = observation_end(current, as_of, not_after)
    end_day = (end.date() - _EPOCH_DAY).days
    buyers = current.filter(pc.is_valid(current.column("frequency")))
    buyers = buyers.take(pc.sort_indices(buyers, sort_keys=[("customer_id", "ascending")]))
    first_day = _day_numbers(buyers.column("first_purchase_at"))
    last_day = _day_numbers(buyers.column("last_purchase_at"))
    # to the microsecond, not the day: an observation end at noon must not take in the afternoon's purchases
    last_at = pc.cast(buyers.column("last_purchase_at"), pa.timestamp("us", tz="UTC"))
    late = pc.sum(pc.greater(last_at, pa.scalar(end, pa.timestamp("us", tz="UTC")))).as_py() or 0
    if late:
        raise InputError(
            f"{count_of(late, 'customer')} bought after the observation end {end.isoformat()}: the aggregates include "
            "those purchases, so score at a later --as-of (a day, YYYY-MM-DD, observes all of it), or replay the "
            "events up to that time into their own aggregates with `clickstream replay`"
        )
    frequency = buyers.column("frequency").to_numpy().astype(np.int64)
    if not (frequency >= 0).all():
        raise InputError("negative frequency in the customer rows")
    table = pa.table(
        {
            "customer_id": buyers.column("customer_id"),
            "frequency": pa.array(frequency, pa.int64()),
            "recency": pa.array(buyers.column("recency").to_numpy().astype(np.int64), pa.int64()),
            "T": pa.array(end_day - first_day, pa.int64()),
            "monetary_value": pa.array(buyers.column("monetary_value").to_numpy(), pa.float64()),
            "days_since_last_purchase": pa.array(end_day - last_day, pa.int64()),
            "purchase_days": buyers.column("purchase_days"),
            "revenue": buyers.column("revenue"),
            "first_purchase_at": buyers.column("first_purchase_at"),
            "last_purchase_at": buyers.column("last_purchase_at"),
        }
    )
    return ModelInputs(as_of=end, customers=current.num_rows, buyers=table)


def shards_behind(current: pa.Table, end: datetime, days: int = 1) -> dict[str, datetime]:
    """Shards whose newest row's ``as_of`` (the shard's high-water mark when it last wrote) is more than ``days``
    before the observation end, with that mark: their customers' latest purchases may be missing while ``T`` runs
    to the end, so P(alive) reads low for them. A shard can also be quiet, or closed by a reshard; the rows cannot
    tell which."""
    if not {"shard_id", "as_of"} <= set(current.column_names) or not current.num_rows:
        return {}
    marks = current.group_by("shard_id").aggregate([("as_of", "max")])
    behind = {}
    for shard, mark in zip(
        marks.column("shard_id").to_pylist(), marks.column("as_of_max").to_pylist(), strict=True
    ):
        if mark is not None and (end - mark).days >= days:
            behind[str(shard)] = mark
    return dict(sorted(behind.items()))
