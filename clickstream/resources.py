"""Idempotent creation of the stream and the bucket (``clickstream setup``), shared by the demo and the tests."""

from __future__ import annotations

import logging
import time
from typing import Any

from botocore.exceptions import ClientError

from runtime.aws import aws_client
from runtime.settings import Settings

log = logging.getLogger(__name__)


def ensure_stream(kinesis: Any, name: str, shards: int, timeout: float = 60.0) -> str:
    """Create the stream if it does not exist and wait until it is ACTIVE. Returns its ARN."""
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        log.info("created stream %s with %d shards", name, shards)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise
        log.info("stream %s already exists", name)
    deadline = time.monotonic() + timeout
    while True:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            return str(summary["StreamARN"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {name} is still {summary['StreamStatus']} after {timeout:.0f}s")
        time.sleep(0.5)


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create the bucket if missing, with default encryption and public access blocked."""
    try:
        s3.head_bucket(Bucket=bucket)
        log.info("bucket %s already exists", bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
        arguments: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**arguments)
        log.info("created bucket %s", bucket)
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def setup_resources(settings: Settings) -> str:
    """Stream and bucket for these settings; safe to run again. Returns the stream ARN."""
    arn = ensure_stream(aws_client("kinesis", settings), settings.stream_name, settings.stream_shards)
    ensure_bucket(aws_client("s3", settings), settings.bucket, settings.aws_region)
    return arn
