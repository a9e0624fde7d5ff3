"""The embedded AWS endpoint: fast Kinesis shard equivalence; the emulator process over HTTP/1.1 and h2c."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import h2.config
import h2.connection
import h2.events
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from moto.kinesis.models import Shard, Stream
from moto.kinesis.utils import compose_new_shard_iterator, compose_shard_iterator, decompose_shard_iterator

from emulator import fast_kinesis
from emulator.server import EmulatorHandle, EmulatorStartError, is_loopback, running_emulator, serve

REGION = "us-east-1"
ACCOUNT = "123456789012"


def client(service: str, endpoint: str, region: str = REGION) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module", autouse=True)
def fast_kinesis_installed() -> Iterator[None]:
    was_installed = fast_kinesis.is_installed()
    fast_kinesis.install()
    yield
    if not was_installed:
        fast_kinesis.uninstall()


@contextmanager
def stock_moto() -> Iterator[None]:
    """Run the block against moto's original Shard methods."""
    fast_kinesis.uninstall()
    assert not fast_kinesis.is_installed()
    try:
        yield
    finally:
        fast_kinesis.install()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- fast_kinesis: identical results ------------------------------------------------------------------------


def build_history() -> tuple[Stream, list[tuple[str, str]]]:
    """Puts, a split to 4 shards, a merge, more puts: closed, open, merged and empty shards.

    (moto 5.2.5 routes puts to the first shard whose hash range matches, closed or not, so records put after a
    split land in the closed parent again; merge_shards copies both parents' records into the new shard.)
    """
    stream = Stream("clicks", 2, None, None, ACCOUNT, REGION)  # type: ignore[abstract]
    put_results = [stream.put_record(f"user-{i}", "", b64(f"a{i}")) for i in range(1500)]
    stream.update_shard_count(4)
    put_results += [stream.put_record(f"user-{i}", "", b64(f"b{i}")) for i in range(600)]
    stream.merge_shards("shardId-000000000000", "shardId-000000000001")
    put_results += [stream.put_record(f"user-{i}", "", b64(f"c{i}")) for i in range(400)]
    return stream, put_results


def shard_state(stream: Stream) -> dict[str, Any]:
    return {
        shard_id: (
            shard.to_json(),
            [(key, r.sequence_number, r.partition_key, r.data) for key, r in shard.records.items()],
        )
        for shard_id, shard in stream.shards.items()
    }


def test_patched_shard_builds_the_same_history_as_stock_moto() -> None:
    patched_stream, patched_puts = build_history()
    with stock_moto():
        stock_stream, stock_puts = build_history()

    assert patched_puts == stock_puts
    assert shard_state(patched_stream) == shard_state(stock_stream)
    shards = patched_stream.shards.values()
    assert len(shards) == 7  # the split and the merge really happened
    assert any(not s.is_open and s.records for s in shards)
    assert any(s.adjacent_parent and len(s.records) == 2100 for s in shards)
    assert any(not s.records for s in shards)


def walk(shard: Shard, iterator_type: str, sequence: int, timestamp: float, limit: Any) -> list[Any]:
    """What a consumer sees: the first iterator, then every page until an empty one (at most 25 pages)."""
    iterator = compose_new_shard_iterator("clicks", shard, iterator_type, sequence, timestamp)  # type: ignore[arg-type]
    seen: list[Any] = [iterator]
    for _ in range(25):
        position = decompose_shard_iterator(iterator)[2]
        records, last, millis = shard.get_records(position, limit)
        seen.append(([(r.sequence_number, r.partition_key, r.data) for r in records], last, millis))
        iterator = compose_shard_iterator("clicks", shard, last)
        seen.append(iterator)
        if not records:
            break
    return seen


LIMITS = [None, 1, 7, 250, 10_000, 0, -3]


def test_patched_get_records_and_iterators_match_stock_moto() -> None:
    stream, _ = build_history()
    cases = 0
    for shard in stream.shards.values():
        # Spread arrival times so MillisBehindLatest and AT_TIMESTAMP are not all zero.
        for key, record in shard.records.items():
            record.created_at = 1_700_000_000.0 + key * 0.0137
        keys = list(shard.records)
        first = keys[0] if keys else 1
        last = keys[-1] if keys else 1
        middle = keys[len(keys) // 2] if keys else 1
        times = [shard.records[k].created_at for k in (first, middle)] if keys else []
        timestamps = [1_600_000_000.0, 1_700_000_000.0 + middle * 0.0137 + 0.005, 1_800_000_000.0, *times]
        starts: list[tuple[str, int, float]] = [("TRIM_HORIZON", 0, 0.0), ("LATEST", 0, 0.0)]
        for sequence in (0, first, middle, last, last + 5):
            starts += [("AT_SEQUENCE_NUMBER", sequence, 0.0), ("AFTER_SEQUENCE_NUMBER", sequence, 0.0)]
        starts += [("AT_TIMESTAMP", 0, ts) for ts in timestamps]
        for iterator_type, sequence, timestamp in starts:
            for limit in LIMITS:
                patched = walk(shard, iterator_type, sequence, timestamp, limit)
                with stock_moto():
                    stock = walk(shard, iterator_type, sequence, timestamp, limit)
                assert patched == stock, (shard.shard_id, iterator_type, sequence, timestamp, limit)
                cases += 1
    assert cases > 500
    # The comparison is not vacuous: pages with records and non-zero MillisBehindLatest were compared.
    sample = walk(stream.shards["shardId-000000000000"], "TRIM_HORIZON", 0, 0.0, 100)
    assert sample[1][0] and sample[1][2] > 0


def test_min_and_max_sequence_numbers_match_stock_on_empty_and_filled_shards() -> None:
    shard = Shard(0, 0, 2**128 - 1)
    assert (shard.get_min_sequence_number(), shard.get_max_sequence_number()) == (0, 0)
    sequence_numbers = [shard.put_record("pk", b64(str(i)), "") for i in range(50)]
    assert sequence_numbers == [str(i) for i in range(1, 51)]
    patched = (shard.get_min_sequence_number(), shard.get_max_sequence_number(), shard.to_json())
    with stock_moto():
        stock = (shard.get_min_sequence_number(), shard.get_max_sequence_number(), shard.to_json())
    assert patched == stock == (1, 50, stock[2])


def test_non_contiguous_records_fall_back_to_stock_get_records() -> None:
    shard = Shard(0, 0, 2**128 - 1)
    for i in range(10):
        shard.put_record("pk", b64(str(i)), "")
    del shard.records[4]  # not something moto does, but the fast path must not guess
    patched = shard.get_records("2", 3)
    with stock_moto():
        stock = shard.get_records("2", 3)
    assert patched == stock
    assert [r.sequence_number for r in patched[0]] == [3, 5, 6]


class CountingRecords(OrderedDict[int, Any]):
    """Shard.records that counts every record looked up or iterated over."""

    touched = 0

    def __getitem__(self, key: int) -> Any:
        self.touched += 1
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[int]:
        for key in super().__iter__():
            self.touched += 1
            yield key

    def __reversed__(self) -> Iterator[int]:
        for key in super().__reversed__():
            self.touched += 1
            yield key

    def keys(self) -> Any:
        return list(iter(self))

    def values(self) -> Any:
        return [super(CountingRecords, self).__getitem__(key) for key in iter(self)]

    def items(self) -> Any:
        return [(key, super(CountingRecords, self).__getitem__(key)) for key in iter(self)]


def test_patched_shard_touches_o_limit_records_per_call_and_stock_touches_the_whole_shard() -> None:
    shard = Shard(0, 0, 2**128 - 1)
    for i in range(20_000):
        shard.put_record(f"pk{i}", b64(str(i)), "")
    shard.records = CountingRecords(shard.records)
    counting: CountingRecords = shard.records  # type: ignore[assignment]

    records, last, _ = shard.get_records("10000", 10)
    assert [r.sequence_number for r in records] == list(range(10_001, 10_011))
    assert last == 10_010
    assert counting.touched <= 10 + 5

    counting.touched = 0
    assert shard.put_record("pk", b64("x"), "") == "20001"
    assert counting.touched <= 3

    counting.touched = 0
    records, last, _ = shard.get_records("19990", None)
    assert len(records) == 11 and last == 20_001
    assert counting.touched <= 11 + 5

    with stock_moto():
        counting.touched = 0
        shard.get_records("10000", 10)
        assert counting.touched >= 10_000  # the counter does see a scan
        counting.touched = 0
        shard.put_record("pk", b64("y"), "")
        assert counting.touched >= 20_000


# --- the emulator process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with running_emulator() as url:
        yield url


def test_emulator_serves_kinesis_round_trip_over_two_shards(endpoint: str) -> None:
    kinesis = client("kinesis", endpoint)
    kinesis.create_stream(StreamName="roundtrip", ShardCount=2)
    sent = [f"event-{i}".encode() for i in range(300)]
    response = kinesis.put_records(
        StreamName="roundtrip",
        Records=[{"Data": data, "PartitionKey": f"user-{i}"} for i, data in enumerate(sent)],
    )
    assert response["FailedRecordCount"] == 0
    shard_ids = {entry["ShardId"] for entry in response["Records"]}
    assert len(shard_ids) == 2

    received: list[bytes] = []
    for shard_id in sorted(shard_ids):
        iterator = kinesis.get_shard_iterator(
            StreamName="roundtrip", ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        shard_records: list[Any] = []
        while True:
            page = kinesis.get_records(ShardIterator=iterator, Limit=40)
            shard_records += page["Records"]
            iterator = page["NextShardIterator"]
            if not page["Records"]:
                break
        sequence_numbers = [int(r["SequenceNumber"]) for r in shard_records]
        assert sequence_numbers == sorted(sequence_numbers)
        # Per shard, records come back in the order they were put.
        shard_data = [r["Data"] for r in shard_records]
        assert shard_data == sorted(shard_data, key=sent.index)
        received += shard_data
    assert sorted(received) == sorted(sent)


def test_emulator_serves_s3_with_sse_and_dynamodb_conditional_writes(endpoint: str) -> None:
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket="rfm-output")
    s3.put_object(Bucket="rfm-output", Key="a/b.parquet", Body=b"PAR1 data", ServerSideEncryption="AES256")
    got = s3.get_object(Bucket="rfm-output", Key="a/b.parquet")
    assert got["Body"].read() == b"PAR1 data"
    assert got["ServerSideEncryption"] == "AES256"

    dynamodb = client("dynamodb", endpoint)
    dynamodb.create_table(
        TableName="leases",
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    item = {"leaseKey": {"S": "shardId-000000000000"}, "owner": {"S": "worker-1"}}
    dynamodb.put_item(TableName="leases", Item=item, ConditionExpression="attribute_not_exists(leaseKey)")
    with pytest.raises(ClientError) as error:
        dynamodb.put_item(TableName="leases", Item=item, ConditionExpression="attribute_not_exists(leaseKey)")
    assert error.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    stored = dynamodb.get_item(TableName="leases", Key={"leaseKey": {"S": "shardId-000000000000"}})
    assert stored["Item"] == item


def test_a_request_signed_for_a_region_that_does_not_exist_is_refused_as_aws_refuses_it(
    endpoint: str,
) -> None:
    """moto answered a bare 500 (a KeyError in its backend), which the SDKs retried and the CLI reported as a
    service that is down; a mistyped AWS_REGION is a set-up error with its name in the answer."""
    refusals = {
        "kinesis": (lambda kinesis: kinesis.list_streams(), "InvalidSignatureException"),
        "dynamodb": (lambda dynamodb: dynamodb.list_tables(), "InvalidSignatureException"),
        "s3": (lambda s3: s3.list_buckets(), "AuthorizationHeaderMalformed"),
        "cloudwatch": (lambda cloudwatch: cloudwatch.list_metrics(), "InvalidSignatureException"),
    }
    for service, (call, code) in refusals.items():
        with pytest.raises(ClientError) as refused:
            call(client(service, endpoint, region="mars-1"))
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, service
        assert refused.value.response["Error"]["Code"] == code, service
        assert "'mars-1'" in refused.value.response["Error"]["Message"], service
        call(client(service, endpoint, region="eu-west-1"))  # a region of AWS's is served as before


def test_concurrent_put_records_into_one_shard_never_reuse_a_sequence_number(endpoint: str) -> None:
    client("kinesis", endpoint).create_stream(StreamName="contended", ShardCount=1)
    sequence_numbers: list[str] = []
    lock = threading.Lock()

    def producer(worker: int) -> None:
        kinesis = client("kinesis", endpoint)
        for batch in range(5):
            records = [{"Data": b"x", "PartitionKey": f"{worker}-{batch}-{i}"} for i in range(500)]
            response = kinesis.put_records(StreamName="contended", Records=records)
            with lock:
                sequence_numbers.extend(entry["SequenceNumber"] for entry in response["Records"])

    producers = [threading.Thread(target=producer, args=(worker,)) for worker in range(8)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()

    assert len(sequence_numbers) == 20_000
    # Without SerializedApp's lock, moto reused sequence numbers (lost records) in 2 runs out of 3.
    assert len(set(sequence_numbers)) == 20_000


def h2c_request(url: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """One POST over HTTP/2 with prior knowledge (what the KCL's Netty client does on http://)."""
    host_port = url.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        connection.initiate_connection()
        sock.sendall(connection.data_to_send())
        stream_id = connection.get_next_available_stream_id()
        request_headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", host_port),
            (":path", "/"),
        ]
        connection.send_headers(stream_id, request_headers + headers)
        connection.send_data(stream_id, body, end_stream=True)
        sock.sendall(connection.data_to_send())
        status, response_body, ended = 0, b"", False
        while not ended:
            data = sock.recv(65_536)
            assert data, "server closed the connection"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])  # type: ignore[index]
                elif isinstance(event, h2.events.DataReceived):
                    response_body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(connection.data_to_send())
    return status, response_body


def test_same_port_answers_h2c_prior_knowledge(endpoint: str) -> None:
    client("kinesis", endpoint).create_stream(StreamName="h2c-visible", ShardCount=1)
    body = b"{}"
    request = AWSRequest(
        method="POST",
        url=endpoint + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "Kinesis_20131202.ListStreams",
        },
    )
    SigV4Auth(Credentials("testing", "testing"), "kinesis", REGION).add_auth(request)
    headers = [(name.lower(), value) for name, value in request.headers.items() if name.lower() != "host"]

    status, response_body = h2c_request(endpoint, headers, body)

    assert status == 200
    assert "h2c-visible" in json.loads(response_body)["StreamNames"]


def test_emulator_process_stops_cleanly_on_sigterm() -> None:
    handle = EmulatorHandle()
    url = handle.start()
    with urllib.request.urlopen(f"{url}/moto-api/config", timeout=5) as response:
        assert "batch" in json.loads(response.read())
    assert handle.stop(timeout=10) == 0
    assert "stopped" in handle.output()


def test_emulator_child_stops_when_its_owner_process_is_killed() -> None:
    owner_script = (
        "import time\n"
        "from emulator.server import EmulatorHandle\n"
        "print(EmulatorHandle().start(), flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert owner.stdout is not None
        url = owner.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        urllib.request.urlopen(f"{url}/moto-api/config", timeout=5).close()
    finally:
        owner.kill()
        owner.wait()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/config", timeout=1).close()
        except OSError:
            return  # connection refused: the orphaned emulator shut itself down
        time.sleep(0.1)
    pytest.fail(f"emulator at {url} still serving 10 s after its owner was killed")


def test_emulator_start_failure_reports_the_child_output() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        expected = pytest.raises(EmulatorStartError, match=r"exited with code 1(.|\n)*Address already in use")
        with expected, running_emulator(port, startup_timeout=20):
            pass


def test_serve_in_a_thread_signals_ready_and_stops_on_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTO_PORT", "5000")
    ready, stop = threading.Event(), threading.Event()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = threading.Thread(target=serve, args=("127.0.0.1", port, ready, stop), daemon=True)
    server.start()
    try:
        assert ready.wait(10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/config", timeout=5) as response:
            assert "batch" in json.loads(response.read())
    finally:
        stop.set()
        server.join(10)
    assert not server.is_alive()


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--port", "abc"], "argument --port: 'abc' is not a TCP port (0-65535)"),
        (["--port", "70000"], "argument --port: 70000 is not a TCP port (0-65535)"),
        (["--host", "nosuch.invalid"], "--host nosuch.invalid: "),
        (["--host", "nosuch.invalid", "--allow-remote"], "--host nosuch.invalid: "),
    ],
)
def test_python_m_emulator_says_what_is_wrong_with_its_arguments(
    arguments: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad port was 'invalid _port value' (an internal name); a host name that resolves to nothing was refused
    as a remote host, and adding --allow-remote as told then failed with exit 1."""
    from emulator.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert said in error and "--allow-remote" not in error.splitlines()[-1], error


def test_serve_refuses_non_loopback_hosts_unless_allowed() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="non-loopback"):
        serve("0.0.0.0", 0)
