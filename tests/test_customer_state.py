"""Specification of CustomerState: incremental per-customer RFM / engagement aggregates, and its local journal.

Layer: pure core on small Arrow tables (no AWS). ``tests/reference.py`` is the independent oracle: a row-by-row
plain-Python computation of the same columns from the event documents.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregators import customer_state
from aggregators.customer_state import AppliedBatch, CustomerState, StateOptions
from aggregators.state_journal import StateJournal, read_journal
from producer.generator import ClickstreamGenerator
from schemas import CUSTOMER_AGGREGATES_SCHEMA, EVENT_TYPES, RAW_RECORD_SCHEMA
from schemas.positions import Position
from tests.reference import parse_time, reference_aggregates

SHARD = "shardId-000000000003"
#: A real-looking 56-digit Kinesis sequence number; deliveries count up from here.
BASE_SEQUENCE = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
#: Arrival of every test record: after all event times used here (the future-skew rule must not fire).
ARRIVAL = datetime(2026, 6, 1, tzinfo=UTC)
#: Columns that legitimately depend on how the stream was cut into batches.
BATCH_DEPENDENT = ("updated_through_sequence",)

_ids = itertools.count(1)


def new_event_id() -> str:
    return f"00000000-0000-4000-8000-{next(_ids):012x}"


def event(
    customer: str,
    event_type: str,
    when: str | datetime,
    *,
    revenue: str | None = None,
    session: str = "s-1",
    event_id: str | None = None,
) -> dict[str, Any]:
    """A valid event document; a purchase gets an order id and ``revenue`` (default 10.00)."""
    text = when if isinstance(when, str) else when.isoformat()
    doc: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id or new_event_id(),
        "event_type": event_type,
        "customer_id": customer,
        "session_id": session,
        "event_time": text,
    }
    if event_type in ("product_view", "add_to_cart"):
        doc["product_id"] = "p-00001"
    if event_type == "search":
        doc["search_query"] = "boots"
    if event_type in ("checkout", "purchase"):
        doc["order_id"] = f"o-{doc['event_id'][-6:]}"
    if event_type == "purchase":
        doc["revenue"] = Decimal(revenue or "10.00")
        doc["currency"] = "USD"
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    """Compact JSON; a Decimal revenue is written verbatim as a JSON number."""
    text = json.dumps(doc, separators=(",", ":"), default=_decimal_marker)
    return text.replace('"@@', "").replace('@@"', "").encode()


def _decimal_marker(value: Any) -> str:
    if isinstance(value, Decimal):
        return f"@@{value}@@"
    raise TypeError(value)


def as_document(record: bytes | dict[str, Any]) -> dict[str, Any]:
    """The document as a producer-side consumer (the reference) reads it."""
    loaded: dict[str, Any] = json.loads(record) if isinstance(record, bytes) else json.loads(encode(record))
    return loaded


class Stream:
    """One shard's records as Kinesis delivers them: every delivery gets the next, higher sequence number."""

    def __init__(self, first: int = BASE_SEQUENCE) -> None:
        self.next_sequence = first

    def batch(self, records: Iterable[bytes | dict[str, Any]]) -> pa.Table:
        rows = []
        for record in records:
            data = record if isinstance(record, bytes) else encode(record)
            rows.append(_raw_row(data, str(self.next_sequence)))
            self.next_sequence += 1
        return pa.Table.from_pylist(rows, schema=RAW_RECORD_SCHEMA)


def _raw_row(data: bytes, sequence: str, sub: int = 0) -> dict[str, Any]:
    try:
        key = str(json.loads(data)["customer_id"])
    except (ValueError, KeyError, TypeError, RecursionError):
        key = "unknown"
    return {
        "shard_id": SHARD,
        "sequence_number": sequence,
        "sub_sequence_number": sub,
        "partition_key": key,
        "approximate_arrival_at": ARRIVAL,
        "data": data,
    }


def raw_at(records: Sequence[bytes | dict[str, Any]], positions: Sequence[str | tuple[str, int]]) -> pa.Table:
    """A raw batch with explicit (sequence, sub-sequence) positions."""
    rows = []
    for record, position in zip(records, positions, strict=True):
        sequence, sub = position if isinstance(position, tuple) else (position, 0)
        rows.append(_raw_row(record if isinstance(record, bytes) else encode(record), sequence, sub))
    return pa.Table.from_pylist(rows, schema=RAW_RECORD_SCHEMA)


def by_customer(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {row["customer_id"]: row for row in table.to_pylist()}


def without(row: dict[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in set(columns)}


def assert_matches_reference(rows: pa.Table, documents: Iterable[dict[str, Any]]) -> None:
    """Every customer and every reference column; floats with tolerance, Decimals and the rest exactly."""
    actual = by_customer(rows)
    as_of_values = set(rows.column("as_of").to_pylist())
    assert len(as_of_values) == 1
    [as_of] = as_of_values
    expected = reference_aggregates(list(documents), as_of=as_of.date())
    assert actual.keys() == expected.keys()
    for customer, columns in expected.items():
        got = actual[customer]
        for column, value in columns.items():
            if isinstance(value, float):
                assert got[column] == pytest.approx(value, rel=1e-12, abs=1e-12), (customer, column)
            elif isinstance(value, Decimal):
                assert isinstance(got[column], Decimal), (customer, column)
                assert got[column] == value, (customer, column, got[column], value)
            else:
                assert got[column] == value, (customer, column, got[column], value)
        assert got["version"] == columns["events"]
        assert got["shard_id"] == SHARD


def apply_all(state: CustomerState, batches: Iterable[pa.Table]) -> list[AppliedBatch]:
    return [state.apply(batch) for batch in batches]


# ---------------------------------------------------------------------------------------------------- reference


@pytest.fixture(scope="module")
def generated() -> list[tuple[str, bytes]]:
    generator = ClickstreamGenerator(300, 8000, seed=21, days=30, duplicate_rate=0.05, malformed_rate=0.01)
    return list(generator.records())


@pytest.mark.parametrize("batch_size", [500, 10_000], ids=["many_batches", "one_batch"])
def test_generated_stream_matches_the_reference_for_every_customer_and_column(
    generated: list[tuple[str, bytes]], batch_size: int
) -> None:
    state = CustomerState(SHARD)
    stream = Stream()
    records = [data for _, data in generated]
    results = apply_all(
        state, (stream.batch(records[i : i + batch_size]) for i in range(0, len(records), batch_size))
    )
    labels = [label for label, _ in generated]
    assert sum(r.events.num_rows for r in results) == labels.count("valid")
    assert sum(r.duplicates for r in results) == labels.count("duplicate")
    assert sum(r.rejects.num_rows for r in results) == sum(label.startswith("malformed:") for label in labels)
    assert sum(r.records_skipped for r in results) == 0

    documents = [json.loads(data) for label, data in generated if label in ("valid", "duplicate")]
    snapshot = state.snapshot_rows()
    assert snapshot.schema == CUSTOMER_AGGREGATES_SCHEMA
    assert snapshot.num_rows == len({d["customer_id"] for d in documents}) == state.customer_count()
    assert set(snapshot.column("as_of").to_pylist()) == {max(parse_time(d["event_time"]) for d in documents)}
    assert sum(snapshot.column("purchase_days").to_pylist()) > 0  # the comparison covers buyers too
    assert any(f is not None and f > 0 for f in snapshot.column("frequency").to_pylist())
    assert_matches_reference(snapshot, documents)


def test_batch_size_does_not_change_the_snapshot(generated: list[tuple[str, bytes]]) -> None:
    records = [data for _, data in generated]
    snapshots = []
    for size in (len(records), 333):
        state = CustomerState(SHARD)
        stream = Stream()
        apply_all(state, (stream.batch(records[i : i + size]) for i in range(0, len(records), size)))
        snapshots.append(state.snapshot_rows())
    assert snapshots[0].equals(snapshots[1])


# ---------------------------------------------------------------------------------------------------- set semantics

CUSTOMERS = ("c-1", "c-2", "c-3")
DAY0 = datetime(2026, 3, 1, tzinfo=UTC)


@st.composite
def event_records(draw: st.DrawFn) -> list[bytes]:
    """Distinct events of a few customers over a week, purchases over-represented, assorted UTC offsets."""
    count = draw(st.integers(1, 14))
    records = []
    for index in range(count):
        instant = DAY0 + timedelta(
            days=draw(st.integers(0, 6)),
            seconds=draw(st.integers(0, 86_399)),
            microseconds=draw(st.integers(0, 999_999)),
        )
        offset = timezone(timedelta(minutes=draw(st.sampled_from([0, 120, -300, 330]))))
        event_type = draw(st.one_of(st.just("purchase"), st.sampled_from(EVENT_TYPES)))
        event_id = f"00000000-0000-4000-8000-{index:012x}"
        doc = event(
            draw(st.sampled_from(CUSTOMERS)),
            event_type,
            instant.astimezone(offset),
            revenue=str(Decimal(draw(st.integers(0, 100_000))) / 100),
            session=draw(st.sampled_from(["s-1", "s-2", "s-3"])),
            event_id=event_id.upper() if draw(st.booleans()) else event_id,
        )
        records.append(encode(doc))
    return records


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_aggregates_depend_only_on_the_set_of_events(data: st.DataObject) -> None:
    records = data.draw(event_records(), label="records")
    repeats = data.draw(st.lists(st.sampled_from(range(len(records))), max_size=6), label="repeats")
    order = data.draw(st.permutations(list(range(len(records))) + repeats), label="order")
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(order) - 1)), max_size=3), label="cuts")))
    redeliver = data.draw(st.booleans(), label="redeliver a batch")

    baseline = CustomerState(SHARD)
    baseline.apply(Stream().batch(records))
    expected = baseline.snapshot_rows()

    state = CustomerState(SHARD)
    stream = Stream()
    bounds = [0, *(c for c in cuts if c < len(order)), len(order)]
    batches = [stream.batch([records[i] for i in order[a:b]]) for a, b in itertools.pairwise(bounds) if b > a]
    results = apply_all(state, batches)
    if redeliver:
        again = state.apply(data.draw(st.sampled_from(batches), label="redelivered"))
        assert again.records_skipped == again.records_in
        assert again.customer_rows.num_rows == 0

    assert sum(r.events.num_rows for r in results) == len(records)
    assert sum(r.duplicates for r in results) == len(repeats)
    actual = state.snapshot_rows()
    assert [without(r, BATCH_DEPENDENT) for r in actual.to_pylist()] == [
        without(r, BATCH_DEPENDENT) for r in expected.to_pylist()
    ]
    assert_matches_reference(actual, [as_document(r) for r in records])

    # The highest version of each customer across all flushes is its current row (as_of/T move with the shard).
    latest: dict[str, dict[str, Any]] = {}
    for result in results:
        for row in result.customer_rows.to_pylist():
            previous = latest.get(row["customer_id"])
            assert previous is None or row["version"] > previous["version"]
            latest[row["customer_id"]] = row
    moving = ("as_of", "T", *BATCH_DEPENDENT)
    assert {c: without(r, moving) for c, r in latest.items()} == {
        c: without(r, moving) for c, r in by_customer(actual).items()
    }


def test_duplicate_event_ids_count_once() -> None:
    purchase = event("c-1", "purchase", "2026-03-02T10:00:00Z", revenue="25.00")
    upper = {**purchase, "event_id": purchase["event_id"].upper()}
    state = CustomerState(SHARD)
    stream = Stream()
    first = state.apply(stream.batch([purchase, purchase, upper]))
    second = state.apply(stream.batch([purchase]))
    assert (first.events.num_rows, first.duplicates) == (1, 2)
    assert (second.events.num_rows, second.duplicates) == (0, 1)
    assert first.accepted == 3
    [row] = state.snapshot_rows().to_pylist()
    assert (row["events"], row["purchases"], row["revenue"]) == (1, 1, Decimal("25.00"))


def test_first_delivery_of_a_repeated_event_id_wins_within_a_batch() -> None:
    event_id = new_event_id()
    view = event("c-1", "page_view", "2026-03-02T10:00:00Z", event_id=event_id)
    purchase = event("c-1", "purchase", "2026-03-02T10:00:00Z", event_id=event_id)
    state = CustomerState(SHARD)
    applied = state.apply(raw_at([purchase, view], [str(BASE_SEQUENCE + 1), str(BASE_SEQUENCE)]))
    assert applied.duplicates == 1
    [row] = state.snapshot_rows().to_pylist()
    assert (row["page_views"], row["purchases"]) == (1, 0)


# ---------------------------------------------------------------------------------------------------- RFM


def row_of(state: CustomerState, customer: str) -> dict[str, Any]:
    return by_customer(state.snapshot_rows())[customer]


def test_late_purchase_before_the_first_purchase_day_moves_rfm_back() -> None:
    state = CustomerState(SHARD)
    stream = Stream()
    documents = [
        event("c-1", "purchase", "2026-03-10T10:00:00Z", revenue="10.00"),
        event("c-1", "purchase", "2026-03-15T10:00:00Z", revenue="5.00"),
        event("c-1", "page_view", "2026-03-20T10:00:00Z"),
    ]
    state.apply(stream.batch(documents))
    row = row_of(state, "c-1")
    assert (row["purchase_days"], row["frequency"], row["recency"], row["T"]) == (2, 1, 5, 10)
    assert row["monetary_value"] == 5.0
    assert row["repeat_revenue"] == Decimal("5.00")
    assert row["first_purchase_at"] == datetime(2026, 3, 10, 10, tzinfo=UTC)

    late = [
        event("c-1", "purchase", "2026-03-05T10:00:00Z", revenue="20.00"),
        event("c-1", "purchase", "2026-03-15T18:00:00Z", revenue="7.00"),  # same day as an earlier repeat
    ]
    applied = state.apply(stream.batch(late))
    documents += late
    [row] = applied.customer_rows.to_pylist()
    assert row == row_of(state, "c-1")
    assert (row["purchase_days"], row["frequency"], row["recency"], row["T"]) == (3, 2, 10, 15)
    assert row["revenue"] == Decimal("42.00")
    assert row["repeat_revenue"] == Decimal("22.00")  # 10.00 + (5.00 + 7.00): the first day is excluded
    assert row["monetary_value"] == 11.0
    assert row["first_purchase_at"] == datetime(2026, 3, 5, 10, tzinfo=UTC)
    assert row["last_purchase_at"] == datetime(2026, 3, 15, 18, tzinfo=UTC)
    assert row["as_of"] == datetime(2026, 3, 20, 10, tzinfo=UTC)  # older events do not move as_of
    assert_matches_reference(state.snapshot_rows(), documents)

    same_first_day = [
        event("c-1", "purchase", "2026-03-05T23:00:00Z", revenue="3.00"),
        event("c-1", "purchase", "2026-03-05T01:00:00Z", revenue="1.00"),
    ]
    state.apply(stream.batch(same_first_day[:1]))
    state.apply(stream.batch(same_first_day[1:]))
    documents += same_first_day
    row = row_of(state, "c-1")
    assert (row["purchases"], row["purchase_days"], row["frequency"], row["recency"], row["T"]) == (
        6,
        3,
        2,
        10,
        15,
    )
    assert row["revenue"] == Decimal("46.00")
    assert row["repeat_revenue"] == Decimal("22.00")  # first day now 20 + 3 + 1, still excluded
    assert row["monetary_value"] == 11.0
    assert row["first_purchase_at"] == datetime(2026, 3, 5, 1, tzinfo=UTC)
    assert_matches_reference(state.snapshot_rows(), documents)


def test_purchase_on_the_known_first_day_arriving_later_stays_out_of_monetary_value() -> None:
    state = CustomerState(SHARD)
    stream = Stream()
    state.apply(
        stream.batch(
            [
                event("c-1", "purchase", "2026-03-10T10:00:00Z", revenue="10.00"),
                event("c-1", "purchase", "2026-03-12T10:00:00Z", revenue="4.00"),
            ]
        )
    )
    state.apply(stream.batch([event("c-1", "purchase", "2026-03-10T20:00:00Z", revenue="100.00")]))
    row = row_of(state, "c-1")
    assert (row["purchases"], row["purchase_days"], row["frequency"]) == (3, 2, 1)
    assert row["repeat_revenue"] == Decimal("4.00")
    assert row["monetary_value"] == 4.0


def test_single_purchase_day_has_zero_frequency_and_monetary_value() -> None:
    state = CustomerState(SHARD)
    state.apply(
        Stream().batch(
            [
                event("c-1", "purchase", "2026-03-10T10:00:00Z", revenue="10.00"),
                event("c-1", "purchase", "2026-03-10T11:00:00Z", revenue="2.50"),
                event("c-2", "page_view", "2026-03-13T00:00:00Z"),
            ]
        )
    )
    row = row_of(state, "c-1")
    assert (row["purchases"], row["purchase_days"], row["frequency"], row["recency"], row["T"]) == (
        2,
        1,
        0,
        0,
        3,
    )
    assert row["monetary_value"] == 0.0
    assert row["repeat_revenue"] == Decimal("0.00")
    assert row["revenue"] == Decimal("12.50")


def test_customer_without_purchases_has_null_rfm_and_zero_purchase_days() -> None:
    state = CustomerState(SHARD)
    stream = Stream()
    state.apply(
        stream.batch(
            [
                event("c-9", "page_view", "2026-03-01T10:00:00Z"),
                event("c-9", "search", "2026-03-02T10:00:00Z"),
                event("c-8", "purchase", "2026-03-03T10:00:00Z"),
            ]
        )
    )
    state.apply(stream.batch([event("c-9", "checkout", "2026-03-04T10:00:00Z")]))
    row = row_of(state, "c-9")
    for column in ("frequency", "recency", "T", "monetary_value", "repeat_revenue"):
        assert row[column] is None, column
    assert row["first_purchase_at"] is None
    assert row["last_purchase_at"] is None
    assert (row["purchase_days"], row["purchases"], row["revenue"]) == (0, 0, Decimal("0.00"))
    assert row["checkouts"] == 1
    assert row_of(state, "c-8")["frequency"] == 0  # the shard has buyers; only c-9's columns are null


def test_t_grows_with_the_shard_as_of_for_customers_not_in_the_batch() -> None:
    state = CustomerState(SHARD)
    stream = Stream()
    state.apply(stream.batch([event("c-1", "purchase", "2026-03-10T10:00:00Z")]))
    applied = state.apply(stream.batch([event("c-2", "page_view", "2026-03-25T08:00:00Z")]))
    assert applied.customer_rows.column("customer_id").to_pylist() == ["c-2"]
    row = row_of(state, "c-1")
    assert row["T"] == 15
    assert row["as_of"] == datetime(2026, 3, 25, 8, tzinfo=UTC)


@pytest.fixture
def local_zone_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a non-UTC process time zone, so UTC day bucketing cannot pass by accident."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_new_york")
def test_days_and_timestamps_are_utc_whatever_the_offset() -> None:
    state = CustomerState(SHARD)
    state.apply(
        Stream().batch(
            [
                event("c-1", "page_view", "2026-03-01T23:30:00-02:00"),  # 2026-03-02T01:30Z
                event("c-1", "purchase", "2026-03-02T00:30:00Z"),
                event("c-1", "purchase", "2026-03-02T01:00:00+02:00"),  # 2026-03-01T23:00Z
            ]
        )
    )
    row = row_of(state, "c-1")
    assert row["active_days"] == 2
    assert row["purchase_days"] == 2
    assert row["first_event_at"] == datetime(2026, 3, 1, 23, tzinfo=UTC)
    assert row["last_event_at"] == datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
    assert row["first_purchase_at"] == datetime(2026, 3, 1, 23, tzinfo=UTC)


def test_revenue_counts_only_on_purchases() -> None:
    checkout = {**event("c-1", "checkout", "2026-03-01T10:00:00Z"), "revenue": Decimal("50.00")}
    state = CustomerState(SHARD)
    state.apply(Stream().batch([checkout, event("c-1", "purchase", "2026-03-02T10:00:00Z", revenue="3.00")]))
    row = row_of(state, "c-1")
    assert row["revenue"] == Decimal("3.00")
    assert (row["checkouts"], row["purchases"], row["purchase_days"]) == (1, 1, 1)


def test_sessions_are_distinct_across_batches() -> None:
    state = CustomerState(SHARD)
    stream = Stream()
    state.apply(stream.batch([event("c-1", "page_view", "2026-03-01T10:00:00Z", session=s) for s in "aab"]))
    state.apply(stream.batch([event("c-1", "page_view", "2026-03-01T11:00:00Z", session=s) for s in "bc"]))
    assert row_of(state, "c-1")["sessions"] == 3


# ---------------------------------------------------------------------------------------------------- engagement

WEIGHTS = {"page_view": 1, "product_view": 2, "search": 2, "add_to_cart": 4, "checkout": 6, "purchase": 10}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_engagement_weight_of_each_event_type(event_type: str) -> None:
    state = CustomerState(SHARD)
    state.apply(Stream().batch([event("c-1", event_type, "2026-03-01T10:00:00Z")]))
    assert row_of(state, "c-1")["engagement_score"] == WEIGHTS[event_type]


def test_engagement_score_is_weighted_interactions_per_active_day() -> None:
    counts = {"page_view": 3, "product_view": 2, "search": 1, "add_to_cart": 1, "checkout": 1, "purchase": 1}
    documents = [
        event("c-1", event_type, f"2026-03-0{1 + i % 2}T10:00:00Z")
        for i, event_type in enumerate(t for t, n in counts.items() for _ in range(n))
    ]
    state = CustomerState(SHARD)
    stream = Stream()
    state.apply(stream.batch(documents[:4]))
    state.apply(stream.batch(documents[4:]))
    row = row_of(state, "c-1")
    assert row["active_days"] == 2
    assert row["engagement_score"] == (1 * 3 + 2 * 2 + 2 * 1 + 4 * 1 + 6 * 1 + 10 * 1) / 2  # 14.5


# ---------------------------------------------------------------------------------------------------- redelivery


def test_redelivered_batch_is_skipped_and_changes_nothing() -> None:
    state = CustomerState(SHARD)
    batch = Stream().batch(
        [
            event("c-1", "purchase", "2026-03-01T10:00:00Z"),
            b"not json",
            event("c-2", "search", "2026-03-02T10:00:00Z"),
        ]
    )
    state.apply(batch)
    before, position = state.snapshot_rows(), state.position()
    again = state.apply(batch)
    assert (again.records_in, again.records_skipped, again.duplicates) == (3, 3, 0)
    assert again.events.num_rows == again.customer_rows.num_rows == again.rejects.num_rows == 0
    assert again.position is None
    assert state.position() == position
    assert state.snapshot_rows().equals(before)


def test_partly_redelivered_batch_applies_only_the_records_above_the_position() -> None:
    documents = [event("c-1", "page_view", f"2026-03-01T1{i}:00:00Z") for i in range(9)]
    positions = [str(BASE_SEQUENCE + i) for i in range(9)]
    state = CustomerState(SHARD)
    state.apply(raw_at(documents[:6], positions[:6]))
    applied = state.apply(raw_at(documents[3:], positions[3:]))
    assert (applied.records_in, applied.records_skipped, applied.events.num_rows) == (6, 3, 3)
    assert applied.position == Position(positions[-1], 0)
    assert row_of(state, "c-1")["events"] == 9


@pytest.mark.parametrize(
    ("stored", "incoming", "applied"),
    [
        ("9", "10", True),
        ("10", "9", False),
        ("10", "10", False),
        ("99", "100", True),
        (str(BASE_SEQUENCE), str(BASE_SEQUENCE + 1), True),
        (str(BASE_SEQUENCE), str(BASE_SEQUENCE - 1), False),
        (str(BASE_SEQUENCE), "9" * 55, False),  # fewer digits: smaller, though larger as a string
        ("9" * 55, str(BASE_SEQUENCE), True),
    ],
)
def test_sequence_numbers_are_compared_numerically(stored: str, incoming: str, applied: bool) -> None:
    state = CustomerState(SHARD)
    state.apply(raw_at([event("c-1", "page_view", "2026-03-01T10:00:00Z")], [stored]))
    result = state.apply(raw_at([event("c-2", "page_view", "2026-03-01T11:00:00Z")], [incoming]))
    assert result.records_skipped == (0 if applied else 1)
    assert state.customer_count() == (2 if applied else 1)
    assert state.position() == Position(incoming if applied else stored, 0)


def test_sub_sequence_numbers_order_records_of_one_aggregated_record() -> None:
    sequence = str(BASE_SEQUENCE)
    documents = [event("c-1", "page_view", f"2026-03-01T1{i}:00:00Z") for i in range(3)]
    state = CustomerState(SHARD)
    state.apply(raw_at(documents[:2], [(sequence, 0), (sequence, 1)]))
    applied = state.apply(raw_at(documents, [(sequence, 0), (sequence, 1), (sequence, 2)]))
    assert (applied.records_skipped, applied.events.num_rows) == (2, 1)
    assert state.position() == Position(sequence, 2)


def test_position_is_the_highest_in_the_batch_even_out_of_order() -> None:
    documents = [event("c-1", "page_view", f"2026-03-01T1{i}:00:00Z") for i in range(3)]
    state = CustomerState(SHARD)
    applied = state.apply(raw_at(documents, ["12", "10", "9"]))
    assert applied.position == Position("12", 0)
    assert state.position() == Position("12", 0)
    assert (
        state.apply(raw_at([event("c-2", "page_view", "2026-03-01T10:00:00Z")], ["11"])).records_skipped == 1
    )


# ---------------------------------------------------------------------------------------------------- changed rows


def test_only_customers_changed_by_a_batch_are_returned() -> None:
    state = CustomerState(SHARD)
    stream = Stream()
    first = state.apply(
        stream.batch([event(f"c-{i:03d}", "page_view", "2026-03-01T10:00:00Z") for i in range(100)])
    )
    assert first.customer_rows.num_rows == 100
    touched = ["c-005", "c-050", "c-099"]
    applied = state.apply(
        stream.batch(
            [event(c, t, "2026-03-02T10:00:00Z") for c in reversed(touched) for t in ("search", "purchase")]
        )
    )
    assert applied.customer_rows.schema == CUSTOMER_AGGREGATES_SCHEMA
    assert applied.customer_rows.column("customer_id").to_pylist() == touched
    current = by_customer(state.snapshot_rows())
    for row in applied.customer_rows.to_pylist():
        assert row == current[row["customer_id"]]
        assert row["version"] == 3
        assert row["updated_through_sequence"] == applied.position.sequence_number  # type: ignore[union-attr]


def test_batch_of_only_duplicates_returns_no_rows_but_advances_the_position() -> None:
    documents = [
        event("c-1", "purchase", "2026-03-01T10:00:00Z"),
        event("c-2", "search", "2026-03-01T11:00:00Z"),
    ]
    state = CustomerState(SHARD)
    stream = Stream()
    state.apply(stream.batch(documents))
    before = state.snapshot_rows()
    applied = state.apply(stream.batch(documents))
    assert applied.customer_rows.num_rows == 0
    assert applied.events.num_rows == 0
    assert (applied.duplicates, applied.records_skipped) == (2, 0)
    assert applied.position == Position(str(BASE_SEQUENCE + 3), 0)
    assert state.position() == applied.position
    after = state.snapshot_rows()
    assert [without(r, BATCH_DEPENDENT) for r in after.to_pylist()] == [
        without(r, BATCH_DEPENDENT) for r in before.to_pylist()
    ]


def test_batch_of_only_rejects_returns_no_rows_and_keeps_them_as_rejects() -> None:
    state = CustomerState(SHARD)
    applied = state.apply(
        Stream().batch([b"{", b"[]", encode(event("c-1", "page_view", "1999-01-01T00:00:00Z"))])
    )
    assert applied.customer_rows.num_rows == 0
    assert applied.rejects.column("error_code").to_pylist() == [
        "invalid_json",
        "not_an_object",
        "event_time_too_old",
    ]
    assert applied.position == Position(str(BASE_SEQUENCE + 2), 0)
    assert state.customer_count() == 0
    later = state.apply(Stream(BASE_SEQUENCE + 3).batch([event("c-1", "page_view", "2026-03-01T10:00:00Z")]))
    assert later.customer_rows.column("as_of").to_pylist() == [datetime(2026, 3, 1, 10, tzinfo=UTC)]


def test_record_with_out_of_range_quantity_is_rejected_and_the_rest_of_the_batch_applied() -> None:
    bad = encode(event("c-1", "add_to_cart", "2026-03-01T10:00:00Z")).replace(
        b'"product_id"', b'"quantity":2147483648,"product_id"'
    )
    state = CustomerState(SHARD)
    applied = state.apply(Stream().batch([event("c-1", "page_view", "2026-03-01T09:00:00Z"), bad]))
    assert applied.rejects.column("error_code").to_pylist() == ["invalid_value"]
    assert applied.events.num_rows == 1
    assert state.position() == applied.position


# ---------------------------------------------------------------------------------------------------- staging


def _three_batches() -> list[pa.Table]:
    stream = Stream()
    return [
        stream.batch(
            [event("c-1", "purchase", "2026-03-01T10:00:00Z"), event("c-2", "search", "2026-03-01T11:00:00Z")]
        ),
        stream.batch(
            [
                event("c-1", "purchase", "2026-03-04T10:00:00Z", revenue="7.25"),
                event("c-3", "page_view", "2026-03-05T10:00:00Z", session="s-9"),
                b"garbage",
            ]
        ),
        stream.batch([event("c-2", "purchase", "2026-02-27T10:00:00Z", revenue="1.00")]),
    ]


def _comparable(applied: AppliedBatch) -> tuple[Any, ...]:
    return (
        applied.events.to_pylist(),
        applied.customer_rows.to_pylist(),
        applied.rejects.to_pylist(),
        applied.records_in,
        applied.records_skipped,
        applied.duplicates,
        applied.position,
    )


class _SinkDownError(Exception):
    pass


@pytest.mark.parametrize("failure", [_SinkDownError, KeyboardInterrupt])
@pytest.mark.parametrize("failing_batch", [0, 1])
def test_exception_inside_staged_rolls_back_state_and_position(
    failure: type[BaseException], failing_batch: int
) -> None:
    batches = _three_batches()
    clean = CustomerState(SHARD)
    expected = [_comparable(clean.apply(batch)) for batch in batches]

    state = CustomerState(SHARD)
    apply_all(state, batches[:failing_batch])
    snapshot, position, count = state.snapshot_rows(), state.position(), state.customer_count()
    with pytest.raises(failure), state.staged(batches[failing_batch]) as applied:
        assert applied.customer_rows.num_rows > 0  # the work was done inside the transaction
        raise failure()
    assert state.position() == position
    assert state.customer_count() == count
    assert state.snapshot_rows().equals(snapshot)

    retried = [_comparable(state.apply(batch)) for batch in batches[failing_batch:]]
    assert retried == expected[failing_batch:]
    assert state.snapshot_rows().equals(clean.snapshot_rows())


@pytest.mark.parametrize("failing_step", ["journal", "session_set"])
def test_failure_in_the_middle_of_installing_rolls_back_everything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failing_step: str
) -> None:
    batches = _three_batches()
    clean = CustomerState(SHARD)
    expected = [_comparable(clean.apply(batch)) for batch in batches]
    state = CustomerState(SHARD, tmp_path / "shard.journal")
    state.apply(batches[0])
    snapshot, position, count = state.snapshot_rows(), state.position(), state.customer_count()

    if failing_step == "journal":  # the in-memory state is changed by now; the local file's commit fails
        journal = state._journal

        def journal_then_fail(*args: Any) -> None:
            journal(*args)
            raise _SinkDownError()

        monkeypatch.setattr(state, "_journal", journal_then_fail)
    else:  # fails halfway through changing memory: customers and event ids are updated, sessions not
        monkeypatch.setattr(state._sessions, "add", lambda *args: (_ for _ in ()).throw(_SinkDownError()))
    with pytest.raises(_SinkDownError):
        state.apply(batches[1])
    monkeypatch.undo()
    assert state.position() == position
    assert state.customer_count() == count
    assert state.snapshot_rows().equals(snapshot)
    assert [_comparable(state.apply(batch)) for batch in batches[1:]] == expected[1:]
    state.close()
    reopened = CustomerState(SHARD, tmp_path / "shard.journal")
    assert reopened.snapshot_rows().equals(clean.snapshot_rows())


def test_staged_commits_when_the_block_exits_cleanly() -> None:
    [batch, *_] = _three_batches()
    state = CustomerState(SHARD)
    with state.staged(batch) as applied:
        pass
    assert state.position() == applied.position
    assert state.customer_count() == 2


def test_second_staged_batch_while_one_is_open_is_refused() -> None:
    first, second, _ = _three_batches()
    state = CustomerState(SHARD)
    with pytest.raises(RuntimeError, match="already open"), state.staged(first), state.staged(second):
        pass
    assert state.position() is None
    assert state.apply(first).events.num_rows == 2


def test_persisted_state_survives_close_and_reopen(tmp_path: Path) -> None:
    batches = _three_batches()
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path)
    apply_all(state, batches[:2])
    snapshot, position = state.snapshot_rows(), state.position()
    state.close()

    reopened = CustomerState(SHARD, path)
    assert reopened.snapshot_rows().equals(snapshot)
    assert reopened.position() == position
    assert reopened.apply(batches[1]).records_skipped == batches[1].num_rows
    last = reopened.apply(batches[2])

    memory = CustomerState(SHARD)
    expected = apply_all(memory, batches)[-1]
    assert _comparable(last) == _comparable(expected)
    assert reopened.snapshot_rows().equals(memory.snapshot_rows())
    reopened.close()


def test_a_local_file_the_disk_refuses_is_given_up_and_the_shard_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full: the batch is durable on S3 already, so failing it would only loop (every restart writes the file
    again); the state goes on in memory, parsing, validating and hashing as before."""
    stream = Stream()
    batches = [
        stream.batch([event("c-1", "purchase", "2026-03-01T10:00:00Z"), b"garbage"]),
        stream.batch(
            [
                event("c-2", "search", "2026-03-02T10:00:00Z"),
                event("c-1", "page_view", "2026-03-02T11:00:00Z"),
            ]
        ),
        stream.batch([event("c-3", "purchase", "2026-03-03T10:00:00Z", revenue="2.50"), b"{not json"]),
    ]
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path)
    state.apply(batches[0])
    written = state.position()

    def disk_full(self: StateJournal, *_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StateJournal, "write", disk_full)
    second = state.apply(batches[1])
    monkeypatch.undo()
    assert second.position == state.position(), "the batch is installed: its outputs are durable on S3"
    assert not state.persistent and state.local_file_error is not None
    assert "No space left on device" in state.local_file_error
    third = state.apply(batches[2])  # the fast path, the validator and the hashes as before
    assert third.rejects.num_rows == 1 and third.events.num_rows == 1

    memory = CustomerState(SHARD)
    apply_all(memory, batches)
    assert state.snapshot_rows().equals(memory.snapshot_rows())
    state.close()
    assert CustomerState(SHARD, path).position() == written, "the file as last written: a restore catches up"


_DISK_LIMIT_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
from aggregators.customer_state import CustomerState
from tests.test_customer_state import SHARD, _refused_disk_batches

batches = _refused_disk_batches()
state = CustomerState(SHARD, Path(sys.argv[1]))
state.apply(batches[0])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
# 256 bytes: any Arrow file of a sync is larger
resource.setrlimit(resource.RLIMIT_FSIZE, (256, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
for batch in batches[1:]:
    state.apply(batch)
state.close()
rows = state.snapshot_rows().to_pylist()
print(json.dumps({"error": state.local_file_error, "persistent": state.persistent, "rows": rows}, default=str))
"""


def _refused_disk_batches() -> list[pa.Table]:
    stream = Stream()
    return [
        stream.batch([event("c-1", "purchase", "2026-03-01T10:00:00Z"), b"garbage"]),
        stream.batch(
            [
                event("c-2", "search", "2026-03-02T10:00:00Z"),
                event("c-1", "page_view", "2026-03-02T11:00:00Z"),
            ]
        ),
        stream.batch([event("c-3", "purchase", "2026-03-03T10:00:00Z", revenue="2.50"), b"{not json"]),
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="file-size limits are POSIX")
def test_a_local_file_past_the_file_size_limit_is_given_up_and_the_shard_goes_on(tmp_path: Path) -> None:
    """A real refused write, as on a full disk (here past the process's file-size limit, EFBIG): the shard must go on
    from memory with the same rows."""
    done = subprocess.run(
        [sys.executable, "-c", _DISK_LIMIT_SCRIPT, str(tmp_path / "shard.journal")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["persistent"] is False
    assert "File too large" in outcome["error"], outcome["error"]
    memory = CustomerState(SHARD)
    apply_all(memory, _refused_disk_batches())
    expected = json.loads(json.dumps(memory.snapshot_rows().to_pylist(), default=str))
    assert outcome["rows"] == expected


def _file_position(state: CustomerState) -> str | None:
    """The position the local file holds: what a restart after a crash would find."""
    assert state.local_dir is not None
    position = read_journal(state.local_dir).progress.position
    return None if position is None else position.sequence_number


def _ids_in_file(path: Path) -> int:
    return sum(table.num_rows for table in read_journal(path).tables.get("applied_events", []))


def _crash(state: CustomerState) -> None:
    """Let go of the state the way a killed process does: nothing the state queued is written."""
    state.close(sync=False)


def test_the_local_file_is_written_every_sync_records_and_on_close(tmp_path: Path) -> None:
    batches = _three_batches()  # 2, 3 and 1 records
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path, options=StateOptions(sync_every_records=5, sync_every_seconds=3600))
    state.apply(batches[0])
    assert _file_position(state) is None, "2 records: not written yet"
    second = state.apply(batches[1])
    assert second.position is not None
    assert _file_position(state) == second.position.sequence_number, "5 records: written, with their position"
    third = state.apply(batches[2])
    assert _file_position(state) == second.position.sequence_number
    expected = state.snapshot_rows()
    state.close()  # a graceful stop writes the rest

    reopened = CustomerState(SHARD, path)
    assert reopened.position() == third.position
    assert reopened.snapshot_rows().equals(expected)
    reopened.close()


def test_a_crash_loses_only_what_the_file_lacks_and_its_position_says_so(tmp_path: Path) -> None:
    batches = _three_batches()
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path, options=StateOptions(sync_every_records=5, sync_every_seconds=3600))
    apply_all(state, batches)
    _crash(state)

    after_two = CustomerState(SHARD)
    apply_all(after_two, batches[:2])
    reopened = CustomerState(SHARD, path)
    assert reopened.position() == after_two.position(), "exact at its own position"
    assert reopened.snapshot_rows().equals(after_two.snapshot_rows())
    assert reopened.apply(batches[2]).records_skipped == 0, "the lost batch is applied again"
    clean = CustomerState(SHARD)
    apply_all(clean, batches)
    assert reopened.snapshot_rows().equals(clean.snapshot_rows())
    reopened.close()


def test_the_local_file_is_written_once_sync_seconds_have_passed(tmp_path: Path) -> None:
    batches = _three_batches()
    state = CustomerState(
        SHARD,
        tmp_path / "shard.journal",
        options=StateOptions(sync_every_records=10**6, sync_every_seconds=30),
    )
    state.apply(batches[0])
    assert _file_position(state) is None
    state._synced_at -= 31  # half a minute later
    second = state.apply(batches[1])
    assert second.position is not None and _file_position(state) == second.position.sequence_number
    state.close()


def test_a_failed_sync_undoes_its_batch_and_keeps_the_earlier_ones_queued(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    batches = _three_batches()
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path, options=StateOptions(sync_every_records=5, sync_every_seconds=3600))
    first = state.apply(batches[0])  # queued, not written
    snapshot = state.snapshot_rows()

    def disk_full(*args: Any) -> None:
        raise _SinkDownError()

    monkeypatch.setattr(state, "_journal", disk_full)
    with pytest.raises(_SinkDownError):
        state.apply(batches[1])  # makes the sync due, which fails
    monkeypatch.undo()
    assert state.position() == first.position
    assert state.snapshot_rows().equals(snapshot)
    assert _file_position(state) is None

    second = state.apply(batches[1])  # the sync is due again and succeeds: both batches are written
    assert second.position is not None and _file_position(state) == second.position.sequence_number
    _crash(state)
    reopened = CustomerState(SHARD, path)
    after_two = CustomerState(SHARD)
    apply_all(after_two, batches[:2])
    assert reopened.snapshot_rows().equals(after_two.snapshot_rows())
    reopened.close()


@pytest.mark.usefixtures("local_zone_new_york")
def test_event_dates_are_utc_days_in_a_reopened_database(tmp_path: Path) -> None:
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path)
    state.apply(Stream().batch([event("c-1", "purchase", "2026-03-01T23:30:00-05:00")]))  # 03-02 04:30Z
    state.close()
    reopened = CustomerState(SHARD, path)
    reopened.apply(Stream(BASE_SEQUENCE + 1).batch([event("c-1", "purchase", "2026-03-02T00:10:00Z")]))
    row = row_of(reopened, "c-1")
    assert (row["purchase_days"], row["frequency"]) == (1, 0)
    assert row["as_of"].date() == date(2026, 3, 2)
    reopened.close()


# ---------------------------------------------------------------------------------------------------- dedupe key


def test_same_event_id_for_two_customers_is_two_events() -> None:
    event_id = new_event_id()
    state = CustomerState(SHARD)
    applied = state.apply(
        Stream().batch(
            [
                event("c-1", "page_view", "2026-03-01T10:00:00Z", event_id=event_id),
                event("c-2", "page_view", "2026-03-01T10:00:00Z", event_id=event_id),
            ]
        )
    )
    assert (applied.events.num_rows, applied.duplicates) == (2, 0)
    assert state.customer_count() == 2


def _arriving(batch: pa.Table, day: int) -> pa.Table:
    """The batch as if it arrived ``day`` days after ARRIVAL."""
    arrival = pa.array([ARRIVAL + timedelta(days=day)] * batch.num_rows, pa.timestamp("us", "UTC"))
    return batch.set_column(
        batch.schema.get_field_index("approximate_arrival_at"), "approximate_arrival_at", arrival
    ).cast(RAW_RECORD_SCHEMA)


@pytest.mark.parametrize(("window_days", "counted_again"), [(7, False), (2, True)])
def test_duplicate_older_than_the_dedupe_window_is_applied_again(
    window_days: int, counted_again: bool
) -> None:
    """Event ids are remembered for the window of arrival days; a re-send arriving later than that is counted
    again (and a re-send within the window never is)."""
    state = CustomerState(SHARD, options=StateOptions(dedupe_window=timedelta(days=window_days)))
    stream = Stream()
    original = event("c-1", "purchase", "2026-03-01T10:00:00Z", revenue="5.00")
    state.apply(stream.batch([original]))
    state.apply(_arriving(stream.batch([event("c-2", "page_view", "2026-03-06T10:00:00Z")]), 5))
    again = state.apply(_arriving(stream.batch([original]), 5))
    assert (again.events.num_rows, again.duplicates) == ((1, 0) if counted_again else (0, 1))
    row = row_of(state, "c-1")
    assert (row["purchases"], row["revenue"]) == (
        (2, Decimal("10.00")) if counted_again else (1, Decimal("5.00"))
    )


def _rows(state: CustomerState) -> list[dict[str, Any]]:
    rows = state.snapshot_rows().sort_by("customer_id").to_pylist()
    return [without(row, BATCH_DEPENDENT) for row in rows]


@pytest.mark.parametrize(("resent_on_day", "purchases"), [(7, 1), (10, 2)])
def test_the_window_is_between_the_two_deliveries_whatever_the_flushes_and_the_shard(
    resent_on_day: int, purchases: int
) -> None:
    """A re-send is a duplicate when it arrives at most the window (7 days) after the applied delivery: neither the
    flush boundaries nor another customer's later traffic on the shard nor a reshard split changes that."""
    from schemas.positions import BEFORE_FIRST_RECORD

    original = event("c-A", "purchase", "2026-03-01T10:00:00Z", revenue="5.00")
    other = event("c-B", "page_view", "2026-03-09T10:00:00Z")

    def purchases_of_a(state: CustomerState) -> int:
        return int(row_of(state, "c-A")["purchases"])

    outcomes = {}
    for layout in ("flushes apart", "other in the re-send's flush", "alone", "all in one flush"):
        state, stream = CustomerState(SHARD), Stream()
        first = stream.batch([original])
        later = _arriving(stream.batch([other]), resent_on_day - 1)
        resend = _arriving(stream.batch([original]), resent_on_day)
        batches = {
            "flushes apart": [first, later, resend],
            "other in the re-send's flush": [first, pa.concat_tables([later, resend])],
            "alone": [first, resend],
            "all in one flush": [pa.concat_tables([first, later, resend])],
        }[layout]
        for batch in batches:
            state.apply(batch)
        outcomes[layout] = purchases_of_a(state)
    # a split after the original and the other customer's event: the child holds c-A alone, with c-A's ids
    parent, stream = CustomerState(SHARD), Stream()
    parent.apply(
        pa.concat_tables([stream.batch([original]), _arriving(stream.batch([other]), resent_on_day - 1)])
    )
    child = CustomerState("child")
    key_of_a = int(hashlib.md5(b"c-A").hexdigest(), 16)
    child.import_tables(parent.export_tables(), hash_key_range=(key_of_a, key_of_a))
    child.set_position(BEFORE_FIRST_RECORD, parent.as_of())
    child.apply(_arriving(Stream().batch([original]), resent_on_day))
    outcomes["child after a split"] = purchases_of_a(child)
    assert outcomes == dict.fromkeys(outcomes, purchases)


def test_a_re_send_stamped_just_before_another_customers_later_arrival_is_still_a_duplicate() -> None:
    """Kinesis's arrival stamps may go back a little: E on day 0, another customer at the start of day 8, E again
    stamped at the end of day 7 (7 days after E: a duplicate), in one flush or two."""
    original = event("c-A", "purchase", "2026-03-01T10:00:00Z", revenue="5.00")
    outcomes = []
    for together in (True, False):
        state, stream = CustomerState(SHARD), Stream()
        state.apply(stream.batch([original]))
        later = _arriving(stream.batch([event("c-B", "page_view", "2026-03-09T00:00:00Z")]), 8)
        back = _arriving(stream.batch([original]), 7)
        for batch in [pa.concat_tables([later, back])] if together else [later, back]:
            state.apply(batch)
        outcomes.append(row_of(state, "c-A")["purchases"])
    assert outcomes == [1, 1]


def test_repeats_within_one_flush_follow_the_delivery_applied_last() -> None:
    """Day 0 applied; in one later flush: day 6 (a duplicate of day 0), day 8 (more than 7 days after the applied
    delivery: counted again), day 9 (within 7 days of day 8: a duplicate)."""
    state, stream = CustomerState(SHARD), Stream()
    original = event("c-A", "purchase", "2026-03-01T10:00:00Z", revenue="5.00")
    state.apply(stream.batch([original]))
    flush = pa.concat_tables([_arriving(stream.batch([original]), day) for day in (6, 8, 9)])
    applied = state.apply(flush)
    assert (applied.events.num_rows, applied.duplicates) == (1, 2)
    assert applied.events.column("approximate_arrival_at").to_pylist() == [ARRIVAL + timedelta(days=8)]
    assert row_of(state, "c-A")["purchases"] == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(-1, 4)), min_size=1, max_size=14),
    st.sets(st.integers(1, 13)),
)
def test_deduplication_does_not_depend_on_where_flushes_cut_the_stream(
    deliveries: list[tuple[int, int]], cuts: set[int]
) -> None:
    """Deliveries of three events (customer, id fixed), each some days after the previous one, or a day before the
    latest (Kinesis does not promise ordered arrival stamps); applied one flush per delivery, or in flushes cut
    anywhere: the same rows."""
    events = [event(f"c-{n}", "purchase", "2026-03-01T10:00:00Z", revenue="1.00") for n in range(3)]
    stream = Stream()
    records = [_arriving(stream.batch([events[which]]), day) for which, day in _arrival_days(deliveries)]
    assert _rows_flushed(records, None) == _rows_flushed(records, cuts)


def _arrival_days(deliveries: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(which, arrival day) of each delivery: ``gap`` days after the previous one, but never more than a day
    before the latest (Kinesis does not promise ordered arrival stamps) nor before day 0."""
    day, latest, schedule = 0, 0, []
    for which, gap in deliveries:
        day = max(day + gap, latest - 1, 0)
        latest = max(latest, day)
        schedule.append((which, day))
    return schedule


def _rows_flushed(
    records: list[pa.Table], cuts: set[int] | None, options: StateOptions | None = None
) -> list[dict[str, Any]]:
    """The rows of a state applying ``records`` in flushes cut at ``cuts`` (None: one flush per record)."""
    if cuts is None:
        bounds = [*range(len(records) + 1)]
    else:
        bounds = [0, *sorted(c for c in cuts if 0 < c < len(records)), len(records)]
    state = CustomerState(SHARD, options=options)
    for start, end in itertools.pairwise(bounds):
        state.apply(pa.concat_tables(records[start:end]))
    return _rows(state)


def test_events_in_customer_order_over_months_are_still_deduplicated() -> None:
    """A backfill in customer order (event times jumping back and forth) arrives within the window."""
    documents = [event(f"c-{c}", "page_view", f"2026-0{m}-01T10:00:00Z") for c in range(3) for m in (1, 3, 5)]
    state = CustomerState(SHARD)
    stream = Stream()
    state.apply(stream.batch(documents))
    assert state.apply(stream.batch(documents)).duplicates == len(documents)


def test_dedupe_window_survives_reopen_and_snapshot(tmp_path: Path) -> None:
    """The ids' arrival days are kept: after a reopen and after a restore, a re-send 7 days after the original is
    still a duplicate, and one 8 days after it is counted again (the duplicate on day 7 was never applied)."""
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path)
    stream = Stream()
    documents = [event("c-1", "page_view", f"2026-03-0{d}T10:00:00Z") for d in range(1, 4)]
    state.apply(stream.batch(documents))
    state.apply(_arriving(stream.batch([event("c-2", "page_view", "2026-03-07T10:00:00Z")]), 6))
    state.close()
    reopened = CustomerState(SHARD, path)
    assert reopened.apply(_arriving(stream.batch(documents[:1]), 7)).duplicates == 1
    restored = CustomerState(SHARD)
    restored.import_tables(reopened.export_tables())
    restored.set_position(reopened.position(), reopened.as_of())
    assert restored.apply(_arriving(stream.batch(documents[1:]), 7)).duplicates == 2
    assert restored.apply(_arriving(stream.batch(documents[:1]), 8)).duplicates == 0  # 8 days after day 0's
    assert reopened.apply(_arriving(stream.batch(documents[1:]), 7)).duplicates == 2
    assert reopened.apply(_arriving(stream.batch(documents[:1]), 8)).duplicates == 0
    assert [without(r, BATCH_DEPENDENT) for r in restored.snapshot_rows().to_pylist()] == [
        without(r, BATCH_DEPENDENT) for r in reopened.snapshot_rows().to_pylist()
    ]
    reopened.close()


def test_a_customer_past_two_billion_events_keeps_counting_and_reopens_at_its_counts(tmp_path: Path) -> None:
    """Counts were 32-bit: one busy customer id wrapped to negative counts on S3, and a reopen took the row from
    before the wrap (the most events) at the new position, a purchase lost."""
    stream = Stream()
    seed = CustomerState(SHARD)
    seed.apply(stream.batch([event("c-1", "page_view", "2026-05-01T10:00:00Z", session="s-1")]))
    tables = seed.export_tables()
    near = 2**31 - 2
    customers = tables["customers"]
    for name in ("events", "page_views", "sessions"):
        customers = customers.set_column(
            customers.schema.get_field_index(name), name, pa.array([near], customers.schema.field(name).type)
        )
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path, options=StateOptions(sync_every_records=1))
    state.import_tables({**tables, "customers": customers})
    state.set_position(seed.position(), seed.as_of())
    more = [
        event("c-1", "page_view", "2026-05-01T10:00:01Z", session="s-2"),
        event("c-1", "page_view", "2026-05-01T10:00:02Z", session="s-3"),
        event("c-1", "purchase", "2026-05-01T10:00:03Z", revenue="5.00", session="s-4"),
    ]
    published = [state.apply(stream.batch([document])).customer_rows.to_pylist()[0] for document in more]
    assert [row["events"] for row in published] == [near + 1, near + 2, near + 3]
    assert published[-1]["sessions"] == near + 3 and published[-1]["page_views"] == near + 2
    state.close()
    reopened = CustomerState(SHARD, path)
    assert reopened.position() == state.position()
    [row] = reopened.snapshot_rows().to_pylist()
    assert row["events"] == near + 3 and row["purchases"] == 1 and row["revenue"] == Decimal("5.00")
    reopened.close()


def test_a_journal_of_32_bit_counts_reads_with_the_64_bit_syncs_appended_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker upgraded over its local journal: the earlier version's syncs hold 32-bit counts, the new one's
    64-bit; both must read as one (concatenating them refused: the worker quarantined the journal)."""
    path = tmp_path / "shard.journal"
    stream = Stream()
    earlier_rows = pa.schema(
        [
            field.with_type(pa.int32())
            if field.name in {*customer_state._TYPE_COLUMNS, "events", "sessions"}
            else field
            for field in customer_state._JOURNAL_SCHEMAS["customer_rows"]
        ]
    )
    with monkeypatch.context() as earlier:
        earlier.setitem(customer_state._JOURNAL_SCHEMAS, "customer_rows", earlier_rows)
        state = CustomerState(SHARD, path, options=StateOptions(sync_every_records=1))
        state.apply(stream.batch([event("c-1", "page_view", "2026-05-01T10:00:00Z")]))
        state.close()
    upgraded = CustomerState(SHARD, path, options=StateOptions(sync_every_records=1))
    upgraded.apply(stream.batch([event("c-1", "purchase", "2026-05-01T10:00:01Z", revenue="5.00")]))
    upgraded.close()
    reopened = CustomerState(SHARD, path)
    assert reopened.position() == upgraded.position()
    [row] = reopened.snapshot_rows().to_pylist()
    assert row["events"] == 2 and row["purchases"] == 1 and row["revenue"] == Decimal("5.00")
    reopened.close()


def test_a_long_running_shard_keeps_its_file_and_its_restart_to_the_window_of_event_ids(
    tmp_path: Path,
) -> None:
    """Each sync appends the new event ids to the local file. Memory drops ids older than the de-duplication window
    as its runs merge; the file kept every id, and a restart loaded them all, so disk and a restart's memory grew
    with the shard's history (in the end a restart that runs out of memory, on every restart). The journal is now
    rewritten whole once it outgrows the state, and a restart loads only the window's ids, deciding duplicates as a
    state that never restarted does."""
    options = StateOptions(dedupe_window=timedelta(days=1), sync_every_records=1)
    path = tmp_path / "shard.journal"
    live = CustomerState(SHARD, path, options=options)
    never_restarted = CustomerState(SHARD, options=options)
    stream = Stream()
    days, per_day = 40, 500
    sent: list[list[dict[str, Any]]] = []
    for day in range(days):  # 20,000 ids over 40 arrival days; the window holds about 3 days of them
        documents = [event(f"c-{n % 200}", "page_view", "2026-05-01T10:00:00Z") for n in range(per_day)]
        sent.append(documents)
        batch = _arriving(stream.batch(documents), day)
        live.apply(batch)
        never_restarted.apply(batch)
    in_file = _ids_in_file(path)
    assert in_file < days * per_day / 2, in_file  # rewritten along the way: not every id ever applied
    live.close()

    reopened = CustomerState(SHARD, path, options=options)
    # the window, and a day's slack
    assert reopened.event_id_count() <= 3 * per_day, reopened.event_id_count()
    for resent_day in (days - 2, days - 8):  # within the window: a duplicate; long before it: counted again
        batch = _arriving(stream.batch(sent[resent_day]), days - 1)
        again, expected = reopened.apply(batch), never_restarted.apply(batch)
        assert (again.events.num_rows, again.duplicates) == (expected.events.num_rows, expected.duplicates)
        assert again.duplicates == (per_day if resent_day == days - 2 else 0)
    assert reopened.snapshot_rows().to_pylist() == never_restarted.snapshot_rows().to_pylist()
    reopened.close()


def test_a_stop_appends_to_the_local_file_and_leaves_its_rewrite_to_the_next_start(tmp_path: Path) -> None:
    """A stop has seconds (the KCL's shutdown grace), and a rewrite of a large state takes long: close() only
    appends, even when the journal is due for a rewrite, which the next open then does."""
    options = StateOptions(
        dedupe_window=timedelta(days=1), sync_every_records=10**9, sync_every_seconds=10**9
    )
    path = tmp_path / "shard.journal"
    state = CustomerState(SHARD, path, options=options)
    stream = Stream()
    for day in range(40):  # 20,000 ids, none synced yet: one append of them all is past the rewrite threshold
        documents = [event(f"c-{n % 200}", "page_view", "2026-05-01T10:00:00Z") for n in range(500)]
        state.apply(_arriving(stream.batch(documents), day))
    state.close()
    assert _ids_in_file(path) == 20_000  # appended, not rewritten
    reopened = CustomerState(SHARD, path, options=options)
    assert _ids_in_file(path) <= 1_500  # rewritten at open
    reopened.close()


# ------------------------------------------------------------------------------------------- distinct-count window
def _session_events(day: int, session: str = "s-visit") -> list[dict[str, Any]]:
    """Two events of one session of c-1 (new event ids each time)."""
    when = (ARRIVAL + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [event("c-1", kind, when, session=session) for kind in ("page_view", "product_view")]


@pytest.mark.parametrize(("window_days", "sessions"), [(30, 1), (4, 2)])
def test_a_session_seen_again_after_the_window_is_counted_again(window_days: int, sessions: int) -> None:
    """A session id is remembered for the window after the arrival of the event that counted it: an event of it 5
    days later is the same session within a 30-day window and a new one past a 4-day window, whichever way the
    flushes cut the stream (one flush, so the batch's own repeats decide; or two)."""
    options = StateOptions(distinct_window=timedelta(days=window_days))
    outcomes = {}
    for layout in ("two flushes", "one flush"):
        state, stream = CustomerState(SHARD, options=options), Stream()
        batches = [stream.batch(_session_events(0)), _arriving(stream.batch(_session_events(5)), 5)]
        for batch in batches if layout == "two flushes" else [pa.concat_tables(batches)]:
            state.apply(batch)
        row = row_of(state, "c-1")
        outcomes[layout] = (row["events"], row["sessions"])
    assert outcomes == dict.fromkeys(outcomes, (4, sessions))


def test_a_session_counted_again_restarts_its_window() -> None:
    """Day 0 counts the session; day 5 (past a 4-day window) counts it again, and day 8 is within 4 days of day 5:
    the same session (in one flush, walked in row order, as in three)."""
    options = StateOptions(distinct_window=timedelta(days=4))
    outcomes = []
    for together in (True, False):
        state, stream = CustomerState(SHARD, options=options), Stream()
        batches = [_arriving(stream.batch(_session_events(day)), day) for day in (0, 5, 8)]
        for batch in [pa.concat_tables(batches)] if together else batches:
            state.apply(batch)
        outcomes.append(row_of(state, "c-1")["sessions"])
    assert outcomes == [2, 2]


def test_the_distinct_count_window_survives_reopen_and_snapshot(tmp_path: Path) -> None:
    """The sessions' arrival days are kept in the journal and in snapshots: after a reopen and after a restore, the
    session within the window is the same one and the session past it counts again."""
    options = StateOptions(distinct_window=timedelta(days=4))
    path = tmp_path / "shard.journal"
    state, stream = CustomerState(SHARD, path, options=options), Stream()
    state.apply(stream.batch(_session_events(0, "s-old") + _session_events(0, "s-new")))
    state.apply(_arriving(stream.batch(_session_events(3, "s-new")), 3))
    state.close()
    reopened = CustomerState(SHARD, path, options=options)
    restored = CustomerState(SHARD, options=options)
    restored.import_tables(reopened.export_tables())
    restored.set_position(reopened.position(), reopened.as_of())
    later = _arriving(stream.batch(_session_events(5, "s-old") + _session_events(5, "s-new")), 5)
    for copy in (reopened, restored):
        copy.apply(later)
        # s-old counted on day 0, more than 4 days before: again; s-new counted on day 0 too (day 3 was the same
        # session, which does not restart the window): again as well
        assert row_of(copy, "c-1")["sessions"] == 4
    reopened.close()


def test_a_long_running_shard_holds_the_sessions_of_its_window_only(tmp_path: Path) -> None:
    """A new session a day for each of 300 customers over 40 arrival days: memory, the journal and a restart hold
    the window's sessions (and a day's slack), not the history's, and the counts are those of a shard that never
    restarted."""
    options = StateOptions(distinct_window=timedelta(days=3), sync_every_records=1)
    path = tmp_path / "shard.journal"
    live = CustomerState(SHARD, path, options=options)
    never_restarted = CustomerState(SHARD, options=options)
    stream, days, customers = Stream(), 40, 300

    def sessions_of(day: int) -> pa.Table:
        when = (ARRIVAL + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
        documents = [event(f"c-{n}", "page_view", when, session=f"s-{n}") for n in range(customers)]
        return _arriving(stream.batch(documents), day)

    for day in range(days):  # each customer's one session id comes back every day: counted once a window
        batch = sessions_of(day)
        live.apply(batch)
        never_restarted.apply(batch)
    # memory drops sessions before the window as its runs merge (a run wholly before it at once)
    held = len(live._sessions)
    assert held <= 2 * customers, held
    # a snapshot holds the window's only
    assert live.export_tables()["customer_sessions"].num_rows == customers
    live.close()
    in_file = sum(t.num_rows for t in read_journal(path).tables.get("customer_sessions", []))
    # rewritten along the way, without the sessions before the window
    assert in_file < days * customers / 4, in_file
    reopened = CustomerState(SHARD, path, options=options)
    assert len(reopened._sessions) == customers
    assert reopened.export_tables()["customer_sessions"].num_rows == customers
    counted = row_of(reopened, "c-7")["sessions"]
    assert counted == len(range(0, days, 4))  # counted on day 0, 4, 8, ...: each time past the 3-day window
    for day in (days, days + 1):  # day 36 counted the session last: day 40 is past its window, day 41 within
        batch = sessions_of(day)
        reopened.apply(batch)
        never_restarted.apply(batch)
    assert row_of(reopened, "c-7")["sessions"] == counted + 1
    assert reopened.snapshot_rows().to_pylist() == never_restarted.snapshot_rows().to_pylist()
    reopened.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(-1, 4)), min_size=1, max_size=14),
    st.sets(st.integers(1, 13)),
)
def test_distinct_counts_do_not_depend_on_where_flushes_cut_the_stream(
    deliveries: list[tuple[int, int]], cuts: set[int]
) -> None:
    """New events of three sessions (each on its own event day), each some days after the previous one, or a day
    before the latest; with a 3-day window, applied one flush per event or in flushes cut anywhere: the same rows
    (sessions and days counted again past the window alike)."""
    options = StateOptions(distinct_window=timedelta(days=3))
    stream, records = Stream(), []
    for which, day in _arrival_days(deliveries):
        when = (ARRIVAL + timedelta(days=which)).strftime("%Y-%m-%dT%H:%M:%SZ")
        records.append(_arriving(stream.batch([event("c-1", "purchase", when, session=f"s-{which}")]), day))
    assert _rows_flushed(records, None, options) == _rows_flushed(records, cuts, options)


def test_an_active_day_seen_again_after_the_window_is_counted_again() -> None:
    """An active day is remembered for the window after the arrival of the event that counted it: a late event of
    the same day is the same day 5 days on within a 30-day window, and counts again past a 4-day window, in one
    flush or two. A purchase day is remembered for good: ``frequency`` (purchase days - 1) feeds the CLV models."""
    outcomes = {}
    for window_days in (30, 4):
        for together in (True, False):
            state = CustomerState(SHARD, options=StateOptions(distinct_window=timedelta(days=window_days)))
            stream = Stream()
            when = ARRIVAL.strftime("%Y-%m-%dT%H:%M:%SZ")
            batches = [
                stream.batch([event("c-1", "purchase", when, session=f"s-{day}")])
                if day == 0
                else _arriving(stream.batch([event("c-1", "purchase", when, session=f"s-{day}")]), day)
                for day in (0, 5)
            ]
            for batch in [pa.concat_tables(batches)] if together else batches:
                state.apply(batch)
            row = row_of(state, "c-1")
            outcomes[window_days, together] = (row["active_days"], row["purchase_days"])
    assert outcomes == {(30, True): (1, 1), (30, False): (1, 1), (4, True): (2, 1), (4, False): (2, 1)}


def test_a_long_running_shard_holds_the_active_days_of_its_window_only(tmp_path: Path) -> None:
    """300 customers active every day for 40 arrival days: the days held are the window's, and the counts are the
    history's."""
    options = StateOptions(distinct_window=timedelta(days=3), sync_every_records=1)
    path = tmp_path / "shard.journal"
    live, stream, days, customers = CustomerState(SHARD, path, options=options), Stream(), 40, 300
    for day in range(days):
        when = (ARRIVAL + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
        documents = [event(f"c-{n}", "page_view", when, session=f"s-{day}") for n in range(customers)]
        live.apply(_arriving(stream.batch(documents), day))
    assert len(live._days) <= 2 * 5 * customers, len(live._days)
    assert live.export_tables()["customer_days"].num_rows == 5 * customers  # the window, and two days' slack
    live.close()
    in_file = sum(t.num_rows for t in read_journal(path).tables.get("customer_days", []))
    # rewritten along the way, without the days before the window
    assert in_file < days * customers / 2, in_file
    reopened = CustomerState(SHARD, path, options=options)
    assert len(reopened._days) == 5 * customers
    assert row_of(reopened, "c-7")["active_days"] == days
    reopened.close()


def test_purchase_days_are_remembered_for_good_through_the_journal_and_snapshots(tmp_path: Path) -> None:
    """A purchase on day 0, then 40 days of other traffic with a 3-day window (the journal rewritten along the way),
    a reopen and a restore from a snapshot: a late purchase of day 0 adds no purchase day, though its active day,
    long past the window, counts again."""
    options = StateOptions(distinct_window=timedelta(days=3), sync_every_records=1)
    path = tmp_path / "shard.journal"
    live, stream = CustomerState(SHARD, path, options=options), Stream()
    day_zero = ARRIVAL.strftime("%Y-%m-%dT%H:%M:%SZ")
    live.apply(stream.batch([event("c-1", "purchase", day_zero)]))
    for day in range(1, 41):
        when = (ARRIVAL + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
        live.apply(_arriving(stream.batch([event(f"c-{n}", "page_view", when) for n in range(2, 300)]), day))
    live.close()
    reopened = CustomerState(SHARD, path, options=options)
    restored = CustomerState(SHARD, options=options)
    restored.import_tables(reopened.export_tables())
    restored.set_position(reopened.position(), reopened.as_of())
    late = _arriving(stream.batch([event("c-1", "purchase", day_zero)]), 40)
    for state in (reopened, restored):
        state.apply(late)
        row = row_of(state, "c-1")
        assert (row["purchases"], row["purchase_days"], row["active_days"]) == (2, 1, 2)
    reopened.close()


def test_sessions_and_days_of_an_earlier_version_are_remembered_for_a_window(tmp_path: Path) -> None:
    """A journal or snapshot written before the distinct-count window holds sessions and days without their arrival
    day: they are taken as counted on the state's latest arrival day, so none counts again within a window of it
    (and they then age out like any other); purchase days are kept for good, as every purchase day."""
    options = StateOptions(distinct_window=timedelta(days=4))
    state, stream = CustomerState(SHARD, options=options), Stream()
    day_zero = ARRIVAL.strftime("%Y-%m-%dT%H:%M:%SZ")
    state.apply(stream.batch([*_session_events(0, "s-a"), event("c-1", "purchase", day_zero, session="s-a")]))
    state.apply(_arriving(stream.batch(_session_events(2, "s-b")), 2))
    tables, indexed = state.export_tables(), state._indexed_tables()
    for name in ("customer_sessions", "customer_days"):
        tables[name] = tables[name].drop_columns(["arrival_day"])
        indexed[name] = indexed[name].drop_columns(["arrival_day"])
    # s-a and its day 0 were counted on day 0: past the window by day 5, but taken as counted on day 2

    def late() -> list[dict[str, Any]]:  # new events of s-a and of day 0, a purchase among them
        return [event("c-1", kind, day_zero, session="s-a") for kind in ("page_view", "purchase")]

    outcomes = []
    for restore in ("snapshot", "journal"):
        if restore == "snapshot":
            old = CustomerState(SHARD, options=options)
            old.import_tables(tables)
            old.set_position(state.position(), state.as_of())
        else:
            path = tmp_path / "old.journal"
            journal = StateJournal(path)
            journal.write(indexed, customer_state.JournalProgress(state.position(), None), replaces=True)
            journal.close()
            old = CustomerState(SHARD, path, options=options)
        old.apply(_arriving(stream.batch(late()), 5))
        within = row_of(old, "c-1")
        old.apply(_arriving(stream.batch(late()), 7))  # more than 4 days after day 2: counted again
        past = row_of(old, "c-1")
        outcomes.append(
            [(row["sessions"], row["active_days"], row["purchase_days"]) for row in (within, past)]
        )
        old.close()
    assert outcomes == [[(2, 2, 1), (3, 3, 1)]] * 2  # a purchase day of an earlier version also kept for good


def test_an_earlier_versions_journal_is_upgraded_once_so_restarts_do_not_move_its_window(
    tmp_path: Path,
) -> None:
    """An earlier version's sessions were taken as counted on the journal's latest arrival day at every open, until
    a rewrite: a restart after another customer's day 3 moved s-a's window from day 0 to day 3, so its event of
    day 6 was not counted again, where a run without the restart counted it (4-day window). And once this version
    had appended a sync, the journal's two layouts no longer concatenated: the next open gave the journal up."""
    options = StateOptions(distinct_window=timedelta(days=4), sync_every_records=1)
    earlier, stream = CustomerState(SHARD, options=options), Stream()
    earlier.apply(stream.batch(_session_events(0, "s-a")))
    indexed = {}  # as the earlier version wrote its journal: this one's types, no arrival days
    for name, table in earlier._indexed_tables().items():
        schema = customer_state._JOURNAL_SCHEMAS[name]
        if "arrival_day" in schema.names:
            schema = schema.remove(schema.get_field_index("arrival_day"))
        indexed[name] = table.select(schema.names).cast(schema)
    day_three = (ARRIVAL + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    other = _arriving(stream.batch([event("c-2", "page_view", day_three)]), 3)
    again = _arriving(stream.batch(_session_events(6, "s-a")), 6)

    counts = {}
    for restarted in (False, True):
        path = tmp_path / f"restarted-{restarted}.journal"
        journal = StateJournal(path)
        journal.write(indexed, customer_state.JournalProgress(earlier.position(), None), replaces=True)
        journal.close()
        state = CustomerState(SHARD, path, options=options)
        assert all(
            "arrival_day" in part.column_names for part in read_journal(path).tables["customer_sessions"]
        )
        state.apply(other)
        if restarted:
            state.close()
            state = CustomerState(SHARD, path, options=options)
        state.apply(again)
        counts[restarted] = (row_of(state, "c-1")["sessions"], row_of(state, "c-1")["active_days"])
        state.close()
    assert counts == {False: (2, 2), True: (2, 2)}


# ---------------------------------------------------------------------------------------------------- stream order
_SEQUENCE_TEXTS = st.one_of(
    st.integers(0, 10**6).map(str),  # emulator-sized
    st.integers(10**55, 10**55 + 50).map(str),  # AWS-sized, one length
    st.integers(0, 10**60).map(str),  # mixed lengths beyond int64
    # leading zeros (never from Kinesis): still compared as integers
    st.integers(0, 999).map(lambda n: f"{n:05d}"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_SEQUENCE_TEXTS, st.integers(0, 3)), min_size=0, max_size=12))
def test_position_order_is_integer_order_whatever_the_form_of_the_sequence_numbers(
    positions: list[tuple[str, int]],
) -> None:
    from schemas.positions import in_position_order, positions_increase

    table = pa.table(
        {
            "sequence_number": pa.array([sequence for sequence, _ in positions], pa.string()),
            "sub_sequence_number": pa.array([sub for _, sub in positions], pa.int64()),
        }
    )
    as_integers = [(int(sequence), sub) for sequence, sub in positions]
    assert positions_increase(table) == all(a < b for a, b in itertools.pairwise(as_integers))
    ordered = in_position_order(table)
    got = [(int(s), sub) for s, sub in zip(*ordered.to_pydict().values(), strict=True)]
    assert got == sorted(as_integers)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.uuids(), st.booleans()), min_size=1, max_size=40))
def test_event_ids_are_keyed_by_their_128_bits_whatever_their_case(ids: list[tuple[uuid.UUID, bool]]) -> None:
    """De-duplication keys an event id by its bits: the two halves of the UUID, upper or lower case alike."""
    texts = [str(value).upper() if upper else str(value) for value, upper in ids]
    high, low = customer_state._uuid_halves(pa.array(texts))
    assert high.tolist() == [value.int >> 64 for value, _ in ids]
    assert low.tolist() == [value.int & (2**64 - 1) for value, _ in ids]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 5), max_size=60))
def test_first_row_of_each_probe_is_what_numpy_unique_gives(probes: list[int]) -> None:
    probe = np.array(probes, dtype=np.uint64)
    first, representative = customer_state._first_rows(probe)
    _, expected_first, inverse = np.unique(probe, return_index=True, return_inverse=True)
    assert first.tolist() == expected_first.tolist()  # both in probe order
    assert representative.tolist() == expected_first[inverse].tolist()
