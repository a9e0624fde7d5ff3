"""Specification of the settings object (environment, overrides, errors) and of the `clickstream` command line."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws
from pydantic import ValidationError

from clickstream.cli import main
from runtime.settings import ConfigError, Settings, env_var_name, load_settings

COMMANDS = ["emulator", "setup", "generate", "produce", "worker", "summary", "demo"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CLICKSTREAM_* or endpoint from the caller's shell; the CLI's logging setup is undone after each test."""
    for name in list(os.environ):
        if name.startswith("CLICKSTREAM_") or name in (
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_PROFILE",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------------- settings
def test_settings_are_read_from_clickstream_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_STREAM_NAME", "clicks-from-env")
    monkeypatch.setenv("CLICKSTREAM_BUCKET", "bucket-from-env")
    monkeypatch.setenv("CLICKSTREAM_PREFIX", "/lake/rfm/")
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_RECORDS", "1234")
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_SECONDS", "2.5")
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", "/var/lib/clickstream")
    monkeypatch.setenv("CLICKSTREAM_SSE", "aws:kms")
    monkeypatch.setenv("CLICKSTREAM_SSE_KMS_KEY_ID", "alias/rfm")
    monkeypatch.setenv("CLICKSTREAM_MIN_EVENT_TIME", "2020-01-01T00:00:00+00:00")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")

    settings = load_settings()

    assert settings.stream_name == "clicks-from-env"
    assert settings.bucket == "bucket-from-env"
    assert settings.prefix == "lake/rfm"
    assert settings.output_prefix("events") == "lake/rfm/events/"
    assert settings.flush_max_records == 1234
    assert settings.flush_max_seconds == 2.5
    assert settings.state_dir == Path("/var/lib/clickstream")
    assert (settings.sse, settings.sse_kms_key_id) == ("aws:kms", "alias/rfm")
    assert settings.min_event_time.isoformat() == "2020-01-01T00:00:00+00:00"
    assert settings.aws_endpoint_url == "http://127.0.0.1:4566"
    assert settings.aws_region == "eu-west-1"


def test_defaults_apply_without_any_environment() -> None:
    settings = load_settings()
    assert (settings.stream_name, settings.bucket, settings.prefix, settings.sse) == (
        "clickstream",
        "clickstream-rfm",
        "rfm",
        "AES256",
    )
    assert settings.aws_endpoint_url is None
    assert settings.aws_region == "us-east-1"


def test_explicit_overrides_win_over_the_environment_and_none_means_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLICKSTREAM_STREAM_NAME", "from-env")
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_RECORDS", "10")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")

    settings = load_settings(
        stream_name="from-flag", flush_max_records=None, aws_endpoint_url="http://localhost:1"
    )

    assert settings.stream_name == "from-flag"
    assert settings.flush_max_records == 10
    assert settings.aws_endpoint_url == "http://localhost:1"


def test_unrelated_clickstream_variables_do_not_break_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    # read by the CLI and the log setup, not by Settings
    monkeypatch.setenv("CLICKSTREAM_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("CLICKSTREAM_LOG_FORMAT", "text")
    monkeypatch.setenv("CLICKSTREAM_LOG_SOCKET", "/tmp/clickstream.sock")
    assert load_settings().stream_name == "clickstream"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLICKSTREAM_FLUSH_MAX_RECORDS", "-1"),
        ("CLICKSTREAM_FLUSH_MAX_RECORDS", "many"),
        ("CLICKSTREAM_FLUSH_MAX_SECONDS", "0"),
        ("CLICKSTREAM_FLUSH_MAX_BYTES", "10"),
        ("CLICKSTREAM_BUCKET", "Not_A_Bucket"),
        ("CLICKSTREAM_BUCKET", "ab"),
        ("CLICKSTREAM_PREFIX", "has space"),
        ("CLICKSTREAM_SSE", "none"),
        ("CLICKSTREAM_STREAM_SHARDS", "0"),
        ("CLICKSTREAM_KCL_MAX_RECORDS", "10001"),
        ("CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS", "0"),
        ("CLICKSTREAM_INITIAL_POSITION", "AT_TIMESTAMP"),
        ("CLICKSTREAM_MIN_EVENT_TIME", "2000-01-01T00:00:00"),
    ],
)
def test_an_invalid_environment_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert variable in str(raised.value)
    assert repr(value) in str(raised.value)


def test_kms_encryption_without_a_key_id_is_a_config_error_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLICKSTREAM_SSE", "aws:kms")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "CLICKSTREAM_SSE" in str(raised.value)
    assert "CLICKSTREAM_SSE_KMS_KEY_ID" in str(raised.value)


def test_a_stuck_shard_timeout_not_above_the_flush_interval_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_SECONDS", "600")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "CLICKSTREAM_STUCK_SHARD_SECONDS" in str(raised.value)
    assert "CLICKSTREAM_FLUSH_MAX_SECONDS" in str(raised.value)
    assert load_settings(stuck_shard_seconds=601).flush_max_seconds == 600


def test_an_invalid_override_is_reported_under_its_variable_name() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(bucket="UPPER")
    assert "CLICKSTREAM_BUCKET" in str(raised.value)


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(flush_max_rows=3)
    assert "flush_max_rows" in str(raised.value)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.bucket = "other-bucket"  # type: ignore[misc]


def test_every_field_is_documented_and_has_an_env_var_name() -> None:
    for name, info in Settings.model_fields.items():
        assert info.description, name
        assert env_var_name(name).isupper()


# ---------------------------------------------------------------------------------------------------- CLI help
def invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


def test_the_cli_offers_every_documented_command() -> None:
    assert set(COMMANDS) <= set(main.commands)
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
    assert "CLICKSTREAM_LOG_LEVEL" in result.output


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"{command} [OPTIONS]" in result.output


@pytest.mark.parametrize(
    ("command", "variables"),
    [
        (
            "worker",
            [
                "CLICKSTREAM_STREAM_NAME",
                "CLICKSTREAM_BUCKET",
                "CLICKSTREAM_PREFIX",
                "CLICKSTREAM_STATE_DIR",
                "CLICKSTREAM_WORKER_ID",
                "CLICKSTREAM_FLUSH_MAX_RECORDS",
                "CLICKSTREAM_FLUSH_MAX_SECONDS",
            ],
        ),
        ("setup", ["CLICKSTREAM_STREAM_NAME", "CLICKSTREAM_STREAM_SHARDS", "CLICKSTREAM_BUCKET"]),
        ("produce", ["CLICKSTREAM_STREAM_NAME"]),
        ("summary", ["CLICKSTREAM_BUCKET", "CLICKSTREAM_PREFIX"]),
    ],
)
def test_help_names_the_environment_variable_behind_each_setting_flag(
    command: str, variables: list[str]
) -> None:
    output = " ".join(invoke(command, "--help").output.split())  # undo line wrapping
    for variable in variables:
        assert f"env: {variable};" in output, variable


# ---------------------------------------------------------------------------------------------------- CLI worker
@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Replaces the KCL supervisor: records the settings it would have run with, exits 0."""
    from consumer import kcl_worker

    started: list[Settings] = []

    class RecordingWorker:
        def __init__(self, settings: Settings, **_: Any) -> None:
            started.append(settings)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(kcl_worker, "KclWorker", RecordingWorker)
    return started


def test_worker_with_an_invalid_environment_value_exits_with_a_usage_error_before_starting(
    monkeypatch: pytest.MonkeyPatch, fake_worker: list[Settings]
) -> None:
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_RECORDS", "-1")

    result = CliRunner().invoke(main, ["--log-format", "text", "worker"])

    assert result.exit_code == 2, result.output
    assert "CLICKSTREAM_FLUSH_MAX_RECORDS" in result.output
    assert fake_worker == []


def test_worker_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, fake_worker: list[Settings]
) -> None:
    monkeypatch.setenv("CLICKSTREAM_STREAM_NAME", "from-env")
    monkeypatch.setenv("CLICKSTREAM_BUCKET", "bucket-from-env")

    result = CliRunner().invoke(
        main, ["--log-format", "text", "worker", "--stream", "from-flag", "--flush-max-records", "7"]
    )

    assert result.exit_code == 0, result.output
    (settings,) = fake_worker
    assert (settings.stream_name, settings.bucket, settings.flush_max_records) == (
        "from-flag",
        "bucket-from-env",
        7,
    )


def test_a_worker_start_failure_is_reported_as_a_cli_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    result = CliRunner().invoke(
        main, ["--log-format", "text", "worker", "--state-dir", str(tmp_path / "state")]
    )

    assert result.exit_code == 1
    assert "no Java runtime found" in result.output


# ---------------------------------------------------------------------------------------------------- CLI generate
def test_generate_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (first, second):
        result = invoke(
            "generate", "--customers", "20", "--events", "300", "--seed", "1", "--output", str(path)
        )
        assert result.exit_code == 0, result.output

    assert first.read_bytes() == second.read_bytes()
    assert len(first.read_bytes().splitlines()) == 300
    assert "wrote 300 records" in result.output


def test_generate_with_a_malformed_rate_adds_records_and_keeps_the_valid_ones(tmp_path: Path) -> None:
    clean, dirty = tmp_path / "clean.jsonl", tmp_path / "dirty.jsonl"
    invoke("generate", "--customers", "20", "--events", "300", "--seed", "1", "--output", str(clean))
    result = invoke(
        "generate",
        "--customers",
        "20",
        "--events",
        "300",
        "--seed",
        "1",
        "--malformed-rate",
        "0.1",
        "--output",
        str(dirty),
    )

    assert result.exit_code == 0, result.output
    clean_lines = clean.read_bytes().splitlines()
    dirty_lines = dirty.read_bytes().splitlines()
    assert len(dirty_lines) == 330
    assert not Counter(clean_lines) - Counter(dirty_lines), (
        "the valid events are unchanged by injected errors"
    )


def test_generate_to_stdout_writes_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    invoke("generate", "--customers", "5", "--events", "40", "--seed", "9", "--output", str(path))
    result = invoke("generate", "--customers", "5", "--events", "40", "--seed", "9", "--output", "-")
    assert result.stdout_bytes == path.read_bytes()


# ---------------------------------------------------------------------------------------------------- CLI setup
def test_setup_creates_the_stream_and_an_encrypted_private_bucket_and_can_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    arguments = [
        "--log-format",
        "text",
        "setup",
        "--stream",
        "clicks-setup",
        "--shards",
        "2",
        "--bucket",
        "clicks-setup-bucket",
    ]
    with mock_aws():
        first = CliRunner().invoke(main, arguments)
        second = CliRunner().invoke(main, arguments)

        kinesis = boto3.client("kinesis", region_name="us-east-1")
        s3 = boto3.client("s3", region_name="us-east-1")
        summary = kinesis.describe_stream_summary(StreamName="clicks-setup")["StreamDescriptionSummary"]
        encryption = s3.get_bucket_encryption(Bucket="clicks-setup-bucket")
        public_access = s3.get_public_access_block(Bucket="clicks-setup-bucket")[
            "PublicAccessBlockConfiguration"
        ]
        streams = kinesis.list_streams()["StreamNames"]

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "clicks-setup" in first.output
    assert "s3://clicks-setup-bucket" in first.output
    assert streams == ["clicks-setup"]
    assert (summary["StreamStatus"], summary["OpenShardCount"]) == ("ACTIVE", 2)
    rule = encryption["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(public_access.values())
