"""Specification of one shard's buffer -> flush -> checkpoint loop and of its commit order.

The commit order (consumer/shard_processor.py): 1 stage, 2 intent, 3 data files, 4 conditional commit
record on the shard's chain, 5 state commit, 6 checkpoint, 7 tidy. These tests drive a real CustomerState
and a real S3ParquetSink on moto's
in-process S3, with a recording checkpointer, an injected clock and an injected sleep. The crash tests stop the
processor between each pair of steps, start a "new process" wired as in production (StateRecovery from S3) on the
same local state or on a new host without it, redeliver from the last checkpoint (as the KCL does, in the same or in
differently sized batches) and compare the outcome with a run that never crashed.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from amazon_kclpy.checkpoint_error import CheckpointError
from botocore.exceptions import ClientError, EndpointConnectionError

from aggregators.customer_state import AppliedBatch, CustomerState
from aggregators.state_journal import read_journal
from consumer.s3_sink import FlushAttempt, S3ParquetSink, read_commit_records
from consumer.shard_processor import FlushPolicy, LeaseLostError, RawRecord, RecordBuffer, ShardProcessor
from consumer.state_recovery import StateRecovery
from consumer.status import ShardStatus, StatusWriter, read_statuses
from producer.generator import ClickstreamGenerator
from runtime.settings import Settings, load_settings
from schemas.control import CommitRecord, FlushIntent
from schemas.layout import OutputLayout
from tests.moto_support import isolate_environment, moto_bucket
from tests.reference import SET_DETERMINED_COLUMNS

SHARD = "shardId-000000000007"
BUCKET = "clickstream-test-bucket"
PREFIX = "rfm"
#: Arrival after every generated event (March-April 2026), so no event counts as "from the future".
ARRIVAL_MILLIS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
#: A real-looking 56-digit Kinesis sequence number (wider than 64 bits).
BASE_SEQUENCE = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
NEVER = FlushPolicy(max_records=10**9, max_bytes=10**12, max_seconds=10**9)
_CUSTOMER_ID = re.compile(rb'"customer_id":"([^"]*)"')


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    """One in-process moto S3 and bucket for the module (starting moto costs more than most tests)."""
    with moto_bucket(BUCKET) as client:
        yield client


@pytest.fixture
def s3(aws: Any) -> Iterator[Any]:
    """The bucket with nothing under PREFIX at the start of each test (the module's clean run lives elsewhere)."""
    assert keys_under(aws, f"{PREFIX}/") == set()
    yield aws
    for key in keys_under(aws, f"{PREFIX}/"):
        aws.delete_object(Bucket=BUCKET, Key=key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(bucket=BUCKET, prefix=PREFIX, state_dir=tmp_path / "state")


# ---------------------------------------------------------------------------------------------------- test data
@cache
def labelled_stream() -> tuple[tuple[str, bytes], ...]:
    """60 records: 54 valid events of 8 customers, 5 byte-identical duplicates and 1 malformed record."""
    generator = ClickstreamGenerator(8, 54, 3, duplicate_rate=0.1, malformed_rate=0.02)
    return tuple(generator.records())


def payloads() -> list[bytes]:
    return [data for _, data in labelled_stream()]


def valid_event_ids() -> set[str]:
    return {json.loads(data)["event_id"] for label, data in labelled_stream() if label == "valid"}


def sequence(index: int) -> str:
    return str(BASE_SEQUENCE + 1000 * index)


def partition_key(data: bytes) -> str:
    match = _CUSTOMER_ID.search(data)
    return match.group(1).decode("utf-8", "replace") if match else "unknown"


def to_records(datas: Sequence[bytes], start: int = 0) -> list[RawRecord]:
    return [
        RawRecord(sequence(start + i), 0, partition_key(data), ARRIVAL_MILLIS, data)
        for i, data in enumerate(datas)
    ]


def applied_once(records: Sequence[RawRecord]) -> CustomerState:
    """A state that applied ``records`` exactly once, in one batch, without S3."""
    buffer = RecordBuffer(SHARD)
    buffer.extend(records, 0.0)
    state = CustomerState(SHARD)
    state.apply(buffer.to_table())
    return state


def chunks(records: Sequence[RawRecord], size: int) -> list[list[RawRecord]]:
    return [list(records[i : i + size]) for i in range(0, len(records), size)]


# ---------------------------------------------------------------------------------------------------- doubles
class SimulatedCrashError(Exception):
    """Stands for the process dying at a given point (not transient: nothing retries it)."""


@dataclass
class RecordingCheckpointer:
    """Records every successful checkpoint call exactly as made; optional hook and scripted failures."""

    on_call: Callable[[tuple[Any, ...]], None] | None = None
    fail_with: list[Exception | None] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    attempts: int = 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> None:
        assert not kwargs, "the processor passes checkpoint arguments positionally"
        self.attempts += 1
        if self.fail_with:
            error = self.fail_with.pop(0)
            if error is not None:
                raise error
        if self.on_call is not None:
            self.on_call(args)
        self.calls.append(args)


class FaultyS3:
    """A real (moto) S3 client whose put_object raises ``error`` for matching keys.

    ``skip`` matching puts go through first, then the next ``times`` matching puts fail.
    """

    def __init__(self, client: Any, error: Exception, *, times: int, key_contains: str = "", skip: int = 0):
        self.client = client
        self.error = error
        self.remaining = times
        self.key_contains = key_contains
        self.skip = skip
        self.failures = 0

    def put_object(self, **kwargs: Any) -> Any:
        if self.key_contains in kwargs["Key"] and self.remaining:
            if self.skip:
                self.skip -= 1
            else:
                self.remaining -= 1
                self.failures += 1
                raise self.error
        return self.client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class CrashAfterCommitRecordSink(S3ParquetSink):
    """Dies right after the ``crash_on``-th commit record is written (between steps 4 and 5)."""

    def __init__(self, s3_client: Any, settings: Settings, crash_on: int) -> None:
        super().__init__(s3_client, settings)
        self.crash_on = crash_on
        self.writes = 0

    def write(self, attempt: FlushAttempt, applied: AppliedBatch) -> Any:
        manifest = super().write(attempt, applied)
        self.writes += 1
        if self.writes == self.crash_on:
            raise SimulatedCrashError("after the commit record, before the state commit")
        return manifest


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


class SleepRecorder:
    def __init__(self, on_sleep: Callable[[], None] | None = None) -> None:
        self.delays: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep()
        self.delays.append(seconds)


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected backoff sleep of {seconds}s")


def make_processor(
    state: CustomerState,
    sink: S3ParquetSink,
    policy: FlushPolicy,
    *,
    clock: Callable[[], float] = lambda: 0.0,
    sleep: Callable[[float], None] = no_sleep,
    status: StatusWriter | None = None,
    max_backoff_seconds: float = 30.0,
) -> ShardProcessor:
    return ShardProcessor(
        SHARD,
        state,
        sink,
        policy,
        status=status,
        clock=clock,
        sleep=sleep,
        max_backoff_seconds=max_backoff_seconds,
    )


# ---------------------------------------------------------------------------------------------------- S3 views
def keys_under(s3: Any, prefix: str) -> set[str]:
    paginator = s3.get_paginator("list_objects_v2")
    return {
        obj["Key"]
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix)
        for obj in page.get("Contents", [])
    }


def data_keys(s3: Any, prefix: str = PREFIX) -> set[str]:
    return set().union(
        *(keys_under(s3, f"{prefix}/{output}/") for output in ("events", "customer_aggregates", "errors"))
    )


def commit_records(s3: Any, prefix: str = PREFIX) -> list[CommitRecord]:
    return read_commit_records(s3, BUCKET, OutputLayout(prefix))


def committed_keys(s3: Any, output: str, prefix: str = PREFIX) -> list[str]:
    return [key for record in commit_records(s3, prefix) for key in record.files.get(output, [])]


def intents(s3: Any, prefix: str = PREFIX) -> list[FlushIntent]:
    return [
        FlushIntent.from_json(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        for key in sorted(keys_under(s3, f"{prefix}/_control/intents/"))
    ]


def read_parquet(s3: Any, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def committed_event_ids(s3: Any, prefix: str = PREFIX) -> Counter[str]:
    ids: Counter[str] = Counter()
    for key in committed_keys(s3, "events", prefix):
        ids.update(read_parquet(s3, key).column("event_id").to_pylist())
    return ids


def committed_current_rows(s3: Any, prefix: str = PREFIX) -> dict[str, dict[str, Any]]:
    """Each customer's highest-version row among the customer_aggregates files that commit records list."""
    current: dict[str, dict[str, Any]] = {}
    for key in committed_keys(s3, "customer_aggregates", prefix):
        for row in read_parquet(s3, key).to_pylist():
            known = current.get(row["customer_id"])
            if known is None or row["version"] >= known["version"]:
                current[row["customer_id"]] = row
    return {customer: {c: row[c] for c in SET_DETERMINED_COLUMNS} for customer, row in current.items()}


# ---------------------------------------------------------------------------------------------------- thresholds
def test_records_below_every_threshold_are_buffered_without_flush_or_checkpoint(
    s3: Any, settings: Settings
) -> None:
    processor = make_processor(
        CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(20, 10**9, 60.0)
    )
    checkpointer = RecordingCheckpointer()
    processor.start(None)

    processor.on_records(to_records(payloads()[:19]), 0, checkpointer)

    assert len(processor.buffer) == 19
    assert checkpointer.calls == []
    assert keys_under(s3, f"{PREFIX}/") == set()
    assert processor.state.position() is None


def test_reaching_max_records_flushes_and_checkpoints_last_sequence_and_sub_sequence(
    s3: Any, settings: Settings
) -> None:
    processor = make_processor(CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(6, 10**9, 60.0))
    checkpointer = RecordingCheckpointer()
    datas = payloads()[:6]
    # KPL-aggregated records share a sequence number and differ in sub-sequence number.
    records = [
        RawRecord(sequence(0), sub, partition_key(data), ARRIVAL_MILLIS, data)
        for sub, data in enumerate(datas[:3])
    ] + [
        RawRecord(sequence(1), sub, partition_key(data), ARRIVAL_MILLIS, data)
        for sub, data in enumerate(datas[3:])
    ]
    processor.start(None)

    processor.on_records(records[:5], 0, checkpointer)
    assert checkpointer.calls == []
    processor.on_records(records[5:], 0, checkpointer)

    assert checkpointer.calls == [(sequence(1), 2)]
    assert len(processor.buffer) == 0
    assert len(commit_records(s3)) == 1
    position = processor.state.position()
    assert position is not None
    assert (position.sequence_number, position.sub_sequence_number) == (sequence(1), 2)


def test_reaching_max_bytes_flushes_exactly_at_the_byte_threshold(s3: Any, settings: Settings) -> None:
    records = to_records(payloads()[:5])
    threshold = sum(len(r.data) for r in records)
    processor = make_processor(
        CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(10**6, threshold, 60.0)
    )
    checkpointer = RecordingCheckpointer()
    processor.start(None)

    processor.on_records(records[:4], 0, checkpointer)
    assert checkpointer.calls == []
    processor.on_records(records[4:], 0, checkpointer)

    assert checkpointer.calls == [(records[4].sequence_number, 0)]
    assert [r.records_in for r in commit_records(s3)] == [5]


def test_reaching_max_seconds_flushes_on_an_empty_heartbeat_call(s3: Any, settings: Settings) -> None:
    now = [1000.0]
    processor = make_processor(
        CustomerState(SHARD),
        S3ParquetSink(s3, settings),
        FlushPolicy(10**6, 10**9, 60.0),
        clock=lambda: now[0],
    )
    checkpointer = RecordingCheckpointer()
    records = to_records(payloads()[:10])
    processor.start(None)

    processor.on_records(records[:4], 0, checkpointer)
    now[0] = 1030.0
    processor.on_records(records[4:6], 0, checkpointer)  # age counts from the first buffered record
    now[0] = 1059.9
    processor.on_records([], 5_000, checkpointer)
    assert checkpointer.calls == []

    now[0] = 1060.0
    processor.on_records([], 5_000, checkpointer)
    assert checkpointer.calls == [(records[5].sequence_number, 0)]

    # the next window starts with the next record, not with the previous flush
    now[0] = 1100.0
    processor.on_records(records[6:], 0, checkpointer)
    now[0] = 1159.0
    processor.on_records([], 5_000, checkpointer)
    assert len(checkpointer.calls) == 1
    now[0] = 1160.0
    processor.on_records([], 5_000, checkpointer)
    assert checkpointer.calls[-1] == (records[9].sequence_number, 0)


def test_empty_heartbeats_with_nothing_buffered_never_flush_or_checkpoint(
    s3: Any, settings: Settings
) -> None:
    now = [0.0]
    processor = make_processor(
        CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(1, 1, 0.001), clock=lambda: now[0]
    )
    checkpointer = RecordingCheckpointer()
    processor.start(None)
    for step in range(5):
        now[0] = step * 1000.0
        processor.on_records([], 0, checkpointer)
    assert checkpointer.calls == []
    assert data_keys(s3) == set()


# ---------------------------------------------------------------------------------------------------- ordering
def test_checkpoint_waits_for_the_commit_record_the_data_files_and_the_state_commit(
    s3: Any, settings: Settings, tmp_path: Path
) -> None:
    state = CustomerState(SHARD, tmp_path / "shard.journal")
    seen_at_checkpoint: list[dict[str, Any]] = []

    def inspect(args: tuple[Any, ...]) -> None:
        commits = commit_records(s3)
        # what a restart would read: only syncs that landed whole
        position = read_journal(tmp_path / "shard.journal").progress.position
        committed = None if position is None else position.sequence_number
        seen_at_checkpoint.append(
            {
                "checkpoint": args[0],
                "commit_last_sequences": [c.last.sequence_number for c in commits],
                "missing_files": [
                    key
                    for c in commits
                    for keys in c.files.values()
                    for key in keys
                    if key not in keys_under(s3, PREFIX)
                ],
                "committed_state_sequence": committed,
            }
        )

    processor = make_processor(state, S3ParquetSink(s3, settings), FlushPolicy(10, 10**9, 60.0))
    records = to_records(payloads()[:20])
    processor.start(None)
    processor.on_records(records[:10], 0, RecordingCheckpointer(on_call=inspect))
    processor.on_records(records[10:], 0, RecordingCheckpointer(on_call=inspect))

    assert seen_at_checkpoint == [
        {
            "checkpoint": sequence(9),
            "commit_last_sequences": [sequence(9)],
            "missing_files": [],
            "committed_state_sequence": sequence(9),
        },
        {
            "checkpoint": sequence(19),
            "commit_last_sequences": [sequence(9), sequence(19)],
            "missing_files": [],
            "committed_state_sequence": sequence(19),
        },
    ]


# ---------------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize(
    ("error", "failing_object"),
    [
        pytest.param(client_error("SlowDown", 503), "_control/intents/", id="SlowDown-503-on-intent"),
        pytest.param(client_error("SlowDown", 503), "/events/", id="SlowDown-503-on-events"),
        pytest.param(
            client_error("InternalError", 500), "/customer_aggregates/", id="InternalError-500-on-aggregates"
        ),
        pytest.param(
            EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com"),
            "_control/commits/",
            id="EndpointConnectionError-on-commit-record",
        ),
    ],
)
def test_transient_s3_failures_are_retried_with_backoff_and_flushed_exactly_once(
    s3: Any, settings: Settings, error: Exception, failing_object: str
) -> None:
    failures = 4
    faulty = FaultyS3(s3, error, times=failures, key_contains=failing_object)
    checkpointer = RecordingCheckpointer()
    records = to_records(payloads())
    processor: ShardProcessor

    def while_failing() -> None:
        assert checkpointer.calls == [], "checkpointed while the flush was failing"
        assert len(processor.buffer) == len(records), "buffer dropped while the flush was failing"
        assert processor.state.position() is None, "state advanced by a failed attempt"

    sleep = SleepRecorder(on_sleep=while_failing)
    processor = make_processor(
        CustomerState(SHARD),
        S3ParquetSink(faulty, settings),
        FlushPolicy(len(records), 10**9, 60.0),
        sleep=sleep,
        max_backoff_seconds=1.0,
    )
    processor.start(None)
    processor.on_records(records, 0, checkpointer)

    assert faulty.failures == failures
    assert len(sleep.delays) == failures
    assert all(0 < delay <= 1.0 for delay in sleep.delays)
    assert checkpointer.calls == [(records[-1].sequence_number, 0)]
    assert processor.metrics.retries == failures
    assert processor.metrics.last_error is None
    assert processor.metrics.flushes == 1
    (commit,) = commit_records(s3)
    generator_summary = Counter(label.split(":")[0] for label, _ in labelled_stream())
    assert (commit.accepted, commit.duplicates, commit.rejected) == (
        generator_summary["valid"] + generator_summary["duplicate"],
        generator_summary["duplicate"],
        generator_summary["malformed"],
    )
    assert committed_event_ids(s3) == Counter(dict.fromkeys(valid_event_ids(), 1))
    assert processor.state.snapshot_rows().equals(applied_once(records).snapshot_rows())


def test_a_terminal_s3_error_propagates_and_nothing_is_checkpointed(s3: Any, settings: Settings) -> None:
    faulty = FaultyS3(s3, client_error("AccessDenied", 403), times=1, key_contains="/events/")
    checkpointer = RecordingCheckpointer()
    records = to_records(payloads()[:10])
    processor = make_processor(
        CustomerState(SHARD), S3ParquetSink(faulty, settings), FlushPolicy(10, 10**9, 60.0)
    )
    processor.start(None)

    with pytest.raises(ClientError) as raised:
        processor.on_records(records, 0, checkpointer)

    assert raised.value.response["Error"]["Code"] == "AccessDenied"
    assert checkpointer.attempts == 0
    assert processor.state.position() is None
    assert keys_under(s3, f"{PREFIX}/_control/commits/") == set()
    assert "AccessDenied" in (processor.metrics.last_error or "")


def test_a_throttled_checkpoint_is_retried_after_backoff(s3: Any, settings: Settings) -> None:
    checkpointer = RecordingCheckpointer(fail_with=[CheckpointError("ThrottlingException")] * 2)
    sleep = SleepRecorder()
    processor = make_processor(
        CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(5, 10**9, 60.0), sleep=sleep
    )
    records = to_records(payloads()[:5])
    processor.start(None)
    processor.on_records(records, 0, checkpointer)

    assert checkpointer.attempts == 3
    assert checkpointer.calls == [(records[-1].sequence_number, 0)]
    assert len(sleep.delays) == 2
    assert len(commit_records(s3)) == 1, "a checkpoint retry must not flush again"


def lost_lease_after_a_flush(
    s3: Any, settings: Settings
) -> tuple[ShardProcessor, RecordingCheckpointer, list[RawRecord]]:
    """A processor whose first flush's checkpoint the KCL refused for a lost lease (ShutdownException)."""
    checkpointer = RecordingCheckpointer(fail_with=[CheckpointError("ShutdownException")])
    processor = make_processor(CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(5, 10**9, 60.0))
    records = to_records(payloads()[:20])
    processor.start(None)
    with pytest.raises(LeaseLostError):
        processor.on_records(records[:5], 0, checkpointer)
    return processor, checkpointer, records


def test_a_flush_committed_before_its_checkpoint_was_refused_still_counts(
    s3: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """It is durable: its metrics and log line were skipped when the checkpoint failed (DynamoDB throttled until the
    lease was lost), and the worker's RecordsIn fell short of what S3 holds by exactly those flushes."""
    import logging

    from runtime.logs import METRICS_LOGGER

    with caplog.at_level(logging.INFO):
        processor, _, _ = lost_lease_after_a_flush(s3, settings)
    (committed,) = commit_records(s3)
    (emf,) = [
        record.emf for record in caplog.records if record.name == METRICS_LOGGER and "RecordsIn" in record.emf
    ]
    assert (emf["RecordsIn"], emf["RecordsAccepted"]) == (committed.records_new, committed.accepted)
    assert processor.metrics.records_flushed == committed.records_in and processor.metrics.flushes == 1
    assert "not checkpointed: the next owner gets them again" in caplog.text


def test_a_checkpoint_refused_for_a_lost_lease_stops_all_further_flushes(s3: Any, settings: Settings) -> None:
    processor, checkpointer, records = lost_lease_after_a_flush(s3, settings)
    assert processor.lease_lost
    assert processor.metrics.phase == "lease_lost"
    commits_after_refusal = keys_under(s3, f"{PREFIX}/_control/commits/")
    processor.on_records(records[5:15], 0, checkpointer)
    processor.on_shutdown_requested(checkpointer)

    assert checkpointer.calls == []
    assert checkpointer.attempts == 1
    assert keys_under(s3, f"{PREFIX}/_control/commits/") == commits_after_refusal
    assert len(processor.buffer) == 0, "records after the loss are the new owner's, not buffered here"


def test_a_shard_end_after_a_lost_lease_does_not_checkpoint_shard_end(s3: Any, settings: Settings) -> None:
    """SHARD_END would start the child shards past the records the lost lease's buffer dropped."""
    processor, checkpointer, records = lost_lease_after_a_flush(s3, settings)
    processor.on_records(records[5:15], 0, checkpointer)
    with pytest.raises(LeaseLostError):
        processor.on_shard_ended(checkpointer)
    assert checkpointer.calls == []


def test_a_checkpoint_the_lease_table_cannot_store_is_terminal_not_a_lost_lease(
    s3: Any, settings: Settings
) -> None:
    """InvalidStateException: the KCL still holds the lease, so carrying on would buffer records no flush takes."""
    checkpointer = RecordingCheckpointer(fail_with=[CheckpointError("InvalidStateException")])
    processor = make_processor(CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(5, 10**9, 60.0))
    processor.start(None)
    with pytest.raises(CheckpointError) as refused:
        processor.on_records(to_records(payloads()[:5]), 0, checkpointer)
    assert not isinstance(refused.value, LeaseLostError) and not processor.lease_lost
    assert checkpointer.calls == [] and checkpointer.attempts == 1


# ---------------------------------------------------------------------------------------------------- lifecycle
def test_shard_ended_flushes_then_checkpoints_shard_end_without_arguments(
    s3: Any, settings: Settings
) -> None:
    checkpointer = RecordingCheckpointer()
    processor = make_processor(CustomerState(SHARD), S3ParquetSink(s3, settings), NEVER)
    records = to_records(payloads()[:7])
    processor.start(None)
    processor.on_records(records, 0, checkpointer)

    processor.on_shard_ended(checkpointer)

    assert checkpointer.calls == [()], "SHARD_END alone: a checkpoint at the last record is SHARD_END already"
    assert [c.records_in for c in commit_records(s3)] == [7]
    assert processor.metrics.phase == "ended"


def test_shard_end_is_checkpointed_only_after_the_final_snapshot(s3: Any, settings: Settings) -> None:
    """The child shards start once SHARD_END is stored, and restore from the parent's snapshot."""
    snapshot_pointer = f"{PREFIX}/_control/snapshots/{SHARD}/latest.json"
    pointer_at_checkpoint: list[bool] = []
    checkpointer = RecordingCheckpointer(
        on_call=lambda _: pointer_at_checkpoint.append(snapshot_pointer in keys_under(s3, f"{PREFIX}/"))
    )
    processor = ShardProcessor(
        SHARD,
        CustomerState(SHARD),
        S3ParquetSink(s3, settings),
        NEVER,
        clock=lambda: 0.0,
        sleep=no_sleep,
        recovery=StateRecovery(s3, settings),
        snapshot_every_flushes=10**6,
    )
    processor.start(None)
    processor.on_records(to_records(payloads()[:7]), 0, checkpointer)

    processor.on_shard_ended(checkpointer)

    assert checkpointer.calls == [()] and pointer_at_checkpoint == [True]


def test_a_restoring_processor_shows_it_holds_its_lease(s3: Any, settings: Settings, tmp_path: Path) -> None:
    """A large restore takes minutes: with no status file meanwhile, the worker saw its lease held by no processor,
    `health` failed after CLICKSTREAM_NO_LEASE_UNHEALTHY_SECONDS, and ECS replaced the task mid-restore, again."""
    from consumer.health import holds_lease, shard_problems

    seen: list[ShardStatus | None] = []

    class WatchedRecovery(StateRecovery):
        def restore(self, *arguments: Any, **options: Any) -> Any:
            seen.append(read_statuses(tmp_path / "status").get(SHARD))
            time.sleep(1.5)  # a restore longer than the stuck-shard limit below
            return super().restore(*arguments, **options)

    processor = ShardProcessor(
        SHARD,
        CustomerState(SHARD),
        S3ParquetSink(s3, settings),
        NEVER,
        status=StatusWriter(tmp_path / "status"),
        clock=lambda: 0.0,
        sleep=no_sleep,
        recovery=WatchedRecovery(s3, settings),
    )
    processor.start(None)
    assert len(seen) == 1 and seen[0] is not None, "no status while restoring"
    assert seen[0].phase == "initializing" and holds_lease(seen[0])
    status = read_statuses(tmp_path / "status")[SHARD]
    assert status.phase == "processing"
    # before its first records: not "not called by the KCL" for as long as the restore took
    assert shard_problems({SHARD: status}, time.time(), stuck_after=1.0) == []


def test_shard_ended_with_an_empty_buffer_only_checkpoints_shard_end(s3: Any, settings: Settings) -> None:
    checkpointer = RecordingCheckpointer()
    processor = make_processor(CustomerState(SHARD), S3ParquetSink(s3, settings), NEVER)
    processor.start(None)
    processor.on_shard_ended(checkpointer)
    assert checkpointer.calls == [()]
    assert keys_under(s3, f"{PREFIX}/") == set()


def test_shutdown_requested_flushes_and_checkpoints_the_buffer(s3: Any, settings: Settings) -> None:
    checkpointer = RecordingCheckpointer()
    processor = make_processor(CustomerState(SHARD), S3ParquetSink(s3, settings), NEVER)
    records = to_records(payloads()[:7])
    processor.start(None)
    processor.on_records(records, 0, checkpointer)

    processor.on_shutdown_requested(checkpointer)

    assert checkpointer.calls == [(records[-1].sequence_number, 0)]
    assert [c.records_in for c in commit_records(s3)] == [7]
    assert processor.metrics.phase == "shut_down"
    processor.on_lease_lost()  # the KCL ends every graceful shutdown so: the status still says a clean stop
    assert processor.metrics.phase == "shut_down"


def test_a_stop_puts_what_it_holds_in_the_status_before_its_flush(
    s3: Any, settings: Settings, tmp_path: Path
) -> None:
    """The worker's exit code reads the status files: a shutdown flush cut short (an S3 outage outlasting the KCL's
    grace) must leave the records it held there, not the 0 of an earlier flush, or the stop reads as clean."""
    held: list[int] = []

    class WatchedSink(S3ParquetSink):
        def write(self, attempt: FlushAttempt, applied: AppliedBatch) -> CommitRecord:
            held.append(read_statuses(tmp_path / "status")[SHARD].buffered_records)
            return super().write(attempt, applied)

    processor = ShardProcessor(
        SHARD,
        CustomerState(SHARD),
        WatchedSink(s3, settings),
        NEVER,
        status=StatusWriter(tmp_path / "status", min_interval_seconds=3600),
        clock=lambda: 0.0,
        sleep=no_sleep,
    )
    processor.start(None)
    records = to_records(payloads()[:7])
    # work appears: its status written at once
    processor.on_records(records[:3], 5_000, RecordingCheckpointer())
    processor.on_records(records[3:], 4_000, RecordingCheckpointer())  # more of it, within the write interval
    assert read_statuses(tmp_path / "status")[SHARD].buffered_records == 3
    processor.on_shutdown_requested(RecordingCheckpointer())
    assert held == [7]


def test_lease_lost_drops_the_buffer_and_never_checkpoints(s3: Any, settings: Settings) -> None:
    checkpointer = RecordingCheckpointer()
    processor = make_processor(
        CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(10, 10**9, 60.0)
    )
    records = to_records(payloads()[:20])
    processor.start(None)
    processor.on_records(records[:9], 0, checkpointer)

    processor.on_lease_lost()
    processor.on_records(records[9:], 0, checkpointer)  # a late call must not flush either

    assert checkpointer.attempts == 0
    assert data_keys(s3) == set()
    assert processor.state.position() is None
    assert processor.metrics.phase == "lease_lost"


# ---------------------------------------------------------------------------------------------------- status
class CountingStatusWriter(StatusWriter):
    """Keeps what each write put in the file (buffered records, behind-latest)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, min_interval_seconds=3600)  # only forced writes, within the test
        self.written: list[tuple[int, int | None]] = []

    def write(self, status: ShardStatus, force: bool = False) -> bool:
        wrote = super().write(status, force)
        if wrote:
            self.written.append((status.buffered_records, status.millis_behind_latest))
        return wrote


def test_status_is_written_at_once_when_work_appears_and_not_on_every_call(
    s3: Any, settings: Settings, tmp_path: Path
) -> None:
    writer = CountingStatusWriter(tmp_path / "status")
    checkpointer = RecordingCheckpointer()
    records = to_records(payloads())[:30]
    processor = make_processor(
        CustomerState(SHARD), S3ParquetSink(s3, settings), FlushPolicy(10**6, 10**9, 60.0), status=writer
    )
    processor.start(None)
    writer.written.clear()
    processor.on_records([], 0, checkpointer)  # idle: nothing new to say
    assert writer.written == []
    processor.on_records(records[:10], 500, checkpointer)  # work appears: the idle detector must see it now
    assert writer.written == [(10, 500)]
    for batch in chunks(records[10:], 5):  # more of the same: the rate limit holds
        processor.on_records(batch, 500, checkpointer)
    assert writer.written == [(10, 500)]
    # stale count, never a stale "none"
    assert read_statuses(tmp_path / "status")[SHARD].buffered_records == 10
    processor.flush(checkpointer, reason="test")  # a flush always reports
    assert writer.written[-1] == (0, 500)


def test_status_file_reports_received_flushed_and_checkpointed_counts(
    s3: Any, settings: Settings, tmp_path: Path
) -> None:
    status_dir = tmp_path / "status"
    checkpointer = RecordingCheckpointer()
    records = to_records(payloads())
    processor = make_processor(
        CustomerState(SHARD),
        S3ParquetSink(s3, settings),
        FlushPolicy(40, 10**9, 60.0),
        status=StatusWriter(status_dir),
    )
    processor.start(None)
    started = read_statuses(status_dir)[SHARD]
    assert (started.phase, started.flushes, started.records_flushed) == ("processing", 0, 0)

    for batch in chunks(records, 20):
        processor.on_records(batch, 1234, checkpointer)
    processor.on_shutdown_requested(checkpointer)

    labels = Counter(label.split(":")[0] for label, _ in labelled_stream())
    status = read_statuses(status_dir)[SHARD]
    assert status.phase == "shut_down"
    assert status.records_received == status.records_flushed == len(records)
    assert status.flushes == 2
    assert status.accepted == labels["valid"] + labels["duplicate"]
    assert status.duplicates == labels["duplicate"]
    assert status.rejected == labels["malformed"]
    assert status.buffered_records == 0
    assert status.millis_behind_latest == 1234
    assert status.applied_sequence == status.checkpointed_sequence == records[-1].sequence_number
    assert status.files_written == len(data_keys(s3))
    assert status.bytes_written == sum(c.bytes_written for c in commit_records(s3))
    assert started.state_bytes == 0, "an empty state holds nothing"
    assert status.state_bytes == sum(processor.state.memory_bytes().values()) > 0, (
        "the state after its flushes"
    )


# ---------------------------------------------------------------------------------------------------- crash points
BATCH = 10
# records; with batches of 10 the 2nd flush covers records 20..39 and is the one that crashes
FLUSH_EVERY = 20


def crash_at_second_put(key_contains: str, where: str) -> Callable[[Any, Settings], Any]:
    """A crash point: the process dies at the second flush's PUT of a key containing ``key_contains``."""

    def crashing(s3: Any, settings: Settings) -> tuple[S3ParquetSink, RecordingCheckpointer]:
        faulty = FaultyS3(s3, SimulatedCrashError(where), times=1, key_contains=key_contains, skip=1)
        return S3ParquetSink(faulty, settings), RecordingCheckpointer()

    return crashing


crash_before_intent = crash_at_second_put("/_control/intents/", "after the stage, before the intent")
# a flush writes events/ first (planned_files), one file a flush here
crash_before_data = crash_at_second_put("/events/", "after the intent, before the data")
crash_before_commit_record = crash_at_second_put("/_control/commits/", "before the commit record")


class CrashBeforeTidySink(S3ParquetSink):
    """Dies when the ``crash_on``-th committed attempt would delete its intent (between steps 6 and 7)."""

    def __init__(self, s3_client: Any, settings: Settings, crash_on: int) -> None:
        super().__init__(s3_client, settings)
        self.crash_on = crash_on
        self.tidied = 0

    def forget_intent(self, shard_id: str, attempt_id: str) -> None:
        self.tidied += 1
        if self.tidied == self.crash_on:
            raise SimulatedCrashError("after the checkpoint, before the tidy")
        super().forget_intent(shard_id, attempt_id)


def crash_before_tidy(s3: Any, settings: Settings) -> tuple[S3ParquetSink, RecordingCheckpointer]:
    return CrashBeforeTidySink(s3, settings, crash_on=2), RecordingCheckpointer()


def crash_before_state_commit(s3: Any, settings: Settings) -> tuple[S3ParquetSink, RecordingCheckpointer]:
    return CrashAfterCommitRecordSink(s3, settings, crash_on=2), RecordingCheckpointer()


def crash_before_checkpoint(s3: Any, settings: Settings) -> tuple[S3ParquetSink, RecordingCheckpointer]:
    return S3ParquetSink(s3, settings), RecordingCheckpointer(
        fail_with=[None, SimulatedCrashError("after the state commit, before the checkpoint")]
    )


CRASH_POINTS = {
    "after-stage-before-intent": crash_before_intent,
    "after-intent-before-data": crash_before_data,
    "after-data-before-commit-record": crash_before_commit_record,
    "after-commit-record-before-state-commit": crash_before_state_commit,
    "after-state-commit-before-checkpoint": crash_before_checkpoint,
    "after-checkpoint-before-tidy": crash_before_tidy,
}
#: Crash points after which the crashed flush was checkpointed already.
CHECKPOINTED_AT_CRASH: Final = frozenset({"after-checkpoint-before-tidy"})


def production_processor(
    state: CustomerState, sink: S3ParquetSink, s3: Any, settings: Settings
) -> ShardProcessor:
    """Wired as RecordProcessor.initialize wires it: with state recovery from S3 (no snapshot within this test)."""
    return ShardProcessor(
        SHARD,
        state,
        sink,
        FlushPolicy(FLUSH_EVERY, 10**9, 10**9),
        clock=lambda: 0.0,
        sleep=no_sleep,
        recovery=StateRecovery(s3, settings),
        snapshot_every_flushes=100,
    )


@dataclass(frozen=True)
class CleanRun:
    snapshot: pa.Table
    current_rows: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def clean(aws: Any) -> CleanRun:
    """The reference: the same records and batches under the prefix 'clean', without any crash (once per module)."""
    clean_settings = load_settings(bucket=BUCKET, prefix="clean")
    state = CustomerState(SHARD)
    processor = production_processor(state, S3ParquetSink(aws, clean_settings), aws, clean_settings)
    processor.start(None)
    checkpointer = RecordingCheckpointer()
    for batch in chunks(to_records(payloads()), BATCH):
        processor.on_records(batch, 0, checkpointer)
    assert len(processor.buffer) == 0
    return CleanRun(state.snapshot_rows(), committed_current_rows(aws, "clean"))


def crash_case(crash_point: str, redelivery: str, disk: str) -> Any:
    return pytest.param(crash_point, redelivery, disk, id=f"{crash_point}-{redelivery}-{disk}")


@pytest.mark.parametrize(
    ("crash_point", "redelivery", "disk"),
    [
        crash_case("after-stage-before-intent", "same-batches", "same-disk"),
        crash_case("after-stage-before-intent", "one-batch", "new-disk"),
        crash_case("after-intent-before-data", "same-batches", "same-disk"),
        crash_case("after-intent-before-data", "one-batch", "new-disk"),
        crash_case("after-data-before-commit-record", "same-batches", "same-disk"),
        crash_case("after-data-before-commit-record", "one-batch", "new-disk"),
        crash_case(
            "after-commit-record-before-state-commit",
            "same-batches",
            "same-disk",
        ),
        crash_case("after-commit-record-before-state-commit", "one-batch", "same-disk"),
        crash_case("after-commit-record-before-state-commit", "one-batch", "new-disk"),
        crash_case(
            "after-state-commit-before-checkpoint",
            "same-batches",
            "same-disk",
        ),
        crash_case(
            "after-state-commit-before-checkpoint",
            "same-batches",
            "new-disk",
        ),
        crash_case("after-state-commit-before-checkpoint", "one-batch", "same-disk"),
        crash_case("after-checkpoint-before-tidy", "same-batches", "same-disk"),
        crash_case("after-checkpoint-before-tidy", "one-batch", "new-disk"),
    ],
)
def test_after_a_crash_redelivery_from_the_checkpoint_yields_the_clean_run_outputs(
    s3: Any, settings: Settings, tmp_path: Path, clean: CleanRun, crash_point: str, redelivery: str, disk: str
) -> None:
    records = to_records(payloads())
    # every record is flushed by count: no shutdown (and no snapshot) needed
    assert len(records) % FLUSH_EVERY == 0

    # --- first process: dies during its second flush (records 20..39)
    sink, checkpointer = CRASH_POINTS[crash_point](s3, settings)
    state = CustomerState(SHARD, tmp_path / "first.journal")
    processor = production_processor(state, sink, s3, settings)
    processor.start(None)
    with pytest.raises(SimulatedCrashError):
        for batch in chunks(records, BATCH):
            processor.on_records(batch, 0, checkpointer)
    state.close()
    flushes_checkpointed = 2 if crash_point in CHECKPOINTED_AT_CRASH else 1
    assert checkpointer.calls == [
        (sequence(FLUSH_EVERY * n - 1), 0) for n in range(1, flushes_checkpointed + 1)
    ]
    # a committed attempt deletes its intent (step 7): only the crashed one is left, if it wrote one
    crashed = intents(s3)
    assert len(crashed) == (0 if crash_point == "after-stage-before-intent" else 1)
    planned = {key for intent in crashed for keys in intent.files.values() for key in keys}
    written = planned & keys_under(s3, PREFIX)
    assert bool(written) is (crash_point not in ("after-stage-before-intent", "after-intent-before-data")), (
        written
    )

    # --- next owner: the same DuckDB file, or a new host without it; started at the last checkpoint
    state = CustomerState(SHARD, tmp_path / ("first.journal" if disk == "same-disk" else "second.journal"))
    processor = production_processor(state, S3ParquetSink(s3, settings), s3, settings)
    processor.start(checkpointer.calls[-1][0])
    # The crashed attempt's files stay until its chain position is taken: a live writer could still commit them.
    assert bool(planned) is bool(crashed), "the crashed flush planned data files"
    assert written <= keys_under(s3, PREFIX), "files of a flush that may still commit were deleted"

    redelivered = records[FLUSH_EVERY * flushes_checkpointed :]
    resumed = RecordingCheckpointer()
    for batch in chunks(redelivered, BATCH) if redelivery == "same-batches" else [redelivered]:
        processor.on_records(batch, 0, resumed)
    assert resumed.calls[-1] == (records[-1].sequence_number, 0)

    # --- the outcome equals a run that never crashed
    assert state.snapshot_rows().equals(clean.snapshot)
    listed = {
        key for output in ("events", "customer_aggregates", "errors") for key in committed_keys(s3, output)
    }
    assert data_keys(s3) == listed, "every data file in S3 is listed by a commit record"
    assert intents(s3) == [], "every intent was settled by the next commit"
    assert committed_event_ids(s3) == Counter(dict.fromkeys(valid_event_ids(), 1))
    assert committed_current_rows(s3) == clean.current_rows
    # ... and so does a state restored from S3 alone (a later owner without any disk)
    restored = CustomerState(SHARD)
    StateRecovery(s3, settings).restore(restored)
    assert restored.snapshot_rows().equals(clean.snapshot)


def test_a_restore_from_a_snapshot_includes_a_flush_that_began_with_redelivered_records(
    s3: Any, settings: Settings, tmp_path: Path, clean: CleanRun
) -> None:
    records = to_records(payloads())
    # 1. crash after the state commit of records 20..39, before their checkpoint
    sink, checkpointer = crash_before_checkpoint(s3, settings)
    state = CustomerState(SHARD, tmp_path / "host-a.journal")
    processor = production_processor(state, sink, s3, settings)
    processor.start(None)
    with pytest.raises(SimulatedCrashError):
        for batch in chunks(records, BATCH):
            processor.on_records(batch, 0, checkpointer)
    state.close()
    # 2. the restarted processor is asked to stop before any record arrives: it snapshots its state (at 39)
    state = CustomerState(SHARD, tmp_path / "host-a.journal")
    processor = production_processor(state, S3ParquetSink(s3, settings), s3, settings)
    processor.start(sequence(FLUSH_EVERY - 1))
    processor.on_shutdown_requested(RecordingCheckpointer())
    state.close()
    pointer = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/_control/snapshots/{SHARD}/latest.json")[
        "Body"
    ].read()
    assert json.loads(pointer)["position"]["sequence_number"] == sequence(2 * FLUSH_EVERY - 1)
    # 3. the lease moves to a host without that disk; the KCL redelivers 20..59 in one batch
    state = CustomerState(SHARD, tmp_path / "host-b.journal")
    processor = production_processor(state, S3ParquetSink(s3, settings), s3, settings)
    processor.start(sequence(FLUSH_EVERY - 1))
    resumed = RecordingCheckpointer()
    processor.on_records(records[FLUSH_EVERY:], 0, resumed)
    assert resumed.calls == [(records[-1].sequence_number, 0)]
    assert state.snapshot_rows().equals(clean.snapshot)

    # 4. that host dies before its next snapshot; a third host restores from S3 alone
    restored = CustomerState(SHARD)
    StateRecovery(s3, settings).restore(restored)

    assert restored.snapshot_rows().to_pylist() == clean.snapshot.to_pylist()


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("KMSThrottlingException", 400, True),  # a KMS-encrypted stream's calls throttled by KMS
        ("TooManyRequestsException", 429, True),
        ("SlowDown", 503, True),
        ("ConditionalRequestConflict", 409, True),
        ("LimitExceededException", 400, True),
        ("AccessDenied", 403, False),
        ("NoSuchBucket", 404, False),
        ("ValidationException", 400, False),
    ],
)
def test_which_aws_answers_the_worker_retries(code: str, status: int, transient: bool) -> None:
    """One list of retryable codes for the worker, the producer and the command line (runtime.aws)."""
    from botocore.exceptions import ClientError

    from consumer.retry import is_transient

    error = ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )
    assert is_transient(error) is transient
