"""The emulator's fault registry (emulator/faults.py): matching, expiry, request parsing, AWS-style errors.

Most tests are pure (a fake clock, hand-built WSGI environs); the last ones go over HTTP to the session emulator
with real boto3 clients, to prove that SDKs read the injected errors as the real AWS errors.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from emulator.faults import (
    CONTROL_PATH,
    FaultInjectingApp,
    FaultRegistry,
    FaultSpecError,
    clear_faults,
    fault_hits,
    list_faults,
    request_operation,
    request_service,
    s3_operation,
    set_fault,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def signed(service: str, **environ: Any) -> dict[str, Any]:
    """A WSGI environ signed (by header) for ``service``."""
    auth = (
        f"AWS4-HMAC-SHA256 Credential=testing/20261125/us-east-1/{service}/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=abc"
    )
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "", "HTTP_AUTHORIZATION": auth}
    base["REMOTE_ADDR"] = "127.0.0.1"
    base.update(environ)
    return base


# ------------------------------------------------------------------------------------------------ the registry
def test_a_fault_matches_its_service_until_it_expires() -> None:
    clock = FakeClock()
    registry = FaultRegistry(clock=clock)
    fault = registry.add("S3", 503, 10)
    assert fault.service == "s3"
    assert fault.code == "ServiceUnavailable"
    assert registry.match("s3", "PutObject") is fault
    assert registry.match("kinesis", "GetRecords") is None
    assert registry.match(None, None) is None, "unsigned requests never match"
    clock.now += 9.9
    assert registry.match("s3", "GetObject") is fault
    clock.now += 0.1
    assert registry.match("s3", "PutObject") is None
    snapshot = registry.snapshot()
    assert snapshot["active"] == []
    assert [(f["id"], f["hits"], f["active"]) for f in snapshot["expired"]] == [(fault.id, 2, False)]


def test_operations_restrict_a_fault_case_insensitively() -> None:
    registry = FaultRegistry(clock=FakeClock())
    registry.add("kinesis", 400, 5, ["GetRecords", "getShardIterator"])
    assert registry.match("kinesis", "getrecords") is not None
    assert registry.match("kinesis", "GetShardIterator") is not None
    assert registry.match("kinesis", "PutRecords") is None
    assert registry.match("kinesis", None) is None, "an unknown operation only matches faults without a list"


def test_the_newest_matching_fault_wins_and_counts_the_hit() -> None:
    registry = FaultRegistry(clock=FakeClock())
    broad = registry.add("dynamodb", 500, 60)
    narrow = registry.add("dynamodb", 400, 60, ["UpdateItem"], code="ThrottlingException")
    assert registry.match("dynamodb", "UpdateItem") is narrow
    assert registry.match("dynamodb", "GetItem") is broad
    assert (broad.hits, narrow.hits) == (1, 1)


def test_default_codes_follow_service_and_status() -> None:
    registry = FaultRegistry(clock=FakeClock())
    assert registry.add("kinesis", 400, 1).code == "ProvisionedThroughputExceededException"
    assert registry.add("dynamodb", 400, 1).code == "ProvisionedThroughputExceededException"
    assert registry.add("s3", 500, 1).code == "InternalError"
    assert registry.add("s3", 403, 1).code == "AccessDenied"
    assert registry.add("kinesis", 500, 1).code == "InternalFailure"
    assert registry.add("monitoring", 429, 1).code == "TooManyRequestsException"
    assert registry.add("s3", 503, 1, code="SlowDown").code == "SlowDown"


def test_probability_fails_only_a_fraction_of_the_requests() -> None:
    draws = iter([0.1, 0.7, 0.2, 0.9])
    registry = FaultRegistry(clock=FakeClock(), chance=lambda: next(draws))
    fault = registry.add("s3", 503, 10, probability=0.5)
    outcomes = [registry.match("s3", "PutObject") is not None for _ in range(4)]
    assert outcomes == [True, False, True, False]
    assert fault.hits == 2


def test_times_fails_that_many_requests_then_the_fault_is_spent() -> None:
    registry = FaultRegistry(clock=FakeClock())
    fault = registry.add("kinesis", 400, 60, times=2)
    outcomes = [registry.match("kinesis", "PutRecords") is not None for _ in range(4)]
    assert outcomes == [True, True, False, False] and fault.hits == 2
    (listed,) = registry.snapshot()["expired"]
    assert (listed["times"], listed["hits"], listed["active"]) == (2, 2, False)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(FaultSpecError, match="times"):
            registry.add("kinesis", 400, 60, times=bad)  # type: ignore[arg-type]


def test_clear_forgets_active_and_expired_faults() -> None:
    clock = FakeClock()
    registry = FaultRegistry(clock=clock)
    registry.add("s3", 503, 1)
    clock.now += 2
    registry.add("s3", 503, 10)
    assert registry.clear() == 2
    assert registry.snapshot() == {"active": [], "expired": []}
    assert registry.match("s3", "PutObject") is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"service": "", "status": 503, "seconds": 1}, "service"),
        ({"service": 3, "status": 503, "seconds": 1}, "service"),
        ({"service": "s3", "status": 200, "seconds": 1}, "status"),
        ({"service": "s3", "status": "503", "seconds": 1}, "status"),
        ({"service": "s3", "status": 503, "seconds": 0}, "seconds"),
        ({"service": "s3", "status": 503, "seconds": True}, "seconds"),
        ({"service": "s3", "status": 503, "seconds": 1, "operations": "PutObject"}, "operations"),
        ({"service": "s3", "status": 503, "seconds": 1, "operations": []}, "operations"),
        ({"service": "s3", "status": 503, "seconds": 1, "probability": 0}, "probability"),
        ({"service": "s3", "status": 503, "seconds": 1, "code": ""}, "code"),
        ({"service": "s3", "status": 503, "seconds": 1, "key_prefix": ""}, "key_prefix"),
        ({"service": "s3", "status": 503, "seconds": 1, "key_prefix": 7}, "key_prefix"),
        ({"service": "kinesis", "status": 400, "seconds": 1, "key_prefix": "a/"}, "key_prefix"),
    ],
)
def test_unusable_faults_are_refused_with_the_field_named(arguments: dict[str, Any], message: str) -> None:
    registry = FaultRegistry(clock=FakeClock())
    with pytest.raises(FaultSpecError, match=message):
        registry.add(**arguments)
    assert registry.snapshot() == {"active": [], "expired": []}


def test_a_key_prefix_restricts_an_s3_fault_to_the_keys_under_it() -> None:
    registry = FaultRegistry(clock=FakeClock())
    registry.add("s3", 503, 10, ["PutObject"], key_prefix="out/_control/commits/")
    assert registry.match("s3", "PutObject", "out/_control/commits/shard-1/000.json") is not None
    assert registry.match("s3", "PutObject", "out/_control/intents/shard-1/a.json") is None
    assert registry.match("s3", "PutObject", None) is None, "a bucket-level request names no key"
    assert registry.match("s3", "GetObject", "out/_control/commits/shard-1/000.json") is None
    assert registry.snapshot()["active"][0]["key_prefix"] == "out/_control/commits/"


# ------------------------------------------------------------------------------------------------ request parsing
def test_the_service_comes_from_the_sigv4_credential_scope() -> None:
    assert request_service(signed("s3")) == "s3"
    assert request_service(signed("kinesis")) == "kinesis"
    presigned = {
        "QUERY_STRING": "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
        "testing%2F20261125%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=abc"
    }
    assert request_service(presigned) == "s3"
    assert request_service({"HTTP_AUTHORIZATION": "Bearer x", "QUERY_STRING": ""}) is None
    assert request_service({}) is None


def test_json_operations_come_from_the_target_header() -> None:
    environ = signed("kinesis", HTTP_X_AMZ_TARGET="Kinesis_20131202.GetRecords")
    assert request_operation(environ, "kinesis") == "GetRecords"
    environ = signed("dynamodb", HTTP_X_AMZ_TARGET="DynamoDB_20120810.UpdateItem")
    assert request_operation(environ, "dynamodb") == "UpdateItem"
    environ = signed("monitoring", QUERY_STRING="Action=PutMetricData&Version=2010-08-01")
    assert request_operation(environ, "monitoring") == "PutMetricData"


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/", "", "ListBuckets"),
        ("PUT", "/bucket", "", "CreateBucket"),
        ("HEAD", "/bucket", "", "HeadBucket"),
        ("GET", "/bucket", "list-type=2&prefix=rfm%2F", "ListObjectsV2"),
        ("GET", "/bucket", "prefix=rfm", "ListObjects"),
        ("PUT", "/bucket", "encryption", "PutBucketEncryption"),
        ("PUT", "/bucket", "publicAccessBlock", "PutPublicAccessBlock"),
        ("GET", "/bucket", "location", "GetBucketLocation"),
        ("POST", "/bucket", "delete", "DeleteObjects"),
        ("PUT", "/bucket/rfm/events/x.parquet", "", "PutObject"),
        ("GET", "/bucket/rfm/events/x.parquet", "", "GetObject"),
        ("HEAD", "/bucket/a/b", "", "HeadObject"),
        ("DELETE", "/bucket/a/b", "", "DeleteObject"),
        ("POST", "/bucket/a", "uploads", "CreateMultipartUpload"),
        ("PUT", "/bucket/a", "partNumber=1&uploadId=u", "UploadPart"),
        ("POST", "/bucket/a", "uploadId=u", "CompleteMultipartUpload"),
        ("DELETE", "/bucket/a", "uploadId=u", "AbortMultipartUpload"),
        ("GET", "/bucket/a", "tagging", "GetObjectTagging"),
    ],
)
def test_s3_operations_come_from_method_path_and_subresource(
    method: str, path: str, query: str, expected: str
) -> None:
    assert s3_operation(method, path, parse_qs(query, keep_blank_values=True)) == expected


def test_s3_copy_and_virtual_hosted_requests() -> None:
    assert s3_operation("PUT", "/bucket/new", {}, copy_source=True) == "CopyObject"
    assert s3_operation("PUT", "/key", {}, host="bucket.localhost:4566") == "PutObject"
    assert s3_operation("GET", "/", {"list-type": ["2"]}, host="bucket.s3.localhost:4566") == "ListObjectsV2"
    assert s3_operation("PUT", "/bucket", {}, host="127.0.0.1:4566") == "CreateBucket"


# ------------------------------------------------------------------------------------------------ the middleware
class Recorder:
    """A stand-in for moto: records what reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"moto"]


def call(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def control(app: Any, method: str, document: Any = None, remote: str = "127.0.0.1") -> tuple[str, Any]:
    data = b"" if document is None else json.dumps(document).encode()
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": CONTROL_PATH,
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
        "REMOTE_ADDR": remote,
    }
    status, _, body = call(app, environ)
    return status, json.loads(body)


@pytest.fixture
def app() -> Iterator[tuple[FaultInjectingApp, Recorder]]:
    inner = Recorder()
    yield FaultInjectingApp(inner, FaultRegistry()), inner


def test_requests_pass_through_without_faults(app: tuple[FaultInjectingApp, Recorder]) -> None:
    middleware, inner = app
    status, _, body = call(middleware, signed("s3", REQUEST_METHOD="PUT", PATH_INFO="/bucket/key"))
    assert (status, body, inner.calls) == ("200 OK", b"moto", ["/bucket/key"])


def test_control_api_adds_lists_and_clears_faults_without_reaching_moto(
    app: tuple[FaultInjectingApp, Recorder],
) -> None:
    middleware, inner = app
    status, fault = control(
        middleware, "POST", {"service": "s3", "status": 503, "seconds": 30, "operations": ["PutObject"]}
    )
    assert status.startswith("201")
    assert (fault["service"], fault["status"], fault["code"], fault["operations"]) == (
        "s3",
        503,
        "ServiceUnavailable",
        ["putobject"],
    )
    status, listed = control(middleware, "GET")
    assert [f["id"] for f in listed["active"]] == [fault["id"]]
    assert control(middleware, "DELETE") == ("200 OK", {"cleared": 1})
    assert control(middleware, "PUT")[0].startswith("405")
    assert inner.calls == []


def test_control_api_refuses_bad_faults_and_remote_clients(app: tuple[FaultInjectingApp, Recorder]) -> None:
    middleware, _ = app
    status, answer = control(middleware, "POST", {"service": "s3", "status": 503})
    assert status.startswith("400")
    assert "seconds" in answer["error"]
    status, answer = control(middleware, "POST", {"service": "s3", "status": 503, "seconds": 1, "x": 1})
    assert status.startswith("400")
    assert "unknown fields: x" in answer["error"]
    status, answer = control(middleware, "POST", ["not", "an", "object"])
    assert status.startswith("400")
    status, _ = control(middleware, "POST", {"service": "s3", "status": 503, "seconds": 1}, remote="10.1.2.3")
    assert status.startswith("403")
    assert control(middleware, "GET")[1] == {"active": [], "expired": []}


def test_s3_faults_answer_with_an_s3_error_document(app: tuple[FaultInjectingApp, Recorder]) -> None:
    middleware, inner = app
    middleware.registry.add("s3", 503, 30, ["PutObject"])
    status, headers, body = call(middleware, signed("s3", REQUEST_METHOD="PUT", PATH_INFO="/bucket/key"))
    assert status == "503 Service Unavailable"
    assert headers["Content-Type"] == "application/xml"
    assert b"<Error><Code>ServiceUnavailable</Code>" in body
    assert b"<Resource>/bucket/key</Resource>" in body
    assert headers["Content-Length"] == str(len(body))
    status, _, _ = call(middleware, signed("s3", REQUEST_METHOD="GET", PATH_INFO="/bucket/key"))
    assert status == "200 OK", "GetObject is not in the fault's operations"
    middleware.registry.add("s3", 500, 30)
    status, headers, body = call(middleware, signed("s3", REQUEST_METHOD="HEAD", PATH_INFO="/bucket/key"))
    assert (status, body, headers["Content-Length"]) == ("500 Internal Server Error", b"", "0")
    assert inner.calls == ["/bucket/key"]


def test_key_prefix_faults_read_the_key_in_path_and_virtual_hosted_style(
    app: tuple[FaultInjectingApp, Recorder],
) -> None:
    middleware, inner = app
    status, _ = control(
        middleware, "POST", {"service": "s3", "status": 503, "seconds": 30, "key_prefix": "p/c/"}
    )
    assert status.startswith("201")
    requests = {
        "/bucket/p/c/1.json": "503",  # path style: the key follows the bucket
        "/bucket/p/d/1.json": "200",
        "/p/c/2.json": "200",  # path style: "p" is the bucket, the key is c/2.json
    }
    for path, expected in requests.items():
        status, _, _ = call(middleware, signed("s3", REQUEST_METHOD="PUT", PATH_INFO=path))
        assert status.startswith(expected), path
    hosted = signed("s3", REQUEST_METHOD="PUT", PATH_INFO="/p/c/2.json", HTTP_HOST="bucket.localhost:4566")
    assert call(middleware, hosted)[0].startswith("503"), "virtual-hosted style: the whole path is the key"
    assert inner.calls == ["/bucket/p/d/1.json", "/p/c/2.json"]


def test_json_service_faults_answer_with_a_typed_json_error(app: tuple[FaultInjectingApp, Recorder]) -> None:
    middleware, inner = app
    middleware.registry.add("kinesis", 400, 30, ["GetRecords"])
    middleware.registry.add("dynamodb", 400, 30, code="ThrottlingException", message="slow down")
    environ = signed(
        "kinesis",
        HTTP_X_AMZ_TARGET="Kinesis_20131202.GetRecords",
        CONTENT_TYPE="application/x-amz-json-1.1",
    )
    status, headers, body = call(middleware, environ)
    assert status == "400 Bad Request"
    assert headers["Content-Type"] == "application/x-amz-json-1.1"
    assert json.loads(body)["__type"] == "ProvisionedThroughputExceededException"
    assert headers["x-amzn-ErrorType"].startswith("ProvisionedThroughputExceededException")
    environ = signed("dynamodb", HTTP_X_AMZ_TARGET="DynamoDB_20120810.UpdateItem")
    status, headers, body = call(middleware, environ)
    assert json.loads(body) == {
        "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
        "message": "slow down",
    }
    status, _, _ = call(middleware, signed("kinesis", HTTP_X_AMZ_TARGET="Kinesis_20131202.PutRecords"))
    assert status == "200 OK"
    assert inner.calls == ["/"]


# ------------------------------------------------------------------------------------------------ over HTTP
def client(service: str, endpoint: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
    )


@pytest.fixture
def endpoint(emulator_endpoint: str) -> Iterator[str]:
    clear_faults(emulator_endpoint)
    yield emulator_endpoint
    clear_faults(emulator_endpoint)


def test_boto3_reads_injected_s3_errors_as_real_ones_and_they_expire(endpoint: str) -> None:
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket="faults-unit")
    fault = set_fault(endpoint, "s3", 503, 60, operations=["PutObject"])
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket="faults-unit", Key="k", Body=b"x")
    assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert s3.list_objects_v2(Bucket="faults-unit")["KeyCount"] == 0, "other operations still work"
    assert [(f["id"], f["hits"]) for f in list_faults(endpoint)["active"]] == [(fault["id"], 1)]
    assert fault_hits(endpoint, fault["id"]) == 1
    clear_faults(endpoint)
    # counted once it has expired too (here: after the one request it was for)
    once = set_fault(endpoint, "s3", 503, 60, operations=["PutObject"], times=1)
    with pytest.raises(ClientError):
        s3.put_object(Bucket="faults-unit", Key="k", Body=b"x")
    assert [f["id"] for f in list_faults(endpoint)["expired"]] == [once["id"]]
    assert fault_hits(endpoint, once["id"]) == 1 and fault_hits(endpoint, fault["id"]) == 0
    clear_faults(endpoint)
    # A fault ends by itself (on the emulator's clock; this waits however slowly the machine goes)
    short = set_fault(endpoint, "s3", 503, 0.2, operations=["PutObject"])
    deadline = time.monotonic() + 30
    while list_faults(endpoint)["active"]:
        assert time.monotonic() < deadline, "the fault never expired"
        time.sleep(0.05)
    s3.put_object(Bucket="faults-unit", Key="k", Body=b"x")
    assert s3.list_objects_v2(Bucket="faults-unit")["KeyCount"] == 1, "PutObject works once the fault expired"
    assert [f["id"] for f in list_faults(endpoint)["expired"]] == [short["id"]]


def test_boto3_reads_injected_kinesis_and_dynamodb_throttling(endpoint: str) -> None:
    kinesis, dynamodb = client("kinesis", endpoint), client("dynamodb", endpoint)
    set_fault(endpoint, "kinesis", 400, 30, operations=["GetRecords"])
    set_fault(endpoint, "dynamodb", 400, 30, code="ThrottlingException")
    with pytest.raises(ClientError) as raised:
        kinesis.get_records(ShardIterator="x" * 40)  # answered by the fault, before moto looks at it
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    kinesis.list_streams()  # not in the fault's operations
    with pytest.raises(ClientError) as raised:
        dynamodb.list_tables()
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert [f["hits"] for f in list_faults(endpoint)["active"]] == [1, 1]
    assert clear_faults(endpoint) == 2
    kinesis.list_streams()
    dynamodb.list_tables()


def test_boto3_sees_a_key_prefix_fault_on_those_keys_only(endpoint: str) -> None:
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket="faults-keys")
    set_fault(endpoint, "s3", 503, 30, operations=["PutObject"], key_prefix="out/_control/commits/")
    s3.put_object(Bucket="faults-keys", Key="out/_control/intents/a b.json", Body=b"x")
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket="faults-keys", Key="out/_control/commits/shard%1/a b.json", Body=b"x")
    assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="faults-keys")["Contents"]]
    assert keys == ["out/_control/intents/a b.json"]


def test_invalid_faults_are_refused_over_http(endpoint: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        set_fault(endpoint, "s3", 200, 5)
    assert raised.value.code == 400
    assert "status" in json.loads(raised.value.read())["error"]
    assert list_faults(endpoint) == {"active": [], "expired": []}


def test_produce_counts_every_refused_call_in_its_summary(endpoint: str) -> None:
    """Its client has no retries of its own: each PutRecords the stream refused is one the producer retried,
    counted and logged. botocore's adaptive retries used to absorb them (5 per attempt): a run slowed by
    throttling said "0 throttled calls"."""
    import re

    from click.testing import CliRunner

    from clickstream.cli import main

    client("kinesis", endpoint).create_stream(StreamName="produce-refused", ShardCount=1)
    set_fault(endpoint, "kinesis", 400, 120, operations=["PutRecords"], times=3)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    result = CliRunner().invoke(
        main,
        ["produce", "--stream", "produce-refused", "--customers", "5", "--events", "50", "--no-progress"],
        env={**env, "AWS_REGION": "us-east-1"},
    )
    assert result.exit_code == 0, result.output
    (fault,) = list_faults(endpoint)["expired"]
    refused = re.search(r"(\d+) calls throttled or failed as a whole", result.output)
    assert refused is not None, result.output
    assert fault["hits"] == 3 and int(refused.group(1)) == 3, (fault, result.output)
    assert "put 50 records" in result.output
