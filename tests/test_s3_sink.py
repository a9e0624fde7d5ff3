"""Specification of the S3 Parquet sink: object layout, encryption, schemas, overwrite-on-retry and orphan cleanup.

Batches are applied by a real CustomerState (in-memory DuckDB) and written to moto's in-process S3.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggregators.customer_state import AppliedBatch, CustomerState
from consumer.s3_sink import FlushRange, S3ParquetSink
from consumer.shard_processor import RawRecord, RecordBuffer
from runtime.settings import Settings, load_settings
from schemas import CUSTOMER_AGGREGATES_SCHEMA, ERRORS_SCHEMA, EVENTS_SCHEMA
from schemas.positions import Position
from tests.moto_support import isolate_environment, moto_bucket

SHARD = "shardId-000000000003"
BUCKET = "clickstream-sink-test"
ARRIVAL_MILLIS = int(datetime(2026, 3, 2, 6, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    """One in-process moto for the module (starting moto costs more than most tests)."""
    with moto_bucket(BUCKET) as client:
        yield client


@pytest.fixture
def s3(aws: Any) -> Iterator[Any]:
    """The module's bucket, empty at the start of each test."""
    yield aws
    for page in aws.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            aws.delete_object(Bucket=BUCKET, Key=obj["Key"])


def event(event_type: str, customer: str, at: str, **extra: Any) -> bytes:
    document = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "customer_id": customer,
        "session_id": f"s-{customer}",
        "event_time": at,
        **extra,
    }
    return json.dumps(document).encode()


#: Three event hours on two days, two customers, one purchase, and one malformed record.
HOURLY_EVENTS = [
    event("page_view", "c-1", "2026-03-01T10:00:00Z", page_url="https://shop.example.com/"),
    event("product_view", "c-1", "2026-03-01T10:59:59.999999Z", product_id="p-1"),
    event("page_view", "c-2", "2026-03-01T11:00:00Z"),
    event("purchase", "c-2", "2026-03-02T00:30:00Z", order_id="o-1", revenue=19.99, currency="USD"),
]
MALFORMED = b'{"schema_version": 1, "event_id": "not json'


def records_of(payloads: Sequence[bytes], first_sequence: int = 100) -> list[RawRecord]:
    result = []
    for offset, data in enumerate(payloads):
        try:
            key = json.loads(data)["customer_id"]
        except ValueError:
            key = "unknown"
        result.append(RawRecord(str(first_sequence + offset), 0, key, ARRIVAL_MILLIS, data))
    return result


def applied(state: CustomerState, records: Sequence[RawRecord]) -> tuple[FlushRange, AppliedBatch]:
    buffer = RecordBuffer(SHARD)
    buffer.extend(records, 0.0)
    return buffer.range(), state.apply(buffer.to_table())


def all_keys(s3: Any) -> set[str]:
    return {obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def body(s3: Any, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def settings_for(prefix: str = "rfm", **extra: Any) -> Settings:
    return load_settings(bucket=BUCKET, prefix=prefix, **extra)


# ---------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize(("prefix", "root"), [("rfm", "rfm/"), ("", ""), ("/lake/rfm/", "lake/rfm/")])
def test_objects_are_named_by_output_partition_shard_and_sequence_range(
    s3: Any, prefix: str, root: str
) -> None:
    sink = S3ParquetSink(s3, settings_for(prefix))
    flush, batch = applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))

    manifest = sink.write(flush, batch)

    stem = f"{SHARD}-{100:056d}-0-{104:056d}-0"
    expected_events = {
        f"{root}events/event_date=2026-03-01/event_hour=10/{stem}.parquet",
        f"{root}events/event_date=2026-03-01/event_hour=11/{stem}.parquet",
        f"{root}events/event_date=2026-03-02/event_hour=00/{stem}.parquet",
    }
    expected_aggregates = {f"{root}customer_aggregates/as_of_date=2026-03-02/{stem}.parquet"}
    expected_errors = {f"{root}errors/arrival_date=2026-03-02/{stem}.parquet"}
    expected_control = {f"{root}_control/commits/{SHARD}/{stem}.json", f"{root}_control/intents/{SHARD}.json"}
    assert all_keys(s3) == expected_events | expected_aggregates | expected_errors | expected_control
    assert set(manifest.files["events"]) == expected_events
    assert set(manifest.files["customer_aggregates"]) == expected_aggregates
    assert set(manifest.files["errors"]) == expected_errors


def test_each_hour_file_holds_exactly_that_hours_events(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    manifest = sink.write(*applied(CustomerState(SHARD), records_of(HOURLY_EVENTS)))

    hours = {}
    for key in manifest.files["events"]:
        table = pq.read_table(io.BytesIO(body(s3, key)))
        hours[key.split("/")[2] + "/" + key.split("/")[3]] = sorted(
            t.strftime("%Y-%m-%dT%H:%M:%S.%f") for t in table.column("event_time").to_pylist()
        )
    assert hours == {
        "event_date=2026-03-01/event_hour=10": ["2026-03-01T10:00:00.000000", "2026-03-01T10:59:59.999999"],
        "event_date=2026-03-01/event_hour=11": ["2026-03-01T11:00:00.000000"],
        "event_date=2026-03-02/event_hour=00": ["2026-03-02T00:30:00.000000"],
    }


def test_commit_record_describes_the_flush_and_the_intent_lists_its_files(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    flush, batch = applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))
    manifest = sink.write(flush, batch)

    commit = json.loads(body(s3, sink.commit_key(flush)))
    intent = json.loads(body(s3, sink.intent_key(SHARD)))

    assert intent == {"range": flush.stem, "keys": manifest.files}
    assert commit["files"] == manifest.files
    assert (commit["first_sequence"], commit["last_sequence"], commit["last_sub_sequence"]) == (
        "100",
        "104",
        0,
    )
    assert (commit["records_in"], commit["accepted"], commit["rejected"], commit["customers_changed"]) == (
        5,
        4,
        1,
        2,
    )
    data_bytes = sum(len(body(s3, key)) for keys in manifest.files.values() for key in keys)
    assert commit["bytes_written"] == data_bytes


def test_a_flush_with_only_skipped_records_writes_no_data_files(s3: Any) -> None:
    state = CustomerState(SHARD)
    records = records_of(HOURLY_EVENTS)
    applied(state, records)
    flush, batch = applied(state, records)  # redelivered: at or below the stored position

    manifest = S3ParquetSink(s3, settings_for()).write(flush, batch)

    assert manifest.records_skipped == len(records)
    assert manifest.files == {"events": [], "customer_aggregates": [], "errors": []}
    assert not any("/events/" in key or "/customer_aggregates/" in key for key in all_keys(s3))


def test_stems_sort_in_stream_order_whatever_the_number_of_digits() -> None:
    ranges = [
        FlushRange(SHARD, Position("9"), Position("99")),
        FlushRange(SHARD, Position("100"), Position("100", 5)),
        FlushRange(SHARD, Position("101"), Position(str(10**55))),
    ]
    stems = [r.stem for r in ranges]
    assert sorted(stems) == stems
    assert len({len(stem) for stem in stems}) == 1


# ---------------------------------------------------------------------------------------------------- encryption
def test_every_object_is_put_with_aes256_server_side_encryption(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    sink.write(*applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED])))

    keys = all_keys(s3)
    assert len(keys) == 7
    assert {
        key: s3.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") for key in keys
    } == dict.fromkeys(keys, "AES256")


def test_every_object_is_put_with_the_configured_kms_key(s3: Any) -> None:
    key_id = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    sink = S3ParquetSink(s3, settings_for(sse="aws:kms", sse_kms_key_id=key_id))
    sink.write(*applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED])))

    heads = [s3.head_object(Bucket=BUCKET, Key=key) for key in all_keys(s3)]
    assert len(heads) == 7
    assert {(h.get("ServerSideEncryption"), h.get("SSEKMSKeyId")) for h in heads} == {("aws:kms", key_id)}


# ---------------------------------------------------------------------------------------------------- schemas
@pytest.mark.parametrize(
    ("output", "schema"),
    [
        ("events", EVENTS_SCHEMA),
        ("customer_aggregates", CUSTOMER_AGGREGATES_SCHEMA),
        ("errors", ERRORS_SCHEMA),
    ],
)
def test_parquet_files_read_back_with_the_contract_schema(s3: Any, output: str, schema: pa.Schema) -> None:
    manifest = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))
    )
    assert manifest.files[output]
    for key in manifest.files[output]:
        read = pq.read_table(io.BytesIO(body(s3, key)))
        assert read.schema.equals(schema, check_metadata=False), f"{key}: {read.schema}"


def test_parquet_timestamps_are_utc_microseconds_and_money_is_decimal_18_2(s3: Any) -> None:
    manifest = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of(HOURLY_EVENTS))
    )
    purchase_hour = next(key for key in manifest.files["events"] if "event_hour=00" in key)
    parquet_schema = pq.ParquetFile(io.BytesIO(body(s3, purchase_hour))).schema

    event_time = parquet_schema.column(EVENTS_SCHEMA.get_field_index("event_time")).logical_type
    revenue = parquet_schema.column(EVENTS_SCHEMA.get_field_index("revenue")).logical_type
    timestamp = json.loads(event_time.to_json())
    assert (timestamp["Type"], timestamp["isAdjustedToUTC"], timestamp["timeUnit"]) == (
        "Timestamp",
        True,
        "microseconds",
    )
    assert json.loads(revenue.to_json()) == {"Type": "Decimal", "precision": 18, "scale": 2}
    table = pq.read_table(io.BytesIO(body(s3, purchase_hour)))
    assert str(table.column("revenue")[0].as_py()) == "19.99"


# ---------------------------------------------------------------------------------------------------- retries
def test_writing_the_same_flush_twice_overwrites_instead_of_duplicating(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    flush, batch = applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))

    first = sink.write(flush, batch)
    keys_after_first = all_keys(s3)
    bodies_after_first = {key: body(s3, key) for key in keys_after_first if key.endswith(".parquet")}
    second = sink.write(flush, batch)

    assert second.files == first.files
    assert all_keys(s3) == keys_after_first
    assert {key: body(s3, key) for key in bodies_after_first} == bodies_after_first


# ---------------------------------------------------------------------------------------------------- orphans
class CrashBeforeCommitRecord:
    """A moto client that dies when asked to write a commit record."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def put_object(self, **kwargs: Any) -> Any:
        if "/_control/commits/" in kwargs["Key"]:
            raise RuntimeError("crash before the commit record")
        return self.client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_discard_uncommitted_deletes_the_files_of_a_flush_without_commit_record(s3: Any) -> None:
    settings = settings_for()
    state = CustomerState(SHARD)
    committed = S3ParquetSink(s3, settings).write(*applied(state, records_of(HOURLY_EVENTS[:2], 100)))
    committed_keys = all_keys(s3)
    flush, batch = applied(state, records_of([*HOURLY_EVENTS[2:], MALFORMED], 200))
    with pytest.raises(RuntimeError):
        S3ParquetSink(CrashBeforeCommitRecord(s3), settings).write(flush, batch)
    orphans = all_keys(s3) - committed_keys - {f"rfm/_control/intents/{SHARD}.json"}
    assert orphans, "the crashed flush left data files behind"

    deleted = S3ParquetSink(s3, settings).discard_uncommitted(SHARD)

    assert deleted == len(orphans)
    assert all_keys(s3) == committed_keys  # the intent stays; only data files of the dead flush go
    assert committed.files["events"]


def test_discard_uncommitted_leaves_a_committed_flush_alone(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    sink.write(*applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED])))
    before = all_keys(s3)

    assert sink.discard_uncommitted(SHARD) == 0
    assert all_keys(s3) == before


def test_discard_uncommitted_without_any_intent_does_nothing(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    assert sink.discard_uncommitted(SHARD) == 0
    assert all_keys(s3) == set()


def test_discard_uncommitted_only_touches_its_own_shard(s3: Any) -> None:
    settings = settings_for()
    other = "shardId-000000000004"
    buffer = RecordBuffer(other)
    buffer.extend(records_of(HOURLY_EVENTS), 0.0)
    batch = CustomerState(other).apply(buffer.to_table())
    with pytest.raises(RuntimeError):
        S3ParquetSink(CrashBeforeCommitRecord(s3), settings).write(buffer.range(), batch)
    before = all_keys(s3)

    assert S3ParquetSink(s3, settings).discard_uncommitted(SHARD) == 0
    assert all_keys(s3) == before
