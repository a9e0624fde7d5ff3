"""In-process moto for the adapter tests: an isolated environment and a bucket (and streams) for a module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

REGION = "us-east-1"


def isolate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, no endpoint override and no CLICKSTREAM_* leaking in from the caller's shell."""
    for name in list(os.environ):
        if name.startswith("CLICKSTREAM_") or name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)


@contextmanager
def moto_bucket(bucket: str, streams: dict[str, int] | None = None) -> Iterator[Any]:
    """One moto for a whole module (starting moto costs more than most tests): an S3 client with ``bucket``."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch)
        with mock_aws():
            client = boto3.client("s3", region_name=REGION)
            client.create_bucket(Bucket=bucket)
            for name, shards in (streams or {}).items():
                boto3.client("kinesis", region_name=REGION).create_stream(StreamName=name, ShardCount=shards)
            yield client


def emulator_client(service: str, env: dict[str, str]) -> Any:
    """A client of the embedded endpoint a test's worker environment (``emulator_environment``) points at."""
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


class CountingReads:
    """An S3 client that records the keys read with GetObject."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_object(self, **kwargs: Any) -> Any:
        self.read.append(kwargs["Key"])
        return self.client.get_object(**kwargs)


class WriteLandsThen412:
    """An S3 client whose first PutObject of ``key`` (once ``armed``) lands and then answers 412 PreconditionFailed:
    what botocore's retry of a conditional PUT whose answer was lost sees."""

    def __init__(self, client: Any, key: str, *, armed: bool = True) -> None:
        self.client, self.key, self.armed, self.answered = client, key, armed, False

    def put_object(self, **kwargs: Any) -> Any:
        answer = self.client.put_object(**kwargs)
        if self.armed and kwargs["Key"] == self.key:
            self.armed, self.answered = False, True
            raise ClientError(
                {"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}},
                "PutObject",
            )
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)
