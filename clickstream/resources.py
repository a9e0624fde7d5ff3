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


def ensure_bucket(
    s3: Any, bucket: str, region: str, sse: str = "AES256", kms_key_id: str | None = None
) -> None:
    """Create the bucket if missing, with the default encryption the worker writes with (SSE-S3, or SSE-KMS with
    its key and an S3 Bucket Key) and public access blocked."""
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
    default: dict[str, Any] = {"SSEAlgorithm": sse}
    rule: dict[str, Any] = {"ApplyServerSideEncryptionByDefault": default}
    if sse == "aws:kms":
        if kms_key_id:
            default["KMSMasterKeyID"] = kms_key_id
        rule["BucketKeyEnabled"] = (
            True  # one KMS data key per bucket period, not per object: cost and throttling
        )
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [rule]})
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def bucket_policy(bucket: str, sse: str = "AES256", kms_key_arn: str | None = None) -> dict[str, Any]:
    """A bucket policy that refuses requests without TLS and object PUTs without the worker's encryption.

    Offered, not applied by ``setup`` (a bucket policy is the account owner's decision): see deploy/README.md.
    """
    statements: list[dict[str, Any]] = [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyPutsWithoutTheWorkersEncryption",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{bucket}/*",
            "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": sse}},
        },
    ]
    if sse == "aws:kms" and kms_key_arn and kms_key_arn.startswith("arn:"):
        statements.append(
            {
                "Sid": "DenyPutsWithAnotherKmsKey",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
                "Condition": {
                    "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": kms_key_arn}
                },
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def setup_resources(settings: Settings) -> str:
    """Stream and bucket for these settings; safe to run again. Returns the stream ARN."""
    arn = ensure_stream(aws_client("kinesis", settings), settings.stream_name, settings.stream_shards)
    ensure_bucket(
        aws_client("s3", settings),
        settings.bucket,
        settings.aws_region,
        settings.sse,
        settings.sse_kms_key_id,
    )
    return arn
