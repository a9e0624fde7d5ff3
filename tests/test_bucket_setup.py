"""Bucket set-up matches the settings the worker writes with, and the offered bucket policy stays in sync."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from clickstream.resources import bucket_policy, ensure_bucket
from tests.moto_support import REGION, isolate_environment

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    isolate_environment(monkeypatch)
    with mock_aws():
        yield boto3.client("s3", region_name=REGION)


def default_encryption(s3: Any, bucket: str) -> dict[str, Any]:
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    return dict(rule)


def test_setup_with_kms_makes_the_bucket_default_kms_with_that_key_and_a_bucket_key(s3: Any) -> None:
    ensure_bucket(s3, "kms-bucket", REGION, "aws:kms", KEY_ARN)
    rule = default_encryption(s3, "kms-bucket")
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": KEY_ARN,
    }
    assert rule["BucketKeyEnabled"] is True


def test_setup_defaults_to_sse_s3_and_leaves_an_existing_bucket_as_its_owner_set_it(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A bucket that exists is someone's: setup must not change its encryption (a KMS bucket set to SSE-S3 by a
    worker left at the default would be a downgrade); it says where it differs from the worker's."""
    ensure_bucket(s3, "plain-bucket", REGION)
    assert default_encryption(s3, "plain-bucket")["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    ensure_bucket(s3, "kms-bucket", REGION, "aws:kms", KEY_ARN)
    with caplog.at_level("WARNING"):
        ensure_bucket(s3, "kms-bucket", REGION)  # the worker's default, SSE-S3
        ensure_bucket(s3, "plain-bucket", REGION)
    assert default_encryption(s3, "kms-bucket")["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": KEY_ARN,
    }
    [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert (
        "kms-bucket's default encryption is aws:kms" in warning and "the worker writes with AES256" in warning
    )


def test_setup_again_after_one_stopped_half_way_says_what_the_bucket_lacks(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A setup stopped after creating the bucket left it without default encryption or a public access block, and
    a setup again said it existed and was ready, with no word of either."""
    s3.create_bucket(Bucket="half-bucket")
    with caplog.at_level("WARNING"):
        ensure_bucket(s3, "half-bucket", REGION)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("half-bucket has no default encryption" in warning for warning in warnings), warnings
    assert any("half-bucket does not block public access (BlockPublicAcls" in warning for warning in warnings)
    caplog.clear()
    with caplog.at_level("WARNING"):
        ensure_bucket(s3, "whole-bucket", REGION)
        ensure_bucket(s3, "whole-bucket", REGION)  # as setup made it: nothing to say
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


def test_setup_of_an_existing_stream_with_another_shard_count_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from clickstream.resources import ensure_stream

    with mock_aws():
        kinesis = boto3.client("kinesis", region_name=REGION)
        ensure_stream(kinesis, "events", 2)
        with caplog.at_level("WARNING"):
            ensure_stream(kinesis, "events", 2)
            assert not [record for record in caplog.records if record.levelname == "WARNING"]
            ensure_stream(kinesis, "events", 3)
        assert (
            kinesis.describe_stream_summary(StreamName="events")["StreamDescriptionSummary"]["OpenShardCount"]
            == 2
        )
    [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "has 2 open shards, not 3" in warning


class _ExistingStream:
    """A Kinesis client whose stream exists, in ``status`` (moto never reports UPDATING or DELETING)."""

    def __init__(self, status: str) -> None:
        self.status = status

    def create_stream(self, **_arguments: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "ResourceInUseException", "Message": "exists"}}, "CreateStream")

    def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:  # boto3 names it so
        arn = f"arn:aws:kinesis:{REGION}:123456789012:stream/{StreamName}"
        return {
            "StreamDescriptionSummary": {"StreamStatus": self.status, "StreamARN": arn, "OpenShardCount": 4}
        }


def test_setup_takes_a_stream_being_updated_as_it_is_and_names_one_being_deleted() -> None:
    """A reshard (UPDATING) made setup wait a minute, fail, and never reach the bucket; a stream being deleted
    waited as long, to say it was 'still DELETING'."""
    from clickstream.errors import FrontDoorError
    from clickstream.resources import ensure_stream

    arn = ensure_stream(_ExistingStream("UPDATING"), "events", 2, timeout=0.0)
    assert arn.endswith(":stream/events")
    with pytest.raises(
        FrontDoorError,
        match=r"stream events is being deleted \(DELETING\): `clickstream setup` creates it anew",
    ):
        ensure_stream(_ExistingStream("DELETING"), "events", 2, timeout=30.0)


def test_the_offered_policy_refuses_plain_http_and_puts_without_the_workers_encryption(s3: Any) -> None:
    policy = bucket_policy("kms-bucket", "aws:kms", KEY_ARN)
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    assert by_sid["DenyInsecureTransport"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert by_sid["DenyPutsWithoutTheWorkersEncryption"]["Condition"] == {
        "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}
    }
    assert by_sid["DenyPutsWithAnotherKmsKey"]["Condition"] == {
        "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": KEY_ARN}
    }
    assert all(statement["Effect"] == "Deny" for statement in policy["Statement"])
    ensure_bucket(s3, "kms-bucket", REGION, "aws:kms", KEY_ARN)
    s3.put_bucket_policy(Bucket="kms-bucket", Policy=json.dumps(policy))  # S3 accepts it as a valid policy
    assert json.loads(s3.get_bucket_policy(Bucket="kms-bucket")["Policy"]) == policy


def test_the_policy_files_in_deploy_are_the_ones_the_code_builds() -> None:
    kms = bucket_policy(
        "${BUCKET}", "aws:kms", "arn:aws:kms:${AWS_REGION}:${AWS_ACCOUNT_ID}:key/${KMS_KEY_ID}"
    )
    files = {
        path.name: json.loads(path.read_text(encoding="utf-8")) for path in DEPLOY.glob("s3-bucket-policy*")
    }
    assert files == {
        "s3-bucket-policy-sse-s3.json": bucket_policy("${BUCKET}", "AES256"),
        "s3-bucket-policy-sse-kms.json": kms,
    }


def test_a_kms_key_named_by_id_or_by_arn_is_the_same_key() -> None:
    from clickstream.resources import _same_key

    key_id = KEY_ARN.rsplit("/", 1)[-1]
    assert _same_key(KEY_ARN, key_id) and _same_key(key_id, KEY_ARN) and _same_key(KEY_ARN, KEY_ARN)
    assert not _same_key(KEY_ARN, "0000aaaa-bbbb-cccc-dddd-eeeeffff0000")
