"""Specification of the PutRecords sender: exact delivery, API limits, partial-failure retries, pacing."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from moto import mock_aws

from producer.generator import ClickstreamGenerator, InputFileError, generate_events
from producer.kinesis_put import (
    MAX_BYTES_PER_REQUEST,
    MAX_RECORDS_PER_REQUEST,
    KinesisProducer,
    PutInputError,
    PutInterrupted,
    PutRecordsError,
    lingering,
    partition_key_for,
)
from tests.test_validation import decode, doc, encode, raw_batch

STREAM = "clickstream-test"


def throttling_error(code: str = "ProvisionedThroughputExceededException", status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "Rate exceeded"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutRecords",
    )


class FakeKinesis:
    """Implements put_records and keeps exact accounting of every call and every delivery."""

    def __init__(
        self,
        fail_once: Iterable[bytes] = (),
        always_fail: Iterable[bytes] = (),
        raise_on_calls: dict[int, Exception] | None = None,
    ) -> None:
        self.fail_once = set(fail_once)
        self.always_fail = set(always_fail)
        self.raise_on_calls = raise_on_calls or {}
        self.calls: list[list[tuple[str, bytes]]] = []
        self.failed_in_call: list[list[bytes]] = []
        self.delivered: Counter[bytes] = Counter()
        self.keys: dict[bytes, str] = {}

    def put_records(self, *, StreamName: str, Records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        assert StreamName == STREAM
        call = [(entry["PartitionKey"], entry["Data"]) for entry in Records]
        self.calls.append(call)
        self.failed_in_call.append([])
        error = self.raise_on_calls.pop(len(self.calls) - 1, None)
        if error is not None:
            raise error
        results: list[dict[str, str]] = []
        for key, data in call:
            if data in self.always_fail or data in self.fail_once:
                self.fail_once.discard(data)
                self.failed_in_call[-1].append(data)
                results.append(
                    {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
                )
            else:
                self.delivered[data] += 1
                self.keys[data] = key
                results.append({"ShardId": f"shardId-00000000000{len(key) % 4}", "SequenceNumber": "1"})
        return {"FailedRecordCount": len(self.failed_in_call[-1]), "Records": results}


class FakeTime:
    """Injectable clock and sleep so backoff and pacing cost no wall time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def make_producer(client: Any, fake_time: FakeTime, **kwargs: Any) -> KinesisProducer:
    return KinesisProducer(
        client,
        STREAM,
        backoff_base_seconds=0.001,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        jitter=random.Random(0),
        **kwargs,
    )


def read_stream(client: Any, stream: str) -> tuple[list[tuple[str, bytes]], dict[str, set[str]]]:
    """Every record on every shard from TRIM_HORIZON, and the shards each partition key landed on."""
    records: list[tuple[str, bytes]] = []
    shards_of_key: dict[str, set[str]] = {}
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=1000)
            for record in response["Records"]:
                records.append((record["PartitionKey"], record["Data"]))
                shards_of_key.setdefault(record["PartitionKey"], set()).add(shard["ShardId"])
            if not response["Records"]:
                break
            iterator = response.get("NextShardIterator")
    return records, shards_of_key


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


def test_moto_stream_receives_exactly_the_records_sent_keyed_by_customer(aws_env: None) -> None:
    client = boto3.client("kinesis", region_name="us-east-1")
    client.create_stream(StreamName=STREAM, ShardCount=4)
    client.get_waiter("stream_exists").wait(StreamName=STREAM, WaiterConfig={"Delay": 1})
    generator = ClickstreamGenerator(60, 2000, seed=17, duplicate_rate=0.01, malformed_rate=0.01)
    sent = list(generator.events())

    summary = KinesisProducer(client, STREAM).put(sent, total=len(sent))

    assert summary.records_sent == len(sent) == 2040
    assert summary.bytes_sent == sum(len(data) for data in sent)
    assert summary.requests == 5 and summary.retried_records == 0
    received, shards_of_key = read_stream(client, STREAM)
    expected = Counter((partition_key_for(data), data) for data in sent)
    assert Counter(received) == expected
    for label, data in generator.records():
        if label == "valid":
            assert partition_key_for(data) == json.loads(data)["customer_id"]
    assert len({key for key, _ in received if key.startswith("c-")}) > 40
    assert len({shard for shards in shards_of_key.values() for shard in shards}) == 4
    assert all(len(shards) == 1 for shards in shards_of_key.values()), "a customer's events share a shard"
    assert sum(summary.records_per_shard.values()) == len(sent)


def test_partition_key_is_customer_id_or_md5_of_the_payload() -> None:
    assert partition_key_for(b'{"customer_id":"c-000042","x":1}') == "c-000042"
    assert partition_key_for(b'{"customer_id": "c-7"}') == "c-7"
    assert (
        partition_key_for(b'{"event_id":"e","customer_id":"c-1\xff"')
        == hashlib.md5(b'{"event_id":"e","customer_id":"c-1\xff"').hexdigest()
    )
    garbage = b"\xff\xfe not json"
    assert partition_key_for(garbage) == hashlib.md5(garbage).hexdigest() == partition_key_for(garbage)


@pytest.mark.parametrize(
    "data",
    [
        b'{"context":{"customer_id":"anon-1"},'
        + encode(doc())[1:],  # an extra field is valid: its id is not the key
        encode(doc()).replace(b'"c-000001"', b'"c\\u002d000001"'),  # the same id, one character escaped
        encode(doc()).replace(b'"customer_id":', b'"customer_id" :'),  # whitespace before the colon
    ],
    ids=["nested-customer-id-first", "escaped-character", "space-before-colon"],
)
def test_the_partition_key_is_the_top_level_customer_id_the_consumer_checks(data: bytes) -> None:
    """The consumer rejects an event whose partition key is not its customer_id (partition_key_mismatch), so the key
    must be the id the consumer decodes, not the first customer_id-looking bytes."""
    key = partition_key_for(data)
    assert key == "c-000001"
    decoded = decode(raw_batch([(data, key)]))
    assert decoded.events.num_rows == 1, decoded.rejects.to_pylist()


def test_a_customer_id_that_cannot_be_a_partition_key_falls_back_to_md5() -> None:
    for customer in ("", "é-1", "c" * 257):
        data = json.dumps({"customer_id": customer}).encode()
        assert partition_key_for(data) == hashlib.md5(data).hexdigest()


def test_only_failed_records_are_resent_until_each_is_delivered_exactly_once() -> None:
    records = list(generate_events(40, 1200, 9))
    records += [json.dumps({"customer_id": f"c-{i:06d}", "pad": "x" * 20_000}).encode() for i in range(300)]
    rng = random.Random(1)
    fail_once = set(rng.sample(records, 150))
    # Call 3 is throttled as a whole; its records must all come again in the next call.
    fake = FakeKinesis(fail_once=fail_once, raise_on_calls={3: throttling_error()})
    fake_time = FakeTime()

    summary = make_producer(fake, fake_time).put(records)

    assert fake.delivered == Counter(records), "every record delivered exactly once"
    assert all(fake.keys[data] == partition_key_for(data) for data in records)
    for call in fake.calls:
        assert len(call) <= MAX_RECORDS_PER_REQUEST
        assert sum(len(data) + len(key.encode()) for key, data in call) <= MAX_BYTES_PER_REQUEST
    assert max(sum(len(d) + len(k) for k, d in call) for call in fake.calls) > 4.5 * 1024 * 1024, (
        "the 20 KiB records fill a request up to the byte limit"
    )
    resent, retry_calls = 0, 0
    for index in range(1, len(fake.calls)):
        throttled = index - 1 == 3
        previous_failed = [data for _, data in fake.calls[3]] if throttled else fake.failed_in_call[index - 1]
        if previous_failed:
            assert [data for _, data in fake.calls[index]] == previous_failed, "re-send only what failed"
            resent += len(previous_failed)
            retry_calls += 1
    assert summary.retried_records == resent == len(fail_once) + len(fake.calls[3])
    assert summary.throttled_calls == 1
    assert summary.records_sent == len(records)
    assert summary.requests == len(fake.calls)
    assert summary.record_errors == {"ProvisionedThroughputExceededException": len(fail_once)}
    assert len(fake_time.sleeps) == retry_calls, "one backoff before each re-send"


def test_gives_up_after_max_attempts_and_reports_the_undelivered_records() -> None:
    records = list(generate_events(20, 700, 2))
    doomed = set(records[600:607])
    fake = FakeKinesis(always_fail=doomed)
    fake_time = FakeTime()
    producer = make_producer(fake, fake_time, max_attempts=4)

    with pytest.raises(PutRecordsError) as raised:
        producer.put(records)

    error = raised.value
    assert error.undelivered_count == 7
    assert {data for _, data in error.undelivered} == doomed
    assert error.summary.records_sent == 700 - 7
    assert "7 records not delivered" in str(error)
    assert "693 records delivered, 7 of the failing batch not, and the input after that batch not sent" in (
        error.outcome()
    )
    assert sum(data in doomed for call in fake.calls for _, data in call) == 7 * 4
    assert len(fake_time.sleeps) == 3
    assert fake_time.sleeps == sorted(fake_time.sleeps), "backoff grows"


def test_whole_call_errors_are_retried_when_transient_and_raised_when_terminal() -> None:
    records = list(generate_events(5, 50, 3))
    fake = FakeKinesis(
        raise_on_calls={
            0: throttling_error("ThrottlingException"),
            1: throttling_error("InternalError", status=503),
            2: EndpointConnectionError(endpoint_url="http://localhost:4566"),
        }
    )
    summary = make_producer(fake, FakeTime()).put(records)
    assert fake.delivered == Counter(records)
    assert summary.throttled_calls == 3 and summary.requests == 4

    fake = FakeKinesis(raise_on_calls={0: throttling_error("ResourceNotFoundException")})
    with pytest.raises(PutRecordsError, match="ResourceNotFoundException") as raised:
        make_producer(fake, FakeTime()).put(records)
    assert raised.value.undelivered_count == 50
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("failure", "maybe_arrived"),
    [
        (lambda: ReadTimeoutError(endpoint_url="http://kinesis"), True),  # sent, not answered
        (lambda: EndpointConnectionError(endpoint_url="http://kinesis"), False),  # never sent
    ],
    ids=["read-timeout", "no-connection"],
)
def test_a_batch_whose_retries_timed_out_may_have_arrived(failure: Any, maybe_arrived: bool) -> None:
    """A call that timed out is sent again as it may have arrived; once the retries ran out, the batch was said
    "not" delivered all the same."""
    records = list(generate_events(5, 50, 3))
    fake = FakeKinesis(raise_on_calls={call: failure() for call in range(3)})
    with pytest.raises(PutRecordsError) as raised:
        make_producer(fake, FakeTime(), max_attempts=3).put(records)
    assert raised.value.maybe_arrived is maybe_arrived
    said = (
        "50 of the failing batch may or may not have arrived"
        if maybe_arrived
        else "50 of the failing batch not"
    )
    assert said in raised.value.outcome()


def test_credentials_that_fail_mid_run_stop_it_with_what_was_delivered() -> None:
    """An SSO or role session that expires in a long run: botocore raises while signing, before the request goes
    out. The run must stop as a failed put does (the records delivered and the rest counted), not with a bare
    credential error that leaves the user guessing what arrived."""
    records = list(generate_events(20, 1500, 4))
    expired = CredentialRetrievalError(provider="sso", error_msg="token expired")
    fake = FakeKinesis(raise_on_calls={2: expired})
    with pytest.raises(PutRecordsError, match="CredentialRetrievalError") as raised:
        make_producer(fake, FakeTime()).put(records)
    delivered = sum(fake.delivered.values())
    assert (delivered, raised.value.undelivered_count) == (1_000, 500)  # two requests of 500 went through
    outcome = raised.value.outcome()
    assert outcome.startswith(f"PutRecords to {STREAM} failed: CredentialRetrievalError: ")
    assert "1,000 records delivered, 500 of the failing batch not" in outcome


class AnswerLost(FakeKinesis):
    """The first call delivers its records but its answer is lost (a read timeout); then ``then`` happens."""

    def __init__(self, then: Exception | dict[str, Any]) -> None:
        super().__init__()
        self.then = then

    def put_records(self, *, StreamName: str, Records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not self.calls:
            super().put_records(StreamName=StreamName, Records=Records)
            raise ReadTimeoutError(endpoint_url="http://kinesis")
        self.calls.append([(entry["PartitionKey"], entry["Data"]) for entry in Records])
        if isinstance(self.then, Exception):
            raise self.then
        return self.then


@pytest.mark.parametrize(
    "then",
    [
        CredentialRetrievalError(provider="sso", error_msg="token expired"),
        {"FailedRecordCount": 0, "Records": []},  # an answer that cannot be matched to the records
        "KMSAccessDeniedException",  # every record refused for good
    ],
    ids=["credentials", "answer-mismatch", "kms-refusal"],
)
def test_a_batch_whose_earlier_call_went_unanswered_may_have_arrived_however_the_run_stops(
    then: Exception | dict[str, Any] | str,
) -> None:
    """The first call's records landed but its answer was lost; the retry then fails for good. The outcome must
    not say the batch did not arrive: it may have."""
    records = list(generate_events(5, 50, 3))
    if then == "KMSAccessDeniedException":
        refused = {"ErrorCode": "KMSAccessDeniedException", "ErrorMessage": "no access to the key"}
        then = {"FailedRecordCount": len(records), "Records": [refused] * len(records)}
    assert not isinstance(then, str)
    fake = AnswerLost(then)
    with pytest.raises(PutRecordsError) as raised:
        make_producer(fake, FakeTime()).put(records)
    assert sum(fake.delivered.values()) == len(records) and len(fake.calls) == 2
    assert raised.value.maybe_arrived
    assert f"{len(records)} of the failing batch may or may not have arrived" in raised.value.outcome()


@pytest.mark.parametrize("refused", ["per-record", "whole-call"])
def test_a_stop_while_waiting_to_resend_a_batch_whose_earlier_call_went_unanswered_says_it_may_have_arrived(
    refused: str,
) -> None:
    records = list(generate_events(5, 50, 3))
    throttled = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
    fake = AnswerLost(
        {"FailedRecordCount": len(records), "Records": [throttled] * len(records)}
        if refused == "per-record"
        else throttling_error()
    )

    class StoppedWhileWaiting(FakeTime):
        def sleep(self, seconds: float) -> None:
            if len(fake.calls) == 2:  # waiting to resend after the second call
                raise KeyboardInterrupt
            super().sleep(seconds)

    with pytest.raises(PutInterrupted) as stopped:
        make_producer(fake, StoppedWhileWaiting()).put(records)
    assert sum(fake.delivered.values()) == len(records)
    assert stopped.value.in_flight == len(records)
    assert f"the {len(records):,} records being sent may or may not have arrived" in stopped.value.outcome()


class InterruptedWhileCounted(list):  # type: ignore[type-arg]
    """An answer's per-record results, read until a Ctrl-C lands while the producer counts them."""

    def __iter__(self) -> Iterator[Any]:
        items = super().__iter__()
        yield next(items)
        raise KeyboardInterrupt


def test_ctrl_c_while_an_answer_is_counted_leaves_its_records_in_flight_not_undelivered() -> None:
    records = list(generate_events(5, 50, 3))

    class Answered(FakeKinesis):
        def put_records(self, *, StreamName: str, Records: Sequence[dict[str, Any]]) -> dict[str, Any]:
            answer = super().put_records(StreamName=StreamName, Records=Records)
            return {**answer, "Records": InterruptedWhileCounted(answer["Records"])}

    fake = Answered()
    with pytest.raises(PutInterrupted) as stopped:
        make_producer(fake, FakeTime()).put(records)
    assert sum(fake.delivered.values()) == len(records)
    # every record of the call is delivered or in flight: none is said to be left unsent
    summary = stopped.value.summary
    assert summary.records_sent + stopped.value.in_flight >= len(records)
    assert f"the {len(records):,} records being sent may or may not have arrived" in stopped.value.outcome()


def test_the_rate_is_of_the_sending_not_of_the_planning_before_the_first_record() -> None:
    """A generator plans its whole world before its first event (minutes for 100 million): not sending time."""
    records = list(generate_events(5, 1_000, 3))
    fake_time = FakeTime()

    def planned_first() -> Iterator[bytes]:
        fake_time.now += 600  # the planning
        yield from records

    summary = make_producer(FakeKinesis(), fake_time, max_records_per_second=500).put(planned_first())
    assert summary.records_sent == len(records)
    assert 1 <= summary.seconds < 10 and 100 < summary.records_per_second <= 1_000


def test_any_other_failure_of_a_call_stops_the_run_with_what_was_delivered() -> None:
    """A botocore error that comes after the request went out (an unparsable answer): the run says what it delivered
    and that the failing batch may or may not have arrived, instead of a bare error that hides both."""
    from botocore.parsers import ResponseParserError

    records = list(generate_events(20, 1500, 4))
    fake = FakeKinesis(raise_on_calls={2: ResponseParserError("unexpected body")})
    with pytest.raises(PutRecordsError, match="ResponseParserError") as raised:
        make_producer(fake, FakeTime()).put(records)
    assert raised.value.maybe_arrived and raised.value.undelivered_count == 500
    assert (
        "1,000 records delivered, 500 of the failing batch may or may not have arrived"
        in raised.value.outcome()
    )


def test_every_outcome_names_the_records_skipped_as_too_large() -> None:
    """A failed run's line used to count only delivered records: one skipped as too large went unmentioned."""
    records = list(generate_events(5, 10, 4))
    huge = b'{"customer_id":"c-000001","pad":"' + b"x" * (1024 * 1024) + b'"}'
    fake = FakeKinesis(
        raise_on_calls={0: CredentialRetrievalError(provider="sso", error_msg="token expired")}
    )
    with pytest.raises(PutRecordsError) as raised:
        make_producer(fake, FakeTime()).put([huge, *records])
    assert (
        "0 records delivered (1 larger than 1 MiB skipped, each logged with its partition key and first bytes)"
        in (raised.value.outcome())
    )


def test_records_over_one_mib_are_rejected_locally_and_counted() -> None:
    records = list(generate_events(5, 10, 4))
    huge = b'{"customer_id":"c-000001","pad":"' + b"x" * (1024 * 1024) + b'"}'
    fake = FakeKinesis()
    summary = make_producer(fake, FakeTime()).put([*records[:5], huge, *records[5:]])
    assert summary.rejected_too_large == 1
    assert fake.delivered == Counter(records)
    assert all(huge not in [data for _, data in call] for call in fake.calls)


def test_rate_limit_paces_requests() -> None:
    records = list(generate_events(10, 2000, 5))
    fake = FakeKinesis()
    fake_time = FakeTime()
    summary = make_producer(fake, fake_time, max_records_per_second=400).put(records)
    assert fake.delivered == Counter(records)
    assert all(len(call) <= 400 for call in fake.calls)
    # 2000 records at 400/s: the first request goes at once, the rest wait for their slots.
    assert sum(fake_time.sleeps) == pytest.approx(2000 / 400 - len(fake.calls[0]) / 400)
    assert summary.seconds == pytest.approx(sum(fake_time.sleeps))


def test_without_a_bar_a_long_run_logs_its_progress_every_30_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Off a terminal (a container, CI) there is no bar: a produce of minutes said nothing until it ended."""
    records = list(generate_events(10, 2000, 5))
    fake_time = FakeTime()
    with caplog.at_level(logging.INFO, logger="producer.kinesis_put"):
        make_producer(FakeKinesis(), fake_time, max_records_per_second=20).put(records, total=len(records))
    lines = [r.getMessage() for r in caplog.records if "so far" in r.getMessage()]
    assert fake_time.now == pytest.approx(100, abs=1)  # 2000 records at 20/s
    # at 30, 60 and 90 s (the first request goes at once, then one per second)
    assert len(lines) == 3 and lines[0].startswith("put 620 records of 2,000 to"), lines
    quiet = FakeTime()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="producer.kinesis_put"):
        make_producer(FakeKinesis(), quiet, max_records_per_second=20, progress=True).put(records[:100])
    assert not [r for r in caplog.records if "so far" in r.getMessage()], "the bar says it already"


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    records = list(generate_events(5, 100, 6))
    make_producer(FakeKinesis(), FakeTime(), progress=True).put(records, total=len(records))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "100/100" in captured.err


def test_ctrl_c_during_a_request_reports_what_was_delivered_and_what_was_in_flight() -> None:
    records = list(generate_events(20, 1500, 4))
    fake = FakeKinesis(raise_on_calls={2: KeyboardInterrupt()})  # Ctrl-C while the third request is out

    with pytest.raises(PutInterrupted) as stopped:
        make_producer(fake, FakeTime()).put(records)

    delivered = sum(len(call) for call in fake.calls[:2])
    assert stopped.value.summary.records_sent == delivered == sum(fake.delivered.values())
    assert stopped.value.in_flight == len(fake.calls[2]) > 0
    assert f"{delivered:,} records delivered" in stopped.value.outcome()
    assert (
        f"the {len(fake.calls[2]):,} records being sent may or may not have arrived"
        in stopped.value.outcome()
    )


def test_ctrl_c_between_requests_has_nothing_in_flight() -> None:
    records = list(generate_events(20, 1200, 4))

    def interrupted_input() -> Iterator[bytes]:
        yield from records[:700]
        raise KeyboardInterrupt

    fake = FakeKinesis(fail_once=records[:10], raise_on_calls={1: throttling_error()})
    with pytest.raises(PutInterrupted) as stopped:
        make_producer(fake, FakeTime(), max_records_per_request=200).put(interrupted_input())

    assert stopped.value.summary.records_sent == sum(fake.delivered.values()) == 600
    assert stopped.value.in_flight == 0
    assert "may or may not" not in stopped.value.outcome()


class SignallingKinesis(FakeKinesis):
    """A FakeKinesis that says when a call has been made."""

    def __init__(self) -> None:
        super().__init__()
        self.called = threading.Event()

    def put_records(self, *, StreamName: str, Records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        answer = super().put_records(StreamName=StreamName, Records=Records)
        self.called.set()
        return answer


def test_a_slow_input_is_sent_as_it_comes_not_held_for_a_full_batch() -> None:
    """A pipe fed as events happen: the records read are sent once they have waited the linger, while the input
    still waits for more (without it they would wait for 500 records or the end of the input)."""
    records = list(generate_events(5, 40, 4))
    fake = SignallingKinesis()

    def trickle() -> Iterator[bytes]:
        yield from records[:3]
        if not fake.called.wait(timeout=20):  # the input holds back until the three were sent
            raise AssertionError("nothing was sent while the input waited")
        yield from records[3:]

    summary = make_producer(fake, FakeTime()).put(lingering(trickle(), seconds=0.05))

    assert [len(call) for call in fake.calls] == [3, len(records) - 3]
    assert summary.records_sent == len(records) and sum(fake.delivered.values()) == len(records)


def test_an_input_that_keeps_up_is_still_sent_in_full_batches() -> None:
    records = list(generate_events(50, 1_200, 4))
    fake = FakeKinesis()
    make_producer(fake, FakeTime()).put(lingering(records, seconds=30))
    assert [len(call) for call in fake.calls] == [500, 500, len(records) - 1_000]


def test_an_input_read_in_the_background_that_breaks_off_is_said_after_what_it_gave_is_sent() -> None:
    records = list(generate_events(5, 40, 4))

    def broken() -> Iterator[bytes]:
        yield from records[:7]
        raise InputFileError("input.jsonl.gz: unreadable after line 7 (CRC check failed)")

    fake = FakeKinesis()
    with pytest.raises(PutInputError, match="after line 7") as stopped:
        make_producer(fake, FakeTime()).put(lingering(broken(), seconds=30))
    assert stopped.value.summary.records_sent == 7 == sum(fake.delivered.values())


def test_the_background_reader_reads_ahead_two_requests_worth_of_bytes_at_most() -> None:
    """Read ahead was bounded by a count of records only: a held-up sender fed a fast pipe of large records kept
    a thousand of them in memory (1 MiB records: a gigabyte)."""
    import time

    record = b"x" * (4 * 1024 * 1024)
    pulled = 0

    def large() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(20):
            pulled += 1
            yield record

    records = lingering(large(), seconds=30)
    assert next(records) is record  # the sender takes one, then is held up
    settled, deadline = -1, time.monotonic() + 20
    while settled != pulled and time.monotonic() < deadline:  # until the reader stops reading on
        settled = pulled
        time.sleep(0.3)
    # the one taken, two requests' worth (5 MiB each) queued, and the one the reader holds while it waits
    assert pulled <= 1 + 2 * MAX_BYTES_PER_REQUEST // len(record) + 1, pulled
    assert sum(1 for _ in records) == 19, "then every other record, in turn"


class _StreamStatuses:
    """DescribeStreamSummary answering the statuses given, then the last one for good; and a clock its sleeps move."""

    def __init__(self, *statuses: str) -> None:
        self.statuses, self.calls, self.now = list(statuses), 0, 0.0

    def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        return {"StreamDescriptionSummary": {"StreamName": StreamName, "StreamStatus": status}}

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_stream_being_created_is_waited_for_and_one_being_deleted_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PutRecords to a stream still CREATING (made by Terraform a moment ago) answers ResourceNotFoundException, which
    produce said as "Stream ... not found" right after DescribeStreamSummary had found it."""
    from producer.kinesis_put import StreamNotWritableError, require_stream

    creating = _StreamStatuses("CREATING", "CREATING", "ACTIVE")
    with caplog.at_level(logging.INFO, logger="producer.kinesis_put"):
        require_stream(creating, "s", clock=lambda: creating.now, sleep=creating.sleep)  # type: ignore[arg-type]
    assert creating.calls == 3 and creating.now == 4.0
    assert "stream s is CREATING: waiting until it is ACTIVE (up to 120 s)" in caplog.text

    stuck = _StreamStatuses("CREATING")
    with pytest.raises(
        StreamNotWritableError, match="still CREATING after 10 s: run again once it is ACTIVE"
    ) as late:
        require_stream(stuck, "s", wait_seconds=10, clock=lambda: stuck.now, sleep=stuck.sleep)  # type: ignore[arg-type]
    assert not late.value.lasting and stuck.now == 10.0

    deleting = _StreamStatuses("DELETING")
    with pytest.raises(StreamNotWritableError, match=r"being deleted \(DELETING\)") as refused:
        require_stream(deleting, "s", clock=lambda: 0.0, sleep=deleting.sleep)  # type: ignore[arg-type]
    assert refused.value.lasting

    for usable in ("ACTIVE", "UPDATING"):  # a reshard or an encryption change: puts go on
        active = _StreamStatuses(usable)
        require_stream(active, "s", clock=lambda: 0.0, sleep=active.sleep)  # type: ignore[arg-type]
        assert active.calls == 1 and active.now == 0.0
