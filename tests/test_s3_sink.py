"""Specification of the S3 Parquet sink: object layout, encryption, schemas, the conditional commit (one winner per
chain position), overwrite-on-retry and the clean-up of attempts that lost or died.

Batches are applied by a real CustomerState (in-memory DuckDB) and written to moto's in-process S3.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from aggregators.customer_state import AppliedBatch, CustomerState
from consumer.retry import is_transient
from consumer.s3_sink import (
    CommitConflict,
    FlushAttempt,
    S3ParquetSink,
    committed_files,
    read_commit_records,
)
from consumer.shard_processor import RawRecord, RecordBuffer
from runtime.settings import Settings, load_settings
from schemas import CUSTOMER_AGGREGATES_SCHEMA, ERRORS_SCHEMA, EVENTS_SCHEMA
from schemas.control import CommitRecord, ControlRecordError, FlushIntent, KeptReadPointer, SnapshotPointer
from schemas.layout import FlushName, OutputLayout
from schemas.positions import Position
from tests.moto_support import isolate_environment, moto_bucket
from tests.parquet_support import dictionary_columns

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


#: Events of three hours on two days, two customers, one purchase, and one malformed record.
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


def applied(
    state: CustomerState, records: Sequence[RawRecord], attempt_id: str = "a1", shard_id: str = SHARD
) -> tuple[FlushAttempt, AppliedBatch]:
    """Apply ``records`` and name the attempt that would commit them (continuing from the state's position)."""
    previous = state.position()
    buffer = RecordBuffer(shard_id)
    buffer.extend(records, 0.0)
    batch = state.apply(buffer.to_table())
    assert batch.first_position is not None and batch.position is not None
    return FlushAttempt(
        previous, FlushName(shard_id, batch.first_position, batch.position, attempt_id)
    ), batch


def all_keys(s3: Any) -> set[str]:
    return {obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def body(s3: Any, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def settings_for(prefix: str = "rfm", **extra: Any) -> Settings:
    return load_settings(bucket=BUCKET, prefix=prefix, **extra)


# ---------------------------------------------------------------------------------------------------- layout
# (an empty prefix is refused by the settings: keys at the bucket root fall outside the IAM policy)
@pytest.mark.parametrize(("prefix", "root"), [("rfm", "rfm/"), ("/lake/rfm/", "lake/rfm/")])
def test_a_flush_writes_one_file_per_output_in_the_partition_of_its_arrival_day(
    s3: Any, prefix: str, root: str
) -> None:
    sink = S3ParquetSink(s3, settings_for(prefix))
    attempt, batch = applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))

    record = sink.write(attempt, batch)

    stem = f"{SHARD}-{100:056d}-0-{104:056d}-0-a1"
    day = "arrival_yyyymmdd=20260302"  # ARRIVAL_MILLIS; the events themselves span two days
    assert record.files == {
        "events": [f"{root}events/{day}/{stem}.parquet"],
        "customer_aggregates": [f"{root}customer_aggregates/{day}/{stem}.parquet"],
        "errors": [f"{root}errors/{day}/{stem}.parquet"],
    }
    assert all_keys(s3) == {
        *(key for keys in record.files.values() for key in keys),
        f"{root}_control/commits/{SHARD}/start.json",  # the shard's first commit continues from no position
        f"{root}_control/intents/{SHARD}/a1.json",  # deleted by the processor after the commit (step 7)
    }


def test_the_events_file_holds_every_new_event_of_the_flush(s3: Any) -> None:
    record = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of(HOURLY_EVENTS))
    )

    (key,) = record.files["events"]
    times = pq.read_table(io.BytesIO(body(s3, key))).column("event_time").to_pylist()
    assert sorted(t.strftime("%Y-%m-%dT%H:%M:%S.%f") for t in times) == [
        "2026-03-01T10:00:00.000000",
        "2026-03-01T10:59:59.999999",
        "2026-03-01T11:00:00.000000",
        "2026-03-02T00:30:00.000000",
    ]


def test_the_commit_record_sits_at_the_position_it_continues_from_and_describes_the_flush(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    state = CustomerState(SHARD)
    first = sink.write(*applied(state, records_of(HOURLY_EVENTS[:2], 100), "a1"))
    attempt, batch = applied(state, records_of([*HOURLY_EVENTS[2:], MALFORMED], 200), "a2")
    record = sink.write(attempt, batch)

    assert attempt.previous == first.last == Position("101")
    stored = CommitRecord.from_json(body(s3, f"rfm/_control/commits/{SHARD}/{101:056d}-0.json"))
    assert stored == record
    assert (record.previous, record.first, record.last) == (Position("101"), Position("200"), Position("202"))
    assert (record.records_in, record.accepted, record.rejected, record.customers_changed) == (3, 2, 1, 1)
    assert record.bytes_written == sum(len(body(s3, key)) for keys in record.files.values() for key in keys)
    intent = FlushIntent.from_json(body(s3, f"rfm/_control/intents/{SHARD}/a2.json"))
    assert (intent.previous, intent.files) == (Position("101"), record.files)


def test_a_commit_record_read_back_holds_each_data_key_once(s3: Any) -> None:
    """Readers hold every commit record of a prefix in memory: a data key, most of a record's bytes, is one
    string shared by ``files`` and ``file_bytes``, not a copy in each."""
    sink = S3ParquetSink(s3, settings_for())
    record = sink.write(*applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED])))
    stored = CommitRecord.from_json(record.to_json())

    assert stored == record
    assert len(stored.file_bytes) == 3  # events, customer_aggregates, errors
    held = {id(key) for key in stored.all_files}
    assert all(id(key) in held for key in stored.file_bytes)


def test_the_commit_record_carries_freshness_and_the_event_time_range(s3: Any) -> None:
    record = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of(HOURLY_EVENTS))
    )

    arrival = datetime.fromtimestamp(ARRIVAL_MILLIS / 1000, UTC)
    expected_delay = (record.committed_at - arrival).total_seconds()
    assert record.freshness is not None
    assert record.freshness.arrival_to_durable_p50 == pytest.approx(expected_delay, abs=0.002)
    assert record.freshness.arrival_to_durable_p99 == pytest.approx(expected_delay, abs=0.002)
    assert record.oldest_event_at == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert record.newest_event_at == datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    newest_age = (record.committed_at - datetime(2026, 3, 2, 0, 30, tzinfo=UTC)).total_seconds()
    assert record.freshness.newest_event_age == pytest.approx(newest_age, abs=0.002)


def test_the_commit_record_carries_the_windows_of_its_flush_and_an_older_one_reads_without(s3: Any) -> None:
    """A replay compares its windows with the worker's; a record of a version before windows still reads."""
    from schemas.control import StateWindows

    settings = settings_for(dedupe_window_days=3, distinct_window_days=9)
    record = S3ParquetSink(s3, settings).write(*applied(CustomerState(SHARD), records_of(HOURLY_EVENTS)))
    assert record.windows == StateWindows(dedupe_days=3, distinct_days=9)
    assert CommitRecord.from_json(record.to_json()) == record
    older = json.loads(record.to_json())
    del older["windows"]
    assert CommitRecord.from_json(json.dumps(older)).windows is None


def test_position_key_parts_sort_in_stream_order_whatever_the_number_of_digits() -> None:
    positions = [Position("9"), Position("99"), Position("100"), Position("100", 5), Position(str(10**55))]
    parts = [p.key_part() for p in positions]
    assert sorted(parts) == parts
    assert [Position.from_key_part(part) for part in parts] == positions
    layout = OutputLayout("rfm")
    assert [layout.commit_previous(layout.commit_key(SHARD, p)) for p in positions] == positions
    assert layout.commit_previous(layout.commit_key(SHARD, None)) is None


def test_a_data_keys_flush_name_reads_back_and_no_other_key_has_one() -> None:
    layout = OutputLayout("rfm")
    # a sequence number longer than the padding (57 digits) is written as it is, and read back as well
    name = FlushName("shardId-000000000007", Position("100", 3), Position(str(10**56), 0), "0f3a9c2b7d1e4a56")
    for output in ("events", "customer_aggregates", "errors"):
        key = layout.data_key(output, date(2026, 11, 29), name)
        assert key.startswith(layout.partition_prefix(output, 20261129))
        assert layout.flush_name_of(key) == name
    others = [
        layout.commit_key(SHARD, Position("100")),
        f"{layout.partition_prefix('events', 20261129)}notes.parquet",
        layout.snapshot_table_key(SHARD, Position("100"), "w1", "customers"),
    ]
    assert [layout.flush_name_of(key) for key in others] == [None, None, None]


# ---------------------------------------------------------------------------------------------------- encryption
def test_every_object_is_put_with_aes256_server_side_encryption(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    sink.write(*applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED])))

    keys = all_keys(s3)
    assert len(keys) == 5  # intent, three data files, commit record
    assert {
        key: s3.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") for key in keys
    } == dict.fromkeys(keys, "AES256")


def test_every_object_is_put_with_the_configured_kms_key(s3: Any) -> None:
    key_id = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    sink = S3ParquetSink(s3, settings_for(sse="aws:kms", sse_kms_key_id=key_id))
    sink.write(*applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED])))

    heads = [s3.head_object(Bucket=BUCKET, Key=key) for key in all_keys(s3)]
    assert len(heads) == 5
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
    record = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))
    )
    assert record.files[output]
    for key in record.files[output]:
        read = pq.read_table(io.BytesIO(body(s3, key)))
        assert read.schema.equals(schema, check_metadata=False), f"{key}: {read.schema}"


def test_parquet_timestamps_are_utc_microseconds_and_money_is_decimal_18_2(s3: Any) -> None:
    record = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of(HOURLY_EVENTS))
    )
    (key,) = record.files["events"]
    parquet_schema = pq.ParquetFile(io.BytesIO(body(s3, key))).schema

    event_time = parquet_schema.column(EVENTS_SCHEMA.get_field_index("event_time")).logical_type
    revenue = parquet_schema.column(EVENTS_SCHEMA.get_field_index("revenue")).logical_type
    timestamp = json.loads(event_time.to_json())
    assert (timestamp["Type"], timestamp["isAdjustedToUTC"], timestamp["timeUnit"]) == (
        "Timestamp",
        True,
        "microseconds",
    )
    assert json.loads(revenue.to_json()) == {"Type": "Decimal", "precision": 18, "scale": 2}
    table = pq.read_table(io.BytesIO(body(s3, key)))
    assert [str(r) for r in table.column("revenue").to_pylist() if r is not None] == ["19.99"]


def test_random_ids_and_free_text_are_written_without_statistics_and_times_with_them(s3: Any) -> None:
    """Min/max of a random id or a URL spans nearly all values in any file: no reader skips a row group by them, and
    computing them cost a tenth of the write. Times, types and positions keep theirs: readers prune by them."""
    record = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))
    )
    for output, without, with_statistics in (
        (
            "events",
            {"event_id", "session_id", "page_url", "order_id"},
            {"event_time", "event_type", "customer_id"},
        ),
        ("errors", {"raw_data", "error_detail"}, {"approximate_arrival_at", "error_code", "sequence_number"}),
    ):
        (key,) = record.files[output]
        row_group = pq.ParquetFile(io.BytesIO(body(s3, key))).metadata.row_group(0)
        has = {
            row_group.column(i).path_in_schema: row_group.column(i).is_stats_set
            for i in range(row_group.num_columns)
        }
        assert not any(has[name] for name in without), (output, has)
        assert all(has[name] for name in with_statistics), (output, has)


def test_nearly_distinct_columns_are_written_without_a_dictionary_and_repeated_ones_with_one(s3: Any) -> None:
    """A dictionary on ids, microsecond times and money costs write time and bytes and saves nothing; nor on the
    customer id of a file with one row per customer."""
    record = S3ParquetSink(s3, settings_for()).write(
        *applied(CustomerState(SHARD), records_of(HOURLY_EVENTS))
    )
    expected = {  # output: (without a dictionary, with one)
        "events": (
            {"event_id", "session_id", "sequence_number", "event_time", "order_id", "revenue"},
            {"customer_id", "event_type", "shard_id"},
        ),
        "customer_aggregates": (
            {"customer_id", "first_event_at", "last_event_at", "revenue", "monetary_value", "repeat_revenue"},
            {"shard_id", "events"},
        ),
    }
    for output, (plain, repeated) in expected.items():
        (key,) = record.files[output]
        dictionary = dictionary_columns(body(s3, key))
        assert not dictionary & plain, output
        assert repeated <= dictionary, output


# ---------------------------------------------------------------------------------------------------- the fence
def test_writing_the_same_attempt_twice_overwrites_and_returns_the_stored_commit(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    attempt, batch = applied(CustomerState(SHARD), records_of([*HOURLY_EVENTS, MALFORMED]))

    first = sink.write(attempt, batch)
    keys_after_first = all_keys(s3)
    bodies_after_first = {key: body(s3, key) for key in keys_after_first if key.endswith(".parquet")}
    second = sink.write(attempt, batch)  # a retry after a lost answer: the commit exists and is ours

    assert second == first
    assert all_keys(s3) == keys_after_first
    assert {key: body(s3, key) for key in bodies_after_first} == bodies_after_first


class LoseAnswerAfterCommit:
    """A moto client that performs the commit PUT and then fails as if the answer was lost on the network."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.lost = 0

    def put_object(self, **kwargs: Any) -> Any:
        response = self.client.put_object(**kwargs)
        if "/_control/commits/" in kwargs["Key"] and not self.lost:
            self.lost += 1
            raise ConnectionError("connection reset after the PUT reached S3")
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_commit_whose_answer_was_lost_is_recognised_as_ours_on_retry(s3: Any) -> None:
    flaky = LoseAnswerAfterCommit(s3)
    sink = S3ParquetSink(flaky, settings_for())
    attempt, batch = applied(CustomerState(SHARD), records_of(HOURLY_EVENTS))
    with pytest.raises(ConnectionError):
        sink.write(attempt, batch)

    record = sink.write(attempt, batch)

    assert flaky.lost == 1
    assert read_commit_records(s3, BUCKET, OutputLayout("rfm")) == [record]


class CommitThereThenGone:
    """A moto client whose commit PUT answers 412 and whose commit record then reads as missing (deleted by hand
    between the two calls, or a store that is not read-after-write)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def put_object(self, **kwargs: Any) -> Any:
        if "/_control/commits/" in kwargs["Key"]:
            raise ClientError(
                {"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}},
                "PutObject",
            )
        return self.client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_commit_record_there_then_gone_stops_the_attempt_in_words_not_with_a_bare_412(s3: Any) -> None:
    """The code said "try again" and re-raised the 412: not transient, so the shard stopped on a bare
    PreconditionFailed that named nothing."""
    sink = S3ParquetSink(CommitThereThenGone(s3), settings_for())
    attempt, batch = applied(CustomerState(SHARD), records_of(HOURLY_EVENTS))
    with pytest.raises(
        RuntimeError, match=r"exists .* and then could not be read: the shard stops"
    ) as stopped:
        sink.write(attempt, batch)
    assert "/_control/commits/" in str(stopped.value) and not is_transient(stopped.value)


def test_of_two_attempts_from_the_same_position_exactly_one_commits(s3: Any) -> None:
    settings = settings_for()
    records = records_of([*HOURLY_EVENTS, MALFORMED])
    winner = S3ParquetSink(s3, settings).write(*applied(CustomerState(SHARD), records, "winner"))
    winner_files = {key: body(s3, key) for keys in winner.files.values() for key in keys}
    loser_attempt, loser_batch = applied(CustomerState(SHARD), records[:3], "loser")  # also from the start

    with pytest.raises(CommitConflict) as lost:
        S3ParquetSink(s3, settings).write(loser_attempt, loser_batch)

    assert lost.value.winner == winner
    assert read_commit_records(s3, BUCKET, OutputLayout("rfm")) == [winner]
    loser_files = {key for key in all_keys(s3) if key.endswith(".parquet")} - set(winner_files)
    assert loser_files, "the loser wrote its files before it tried to commit"
    assert all("-loser.parquet" in key for key in loser_files), "a loser never writes over a winner's key"

    deleted = S3ParquetSink(s3, settings).discard_attempt(SHARD, "loser")

    assert deleted == len(loser_files)
    assert {key: body(s3, key) for key in winner_files} == winner_files
    assert {key for key in all_keys(s3) if key.endswith(".parquet")} == set(winner_files)
    assert f"rfm/_control/intents/{SHARD}/loser.json" not in all_keys(s3)


def test_another_commits_record_copied_to_the_key_a_flush_commits_at_is_named_not_taken_for_a_rival(
    s3: Any,
) -> None:
    """A copy of the shard's first commit record put by hand at the key its next commit takes was read as a rival
    writer's commit: the shard restarted from its checkpoint and met it again, forever, with no word of the copy."""
    settings = settings_for()
    sink = S3ParquetSink(s3, settings)
    state = CustomerState(SHARD)
    first = sink.write(*applied(state, records_of(HOURLY_EVENTS[:2], 100), "b1"))
    layout = OutputLayout("rfm")
    s3.copy_object(
        Bucket=BUCKET,
        Key=layout.commit_key(SHARD, first.last),
        CopySource={"Bucket": BUCKET, "Key": layout.commit_key(SHARD, None)},
    )
    with pytest.raises(ControlRecordError) as named:
        sink.write(*applied(state, records_of(HOURLY_EVENTS[2:], 200), "b2"))
    said = str(named.value)
    assert said.startswith(
        f"s3://{BUCKET}/{layout.commit_key(SHARD, first.last)}: holds the commit record whose"
    )
    assert "move it out of rfm/_control/commits/" in said and not is_transient(named.value)


def test_a_writer_behind_the_chain_cannot_commit(s3: Any) -> None:
    settings = settings_for()
    sink = S3ParquetSink(s3, settings)
    ahead = CustomerState(SHARD)
    sink.write(*applied(ahead, records_of(HOURLY_EVENTS[:2], 100), "b1"))
    sink.write(*applied(ahead, records_of(HOURLY_EVENTS[2:], 200), "b2"))
    behind = CustomerState(SHARD)
    behind.apply(_buffer_table(records_of(HOURLY_EVENTS[:2], 100)))  # a zombie that only saw the first commit

    with pytest.raises(CommitConflict):
        sink.write(*applied(behind, records_of(HOURLY_EVENTS[2:3], 200), "zombie"))
    assert [r.attempt_id for r in read_commit_records(s3, BUCKET, OutputLayout("rfm"))] == ["b1", "b2"]


def _buffer_table(records: Sequence[RawRecord]) -> pa.Table:
    buffer = RecordBuffer(SHARD)
    buffer.extend(records, 0.0)
    return buffer.to_table()


# ---------------------------------------------------------------------------------------------------- clean-up
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


def test_settling_leaves_an_attempt_whose_position_is_still_free(s3: Any) -> None:
    settings = settings_for()
    with pytest.raises(RuntimeError):
        S3ParquetSink(CrashBeforeCommitRecord(s3), settings).write(
            *applied(CustomerState(SHARD), records_of(HOURLY_EVENTS), "dead")
        )
    before = all_keys(s3)
    assert any(key.endswith(".parquet") for key in before)

    assert S3ParquetSink(s3, settings).settle_intents(SHARD) == 0
    assert all_keys(s3) == before, "a writer might still commit these: nothing is deleted"


def test_settling_deletes_the_files_of_attempts_that_lost_their_position(s3: Any) -> None:
    settings = settings_for()
    records = records_of([*HOURLY_EVENTS, MALFORMED])
    with pytest.raises(RuntimeError):
        S3ParquetSink(CrashBeforeCommitRecord(s3), settings).write(
            *applied(CustomerState(SHARD), records, "dead")
        )
    sink = S3ParquetSink(s3, settings)
    winner = sink.write(*applied(CustomerState(SHARD), records, "alive"))

    deleted = sink.settle_intents(SHARD)

    assert deleted == 3
    assert all_keys(s3) == {
        *committed_files([winner], "events"),
        *committed_files([winner], "customer_aggregates"),
        *committed_files([winner], "errors"),
        f"rfm/_control/commits/{SHARD}/start.json",
    }, "the dead attempt's files and both intents are gone; the winner's files stay"


class DeletesFailPerKey:
    """A moto client whose DeleteObjects answers 200 with every key in ``Errors`` (as S3 does for a key it could not
    delete, e.g. InternalError or SlowDown) while ``failing``."""

    def __init__(self, client: Any, code: str) -> None:
        self.client, self.code, self.failing = client, code, True

    def delete_objects(self, **kwargs: Any) -> Any:
        if not self.failing:
            return self.client.delete_objects(**kwargs)
        objects = kwargs["Delete"]["Objects"]
        return {"Errors": [{"Key": o["Key"], "Code": self.code, "Message": "try again"} for o in objects]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.mark.parametrize("code", ["InternalError", "AccessDenied"])
def test_a_key_that_deleteobjects_could_not_delete_keeps_the_intent_that_names_it(
    s3: Any, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """DeleteObjects answers 200 and lists the keys it could not delete. Were that ignored, the intent (the only
    record of a dead attempt's files) would go, and its files would stay in events/ for good, where any reader of
    the whole prefix counts them. A transient code is raised, for the tidy step's retry; one S3 will repeat
    (AccessDenied) is a warning, not a stopped shard (every later tidy would stop it again). Either way the intent
    stays, and a later settle deletes the files."""
    settings = settings_for()
    records = records_of(HOURLY_EVENTS)
    with pytest.raises(RuntimeError):
        S3ParquetSink(CrashBeforeCommitRecord(s3), settings).write(
            *applied(CustomerState(SHARD), records, "dead")
        )
    winner = S3ParquetSink(s3, settings).write(*applied(CustomerState(SHARD), records, "alive"))
    before = all_keys(s3)
    failing = DeletesFailPerKey(s3, code)

    if code == "InternalError":
        with pytest.raises(ClientError, match=r"could not delete 2 of 2 keys") as raised:
            S3ParquetSink(failing, settings).settle_intents(SHARD)
        assert raised.value.response["Error"]["Code"] == code
    else:
        with caplog.at_level(logging.WARNING):
            assert S3ParquetSink(failing, settings).settle_intents(SHARD) == 0
        assert any("could not delete the 2 files of attempt dead" in r.getMessage() for r in caplog.records)
    dead = {key for key in before if "dead" in key}
    assert any("/_control/intents/" in key for key in dead) and len(dead) == 3  # the intent and its 2 files
    assert dead <= all_keys(s3), "the dead attempt's files and its intent are kept"
    failing.failing = False
    assert S3ParquetSink(failing, settings).settle_intents(SHARD) == 2
    assert not any("dead" in key for key in all_keys(s3))
    assert set(committed_files([winner], "events")) <= all_keys(s3)


def test_an_intent_that_does_not_parse_is_said_once_naming_it_and_left_alone(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Settling reads every intent of the shard after each flush: a damaged one (edited by hand, another format)
    was warned about at every flush, without the bucket or what to do."""
    settings = settings_for()
    sink = S3ParquetSink(s3, settings)
    key = sink.layout.intent_key(SHARD, "hand-edited")
    s3.put_object(Bucket=settings.bucket, Key=key, Body=b"{not an intent")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert sink.settle_intents(SHARD) == 0
    said = [record.getMessage() for record in caplog.records if "does not parse" in record.getMessage()]
    assert len(said) == 1, said
    assert f"s3://{settings.bucket}/{key}" in said[0] and "delete it by hand" in said[0]
    assert key in all_keys(s3)


def test_settling_only_touches_its_own_shard(s3: Any) -> None:
    settings = settings_for()
    other = "shardId-000000000004"
    records = records_of(HOURLY_EVENTS)
    with pytest.raises(RuntimeError):
        S3ParquetSink(CrashBeforeCommitRecord(s3), settings).write(
            *applied(CustomerState(other), records, "dead", shard_id=other)
        )
    S3ParquetSink(s3, settings).write(*applied(CustomerState(SHARD), records, "alive"))
    before = {key for key in all_keys(s3) if other in key}

    S3ParquetSink(s3, settings).settle_intents(SHARD)

    assert {key for key in all_keys(s3) if other in key} == before


# ---------------------------------------------------------------------------------------------------- readers
def test_commit_records_are_read_in_stream_order_per_shard_and_from_a_position(s3: Any) -> None:
    sink = S3ParquetSink(s3, settings_for())
    state = CustomerState(SHARD)
    written = [
        sink.write(*applied(state, records_of([data], first_sequence=sequence), f"a{sequence}"))
        for sequence, data in ((9, HOURLY_EVENTS[0]), (100, HOURLY_EVENTS[1]), (1000, HOURLY_EVENTS[2]))
    ]
    layout = OutputLayout("rfm")

    assert read_commit_records(s3, BUCKET, layout) == written
    assert read_commit_records(s3, BUCKET, layout, SHARD, continuing_from=Position("100")) == written[2:]
    assert read_commit_records(s3, BUCKET, layout, SHARD, continuing_from=Position("9")) == written[1:]
    with pytest.raises(ValueError, match="unknown output"):
        committed_files(written, "event")


def test_commits_continuing_inside_one_kpl_aggregate_are_all_found(s3: Any) -> None:
    """Flushes ending inside a KPL aggregate continue from sub-sequence positions of one sequence number, and
    their keys do not sort in stream order as text ("-10" before "-2"): listing from "-2" must still find "-10"."""
    sink = S3ParquetSink(s3, settings_for())
    state = CustomerState(SHARD)
    user_records = [event("page_view", f"c-{n}", "2026-03-01T10:00:00Z") for n in range(12)]
    aggregate = [
        RawRecord("500", sub, record.partition_key, ARRIVAL_MILLIS, record.data)
        for sub, record in enumerate(records_of(user_records))
    ]
    written = [
        sink.write(*applied(state, aggregate[start:end], f"a{start}"))
        for start, end in ((0, 3), (3, 11), (11, 12))  # continue from 500-2 and from 500-10
    ]
    layout = OutputLayout("rfm")
    assert [w.previous for w in written[1:]] == [Position("500", 2), Position("500", 10)]

    assert read_commit_records(s3, BUCKET, layout, SHARD, continuing_from=Position("500", 2)) == written[1:]
    assert read_commit_records(s3, BUCKET, layout, SHARD, continuing_from=Position("500", 10)) == written[2:]
    assert read_commit_records(s3, BUCKET, layout, SHARD, continuing_from=Position("500", 11)) == []


_WRITTEN = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "record",
    [
        FlushIntent("shardId-000000000000", "a1", None, {"events": ["k"]}, _WRITTEN),
        SnapshotPointer("shardId-000000000000", Position("5", 0), None, {"customers": "k"}, _WRITTEN),
        KeptReadPointer("k", {}, 3, _WRITTEN, "rule"),
    ],
    ids=lambda record: type(record).__name__,
)
def test_a_control_record_without_its_write_time_is_refused_not_given_one(record: Any) -> None:
    """Control records are typed at both ends, never defaulted: a null written_at read as "now"."""
    from schemas.control import ControlRecordError

    kind = type(record)
    assert kind.from_json(record.to_json()) == record
    document = json.loads(record.to_json())
    document["written_at"] = None
    with pytest.raises(ControlRecordError):
        kind.from_json(json.dumps(document))


# ---------------------------------------------------------------------------------------------- parallel reads
def test_parallel_reads_keep_the_keys_order_and_raise_the_first_error() -> None:
    from consumer.s3_sink import map_in_parallel

    keys = [f"k{number}" for number in range(50)]
    seen: list[tuple[int, int]] = []
    assert map_in_parallel(str.upper, keys, 8, lambda done, total: seen.append((done, total))) == [
        key.upper() for key in keys
    ]
    assert seen == [(done, 50) for done in range(1, 51)]
    assert map_in_parallel(str.upper, [], 8) == []

    def refused(key: str) -> str:
        if key == "k7":
            raise PermissionError(f"no access to {key}")
        return key

    with pytest.raises(PermissionError, match="no access to k7"):
        map_in_parallel(refused, keys, 8)


def test_a_stop_ends_parallel_reads_at_once_though_a_request_does_not_answer(tmp_path: Path) -> None:
    """Reads over an endpoint that stopped answering: Ctrl-C reached the command, which then waited at exit for its
    pool's threads, each request in flight retrying for minutes (6 x 60 s), before it said it was stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "reads.py"
    script.write_text(
        "import sys, threading\n"
        "from consumer.s3_sink import map_in_parallel\n"
        "def hangs(key):\n"
        "    print('reading', key, flush=True)\n"
        "    threading.Event().wait(600)\n"
        "try:\n"
        "    map_in_parallel(hangs, ['a', 'b', 'c'], 2)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped', flush=True)\n"
        "    sys.exit(130)\n"
    )
    repository = str(Path(__file__).parent.parent)  # the code under test, not an installed copy
    reader = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": repository},
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().startswith("reading"), "the stop comes while a request hangs"
        reader.send_signal(signal.SIGINT)
        sent = time.monotonic()
        assert reader.wait(timeout=60) == 130
        waited = time.monotonic() - sent
        assert "stopped" in reader.stdout.read()
        assert waited < 30, f"the exit waited {waited:.0f}s for the requests in flight"
    finally:
        reader.kill()
        reader.wait()
