"""Specification of RecordValidator.decode: every raw Kinesis record becomes exactly one event or one reject.

Layer: pure core on small Arrow tables (no AWS). The JSON Schema in ``schemas/`` is the contract; a property test
checks that the set-based SQL validator accepts exactly the documents the schema accepts, except for the rules the
schema cannot express (arrival-relative clock checks, partition key = customer_id, the 2000-01-01 floor).
"""

from __future__ import annotations

import json
import logging
import operator
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

from aggregators import fast_decode
from aggregators.fast_decode import FastDecoder, decode_records
from aggregators.validation import (
    _STRING_FIELDS,
    EVENT_TIME_PATTERN,
    LENIENT_JSON_HINT,
    ArrowSource,
    DecodedBatch,
    RecordValidator,
    ValidationRules,
    new_connection,
)
from producer.generator import ClickstreamGenerator
from schemas import (
    ERRORS_SCHEMA,
    EVENT_SCHEMA_PATH,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    RAW_RECORD_SCHEMA,
    load_event_json_schema,
)
from schemas.columns import contiguous

# ---------------------------------------------------------------------------------------------------- helpers

SHARD = "shardId-000000000007"
ARRIVAL = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MAX_BYTES = ValidationRules().max_record_bytes
EVENT_ID = "0b7e4f2a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
_CUSTOMER_ID = re.compile(rb'"customer_id":"([^"\\]*)"')

_CON: duckdb.DuckDBPyConnection | None = None


def _connection() -> duckdb.DuckDBPyConnection:
    """One UTC DuckDB connection for the module (decode registers and drops its own temp objects)."""
    global _CON  # noqa: PLW0603 - a module-level cache keeps hypothesis examples cheap
    if _CON is None:
        _CON = new_connection()
    return _CON


def doc(event_type: Any = "page_view", **fields: Any) -> dict[str, Any]:
    """A minimal valid document of ``event_type`` (its per-type required fields filled in), then ``fields``."""
    base: dict[str, Any] = {
        "schema_version": 1,
        "event_id": EVENT_ID,
        "event_type": event_type,
        "customer_id": "c-000001",
        "session_id": "s-1",
        "event_time": "2026-03-01T12:00:00Z",
    }
    base.update(
        {
            "purchase": {"order_id": "o-1", "revenue": 19.99, "currency": "USD"},
            "checkout": {"order_id": "o-1"},
            "product_view": {"product_id": "p-00001"},
            "add_to_cart": {"product_id": "p-00001", "quantity": 1},
            "search": {"search_query": "rain jacket"},
        }.get(event_type if isinstance(event_type, str) else "", {})
    )
    base.update(fields)
    return base


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def partition_key_of(data: bytes) -> str:
    """The customer_id as the producer would have used it as partition key (or a placeholder)."""
    found = _CUSTOMER_ID.search(data)
    return found.group(1).decode("utf-8", "replace") if found else "unknown"


def raw_batch(
    records: Iterable[bytes | tuple[bytes, str]],
    *,
    arrival: datetime = ARRIVAL,
    first_sequence: int = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898,
) -> pa.Table:
    """RAW_RECORD_SCHEMA rows with increasing sequence numbers; partition key = customer_id unless given."""
    rows = []
    for offset, record in enumerate(records):
        data, key = record if isinstance(record, tuple) else (record, partition_key_of(record))
        rows.append(
            {
                "shard_id": SHARD,
                "sequence_number": str(first_sequence + offset),
                "sub_sequence_number": offset % 3,
                "partition_key": key,
                "approximate_arrival_at": arrival,
                "data": data,
            }
        )
    return pa.Table.from_pylist(rows, schema=RAW_RECORD_SCHEMA)


def decode(raw: pa.Table, rules: ValidationRules | None = None) -> DecodedBatch:
    return RecordValidator(rules).decode(_connection(), raw)


def decode_one(data: bytes, partition_key: str | None = None, **kwargs: Any) -> DecodedBatch:
    record = (data, partition_key) if partition_key is not None else data
    return decode(raw_batch([record], **kwargs))


def accepted_event(data: bytes, **kwargs: Any) -> dict[str, Any]:
    out = decode_one(data, **kwargs)
    assert out.rejects.num_rows == 0, out.rejects.to_pylist()
    assert out.events.num_rows == 1
    event: dict[str, Any] = out.events.to_pylist()[0]
    return event


def rejection(data: bytes, partition_key: str | None = None, **kwargs: Any) -> dict[str, Any]:
    out = decode_one(data, partition_key, **kwargs)
    assert out.events.num_rows == 0, out.events.to_pylist()
    assert out.rejects.num_rows == 1
    reject: dict[str, Any] = out.rejects.to_pylist()[0]
    return reject


# ---------------------------------------------------------------------------------------------------- rejections

_REQUIRED = ("schema_version", "event_id", "event_type", "customer_id", "session_id", "event_time")


def _without(document: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != field}


REJECTIONS: list[tuple[str, bytes, str]] = [
    # (case id, data, expected error_code)
    ("oversized", encode(doc(padding="x" * MAX_BYTES)), "oversized"),
    ("invalid_utf8", encode(doc()).replace(b'"s-1"', b'"s-\xff\xfe"'), "invalid_utf8"),
    ("truncated_json", encode(doc())[:-5], "invalid_json"),
    ("empty_payload", b"", "invalid_json"),
    ("json_with_trailing_garbage", encode(doc()) + b" x", "invalid_json"),
    ("two_json_documents", encode(doc()) + encode(doc()), "invalid_json"),
    ("single_quoted_json", encode(doc()).replace(b'"', b"'"), "invalid_json"),
    ("json_array", encode([doc()]), "not_an_object"),
    ("json_string", b'"page_view"', "not_an_object"),
    ("json_number", b"42", "not_an_object"),
    ("json_null", b"null", "not_an_object"),
    ("repeated_customer_id", encode(doc()).replace(b'{"', b'{"customer_id":"c-other","', 1), "duplicate_key"),
    ("repeated_unknown_key", encode(doc(note="a")).replace(b'{"', b'{"note":"b","', 1), "duplicate_key"),
    *((f"missing_{f}", encode(_without(doc(), f)), "missing_field") for f in _REQUIRED),
    *((f"null_{f}", encode(doc(**{f: None})), "missing_field") for f in _REQUIRED),
    ("schema_version_2", encode(doc(schema_version=2)), "unsupported_schema_version"),
    ("schema_version_0", encode(doc(schema_version=0)), "unsupported_schema_version"),
    ("schema_version_string", encode(doc(schema_version="1")), "unsupported_schema_version"),
    ("schema_version_1_5", encode(doc(schema_version=1.5)), "unsupported_schema_version"),
    ("schema_version_true", encode(doc(schema_version=True)), "unsupported_schema_version"),
    ("customer_id_number", encode(doc(customer_id=123)), "wrong_type"),
    ("event_time_epoch_number", encode(doc(event_time=1_772_359_200)), "wrong_type"),
    ("event_id_object", encode(doc(event_id={"id": EVENT_ID})), "wrong_type"),
    ("event_type_list", encode(doc(event_type=["page_view"])), "wrong_type"),
    ("page_url_number", encode(doc(page_url=1)), "wrong_type"),
    ("revenue_string", encode(doc("purchase", revenue="19.99")), "wrong_type"),
    ("revenue_bool", encode(doc("purchase", revenue=True)), "wrong_type"),
    ("event_id_not_uuid", encode(doc(event_id="not-a-uuid")), "invalid_value"),
    ("event_id_without_hyphens", encode(doc(event_id=EVENT_ID.replace("-", ""))), "invalid_value"),
    ("customer_id_with_space", encode(doc(customer_id="c 1")), "invalid_value"),
    ("customer_id_too_long", encode(doc(customer_id="c" * 65)), "invalid_value"),
    ("session_id_empty", encode(doc(session_id="")), "invalid_value"),
    ("event_time_without_offset", encode(doc(event_time="2026-03-01T12:00:00")), "invalid_value"),
    ("event_time_date_only", encode(doc(event_time="2026-03-01")), "invalid_value"),
    ("event_time_space_separator", encode(doc(event_time="2026-03-01 12:00:00Z")), "invalid_value"),
    (
        "event_time_seven_fraction_digits",
        encode(doc(event_time="2026-03-01T12:00:00.1234567Z")),
        "invalid_value",
    ),
    ("event_time_february_30", encode(doc(event_time="2026-02-30T12:00:00Z")), "invalid_value"),
    ("event_time_minute_60", encode(doc(event_time="2026-03-01T12:60:00Z")), "invalid_value"),
    ("currency_lower_case", encode(doc("purchase", currency="usd")), "invalid_value"),
    ("quantity_zero", encode(doc("add_to_cart", quantity=0)), "invalid_value"),
    ("quantity_above_10000", encode(doc("add_to_cart", quantity=10_001)), "invalid_value"),
    ("quantity_fraction", encode(doc("add_to_cart", quantity=2.5)), "invalid_value"),
    ("page_url_2049_chars", encode(doc(page_url="u" * 2049)), "invalid_value"),
    ("search_query_513_chars", encode(doc("search", search_query="q" * 513)), "invalid_value"),
    ("order_id_empty", encode(doc("checkout", order_id="")), "invalid_value"),
    ("revenue_three_decimals", encode(doc("purchase", revenue=0.001)), "invalid_value"),
    ("unknown_event_type", encode(doc(event_type="click")), "unknown_event_type"),
    ("event_type_wrong_case", encode(doc(event_type="PageView")), "unknown_event_type"),
    ("event_type_empty", encode(doc(event_type="")), "unknown_event_type"),
    ("event_type_long", encode(doc(event_type="page_view" * 8)), "unknown_event_type"),
    ("event_time_before_2000", encode(doc(event_time="1999-12-31T23:59:59.999999Z")), "event_time_too_old"),
    (
        "event_time_offset_before_2000",
        encode(doc(event_time="2000-01-01T00:30:00+01:00")),
        "event_time_too_old",
    ),
    ("event_time_far_future", encode(doc(event_time="2099-03-01T12:00:00Z")), "event_time_in_future"),
    (
        "event_time_past_arrival_plus_skew",
        encode(doc(event_time=(ARRIVAL + timedelta(seconds=3600, microseconds=1)).isoformat())),
        "event_time_in_future",
    ),
    ("revenue_negative", encode(doc("purchase", revenue=-0.01)), "revenue_out_of_range"),
    ("revenue_above_max", encode(doc("purchase", revenue=1_000_000.01)), "revenue_out_of_range"),
    ("revenue_huge_integer", encode(doc("purchase", revenue=10**30)), "revenue_out_of_range"),
]


@pytest.mark.parametrize(
    ("data", "code"), [(d, c) for _, d, c in REJECTIONS], ids=[i for i, _, _ in REJECTIONS]
)
def test_each_rejection_reason_has_its_code_a_detail_and_the_exact_raw_bytes(data: bytes, code: str) -> None:
    raw = raw_batch([data])
    out = decode(raw)
    # the state's own path (the fast path, the validator for what it does not vouch for) rejects it the same way
    assert fast_and_exact(raw).rejects.to_pylist() == out.rejects.to_pylist()
    assert out.events.num_rows == 0
    assert out.rejects.schema == ERRORS_SCHEMA
    [reject] = out.rejects.to_pylist()
    [record] = raw.to_pylist()
    assert reject["error_code"] == code, reject["error_detail"]
    assert reject["error_detail"].strip()
    assert ":" not in reject["error_code"]
    assert reject["raw_data"] == data
    assert reject["raw_size_bytes"] == len(data)
    for column in (
        "shard_id",
        "sequence_number",
        "sub_sequence_number",
        "partition_key",
        "approximate_arrival_at",
    ):
        assert reject[column] == record[column]


def test_partition_key_other_than_customer_id_is_rejected_with_identity_kept() -> None:
    data = encode(doc(customer_id="c-000001"))
    reject = rejection(data, partition_key="c-000002")
    combined = fast_and_exact(raw_batch([(data, "c-000002")]))
    assert combined.events.num_rows == 0 and combined.rejects.to_pylist() == [reject]
    assert reject["error_code"] == "partition_key_mismatch"
    assert reject["error_detail"].strip()
    assert reject["partition_key"] == "c-000002"
    assert reject["raw_data"] == data


@pytest.mark.parametrize(
    ("revenue", "accepted"),
    [("999999.99", True), ("1000000", True), ("1000000.00", True), ("1000000.01", False), ("5000000", False)],
)
def test_the_revenue_ceiling_holds_on_the_states_own_path(revenue: str, accepted: bool) -> None:
    """The fast path vouched for a purchase of 5,000,000 when its ceiling check was gone, and only the exact
    validator's cases pinned the ceiling."""
    data = encode(doc("purchase")).replace(b'"revenue":19.99', b'"revenue":' + revenue.encode())
    assert revenue.encode() in data
    combined = fast_and_exact(raw_batch([data]))
    assert combined.events.num_rows == int(accepted), combined.rejects.to_pylist()
    assert [r["error_code"] for r in combined.rejects.to_pylist()] == (
        [] if accepted else ["revenue_out_of_range"]
    )


def test_missing_field_detail_names_the_field() -> None:
    for field in _REQUIRED:
        assert field in rejection(encode(_without(doc(), field)))["error_detail"]


def test_every_documented_error_code_is_reachable() -> None:
    codes = {code for _, _, code in REJECTIONS} | {"partition_key_mismatch"}
    assert codes == {
        "oversized",
        "invalid_utf8",
        "invalid_json",
        "not_an_object",
        "duplicate_key",
        "missing_field",
        "unsupported_schema_version",
        "wrong_type",
        "invalid_value",
        "unknown_event_type",
        "event_time_too_old",
        "event_time_in_future",
        "revenue_out_of_range",
        "partition_key_mismatch",
    }


def test_record_of_exactly_the_size_limit_is_accepted_and_one_byte_more_is_oversized() -> None:
    empty = encode(doc(padding=""))
    at_limit = encode(doc(padding="x" * (MAX_BYTES - len(empty))))
    over = encode(doc(padding="x" * (MAX_BYTES - len(empty) + 1)))
    assert len(at_limit) == MAX_BYTES
    assert accepted_event(at_limit)["event_id"] == EVENT_ID
    assert rejection(over)["error_code"] == "oversized"


def test_lenient_syntax_at_the_size_limit_is_invalid_json_and_one_byte_more_is_oversized() -> None:
    """The strict JSON check reads every payload within the limit (those over it are oversized whatever they hold)."""
    empty = encode(doc(padding=""))[:-1] + b",}"
    at_limit = encode(doc(padding="x" * (MAX_BYTES - len(empty))))[:-1] + b",}"
    over = encode(doc(padding="x" * (MAX_BYTES - len(empty) + 1)))[:-1] + b",}"
    assert len(at_limit) == MAX_BYTES
    assert rejection(at_limit)["error_code"] == "invalid_json"
    assert rejection(over)["error_code"] == "oversized"


STRING_LIMITS = [
    # (event type, field, max length in code points)
    ("page_view", "page_url", 2048),
    ("product_view", "product_id", 64),
    ("search", "search_query", 512),
    ("checkout", "order_id", 64),
    ("page_view", "customer_id", 64),
    ("page_view", "session_id", 64),
]


@pytest.mark.parametrize(("event_type", "field", "limit"), STRING_LIMITS)
@pytest.mark.parametrize("char", ["a", "é", "😀"])
def test_string_length_limits_count_code_points(event_type: str, field: str, limit: int, char: str) -> None:
    if field in ("customer_id", "session_id") and char != "a":
        char = "-"  # the id pattern admits ASCII only
    at_limit = encode(doc(event_type, **{field: char * limit}))
    over = encode(doc(event_type, **{field: char * (limit + 1)}))
    assert not schema_errors(at_limit)
    assert schema_errors(over)
    assert accepted_event(at_limit)[field] == char * limit
    assert rejection(over)["error_code"] == "invalid_value"


def test_event_time_exactly_at_arrival_plus_skew_is_accepted() -> None:
    limit = ARRIVAL + timedelta(seconds=ValidationRules().max_future_skew_seconds)
    event = accepted_event(encode(doc(event_time=limit.isoformat().replace("+00:00", "Z"))))
    assert event["event_time"] == limit


def test_event_time_exactly_at_min_event_time_is_accepted() -> None:
    event = accepted_event(encode(doc(event_time="2000-01-01T00:00:00Z")))
    assert event["event_time"] == datetime(2000, 1, 1, tzinfo=UTC)


def test_revenue_at_bounds_is_accepted() -> None:
    assert accepted_event(encode(doc("purchase", revenue=0)))["revenue"] == Decimal("0.00")
    assert accepted_event(encode(doc("purchase", revenue=1_000_000)))["revenue"] == Decimal("1000000.00")
    assert accepted_event(encode(doc("purchase", revenue=999_999.99)))["revenue"] == Decimal("999999.99")


def test_custom_rules_change_the_limits() -> None:
    rules = ValidationRules(
        max_record_bytes=400, max_revenue=100, min_event_time=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert len(encode(doc("purchase", revenue=100.01))) < 400
    codes = [
        decode(raw_batch([data]), rules).rejects.column("error_code").to_pylist()
        for data in (
            encode(doc(padding="x" * 400)),
            encode(doc("purchase", revenue=100.01)),
            encode(doc(event_time="2025-12-31T23:59:59Z")),
        )
    ]
    assert codes == [["oversized"], ["revenue_out_of_range"], ["event_time_too_old"]]


# ---------------------------------------------------------------------------------------------------- per-type rules

PER_TYPE_REQUIRED = [
    ("purchase", "order_id"),
    ("purchase", "revenue"),
    ("checkout", "order_id"),
    ("product_view", "product_id"),
    ("add_to_cart", "product_id"),
    ("search", "search_query"),
]


@pytest.mark.parametrize(("event_type", "field"), PER_TYPE_REQUIRED)
def test_event_type_specific_field_is_required(event_type: str, field: str) -> None:
    complete = doc(event_type)
    assert accepted_event(encode(complete))["event_type"] == event_type
    reject = rejection(encode(_without(complete, field)))
    assert reject["error_code"] == "missing_field"
    assert field in reject["error_detail"]
    assert rejection(encode({**complete, field: None}))["error_code"] == "missing_field"


@pytest.mark.parametrize("event_type", ["page_view", "product_view", "search", "add_to_cart", "checkout"])
def test_purchase_only_fields_are_not_required_for_other_types(event_type: str) -> None:
    document = doc(event_type)
    assert "revenue" not in document
    assert accepted_event(encode(document))["revenue"] is None


def test_page_view_needs_only_the_common_fields() -> None:
    event = accepted_event(encode(doc("page_view")))
    assert event["page_url"] is None
    assert event["product_id"] is None
    assert event["order_id"] is None


# ---------------------------------------------------------------------------------------------------- accepted events


def test_accepted_event_has_the_events_schema_and_keeps_record_identity() -> None:
    raw = raw_batch([encode(doc("purchase"))])
    out = decode(raw)
    assert out.events.schema == EVENTS_SCHEMA
    assert out.rejects.num_rows == 0
    [event] = out.events.to_pylist()
    [record] = raw.to_pylist()
    for column in ("shard_id", "sequence_number", "sub_sequence_number", "approximate_arrival_at"):
        assert event[column] == record[column]
    assert event["schema_version"] == 1
    assert event["customer_id"] == "c-000001"
    assert event["session_id"] == "s-1"
    assert event["order_id"] == "o-1"
    assert event["currency"] == "USD"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T12:00:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T12:00:00+02:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T01:30:00+05:30", datetime(2026, 2, 28, 20, tzinfo=UTC)),
        ("2026-03-01T23:30:00-02:00", datetime(2026, 3, 2, 1, 30, tzinfo=UTC)),
        ("2026-03-01T12:00:00-00:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T12:00:00.123456+02:00", datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-03-01T12:00:00.5Z", datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2026-03-01T12:00:00.000001Z", datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC)),
        ("2024-02-29T23:59:59.999999Z", datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_event_time_is_converted_to_utc_at_microsecond_precision(text: str, expected: datetime) -> None:
    event = accepted_event(encode(doc(event_time=text)), arrival=datetime(2026, 6, 1, tzinfo=UTC))
    assert event["event_time"] == expected
    assert event["event_time"].utcoffset() == timedelta(0)


def test_events_table_stores_event_time_as_utc_microseconds() -> None:
    out = decode(raw_batch([encode(doc(event_time="2026-03-01T12:00:00.000001+01:00"))]))
    column = out.events.column("event_time")
    assert column.type == pa.timestamp("us", tz="UTC")
    assert column.cast(pa.int64()).to_pylist() == [
        int((datetime(2026, 3, 1, 11, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**6
        + 1
    ]


@pytest.mark.parametrize(
    ("json_number", "expected"),
    [
        (b"19.99", "19.99"),
        (b"19.9", "19.90"),
        (b"20", "20.00"),
        (b"0", "0.00"),
        (b"0.01", "0.01"),
        (b"1e-2", "0.01"),
        (b"1.5E2", "150.00"),
        (b"999999.99", "999999.99"),
        # the nearest float of this text is that of 59.9, whose shortest form has one decimal (README: lenient)
        (b"59.9000000000000001", "59.90"),
    ],
)
def test_revenue_is_an_exact_decimal_with_two_places(json_number: bytes, expected: str) -> None:
    data = encode(doc("purchase", revenue=0)).replace(b'"revenue":0', b'"revenue":' + json_number)
    revenue = accepted_event(data)["revenue"]
    assert isinstance(revenue, Decimal)
    assert str(revenue) == expected


def test_event_id_is_lower_cased() -> None:
    event = accepted_event(encode(doc(event_id=EVENT_ID.upper())))
    assert event["event_id"] == EVENT_ID


def test_quantity_is_an_integer() -> None:
    event = accepted_event(encode(doc("add_to_cart", quantity=3)))
    assert event["quantity"] == 3
    assert isinstance(event["quantity"], int)
    assert accepted_event(encode(doc("add_to_cart", quantity=10_000)))["quantity"] == 10_000


def test_unknown_extra_fields_are_ignored() -> None:
    plain = accepted_event(encode(doc("purchase")))
    extended = accepted_event(
        encode(doc("purchase", referrer="https://example.org", experiment={"arm": "b"}, tags=[1, None]))
    )
    assert extended == plain


def test_string_fields_keep_unicode_and_escapes() -> None:
    query = 'vinyl "limited edition" back\\slash 水筒 😀 crème'
    event = accepted_event(encode(doc("search", search_query=query, page_url="https://x/?q=a\u00e9")))
    assert event["search_query"] == query
    assert event["page_url"] == "https://x/?q=aé"


def test_spaces_around_the_document_are_allowed() -> None:
    assert accepted_event(b"  " + encode(doc()) + b"\r\n ")["event_id"] == EVENT_ID


@pytest.mark.parametrize("prefix", [b"\n", b"\t", b"\r\n", b" \n\t"])
def test_json_whitespace_before_the_document_is_allowed(prefix: bytes) -> None:
    assert accepted_event(prefix + encode(doc()))["event_id"] == EVENT_ID


# ---------------------------------------------------------------------------------------------------- hostile input


def test_deeply_nested_page_url_is_rejected_without_crashing() -> None:
    depth = 5000
    data = encode(doc())[:-1] + b',"page_url":' + b"[" * depth + b"]" * depth + b"}"
    assert rejection(data)["error_code"] == "wrong_type"


def test_deeply_nested_top_level_array_is_rejected_without_crashing() -> None:
    assert rejection(b"[" * 5000 + b"]" * 5000)["error_code"] == "not_an_object"


def test_deeply_nested_unterminated_input_is_invalid_json() -> None:
    assert rejection(b'{"a":' * 5000)["error_code"] == "invalid_json"


def test_deeply_nested_unknown_field_is_ignored_like_any_extra_field() -> None:
    data = encode(doc())[:-1] + b',"extra":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"
    assert accepted_event(data)["event_id"] == EVENT_ID


def test_oversized_record_is_rejected_before_decoding() -> None:
    data = b"\xff" * (MAX_BYTES + 1)  # would be invalid_utf8 if it were decoded at all
    reject = rejection(data, partition_key="c-000001")
    assert reject["error_code"] == "oversized"
    assert reject["raw_size_bytes"] == MAX_BYTES + 1
    assert reject["raw_data"] == data


def test_batch_of_the_generators_malformed_kinds_is_rejected_with_matching_codes() -> None:
    generator = ClickstreamGenerator(40, 3000, seed=3, duplicate_rate=0.02, malformed_rate=0.05)
    records = list(generator.records())
    out = decode(raw_batch([data for _, data in records], arrival=datetime(2026, 6, 1, tzinfo=UTC)))
    labels = [label for label, _ in records]
    assert out.events.num_rows == labels.count("valid") + labels.count("duplicate")
    assert out.rejects.num_rows == sum(label.startswith("malformed:") for label in labels)
    by_sequence = {r["sequence_number"]: r["error_code"] for r in out.rejects.to_pylist()}
    sequences = raw_batch([data for _, data in records]).column("sequence_number").to_pylist()
    allowed = {
        "invalid_json": {"invalid_json"},
        "invalid_utf8": {"invalid_utf8"},
        "not_an_object": {"not_an_object"},
        "missing_field": {"missing_field"},
        # schema_version "1" is unsupported_schema_version; quantity "2" is wrong_type
        "wrong_type": {"wrong_type", "unsupported_schema_version", "invalid_value"},
        "unknown_event_type": {"unknown_event_type"},
        "unknown_schema_version": {"unsupported_schema_version"},
        "negative_revenue": {"revenue_out_of_range"},
        "far_future_timestamp": {"event_time_in_future"},
        "oversized": {"oversized"},
        "deeply_nested": {"wrong_type"},
    }
    seen: Counter[str] = Counter()
    for (label, _), sequence in zip(records, sequences, strict=True):
        if label.startswith("malformed:"):
            kind = label.split(":", 1)[1]
            assert by_sequence[sequence] in allowed[kind], (kind, by_sequence[sequence])
            seen[kind] += 1
    assert set(seen) == set(allowed)


# ---------------------------------------------------------------------------------------------------- conservation

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def valid_documents(draw: st.DrawFn) -> bytes:
    event_type = draw(st.sampled_from(EVENT_TYPES))
    document = doc(
        event_type,
        event_id=str(draw(st.uuids())),
        customer_id=draw(st.sampled_from(["c-000001", "c-000002", "a.b@c:d_e-f"])),
        event_time=draw(rfc3339_times()),
    )
    return encode(document)


garbage = st.one_of(
    st.binary(max_size=200),
    _json_values.map(encode),
    valid_documents().map(lambda d: d[: len(d) // 2]),
    st.just(b"\xff" * (MAX_BYTES + 1)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(valid_documents(), garbage), max_size=30))
def test_every_input_row_is_exactly_one_event_or_one_reject(records: list[bytes]) -> None:
    keyed = [(record, partition_key_of(record)) for record in records]
    raw = raw_batch(keyed)
    out = decode(raw)
    assert out.events.num_rows + out.rejects.num_rows == raw.num_rows
    in_sequences = raw.column("sequence_number").to_pylist()
    out_sequences = (
        out.events.column("sequence_number").to_pylist() + out.rejects.column("sequence_number").to_pylist()
    )
    assert sorted(out_sequences) == sorted(in_sequences)
    by_sequence = dict(zip(in_sequences, records, strict=True))
    for reject in out.rejects.to_pylist():
        assert reject["raw_data"] == by_sequence[reject["sequence_number"]]
        assert reject["error_detail"]
    valid_count = sum(1 for r in records if _is_contract_valid(r))
    assert out.events.num_rows == valid_count


def test_empty_batch_gives_empty_tables_with_the_contract_schemas() -> None:
    out = decode(RAW_RECORD_SCHEMA.empty_table())
    assert out.events.num_rows == out.rejects.num_rows == 0
    assert out.events.schema == EVENTS_SCHEMA
    assert out.rejects.schema == ERRORS_SCHEMA


# ---------------------------------------------------------------------------------------------------- JSON Schema


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterable[ValidationError]:
    """``pattern`` with ECMA-262 semantics: ``$`` does not match before a trailing newline (Python's does)."""
    if validator.is_type(instance, "string") and not re.search(re.sub(r"\$$", r"\\Z", pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _integral_number(checker: Any, instance: Any) -> bool:
    """JSON Schema 2020-12 (validation §6.1.1): an integer is any number with a zero fractional part, 1.0 too.

    python-jsonschema only counts ``int`` (and integral ``float``), not an integral ``Decimal``; with
    ``parse_float=Decimal`` it would call ``1.0`` a non-integer. See the contract-ambiguity test below.
    """
    if isinstance(instance, bool):
        return False
    if isinstance(instance, Decimal):
        return instance.is_finite() and instance == instance.to_integral_value()
    return isinstance(instance, int)


_SpecValidator = validators.extend(
    Draft202012Validator,
    validators={"pattern": _ecma_pattern},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _integral_number),
)
# Floats as Decimal on both sides of the schema: with binary floats 19.99 fails multipleOf 0.01.
SCHEMA = load_event_json_schema(parse_float=Decimal)
SPEC_VALIDATOR = _SpecValidator(SCHEMA, format_checker=FormatChecker())
LIBRARY_VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _top_level_keys_repeat(text: str) -> bool:
    """The contract rejects a record whose event object repeats a member name (json.loads would keep the last)."""
    seen: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen.append([key for key, _ in pairs])
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook, parse_float=Decimal, parse_constant=_reject_constant)
    top = seen[-1] if seen else []
    return len(top) != len(set(top))


def schema_errors(data: bytes, validator: Any = SPEC_VALIDATOR) -> list[str]:
    """The JSON Schema verdict on a record (strict RFC 8259 parsing, numbers as exact decimals)."""
    try:
        text = data.decode("utf-8")
        document = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
        if isinstance(document, dict) and _top_level_keys_repeat(text):
            return ["a member name is repeated"]
    except (ValueError, RecursionError) as error:
        return [f"not JSON: {error}"]
    with localcontext(prec=1000):  # exact multipleOf for numbers up to 1e300 (the default 28 digits raise)
        return [error.message for error in validator.iter_errors(document)]


def _is_contract_valid(data: bytes) -> bool:
    """Schema-valid, within the size limit and the clock rules (partition keys are set to customer_id)."""
    if len(data) > MAX_BYTES or schema_errors(data):
        return False
    return _within_clock_rules(data)


def _within_clock_rules(data: bytes) -> bool:
    document = json.loads(data)
    event_time = datetime.fromisoformat(document["event_time"].replace("Z", "+00:00"))
    return datetime(2000, 1, 1, tzinfo=UTC) <= event_time <= ARRIVAL + timedelta(hours=1)


def to_json(value: Any) -> str:
    """Compact JSON where a Decimal is written verbatim as a number (json.dumps cannot do that)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


@st.composite
def rfc3339_times(draw: st.DrawFn) -> str:
    """Valid RFC 3339 times whose UTC instant lies in [2000-01-01, ARRIVAL], with assorted offsets and precision."""
    instant = draw(
        st.datetimes(
            min_value=datetime(2000, 1, 2),  # naive bounds: hypothesis attaches UTC
            max_value=ARRIVAL.replace(tzinfo=None),
            timezones=st.just(UTC),
        )
    )
    minutes = draw(st.sampled_from([0, 60, 120, -300, -330, 330, 345, 840, -720, -59, 23 * 60 + 59]))
    local = instant.astimezone(timezone(timedelta(minutes=minutes)))
    digits = draw(st.integers(0, 6))
    fraction = f".{local.microsecond:06d}"[: digits + 1] if digits else ""
    offset = "Z" if minutes == 0 and draw(st.booleans()) else local.strftime("%z")
    if offset != "Z":
        offset = offset[:3] + ":" + offset[3:]
    return local.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset


_pattern_ok = st.text(alphabet="ABCXYZabcxyz0123456789_.:@-", min_size=1, max_size=64)
_any_text = st.text(max_size=80)
_wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_bad_time_text = st.one_of(
    st.sampled_from(
        [
            "2026-03-01T12:00:00",
            "2026-03-01 12:00:00Z",
            "2026-03-01t12:00:00z",
            "2026-03-01T12:00Z",
            "2026-03-01",
            "2026-02-29T12:00:00Z",
            "2026-04-31T12:00:00Z",
            "2026-13-01T12:00:00Z",
            "2026-00-10T12:00:00Z",
            "2026-03-01T12:60:00Z",
            "2026-03-01T12:00:61Z",
            "2026-03-01T23:59:60Z",
            "2026-03-01T12:00:00.1234567Z",
            "2026-03-01T12:00:00.Z",
            "2026-03-01T12:00:00+0200",
            "2026-03-01T12:00:00+02",
            "26-03-01T12:00:00Z",
            "+2026-03-01T12:00:00Z",
            "",
        ]
    ),
    _any_text,
)
_bad_uuid = st.one_of(
    st.sampled_from(
        [
            "",
            "not-a-uuid",
            EVENT_ID.replace("-", ""),
            "{" + EVENT_ID + "}",
            "urn:uuid:" + EVENT_ID,
            EVENT_ID[:-1] + "g",
            EVENT_ID + "0",
            EVENT_ID + "\n",
            " " + EVENT_ID,
        ]
    ),
    _any_text,
)


def _decimal_with_places(low: int, high: int, max_unit_digits: int = 14) -> st.SearchStrategy[Decimal]:
    """Numbers written with ``low``..``high`` decimals and at most 15 significant digits (exact as IEEE doubles)."""

    @st.composite
    def build(draw: st.DrawFn) -> Decimal:
        places = draw(st.integers(low, high))
        digits = draw(st.integers(1, max(1, min(max_unit_digits, 15 - places))))
        units = draw(st.integers(0, 10**digits - 1))
        fraction = draw(st.integers(1, 10**places - 1))
        sign = draw(st.sampled_from(["", "", "-"]))
        return Decimal(f"{sign}{units}.{fraction:0{places}d}")

    return build()


INT32 = 2**31
_quantity_values = st.one_of(
    st.integers(-5, 10_010),
    st.integers(-INT32, INT32 - 1),
    st.sampled_from(
        [Decimal("1.0"), Decimal("2.00"), Decimal("1e2"), Decimal("1E4"), Decimal("1.5"), Decimal("1e5")]
    ),
    _decimal_with_places(1, 4, max_unit_digits=9),
)
_revenue_values = st.one_of(
    st.integers(-10, 10),
    st.integers(999_990, 1_000_010),
    st.integers(-(10**15), 10**15),
    _decimal_with_places(1, 10),
    st.sampled_from(
        [
            Decimal("1000000.00"),
            Decimal("1000000.01"),
            Decimal("999999.99"),
            Decimal("-0.01"),
            Decimal("-0.0"),
            Decimal("1e-2"),
            Decimal("1E6"),
            Decimal("1e7"),
            Decimal("1e300"),
            Decimal("0.001"),
        ]
    ),
)
#: Numbers beyond INT32 / DECIMAL(18,2): once crashed the whole batch (fixed; kept as their own family).
_huge_numbers = {
    "quantity": st.one_of(st.integers(INT32, 2**70), st.integers(-(2**70), -INT32 - 1)),
    "schema_version": st.one_of(st.integers(INT32, 2**70), st.integers(-(2**70), -INT32 - 1)),
    "revenue": st.one_of(st.integers(10**16, 10**27), st.integers(-(10**27), -(10**16))),
}


@st.composite
def near_contract(draw: st.DrawFn, mutations: tuple[str, ...]) -> bytes:
    """A valid document, then at most one field-level mutation of the kinds named in ``mutations``."""
    event_type = draw(st.sampled_from(EVENT_TYPES))
    customer = draw(_pattern_ok)
    document: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(draw(st.uuids())).upper() if draw(st.booleans()) else str(draw(st.uuids())),
        "event_type": event_type,
        "customer_id": customer,
        "session_id": draw(_pattern_ok),
        "event_time": draw(rfc3339_times()),
    }
    optional = {
        "page_url": _any_text,
        "product_id": st.text(min_size=1, max_size=64),
        "search_query": _any_text,
        "quantity": st.integers(1, 10_000),
        "order_id": st.text(min_size=1, max_size=64),
        "revenue": st.one_of(
            st.integers(0, 1_000_000), st.integers(0, 10**8).map(lambda c: Decimal(c) / 100)
        ),
        "currency": st.from_regex(r"\A[A-Z]{3}\Z"),
    }
    required_here = {
        "purchase": ("order_id", "revenue"),
        "checkout": ("order_id",),
        "product_view": ("product_id",),
        "add_to_cart": ("product_id",),
        "search": ("search_query",),
    }.get(event_type, ())
    for field, strategy in optional.items():
        if field in required_here or draw(st.booleans()):
            document[field] = draw(strategy)
    if draw(st.booleans()):
        document["x_extra"] = draw(_json_values)

    kind = draw(st.sampled_from(("none", *mutations)))
    field_names = list(document)
    if kind == "delete":
        del document[draw(st.sampled_from(field_names))]
    elif kind == "wrong_type":
        field = draw(st.sampled_from([f for f in field_names if f != "x_extra"]))
        numeric = field in {"schema_version", "quantity", "revenue"}
        document[field] = draw(
            _wrong_types.filter(lambda v: v is not None and not (numeric and isinstance(v, int | float)))
        )
    elif kind == "null_required":
        document[draw(st.sampled_from([*_REQUIRED, *required_here]))] = None
    elif kind == "null_optional":
        document[draw(st.sampled_from(sorted(set(optional) - set(required_here))))] = None
    elif kind == "event_type":
        document["event_type"] = draw(st.one_of(st.sampled_from(EVENT_TYPES), _any_text))
    elif kind == "schema_version":
        document["schema_version"] = draw(
            st.one_of(
                st.integers(-3, 3),
                st.sampled_from([Decimal("1.0"), Decimal("1.00"), Decimal("1e0"), Decimal("1.5"), "1", True]),
            )
        )
    elif kind == "event_id":
        document["event_id"] = draw(_bad_uuid)
    elif kind == "ids":
        field = draw(st.sampled_from(["customer_id", "session_id"]))
        document[field] = draw(
            st.one_of(
                _any_text,
                st.builds(operator.mul, st.sampled_from(["a", "é", "-"]), st.sampled_from([64, 65])),
                _pattern_ok,
            )
        )
    elif kind == "event_time":
        document["event_time"] = draw(_bad_time_text)
    elif kind == "event_time_out_of_range_fields":
        document["event_time"] = draw(
            st.sampled_from(
                [
                    "2026-03-01T24:00:00Z",
                    "2026-03-01T12:00:00+24:00",
                    "2026-03-01T12:00:00-25:00",
                    "2026-03-01T12:00:00+99:00",
                    "2026-03-01T12:00:00+02:60",
                ]
            )
        )
    elif kind == "strings":
        field = draw(st.sampled_from(["page_url", "product_id", "search_query", "order_id", "currency"]))
        limit = {"page_url": 2048, "product_id": 64, "search_query": 512, "order_id": 64, "currency": 3}[
            field
        ]
        document[field] = draw(
            st.one_of(
                st.just(""),
                at_limits := st.builds(
                    operator.mul, st.sampled_from(["a", "é", "😀", " "]), st.sampled_from([limit, limit + 1])
                ),
                at_limits,
                st.text(alphabet="ABCDEFabc", min_size=2, max_size=4),
            )
        )
    elif kind == "quantity":
        document["quantity"] = draw(_quantity_values)
    elif kind == "revenue":
        document["revenue"] = draw(_revenue_values)
    elif kind == "revenue_many_decimals":
        document["revenue"] = draw(
            st.one_of(
                _decimal_with_places(11, 14).map(abs), st.sampled_from([Decimal("1e-300"), Decimal("5e-11")])
            )
        )
    elif kind == "huge_numbers":
        field = draw(st.sampled_from(sorted(_huge_numbers)))
        document[field] = draw(_huge_numbers[field])
    return to_json(document).encode()


def _partition_key(data: bytes) -> str:
    """The record's customer_id as partition key (the one rule the schema cannot state), or a placeholder."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return "unknown"
    key = document.get("customer_id") if isinstance(document, dict) else None
    return key if isinstance(key, str) else "unknown"


def sql_verdicts(records: list[bytes]) -> list[tuple[bool, str]]:
    """Decode the records as one batch; per record (accepted?, why), matched back by sequence number."""
    raw = raw_batch([(data, _partition_key(data)) for data in records])
    out = decode(raw)
    assert out.events.num_rows + out.rejects.num_rows == raw.num_rows
    verdicts = {sequence: (True, "accepted") for sequence in out.events.column("sequence_number").to_pylist()}
    for reject in out.rejects.to_pylist():
        verdicts[reject["sequence_number"]] = (False, f"{reject['error_code']}: {reject['error_detail']}")
    return [verdicts[sequence] for sequence in raw.column("sequence_number").to_pylist()]


def assert_agreement(records: list[bytes]) -> None:
    for data, (accepted, why) in zip(records, sql_verdicts(records), strict=True):
        errors = schema_errors(data)
        assert accepted == (not errors), f"schema: {errors or 'valid'}; sql: {why}; record: {data!r}"


AGREEING_MUTATIONS = (
    "delete",
    "wrong_type",
    "null_required",
    "event_type",
    "schema_version",
    "event_id",
    "ids",
    "event_time",
    "strings",
    "quantity",
    "revenue",
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(near_contract(AGREEING_MUTATIONS), min_size=1, max_size=25))
def test_sql_validator_agrees_with_the_json_schema(records: list[bytes]) -> None:
    assert_agreement(records)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        near_contract(
            ("null_optional", "revenue_many_decimals", "event_time_out_of_range_fields", "huge_numbers")
        ),
        min_size=1,
        max_size=10,
    )
)
def test_sql_validator_agrees_with_the_json_schema_on_nulls_decimals_time_fields_and_huge_numbers(
    records: list[bytes],
) -> None:
    assert_agreement(records)


def test_generated_near_contract_documents_cover_both_verdicts() -> None:
    """Guard against a vacuous agreement test: the strategy yields valid and invalid documents."""
    verdicts: set[bool] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(near_contract(AGREEING_MUTATIONS))
    def collect(data: bytes) -> None:
        verdicts.add(not schema_errors(data))

    collect()
    assert verdicts == {True, False}


# --------------------------------------------------------------------------- fixed bugs (regression tests)


@pytest.mark.parametrize(
    "data",
    [
        encode(doc())[:-1] + b",}",
        encode(doc())[:-1] + b',"x":[1,2,]}',
    ],
    ids=["object", "nested_array"],
)
def test_trailing_comma_is_invalid_json(data: bytes) -> None:
    assert schema_errors(data)  # the oracle agrees this is not JSON
    assert rejection(data)["error_code"] == "invalid_json"


#: What DuckDB's json_valid takes as a number and JSON does not: NaN and infinity in any letter case, minus or not.
NON_FINITE_LITERALS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"nan",
    b"-nan",
    b"NAN",
    b"inf",
    b"-inf",
    b"INFINITY",
]


@pytest.mark.parametrize("literal", NON_FINITE_LITERALS)
def test_non_finite_number_literals_are_invalid_json(literal: bytes) -> None:
    data = encode(doc())[:-1] + b',"x":' + literal + b"}"
    assert schema_errors(data)
    assert rejection(data)["error_code"] == "invalid_json"


@pytest.mark.parametrize("number", [b"19.999999999999", b"0.30000000000000004", b"0.01000000001"])
def test_revenue_with_more_than_two_decimals_is_rejected_however_many_decimals(number: bytes) -> None:
    data = encode(doc("purchase", revenue=0)).replace(b'"revenue":0', b'"revenue":' + number)
    assert schema_errors(data)  # not a multiple of 0.01, as decimal or as double
    assert rejection(data)["error_code"] == "invalid_value"


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T24:00:00Z",
        "2026-03-01T12:00:00+24:00",
        "2026-03-01T12:00:00+99:00",
        "2026-03-01T12:00:00+02:60",
    ],
)
def test_rfc3339_out_of_range_time_fields_are_invalid(text: str) -> None:
    data = encode(doc(event_time=text))
    assert schema_errors(data)
    assert rejection(data)["error_code"] == "invalid_value"


@pytest.mark.parametrize(
    "field", ["page_url", "product_id", "search_query", "quantity", "order_id", "currency"]
)
def test_null_optional_field_is_rejected_like_the_schema_does(field: str) -> None:
    data = encode(doc(**{field: None}))
    assert schema_errors(data)
    assert rejection(data)["error_code"] in {"wrong_type", "invalid_value"}


@pytest.mark.parametrize("value", ["2", [2], {"n": 2}])
def test_quantity_of_the_wrong_json_type_is_wrong_type(value: Any) -> None:
    assert rejection(encode(doc("add_to_cart", quantity=value)))["error_code"] == "wrong_type"


@pytest.mark.parametrize(
    ("field", "number", "code"),
    [
        ("quantity", b"2147483648", "invalid_value"),
        ("quantity", b"-2147483649", "invalid_value"),
        ("quantity", b"1e300", "invalid_value"),
        ("quantity", b"NaN", "invalid_json"),
        ("quantity", b"nan", "invalid_json"),
        ("revenue", b"inf", "invalid_json"),
        ("schema_version", b"2147483648", "unsupported_schema_version"),
        ("revenue", b"10000000000000000", "revenue_out_of_range"),
        ("revenue", b"-100000000000000000", "revenue_out_of_range"),
        ("revenue", b"1e20", "revenue_out_of_range"),
    ],
)
def test_out_of_range_number_is_a_reject_not_an_exception_for_the_batch(
    field: str, number: bytes, code: str
) -> None:
    good = encode(doc(event_id="11111111-1111-4111-8111-111111111111"))
    template = doc("purchase" if field == "revenue" else "add_to_cart")
    bad = encode({**template, field: "@"}).replace(f'"{field}":"@"'.encode(), f'"{field}":'.encode() + number)
    out = decode(raw_batch([good, bad]))
    assert out.events.column("event_id").to_pylist() == ["11111111-1111-4111-8111-111111111111"]
    assert out.rejects.column("error_code").to_pylist() == [code]


# ---------------------------------------------------------------------------------------------------- ambiguities
# Not bugs of the validator: places where the contract text lets two honest implementations disagree. These tests
# pin today's behaviour so a change is a decision, not an accident.


@pytest.mark.parametrize(
    ("field", "number"),
    [("quantity", b"1.0"), ("quantity", b"1e2"), ("schema_version", b"1.0")],
)
def test_integral_float_counts_as_integer_per_json_schema_spec(field: str, number: bytes) -> None:
    base = doc("add_to_cart", quantity=7) if field == "quantity" else doc()
    data = encode(base).replace(f'"{field}":{base[field]}'.encode(), f'"{field}":'.encode() + number)
    assert not schema_errors(data)  # JSON Schema 2020-12: 1.0 is an integer
    assert accepted_event(data)[field] == int(Decimal(number.decode()))
    if field == "quantity":
        # python-jsonschema with parse_float=Decimal disagrees ("type: integer" only for int)
        assert schema_errors(data, LIBRARY_VALIDATOR)


@pytest.mark.parametrize("field", ["customer_id", "session_id", "currency", "event_time"])
def test_a_value_ending_in_a_line_break_is_refused_though_python_jsonschema_passes_it(field: str) -> None:
    """The README's note: Python's ``$`` also matches before a final line break (python-jsonschema uses ``re``),
    JSON Schema's (ECMA-262) and the worker's do not."""
    base = doc("purchase")
    data = encode({**base, field: base[field] + "\n"})
    assert schema_errors(data) and not schema_errors(data, LIBRARY_VALIDATOR)
    assert rejection(data)["error_code"] == "invalid_value"


def test_numbers_beyond_double_precision_are_read_as_doubles() -> None:
    data = encode(doc("add_to_cart", quantity=7)).replace(b'"quantity":7', b'"quantity":1.0000000000000001')
    assert schema_errors(data)  # exactly, 1.0000000000000001 is not an integer
    assert accepted_event(data)["quantity"] == 1  # as an IEEE double it is 1.0


def test_repeated_key_is_rejected_because_parsers_disagree_on_which_value_wins() -> None:
    data = encode(doc())[:-1] + b',"event_type":"purchase"}'
    assert json.loads(data)["event_type"] == "purchase"  # Python (and the JSON Schema) take the last value
    reject = rejection(data)
    assert reject["error_code"] == "duplicate_key"
    assert reject["raw_data"] == data
    assert not fast_and_exact(raw_batch([data])).events.num_rows


def test_repeated_key_in_a_nested_unknown_object_is_not_a_duplicate_of_the_event() -> None:
    data = encode(doc(extra={"a": 1}))[:-1].replace(b'{"a":1}', b'{"a":1,"a":2}') + b"}"
    assert accepted_event(data)["event_type"] == "page_view"


def fast_and_exact(raw: pa.Table) -> DecodedBatch:
    """What the state store uses: the fast path for the records it vouches for, the validator for the rest."""
    validator = RecordValidator()
    return decode_records(_connection(), raw, FastDecoder(validator.rules), validator)


def _by_sequence(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda row: int(row["sequence_number"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            near_contract(AGREEING_MUTATIONS),
            near_contract(("null_optional", "revenue_many_decimals", "huge_numbers")),
            valid_documents(),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_fast_path_gives_exactly_the_validators_events_and_rejects(records: list[bytes]) -> None:
    # every fifth record put with another customer's key, which only the partition-key rule refuses
    raw = raw_batch(
        [(data, _partition_key(data) if n % 5 != 3 else "c-other") for n, data in enumerate(records)]
    )
    exact = decode(raw)
    combined = fast_and_exact(raw)
    assert _by_sequence(combined.events) == _by_sequence(exact.events)
    assert _by_sequence(combined.rejects) == _by_sequence(exact.rejects)
    # vouched and validated events interleaved back in record order (the state applies them in that order)
    assert combined.events.to_pylist() == _by_sequence(combined.events)


_ESCAPED_TEXT: Final = st.text(
    st.sampled_from('ab"\\/\b\f\n\r\t\x00\x1fé😀') | st.characters(max_codepoint=0x2FF), max_size=12
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(_ESCAPED_TEXT, _ESCAPED_TEXT, st.booleans(), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_fast_path_agrees_with_the_validator_on_escaped_strings_and_names(
    texts: list[tuple[str, str, bool, bool]],
) -> None:
    """Escapes in values (quotes, backslashes, control characters, unicode, as \\uXXXX or raw) and in member
    names: whatever the fast path vouches for has the validator's values."""
    records = []
    for query, url, ascii_only, escaped_name in texts:
        document = doc(search_query=query, page_url=url, event_type="search")
        data = json.dumps(document, separators=(",", ":"), ensure_ascii=ascii_only).encode()
        if escaped_name:
            data = data.replace(b'"session_id":', b'"session\\u005fid":')
        records.append(data)
    raw = raw_batch([(data, _partition_key(data)) for data in records])
    exact = decode(raw)
    combined = fast_and_exact(raw)
    assert _by_sequence(combined.events) == _by_sequence(exact.events)
    assert _by_sequence(combined.rejects) == _by_sequence(exact.rejects)


def test_fast_path_vouches_for_plain_generated_events_and_leaves_odd_ones_to_the_validator() -> None:
    plain = [data for label, data in ClickstreamGenerator(50, 400, seed=5).records() if label == "valid"]
    plain += [
        encode(doc(search_query="back\\slash \t tab \u00e9", event_type="search")),  # escapes
        encode(doc(search_query='say "hi"', event_type="search")),  # escaped quotes
        encode(doc(search_query='a":"b', page_url='":', event_type="search")),  # ... that look like a name
        json.dumps(doc(search_query="crème", event_type="search"), separators=(",", ":")).encode(),  # \u00e8
    ]
    odd = [
        encode(doc(note="extra field")),  # valid, but an unknown member: exact path
        encode(doc(schema_version=1.0)),  # 1.0 is the integer 1, but not in its plain form
    ]
    raw = raw_batch(
        [(data, _partition_key(data)) for data in plain + odd], arrival=datetime(2026, 6, 1, tzinfo=UTC)
    )
    vouched = FastDecoder(ValidationRules()).decode(_connection(), raw).column("vouched").to_pylist()
    assert vouched == [True] * len(plain) + [False] * len(odd)
    assert fast_and_exact(raw).events.num_rows == len(plain) + len(odd)


#: Invalid JSON that passes every byte check of the fast path ('{' first, '}' last, no ',' before the brace, no space
#: before a colon), so only the parser can tell.
_PLAIN_INVALID_JSON: Final = (
    encode(doc()) + b" " + encode(doc()),  # two objects
    encode(doc()) + b"}",  # a brace too many
    encode(doc()).replace(b'"page_view"', b'"page_view'),  # a string left open
    encode(doc()).replace(b'"session_id":', b'"session_id"'),  # a colon missing
    encode(doc()).replace(b"page_view", b"page\x01view"),  # a raw control character in a string
    encode(doc()).replace(b'"schema_version":1', b'"schema_version":01'),  # a leading zero
    encode(doc()).replace(b'"schema_version":1', b'"schema_version":tru'),
    encode(doc()).replace(b"page_view", b"page\\xview"),  # an escape JSON does not have
    encode(doc()).replace(b"page_view", b"page\\u12view"),  # a short unicode escape
)


@pytest.mark.parametrize("text", [*_PLAIN_INVALID_JSON, b'{"a":"x",}', b'{"a":[1,],"b":NaN}'])
def test_from_json_refuses_exactly_what_json_valid_refuses(text: bytes) -> None:
    """The fast path parses without ``json_valid`` first, relying on ``from_json`` raising wherever it is false
    (the same parser, with the same lenient flags)."""
    con = _connection()
    [(valid,)] = con.execute("SELECT json_valid(?)", [text.decode()]).fetchall()
    try:
        con.execute("""SELECT from_json(?, '{"a": "VARCHAR"}')""", [text.decode()]).fetchall()
        parsed = True
    except duckdb.InvalidInputException as error:
        assert "Malformed JSON" in str(error)
        parsed = False
    assert parsed == valid


def test_malformed_json_whose_error_message_cuts_a_character_is_rejected_not_raised() -> None:
    """DuckDB's "Malformed JSON" message quotes the text cut at a byte count; cut inside a multi-byte character,
    the message does not decode and the binding raises UnicodeDecodeError. One such record failed its whole batch,
    on every redelivery: the shard stopped for good."""
    valid = [data for label, data in ClickstreamGenerator(20, 200, seed=3).records() if label == "valid"]
    cut = b'{"a":"' + b"x" * 40 + "\u00e9".encode() + b'"}}'  # a character across the cut at 47 bytes
    records = [valid[0], cut, *valid[1:]]
    raw = raw_batch(
        [(data, _partition_key(data)) for data in records], arrival=datetime(2026, 6, 1, tzinfo=UTC)
    )
    con = _connection()
    con.register("fast_in", _fast_input(raw, plain=slice(1, 2)))  # the cut record passes the byte checks
    try:
        with pytest.raises(UnicodeDecodeError):  # what the bare parse does on this batch
            con.sql(fast_decode._PARSE_SQL).to_arrow_table()
    finally:
        con.unregister("fast_in")
    # the fast path itself keeps the batch: the cut record is doubtful, the others vouched for as they are alone
    vouched = FastDecoder(ValidationRules()).decode(con, raw).column("vouched").to_pylist()
    alone = raw_batch(
        [(data, _partition_key(data)) for data in valid], arrival=datetime(2026, 6, 1, tzinfo=UTC)
    )
    vouched_alone = FastDecoder(ValidationRules()).decode(con, alone).column("vouched").to_pylist()
    assert vouched == [vouched_alone[0], False, *vouched_alone[1:]] and sum(vouched_alone) > len(valid) // 2
    combined = fast_and_exact(raw)
    assert combined.events.num_rows == len(valid)
    assert combined.rejects.column("error_code").to_pylist() == ["invalid_json"]


def test_a_batch_the_fast_path_fails_on_is_decoded_whole_by_the_validator(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unforeseen failure of the shortcut (a DuckDB quirk like the one above) must not stop the shard."""
    records = [data for _, data in ClickstreamGenerator(20, 300, seed=5, malformed_rate=0.1).records()]
    raw = raw_batch(
        [(data, _partition_key(data)) for data in records], arrival=datetime(2026, 6, 1, tzinfo=UTC)
    )
    expected = fast_decode.decode_records(
        _connection(), raw, FastDecoder(ValidationRules()), RecordValidator()
    )

    def broken(*_: Any) -> pa.Table:
        raise RuntimeError("an unforeseen failure")

    monkeypatch.setattr(FastDecoder, "decode", broken)
    with caplog.at_level(logging.WARNING):
        decoded = fast_decode.decode_records(
            _connection(), raw, FastDecoder(ValidationRules()), RecordValidator()
        )
    assert decoded.events.equals(expected.events) and decoded.rejects.equals(expected.rejects)
    assert expected.events.num_rows and expected.rejects.num_rows
    assert any("an unforeseen failure" in r.getMessage() for r in caplog.records)


def test_a_batch_with_plain_invalid_json_is_parsed_again_with_the_check() -> None:
    valid = [data for label, data in ClickstreamGenerator(20, 200, seed=3).records() if label == "valid"]
    records = [valid[0], *_PLAIN_INVALID_JSON, *valid[1:]]
    arrival = datetime(2026, 6, 1, tzinfo=UTC)
    raw = raw_batch([(data, _partition_key(data)) for data in records], arrival=arrival)
    invalid = slice(1, 1 + len(_PLAIN_INVALID_JSON))
    con = _connection()
    con.register("fast_in", _fast_input(raw, plain=invalid))
    try:
        with pytest.raises(duckdb.InvalidInputException):  # the first try does raise on this batch
            con.sql(fast_decode._PARSE_SQL).to_arrow_table()
    finally:
        con.unregister("fast_in")
    alone = raw_batch([(data, _partition_key(data)) for data in valid], arrival=arrival)
    vouched_alone = FastDecoder(ValidationRules()).decode(con, alone).column("vouched").to_pylist()
    assert sum(vouched_alone) > len(valid) // 2
    vouched = FastDecoder(ValidationRules()).decode(con, raw).column("vouched").to_pylist()
    assert vouched == [vouched_alone[0]] + [False] * len(_PLAIN_INVALID_JSON) + vouched_alone[1:]
    combined = fast_and_exact(raw)
    assert combined.events.num_rows == len(valid)
    assert combined.rejects.column("error_code").to_pylist() == ["invalid_json"] * len(_PLAIN_INVALID_JSON)


def _fast_input(raw: pa.Table, plain: slice) -> pa.Table:
    """The fast path's input table for ``raw`` (as FastDecoder.decode registers it); the ``plain`` rows are."""
    data = contiguous(raw.column("data"))
    shape = fast_decode.PayloadBytes.of(data, MAX_BYTES)
    assert shape.plain[plain].all()
    rows = pa.array(np.arange(raw.num_rows, dtype=np.int64))
    return pa.table({"rid": rows, "txt": fast_decode.as_utf8(data), "plain": pa.array(shape.plain)})


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.binary(max_size=12), st.text(max_size=6).map(str.encode)),
        min_size=1,
        max_size=1500,
    ),
    st.integers(0, 3),
)
def test_payloads_as_utf8_are_null_exactly_where_they_are_not_utf8(
    values: list[bytes | None], skip: int
) -> None:
    """Many rows (more than one checking slice), nulls, and an array that starts at an offset."""
    data = pa.array(values, pa.binary()).slice(skip)

    def utf8(value: bytes | None) -> str | None:
        try:
            return None if value is None else value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    text = fast_decode.as_utf8(data)
    text.validate(full=True)
    assert text.to_pylist() == [utf8(value) for value in values[skip:]]


_PATTERN_SAMPLES: Final = {
    "uuid": "0fffb8b8-6978-4057-95df-04459f1b5ADD",
    "id": "c-028469.x:y@z_1",
    "currency": "EUR",
    "time": "2026-03-01T00:09:56.890721Z",
    "offset time": "2026-03-01T23:59:59+05:30",
    "quantity": "10000",
    "revenue": "1234567890123456.05",
    "small revenue": "0.5",
}
#: Characters each byte check treats specially, and a few it must refuse (non-ASCII, lower/upper neighbours of
#: ranges, whitespace, NUL).
_PATTERN_ALPHABET: Final = "09afAFgGzZ-_.:@+TZ /`[{é\x00"


@st.composite
def _near_pattern_values(draw: st.DrawFn) -> str:
    """A sample that matches one of the patterns, with a few characters replaced, inserted or deleted."""
    text = list(draw(st.sampled_from(sorted(_PATTERN_SAMPLES.values()))))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(("replace", "insert", "delete")))
        character = draw(st.sampled_from(_PATTERN_ALPHABET))
        if edit == "insert":
            text.insert(at, character)
        elif at < len(text):
            text[at : at + 1] = [] if edit == "delete" else [character]
    return "".join(text)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), _near_pattern_values(), st.text(_PATTERN_ALPHABET, max_size=40)),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 2),
)
def test_byte_checks_of_the_validators_patterns_agree_with_re2(values: list[str | None], skip: int) -> None:
    """The fast path checks these patterns on the bytes: the same answer as RE2 (which the validator runs), nulls
    kept, on arrays that start at an offset and that mix widths (a fixed-width check then gathers its rows)."""
    array = pa.array(values, pa.string()).slice(skip)
    for pattern, check in fast_decode._BYTE_PATTERNS.items():
        assert check(array).to_pylist() == fast_decode._full_match(array, pattern).to_pylist(), pattern
    # mostly null, as an optional member is: only the values present are checked, and land back in their rows
    sparse = pa.array([None, *values, *[None] * len(values)], pa.string()).slice(skip)
    for pattern in [*fast_decode._BYTE_PATTERNS, r"[0-9a-f]+"]:  # and one left to RE2
        for checked in (array, sparse):
            expected = fast_decode._full_match(checked, pattern).to_pylist()
            assert fast_decode._pattern_match(checked, pattern).to_pylist() == expected, pattern


def test_the_event_time_check_on_the_bytes_agrees_with_re2_on_every_two_digit_field() -> None:
    """Each of month, day, hour, minute and second from 00 to 99, the others valid (every range at its edges)."""
    valid = [3, 1, 0, 9, 56]
    times = []
    for field in range(len(valid)):
        for value in range(100):
            fields = [*valid[:field], value, *valid[field + 1 :]]
            times.append("2026-{:02}-{:02}T{:02}:{:02}:{:02}.890721Z".format(*fields))
    array = pa.array(times, pa.string())
    expected = fast_decode._full_match(array, EVENT_TIME_PATTERN).to_pylist()
    assert fast_decode._event_time_text(array).to_pylist() == expected
    assert expected.count(True) == 12 + 31 + 24 + 60 + 60  # the ranges, each within the others valid


def test_byte_checks_agree_with_re2_when_many_values_have_other_widths() -> None:
    """More values of other widths than are cut out of the body one by one (Arrow's filter takes over)."""
    generator = random.Random(8)
    samples = sorted(_PATTERN_SAMPLES.values())
    values: list[str | None] = []
    for _ in range(3 * fast_decode._FEW_OTHERS):
        text = generator.choice(samples)
        at = generator.randrange(len(text))
        values += [
            text,
            text[:at] + generator.choice(_PATTERN_ALPHABET) * generator.randint(0, 2) + text[at + 1 :],
        ]
        values += [None] if generator.random() < 0.1 else []
    array = pa.array(values, pa.string())
    for pattern, check in fast_decode._BYTE_PATTERNS.items():
        assert check(array).to_pylist() == fast_decode._full_match(array, pattern).to_pylist(), pattern


def test_the_plain_number_checks_on_the_bytes_agree_with_re2_at_every_edge() -> None:
    """Quantities 0-10001 and their zero-padded forms; revenues with 0-18 integer digits and 0-3 decimals, leading
    zeros, signs, exponents, and more than one dot."""
    quantities = [str(number) for number in range(10_002)] + ["01", "00", "010000", "", "1.0", "-1", "1e3"]
    revenues = [
        f"{sign}{lead}{'7' * digits}{'.' if decimals or dot else ''}{'5' * decimals}"
        for sign in ("", "-")
        for lead in ("", "0", "1")
        for digits in range(17)
        for decimals in range(4)
        for dot in (False, True)
    ] + ["0", "0.", ".5", "0..5", "1.2.3", "1e2", "12 "]
    for pattern, values in (
        (fast_decode._QUANTITY_TEXT, quantities),
        (fast_decode._REVENUE_TEXT, revenues),
    ):
        array = pa.array(values, pa.string())
        expected = fast_decode._full_match(array, pattern).to_pylist()
        assert fast_decode._BYTE_PATTERNS[pattern](array).to_pylist() == expected
        assert 0 < expected.count(True) < len(values)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10**16 - 1), st.sampled_from(["", ".", ".0", ".5", ".05", ".99", ".10"])),
        min_size=1,
        max_size=50,
    ),
    st.lists(st.integers(1, 10_000), min_size=1, max_size=50),
)
def test_plain_numbers_read_from_their_digits_equal_duckdbs_cast(
    revenues: list[tuple[int, str]], quantities: list[int]
) -> None:
    """Quantities and revenues of the plain forms are read from their digits, not cast by DuckDB: the same values as
    its casts to INTEGER and DECIMAL(18, 2), as the events' columns; a text not plain gives no value."""
    con = _connection()
    revenue_texts = ["0", "19.99", *(f"{whole}{fraction}" for whole, fraction in revenues), "-1", "1e2"]
    for texts, pattern, scale, sql_type in (
        (revenue_texts, fast_decode._REVENUE_TEXT, 2, "DECIMAL(18, 2)"),
        ([str(number) for number in quantities] + ["01", "10001"], fast_decode._QUANTITY_TEXT, 0, "INTEGER"),
    ):
        array = pa.array(texts, pa.string())
        plain = fast_decode._true(fast_decode._pattern_match(array, pattern))
        assert plain.any() and not plain[-2:].any()  # the last two are not plain
        read = fast_decode._plain_number(array, plain, scale)
        cast = con.execute(f"SELECT TRY_CAST(t AS {sql_type}) FROM unnest(?) AS u(t)", [texts]).fetchall()
        expected = [None if value is None else int(value * 10**scale) for (value,) in cast]
        assert [int(value) if ok else None for value, ok in zip(read, plain, strict=True)] == [
            value if ok else None for value, ok in zip(expected, plain, strict=True)
        ]
        if scale == 2:
            decimals = fast_decode._decimal_from_cents(read, plain)
            assert decimals.to_pylist() == [
                Decimal(text).quantize(Decimal("0.01")) if ok else None
                for text, ok in zip(texts, plain, strict=True)
            ]
            assert fast_decode.decimal_cents(decimals).to_pylist() == [
                int(value) if ok else None for value, ok in zip(read, plain, strict=True)
            ]


def test_every_pattern_of_the_validator_is_checked_on_the_bytes() -> None:
    """No RE2 pass for a string field on the fast path (each costs a few milliseconds a batch)."""
    patterns = {pattern for _, _, pattern in _STRING_FIELDS.values() if pattern}
    assert patterns <= set(fast_decode._BYTE_PATTERNS)


@st.composite
def _event_time_texts(draw: st.DrawFn) -> str | None:
    """Texts of the usual layout with any two digits in each field (impossible dates, leap days, year 0), other
    forms of the pattern (offsets, shorter fractions, one of the usual width without a 'Z') and a few non-times."""
    usual = "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z".format(
        draw(
            st.sampled_from([0, 1, 4, 100, 1582, 1900, 1970, 2000, 2024, 2100, 2400, 9999])
            | st.integers(0, 9999)
        ),
        draw(st.integers(0, 13)),
        draw(st.sampled_from([0, 1, 28, 29, 30, 31, 32]) | st.integers(0, 99)),
        draw(st.integers(0, 25)),
        draw(st.integers(0, 60)),
        draw(st.integers(0, 60)),
        draw(st.integers(0, 999_999)),
    )
    other = draw(
        st.sampled_from(
            [
                usual[:19] + "Z",
                usual[:23] + "+01:30",
                usual[:21] + "-00:00",  # 27 bytes, the usual width
                usual[:26] + "z",
                usual[:26],
                usual.replace("T", " "),
                None,
                "",
                "now",
            ]
        )
    )
    return usual if draw(st.booleans()) else other


@settings(max_examples=60, deadline=None)
@given(st.lists(_event_time_texts(), min_size=1, max_size=80))
def test_event_times_from_their_bytes_equal_duckdbs_cast(texts: list[str | None]) -> None:
    """The fast path reads the usual layout's digits itself: for every text of the pattern (no other is ever
    vouched), the same microseconds as the validator's cast to TIMESTAMPTZ wherever that gives a value, and no value
    wherever it gives none; the other forms go to the cast, and only where they are wanted."""
    _assert_event_micros_equal_the_cast(texts)


def test_event_times_from_their_bytes_at_every_month_end_of_leap_and_common_years() -> None:
    years = [0, 1, 4, 100, 400, 1582, 1900, 1970, 2000, 2023, 2024, 2100, 2400, 9999]
    texts = [
        f"{year:04}-{month:02}-{day:02}T23:59:59.999999Z"
        for year in years
        for month in range(1, 13)
        for day in (1, 28, 29, 30, 31)
    ]
    _assert_event_micros_equal_the_cast(texts)


def _assert_event_micros_equal_the_cast(texts: list[str | None]) -> None:
    con = _connection()
    array = pa.array(texts, pa.string())
    of_pattern = fast_decode._true(fast_decode._full_match(array, EVENT_TIME_PATTERN))
    micros, is_time = fast_decode._event_micros(con, array, of_pattern)
    cast = fast_decode._cast_to_utc_micros(con, array)
    cast_is_time = np.asarray(cast.is_valid().to_pylist(), dtype=bool)
    assert is_time[of_pattern].tolist() == cast_is_time[of_pattern].tolist()
    assert micros[of_pattern & is_time].tolist() == cast.filter(pa.array(of_pattern & is_time)).to_pylist()
    assert not (is_time & ~of_pattern).any()  # a row not wanted is not read


def test_the_usual_event_time_is_checked_on_its_bytes_and_other_forms_by_re2() -> None:
    times = [
        "2026-03-01T00:09:56.890721Z",  # the usual form, on the bytes
        "2026-03-01T24:00:00.000000Z",  # hour 24: DuckDB would normalise it; the pattern refuses it
        "2026-13-01T00:00:00.000000Z",
        "2026-03-32T00:00:00.000000Z",
        "2026-03-01T00:60:00.000000Z",
        "2026-03-01T00:09:56Z",  # other forms, by RE2
        "2026-03-01T00:09:56.8+01:00",
        "2026-03-01T00:09:56.890721+24:00",
        None,
    ]
    array = pa.array(times, pa.string())
    assert fast_decode._event_time_text(array).to_pylist() == [
        True, False, False, False, False, True, True, False, None
    ]  # fmt: skip


def test_fast_path_leaves_lenient_json_to_the_validator() -> None:
    """LENIENT_JSON_HINT's alternatives: a trailing comma found on the bytes before the closing brace (the only place
    a vouched payload can hold one); NaN and Infinity, bare, in every place a value goes, fail the type checks (and
    inside a string they are plain JSON)."""
    assert LENIENT_JSON_HINT.startswith(f"{fast_decode._LENIENT_COMMA}|")
    base = encode(doc(event_type="purchase", order_id="o-1", revenue=12.5, quantity=2, currency="EUR"))
    literals = NON_FINITE_LITERALS
    hinted = [
        base[:-1] + b",}",
        base[:-1] + b",\n}",
        base[:-1] + b',"x":[1,]}',  # a trailing comma inside an unknown member: its name is counted
    ]
    for field in ("schema_version", "quantity", "revenue", "customer_id", "currency"):
        value = json.dumps(json.loads(base)[field]).encode()
        member = b'"' + field.encode() + b'":' + value
        assert base.count(member) == 1
        for literal in literals:
            hinted += [
                base.replace(member, member[: -len(value)] + replaced)
                for replaced in (literal, b"[" + literal + b"]")
            ]
    hinted.append(base[:-1] + b',"x":{"y":NaN}}')
    taken = [
        base.replace(b'"o-1"', b'"a, }"'),  # a trailing comma's text inside a string is plain JSON
        base.replace(b'"o-1"', b'"NaN"'),  # and so are the literals' texts
        base.replace(b'"o-1"', b'"Infinity and beyond"'),
        base.replace(b'"o-1"', b'"banana, info: nan"'),
        base + b"\n",
    ]
    records = [base, *hinted, *taken]
    raw = raw_batch([(data, _partition_key(data)) for data in records])
    vouched = FastDecoder(ValidationRules()).decode(_connection(), raw).column("vouched").to_pylist()
    assert vouched == [True] + [False] * len(hinted) + [True] * len(taken)
    combined, exact = fast_and_exact(raw), decode(raw)
    assert _by_sequence(combined.events) == _by_sequence(exact.events)
    assert _by_sequence(combined.rejects) == _by_sequence(exact.rejects)
    assert exact.rejects.num_rows == len(hinted)
    assert set(exact.rejects.column("error_code").to_pylist()) <= {
        "invalid_json",
        "wrong_type",
        "invalid_value",
    }


def test_lone_surrogate_escape_is_rejected_as_invalid_json() -> None:
    data = encode(doc())[:-1] + b',"page_url":"a\\ud800b"}'
    assert not schema_errors(data)  # Python decodes it to a lone surrogate and the schema accepts
    assert rejection(data)["error_code"] == "invalid_json"


def test_utf8_byte_order_mark_is_rejected_as_invalid_json() -> None:
    assert rejection(b"\xef\xbb\xbf" + encode(doc()))["error_code"] == "invalid_json"


def test_fast_path_counts_member_names_on_the_bytes_and_leaves_spaced_colons_to_the_validator() -> None:
    """The fast path counts a payload's member names as '"' right before ':' (fast_decode.PayloadBytes)."""
    url = doc(page_url="https://shop.example.com/p?a=1:2")  # colons inside a string are no names
    spaced = encode(doc()).replace(b'"customer_id":', b'"customer_id" :')
    vouched_docs = [
        encode(url),
        json.dumps(url).encode(),  # Python's default separators: a space after each colon
    ]
    left_to_validator = [
        spaced,  # valid, but the name is not counted: exact path, same event
        # a repeated name hidden behind a spaced colon: the count would match without the space check
        spaced[:-1] + b',"customer_id":"c-000002"}',
        encode(doc(extra={"a": 1})),  # a nested name: the count exceeds the members
        encode(doc(search_query="a :b", event_type="search")),  # a spaced colon inside a string: doubtful too
    ]
    records = vouched_docs + left_to_validator
    raw = raw_batch([(data, _partition_key(data)) for data in records])
    vouched = FastDecoder(ValidationRules()).decode(_connection(), raw).column("vouched").to_pylist()
    assert vouched == [True] * len(vouched_docs) + [False] * len(left_to_validator)
    combined, exact = fast_and_exact(raw), decode(raw)
    assert _by_sequence(combined.events) == _by_sequence(exact.events)
    assert _by_sequence(combined.rejects) == _by_sequence(exact.rejects)
    assert combined.rejects.column("error_code").to_pylist() == ["duplicate_key"]


def test_fast_path_takes_a_string_field_only_when_its_value_was_a_json_string() -> None:
    """String members arrive from DuckDB as values (a number or a boolean would too); that each was a JSON string is
    counted on the bytes (fast_decode.PayloadBytes.strings), so anything else is left to the validator."""
    base = encode(doc(event_type="search", search_query="q"))
    query = b'"search_query":"q"'
    vouched_docs = [
        base,
        base.replace(query, b'"search_query": "q"'),  # Python's default separator
        base.replace(query, b'"search_query":\n\t  "q"'),  # whitespace within the look-ahead
        base.replace(query, b'"search_query":"a:"'),  # a colon before a closing quote is no member
    ]
    left_to_validator = [
        base.replace(query, b'"search_query":7'),
        base.replace(query, b'"search_query":true'),
        base.replace(query, b'"search_query":["q"]'),
        base.replace(b'"schema_version":1', b'"schema_version":"1"'),
        base.replace(query, b'"search_query":     "q"'),  # valid, but more whitespace than the look-ahead
        base.replace(b'"session_id":"s-1"', b'"session_id":":s-1"'),  # valid: a string that starts with ':'
        # a number where a string belongs, beside a string that starts with ':' (counted as one more name)
        base.replace(query, b'"search_query":7').replace(b'"session_id":"s-1"', b'"session_id":":s-1"'),
    ]
    records = vouched_docs + left_to_validator
    raw = raw_batch([(data, _partition_key(data)) for data in records])
    shape = fast_decode.PayloadBytes.of(raw.column("data").combine_chunks(), max_bytes=10_000)
    assert shape.strings.tolist()[:5] == [6, 6, 6, 6, 5]
    vouched = FastDecoder(ValidationRules()).decode(_connection(), raw).column("vouched").to_pylist()
    assert vouched == [True] * len(vouched_docs) + [False] * len(left_to_validator)
    combined, exact = fast_and_exact(raw), decode(raw)
    assert _by_sequence(combined.events) == _by_sequence(exact.events)
    assert _by_sequence(combined.rejects) == _by_sequence(exact.rejects)
    assert combined.events.num_rows == len(vouched_docs) + 2  # the two valid ones the fast path left


def test_fast_path_leaves_a_value_longer_in_bytes_than_its_limit_to_the_validator() -> None:
    """Lengths are code points; the fast path compares bytes, which decides only when they are within the bounds."""
    url = "é" * 2048  # 2,048 code points, 4,096 bytes: valid
    records = [encode(doc(page_url=url)), encode(doc(page_url=url + "é"))]
    raw = raw_batch([(data, _partition_key(data)) for data in records])
    vouched = FastDecoder(ValidationRules()).decode(_connection(), raw).column("vouched").to_pylist()
    assert vouched == [False, False]
    combined, exact = fast_and_exact(raw), decode(raw)
    assert combined.events.num_rows == exact.events.num_rows == 1
    assert _by_sequence(combined.rejects) == _by_sequence(exact.rejects)


@pytest.mark.parametrize("count", [0, 2, 4])
def test_member_names_are_counted_per_payload_whatever_the_neighbours(count: int) -> None:
    payloads = [*[b'{"a":1,"b":{"c":2}}', b"", b':"x":', b'{"k" :1}'][:count], b'{"z":"y:"}']
    expected_keys = [*[3, 0, 1, 0][:count], 1]
    expected_plain = [*[True, False, False, False][:count], True]
    for data in (
        pa.array(payloads, pa.binary()),
        pa.array([b'{"q":1}', *payloads], pa.binary()).slice(1),  # a slice: its offsets do not start at 0
    ):
        shape = fast_decode.PayloadBytes.of(data, max_bytes=1_000)
        assert shape.keys.tolist() == expected_keys and shape.plain.tolist() == expected_plain


@pytest.mark.parametrize(
    ("payload", "plain"),
    [
        (b'{"a":"b"}', True),
        (b'{"a":"b"}\r\n', True),  # a producer's line ending
        (b'  {"a":"b"}', False),  # leading whitespace: left to the validator
        (b'{"a":"b",}', False),
        (b'{"a":"b", \n }', False),
        (b'{"a":"b"}     ', False),  # more trailing whitespace than the fast path looks back over
        (b'{"a":"b\\"}', True),  # an escaped quote (this string is left open: only the parser tells)
        (b'{"a":"b\\\\"}', True),  # an escaped backslash, then the quote that ends the string
        (b'{"a":"\\\\\\"b"}', True),  # an escaped backslash, then an escaped quote
        (b'{"a":"b\\n\\u00e9"}', True),  # other escapes
        (b'{"a":"b"', False),
        (b"}", False),
        (b'{"a":"' + b"x" * 100 + b'"}', False),  # over the size limit
    ],
)
def test_payload_shape_on_the_bytes(payload: bytes, plain: bool) -> None:
    data = pa.array([b'{"x":"y"}', payload, b'{"x":"y"}'], pa.binary())
    assert fast_decode.PayloadBytes.of(data, max_bytes=60).plain.tolist() == [True, plain, True]


# ---------------------------------------------------------------------------------------------------- ArrowSource


def test_an_arrow_source_reads_the_table_handed_to_each_run() -> None:
    con = new_connection()
    numbers = ArrowSource("test_numbers", pa.schema([("x", pa.int64()), ("label", pa.string())]))
    sql = f"SELECT x * 2 AS doubled, label FROM {numbers.rows_sql}"
    first = numbers.run(con, sql, pa.table({"x": [1, 2, 3], "label": ["a", None, "c"]}))
    assert first.to_pylist() == [
        {"doubled": 2, "label": "a"},
        {"doubled": 4, "label": None},
        {"doubled": 6, "label": "c"},
    ]
    # prepared once; later runs read their own table (cast to the source's schema), empty ones too
    second = numbers.run(con, sql, pa.table({"label": ["z"], "x": pa.array([10], pa.int32())}))
    assert second.to_pylist() == [{"doubled": 20, "label": "z"}]
    assert numbers.run(con, sql, pa.table({"x": pa.array([], pa.int64()), "label": []})).num_rows == 0


def test_two_arrow_sources_on_one_connection_and_one_source_on_two_connections_stay_apart() -> None:
    schema = pa.schema([("x", pa.int64())])
    left, right = ArrowSource("test_left", schema), ArrowSource("test_right", schema)
    shared, other = new_connection(), new_connection()

    def negated(source: ArrowSource, con: duckdb.DuckDBPyConnection, values: list[int]) -> list[int]:
        sql = f"SELECT -x AS y FROM {source.rows_sql}"
        result = source.run(con, sql, pa.table({"x": values}, schema=schema))
        return [int(value) for value in result.column("y").to_pylist()]

    assert negated(left, shared, [1, 2]) == [-1, -2]
    assert negated(right, shared, [10, 20]) == [-10, -20]
    assert negated(left, shared, [5]) == [-5]
    assert negated(left, other, [7, 8]) == [-7, -8]
    assert negated(right, shared, [1]) == [-1]


@pytest.mark.parametrize("rows", [0, 1, 6, 7, 20])
def test_an_arrow_source_hands_a_long_table_over_in_slices_with_the_results_in_row_order(rows: int) -> None:
    con = new_connection()
    numbers = ArrowSource("test_slices", pa.schema([("x", pa.int64()), ("s", pa.string())]), max_rows=3)
    table = pa.table({"x": list(range(rows + 2)), "s": [f"v{i}" for i in range(rows + 2)]}).slice(2)
    sql = f"SELECT x + 1 AS y, s || '!' AS t FROM {numbers.rows_sql}"
    result = numbers.run(con, sql, table)
    assert result.column("y").to_pylist() == [x + 1 for x in range(2, rows + 2)]
    assert result.column("t").to_pylist() == [f"v{x}!" for x in range(2, rows + 2)]


def test_an_arrow_source_cannot_be_read_outside_a_run() -> None:
    con = new_connection()
    numbers = ArrowSource("test_outside", pa.schema([("x", pa.int64())]))
    sql = f"SELECT x FROM {numbers.rows_sql}"
    numbers.run(con, sql, pa.table({"x": [1]}))
    with pytest.raises(duckdb.Error, match=r"read outside ArrowSource\.run"):
        con.sql(f"SELECT x FROM {numbers.rows_sql}").fetchall()


def _optimizer_ran(con: duckdb.DuckDBPyConnection, run: Any, output: Any) -> bool:
    """Whether DuckDB's optimizer ran for the last statement ``run`` executes: it does when DuckDB binds a prepared
    statement again, and not when it reuses the plan it made when preparing it."""
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute(f"PRAGMA profiling_output = '{output}'")
    con.execute("PRAGMA profiling_mode = 'detailed'")
    try:
        run()
    finally:
        con.execute("PRAGMA disable_profiling")
    profile = json.loads(output.read_text())
    return "expression_rewriter" in profile["optimizer"]


def test_the_validator_is_planned_once_not_on_every_batch(tmp_path: Any) -> None:
    """DuckDB binds a prepared statement again on every execution if it reads a table or adds an INTERVAL to a
    TIMESTAMPTZ: some 10 ms for the validator, on every batch that holds a doubtful record."""
    con = new_connection()
    output = tmp_path / "profile.json"
    valid = [data for label, data in ClickstreamGenerator(20, 50, seed=5).records() if label == "valid"]
    raw = raw_batch(
        [(data, _partition_key(data)) for data in valid], arrival=datetime(2026, 6, 1, tzinfo=UTC)
    )
    validator = RecordValidator()
    validator.decode(con, raw)
    assert not _optimizer_ran(con, lambda: validator.decode(con, raw), output)
    # what the test would see if the statement were bound again: a copy read from a registered table
    con.register("raw_copy", raw)
    assert _optimizer_ran(con, lambda: con.sql("SELECT count(*) FROM raw_copy").fetchall(), output)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from([b'"', b"\\", b"a", b":"]), st.integers(1, 40).map(lambda n: b"\\" * n)),
        max_size=40,
    )
)
def test_a_quote_is_escaped_after_an_odd_run_of_backslashes_however_long(pieces: list[bytes]) -> None:
    """The fast path asks only about the quotes before a name's colon, counting backslashes back from each; a run
    longer than its look-back is settled by a scan of the body. Both agree with the scan on every quote."""
    body = np.frombuffer(b"".join(pieces) + b'"', dtype=np.uint8)
    quotes = np.flatnonzero(body == ord('"'))
    expected = np.isin(quotes, fast_decode._escaped_quotes(body))
    for steps in (1, 4, 16):
        assert fast_decode._escaped(body, quotes, steps).tolist() == expected.tolist()


def test_the_schema_documents_how_producers_must_read_revenue_for_multiple_of() -> None:
    """The README and the schema's $comment tell producers to read numbers as decimals: as floats, 39.77 fails
    multipleOf 0.01 (the advice is needed), and read as Decimal it passes (the advice works)."""
    text = json.dumps(
        {
            "schema_version": 1,
            "event_id": "6f1c2f4e-8d7a-4b1e-9c3d-2a5b6c7d8e9f",
            "event_type": "purchase",
            "customer_id": "c-000042",
            "session_id": "s-1",
            "event_time": "2026-03-01T10:15:30.123456Z",
            "order_id": "o-1",
            "revenue": 39.77,
        }
    )
    schema_text = EVENT_SCHEMA_PATH.read_text(encoding="utf-8")
    assert "parse_float=Decimal" in SCHEMA["properties"]["revenue"]["$comment"]
    as_floats = Draft202012Validator(json.loads(schema_text))
    assert not as_floats.is_valid(json.loads(text))
    # the schema and the event
    as_advised = Draft202012Validator(json.loads(schema_text, parse_float=Decimal))
    assert as_advised.is_valid(json.loads(text, parse_float=Decimal))
