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
POLICY_FILE = Path(__file__).resolve().parents[1] / "deploy" / "s3-bucket-policy.json"


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


def test_setup_defaults_to_sse_s3_and_running_it_again_switches_an_existing_bucket(s3: Any) -> None:
    ensure_bucket(s3, "plain-bucket", REGION)
    assert default_encryption(s3, "plain-bucket")["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    ensure_bucket(s3, "plain-bucket", REGION, "aws:kms", KEY_ARN)
    assert (
        default_encryption(s3, "plain-bucket")["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
        == "aws:kms"
    )


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


def test_the_policy_file_in_deploy_is_the_one_the_code_builds() -> None:
    template = bucket_policy("${BUCKET}", "aws:kms", "arn:aws:kms:${REGION}:${ACCOUNT_ID}:key/${KMS_KEY_ID}")
    assert json.loads(POLICY_FILE.read_text(encoding="utf-8")) == template
