"""The oracle used by the end-to-end tests must pass correct rows and catch wrong ones."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa

from aggregators.customer_state import CustomerState
from producer.generator import ClickstreamGenerator
from producer.kinesis_put import partition_key_for
from schemas import RAW_RECORD_SCHEMA
from tests.reference import mismatches_against_reference


def _rows_and_documents() -> tuple[dict[str, dict[str, object]], list[dict[str, object]]]:
    payloads = list(ClickstreamGenerator(40, 1_500, seed=3, duplicate_rate=0.05).events())
    count = len(payloads)
    raw = pa.table(
        {
            "shard_id": ["s"] * count,
            "sequence_number": [str(i + 1) for i in range(count)],
            "sub_sequence_number": pa.array([0] * count, pa.int64()),
            "partition_key": [partition_key_for(p) for p in payloads],
            "approximate_arrival_at": pa.array(
                [datetime(2026, 6, 1, tzinfo=UTC)] * count, pa.timestamp("us", "UTC")
            ),
            "data": pa.array(payloads, pa.binary()),
        },
        schema=RAW_RECORD_SCHEMA,
    )
    state = CustomerState("s")
    state.apply(raw)
    rows = {row["customer_id"]: row for row in state.snapshot_rows().to_pylist()}
    return rows, [json.loads(p, parse_float=Decimal) for p in payloads]


def test_correct_rows_have_no_mismatches_and_every_kind_of_error_is_caught() -> None:
    rows, documents = _rows_and_documents()
    assert mismatches_against_reference(rows, documents) == []
    buyer = next(c for c, row in rows.items() if row["frequency"])
    for column, wrong in (("sessions", 10**6), ("T", -1), ("monetary_value", 0.5), ("version", 0)):
        broken = {c: dict(row) for c, row in rows.items()}
        broken[buyer][column] = wrong
        found = mismatches_against_reference(broken, documents)
        assert [(c, col) for c, col, _, _ in found] == [(buyer, column)], column
    missing = {c: row for c, row in rows.items() if c != buyer}
    assert mismatches_against_reference(missing, documents) == [(buyer, "<row>", False, True)]


def test_a_mark_past_the_newest_valid_event_is_caught() -> None:
    """``T`` follows each row's ``as_of``: a mark moved forward (the wall clock, a rejected event) moves ``T`` with
    it, so the mark itself is held to the input."""
    rows, documents = _rows_and_documents()
    buyer = next(c for c, row in rows.items() if row["frequency"])
    broken = {c: dict(row) for c, row in rows.items()}
    broken[buyer]["as_of"] += timedelta(days=30)
    broken[buyer]["T"] += 30
    found = mismatches_against_reference(broken, documents)
    assert [(c, col) for c, col, _, _ in found] == [(buyer, "as_of")]
