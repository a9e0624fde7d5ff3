"""Idempotent creation of the stream and the bucket (``clickstream setup``), shared by the demo and the tests."""

from __future__ import annotations

import logging
from typing import Any, Final

from botocore.exceptions import ClientError

from clickstream.errors import FrontDoorError
from producer.kinesis_put import StreamNotWritableError, wait_until_writable
from runtime.aws import aws_client
from runtime.exit_codes import RUNTIME, USAGE
from runtime.settings import Settings

log = logging.getLogger(__name__)


def ensure_stream(kinesis: Any, name: str, shards: int, timeout: float = 60.0) -> str:
    """Create the stream if it does not exist and wait until it is ACTIVE (or UPDATING: a reshard or an encryption
    change under way, during which the stream is read and written as usual). Returns its ARN."""
    created = False
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        log.info("created stream %s with %d shards", name, shards)
        created = True
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise
        log.info("stream %s already exists", name)
    try:
        summary = wait_until_writable(kinesis, name, wait_seconds=timeout, poll_seconds=0.5)
    except StreamNotWritableError as not_writable:
        raise FrontDoorError(str(not_writable), USAGE if not_writable.lasting else RUNTIME) from None
    if summary["StreamStatus"] == "UPDATING":
        log.info("stream %s is UPDATING (a reshard or an encryption change): in use as it is", name)
        return str(summary["StreamARN"])
    open_shards = summary.get("OpenShardCount")
    if not created and open_shards is not None and open_shards != shards:
        log.warning(
            "stream %s has %d open shards, not %d: the shard count applies only when setup creates the "
            "stream (reshard with `aws kinesis update-shard-count`; the worker follows)",
            name,
            open_shards,
            shards,
        )
    return str(summary["StreamARN"])


def ensure_bucket(
    s3: Any, bucket: str, region: str, sse: str = "AES256", kms_key_id: str | None = None
) -> None:
    """Create the bucket if missing, with the default encryption the worker writes with (SSE-S3, or SSE-KMS with
    its key and an S3 Bucket Key) and public access blocked. An existing bucket is left as its owner set it (the
    worker sends its encryption with every PUT anyway); a default encryption other than the worker's is reported."""
    try:
        s3.head_bucket(Bucket=bucket)
        log.info("bucket %s already exists: its settings are left as they are", bucket)
        _report_other_encryption(s3, bucket, sse, kms_key_id)
        _report_public_access(s3, bucket)
        return
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
        # one KMS data key per bucket period, not per object: cost and throttling
        rule["BucketKeyEnabled"] = True
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [rule]})
    s3.put_public_access_block(
        Bucket=bucket, PublicAccessBlockConfiguration=dict.fromkeys(_PUBLIC_ACCESS_BLOCK, True)
    )


def _report_other_encryption(s3: Any, bucket: str, sse: str, kms_key_id: str | None) -> None:
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        default = rules[0]["ApplyServerSideEncryptionByDefault"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ServerSideEncryptionConfigurationNotFoundError":
            log.warning(
                "bucket %s has no default encryption (a setup stopped before setting it leaves it so): the worker "
                "encrypts every object it writes, other writers' objects are not; set it with `aws s3api "
                "put-bucket-encryption` (setup does not change an existing bucket)",
                bucket,
            )
        return  # else not allowed to read it: nothing to compare
    except (KeyError, IndexError):
        return  # none set in a form to compare
    theirs = (default.get("SSEAlgorithm"), default.get("KMSMasterKeyID") if sse == "aws:kms" else None)
    ours = (sse, kms_key_id if sse == "aws:kms" else None)
    if theirs[0] != ours[0] or not _same_key(theirs[1], ours[1]):
        log.warning(
            "bucket %s's default encryption is %s, the worker writes with %s: every object the worker writes is "
            "encrypted as it says; other writers get the bucket's default (setup does not change an existing bucket)",
            bucket,
            "/".join(str(part) for part in theirs if part),
            "/".join(str(part) for part in ours if part),
        )


def _report_public_access(s3: Any, bucket: str) -> None:
    """Say so when public access is not blocked on an existing bucket (setup blocks it on a bucket it creates; a
    setup stopped half way leaves it open)."""
    try:
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchPublicAccessBlockConfiguration":
            return  # not allowed to read it
        block = {}
    open_settings = [name for name in _PUBLIC_ACCESS_BLOCK if not block.get(name)]
    if open_settings:
        log.warning(
            "bucket %s does not block public access (%s off; a setup stopped before blocking it leaves it so): set "
            "them with `aws s3api put-public-access-block` (setup does not change an existing bucket)",
            bucket,
            ", ".join(open_settings),
        )


_PUBLIC_ACCESS_BLOCK: Final = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)


def _same_key(a: str | None, b: str | None) -> bool:
    """One KMS key named two ways (a key id, or the ARN that ends with it); an alias cannot be told apart offline
    and counts as the same (no warning where none may be due)."""
    if not a or not b or a == b:
        return True
    if a.startswith("alias/") or b.startswith("alias/") or ":alias/" in a + b:
        return True
    return a.endswith("/" + b) or b.endswith("/" + a)


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
