"""Specification of the settings object (environment, overrides, errors) and of the `clickstream` command line."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from moto import mock_aws
from pydantic import ValidationError

from clickstream.cli import main
from clickstream.summary import TOP_COLUMNS
from runtime.settings import (
    OTHER_VARIABLES,
    SETTINGS_FILE_ENV,
    ConfigError,
    Settings,
    aws_environment,
    env_var_name,
    load_settings,
    settings_for_process,
    unknown_variables,
    write_settings_file,
)
from schemas.control import CommitRecord
from schemas.layout import FlushName, OutputLayout
from schemas.positions import Position

COMMANDS = ["emulator", "setup", "generate", "produce", "worker", "replay", "health", "summary", "demo"]


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
    assert settings.layout.output_prefix("events") == "lake/rfm/events/"
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


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("CLICKSTREAM_KCL_JAVA_HEAP", "abc", "a whole number followed by k, m or g"),
        ("CLICKSTREAM_WORKER_ID", "", "must not be empty"),
        ("CLICKSTREAM_STREAM_NAME", "has space", "letters, digits"),
        ("CLICKSTREAM_APPLICATION_NAME", "x", "letters, digits"),
        ("CLICKSTREAM_MIN_EVENT_TIME", "20260101", "not a number"),
        ("CLICKSTREAM_MIN_EVENT_TIME", "01/01/2020", "or a date (2000-01-01, read as UTC midnight)"),
    ],
)
def test_a_value_of_the_wrong_shape_is_explained_in_words_not_a_regex(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert words in str(raised.value) and "pattern" not in str(raised.value), raised.value


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        ("CLICKSTREAM_SSE", " (AES256)"),
        ("CLICKSTREAM_PREFIX", " (rfm)"),
        ("CLICKSTREAM_FLUSH_MAX_RECORDS", " (50000)"),
        ("CLICKSTREAM_WORKER_ID", ""),  # defaults to the host name: no plain value to name
        ("CLICKSTREAM_JAVA", ""),  # was read as unset: JAVA_HOME's or PATH's java ran instead, without a word
        ("CLICKSTREAM_SSE_KMS_KEY_ID", ""),
    ],
)
def test_an_empty_variable_is_refused_with_one_explanation(
    monkeypatch: pytest.MonkeyPatch, variable: str, default: str
) -> None:
    """`X=` or an unset ${X:-} in a template: each setting used to say something else ("should be 'AES256' or
    'aws:kms'", "unable to parse string as an integer", ...); the log options even read it as unset."""
    monkeypatch.setenv(variable, "")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert f"{variable}: empty: leave it out to use the default{default}, or give a value (" in str(
        raised.value
    )


@pytest.mark.parametrize(
    ("variable", "default"), [("CLICKSTREAM_LOG_LEVEL", "INFO"), ("CLICKSTREAM_LOG_FORMAT", "auto")]
)
def test_an_empty_log_variable_is_refused_like_every_setting(variable: str, default: str) -> None:
    # (not health: it answers 1 for any bad setting, as Docker reserves 2)
    result = run_cli("summary", env={variable: ""})
    assert_one_line(result, 2, f"{variable}: empty: leave it out to use the default ({default})")
    given = run_cli(
        "--log-level",
        "INFO",
        "--log-format",
        "json",
        "generate",
        "--events",
        "1",
        "-o",
        "-",
        env={variable: ""},
    )
    assert given.returncode == 0, "a flag given wins over the empty variable"


def test_a_minimum_event_time_may_be_a_date_read_as_utc_midnight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_MIN_EVENT_TIME", "2026-01-01")
    assert load_settings().min_event_time == datetime(2026, 1, 1, tzinfo=UTC)


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
        ("CLICKSTREAM_PREFIX", ""),  # keys at the bucket's root, outside what the IAM policy grants
        ("CLICKSTREAM_PREFIX", "/"),
        ("CLICKSTREAM_STUCK_SHARD_SECONDS", "inf"),  # would turn the check off without saying so
        ("CLICKSTREAM_FLUSH_MAX_SECONDS", "nan"),
        ("CLICKSTREAM_STREAM_NAME", ""),
        ("CLICKSTREAM_STREAM_NAME", "has space"),
        ("CLICKSTREAM_SSE", "none"),
        ("CLICKSTREAM_STREAM_SHARDS", "0"),
        ("CLICKSTREAM_KCL_MAX_RECORDS", "10001"),
        ("CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS", "0"),
        ("CLICKSTREAM_INITIAL_POSITION", "AT_TIMESTAMP"),
        ("CLICKSTREAM_MIN_EVENT_TIME", "2000-01-01T00:00:00"),
        ("CLICKSTREAM_KCL_JAVA_HEAP", "200m"),  # below the daemon's initial heap: the JVM would not start
        ("CLICKSTREAM_KCL_JAVA_HEAP", "0g"),
        ("CLICKSTREAM_WORKER_ID", ""),  # an unset ${...} in a task template: the KCL fails with a stack trace
        ("CLICKSTREAM_WORKER_ID", " "),
        ("CLICKSTREAM_APPLICATION_NAME", ""),  # names the lease table: DynamoDB's rules
        ("CLICKSTREAM_APPLICATION_NAME", "has space"),
        ("CLICKSTREAM_MIN_EVENT_TIME", "20260101"),  # a number: Unix seconds, 1970-08-23
        ("CLICKSTREAM_MIN_EVENT_TIME", "0"),
        ("CLICKSTREAM_BUCKET", "a..b"),  # S3's rules: CreateBucket would refuse them at run time
        ("CLICKSTREAM_BUCKET", "a.-b"),
        ("CLICKSTREAM_BUCKET", "192.168.5.4"),
        ("CLICKSTREAM_BUCKET", "xn--bucket"),
        ("CLICKSTREAM_BUCKET", "data-s3alias"),
        # accepted at start, these used to end every shard processor (OverflowError, TypeError) on every restart
        ("CLICKSTREAM_DEDUPE_WINDOW_DAYS", "99999999999999"),
        ("CLICKSTREAM_MAX_RECORD_BYTES", "99999999999999999999999"),
        ("CLICKSTREAM_MAX_FUTURE_SKEW_SECONDS", "9300000000000"),  # overflowed the fast path's microseconds
        ("CLICKSTREAM_MAX_REVENUE", "99999999999999999999"),
        # the KCL read a number it cannot hold as its own default, without a word
        ("CLICKSTREAM_KCL_FAILOVER_TIME_MILLIS", "99999999999999999999"),
        ("CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS", "86400001"),
        ("CLICKSTREAM_KCL_IDLE_TIME_BETWEEN_READS_MILLIS", "86400001"),
        ("CLICKSTREAM_KCL_SHARD_SYNC_INTERVAL_MILLIS", "86400001"),
        ("CLICKSTREAM_KCL_LEASE_ASSIGNMENT_INTERVAL_MILLIS", "86400001"),
        ("CLICKSTREAM_KCL_MAX_LEASES_FOR_WORKER", "2147483648"),
        # a duration a clock or a timedelta cannot hold ('unexpected OverflowError: date value out of range')
        ("CLICKSTREAM_STUCK_SHARD_SECONDS", "1e13"),
        ("CLICKSTREAM_FLUSH_MAX_SECONDS", "604801"),
        ("CLICKSTREAM_STOP_DEADLINE_SECONDS", "604801"),
        ("CLICKSTREAM_NO_LEASE_UNHEALTHY_SECONDS", "604801"),
        ("CLICKSTREAM_FLUSH_CAUGHT_UP_MIN_SECONDS", "604801"),
        ("CLICKSTREAM_STATE_SYNC_SECONDS", "604801"),
        ("CLICKSTREAM_SNAPSHOT_MIN_NEW_FRACTION", "25"),  # a percent, read as 25 times the state
        # '..' made summary --download write outside its folder; '.' and '' name the same keys another way
        ("CLICKSTREAM_PREFIX", "../.."),
        ("CLICKSTREAM_PREFIX", "rfm/./x"),
        ("CLICKSTREAM_PREFIX", "rfm//x"),
        ("CLICKSTREAM_WORKER_ID", "host\tone"),  # a control character: no lease owner of the KCL's
        ("CLICKSTREAM_WORKER_ID", "\x01host"),
        ("CLICKSTREAM_WORKER_ID", "host\x01"),
        ("AWS_ENDPOINT_URL", "http://[::1"),  # was 'unexpected UnboundLocalError'
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566/some/path"),  # was 'bucket some does not exist'
    ],
)
def test_an_invalid_environment_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert variable in str(raised.value)
    # the value it got, or for an empty one the word (its repr '' would say less)
    assert (repr(value) if value else f"{variable}: empty:") in str(raised.value)


def test_a_no_lease_limit_shorter_than_a_first_lease_takes_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that starts waits up to 30 s (the KCL's first start), a lease assignment and a failover for its
    first lease: a shorter limit reported every starting worker unhealthy, and ECS replaced it mid-deploy."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # AWS's pace: leases assigned every 20 s
    assert load_settings(no_lease_unhealthy_seconds=60).no_lease_unhealthy_seconds == 60  # 30 + 20 + 10
    assert load_settings(no_lease_unhealthy_seconds=0).no_lease_unhealthy_seconds == 0  # off
    with pytest.raises(ConfigError) as refused:
        load_settings(no_lease_unhealthy_seconds=59)
    assert "CLICKSTREAM_NO_LEASE_UNHEALTHY_SECONDS must be 0 (off) or at least 60 (59 given)" in str(
        refused.value
    )
    assert "leases every 20 s" in str(refused.value)


@pytest.mark.parametrize("command", [["summary"], ["report"]])
def test_a_top_beyond_its_bound_is_refused_before_anything_is_read(command: list[str]) -> None:
    """summary --top 99999999999999999999 printed half a summary, then failed converting it to an INT64."""
    result = CliRunner().invoke(main, [*command, "--top", "100001"])
    assert result.exit_code == 2, result.output
    assert "'--top': 100001 is not in the range 1<=x<=100000" in result.output


def test_a_setting_flag_shows_its_unit_and_bounds() -> None:
    setup_help = CliRunner().invoke(main, ["setup", "--help"], terminal_width=200).output
    assert "CLICKSTREAM_STREAM_SHARDS; default: 4; >= 1, <= 500]" in setup_help
    health_help = CliRunner().invoke(main, ["health", "--help"], terminal_width=200).output
    assert "--stuck-after SECONDS" in health_help and "--no-lease-after SECONDS" in health_help


def test_kcl_names_are_taken_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_INITIAL_POSITION", "latest")
    monkeypatch.setenv("CLICKSTREAM_KCL_METRICS_LEVEL", "summary")
    monkeypatch.setenv("CLICKSTREAM_KCL_LOG_LEVEL", "warning")
    settings = load_settings()
    assert (settings.initial_position, settings.kcl_metrics_level, settings.kcl_log_level) == (
        "LATEST",
        "SUMMARY",
        "WARN",
    )


@pytest.mark.parametrize(("written", "expected"), [("aes256", "AES256"), ("AWS:KMS", "aws:kms")])
def test_the_encryption_is_taken_in_any_case(written: str, expected: str) -> None:
    """CLICKSTREAM_SSE=aes256 was refused (exit 2) where the other fixed names are taken in any case."""
    settings = load_settings(sse=written, sse_kms_key_id="key" if expected == "aws:kms" else None)
    assert settings.sse == expected


def test_the_log_format_is_taken_in_any_case(tmp_path: Path) -> None:
    """CLICKSTREAM_LOG_FORMAT=JSON was refused (exit 2) where --log-level debug is taken."""
    result = run_cli(
        "generate", "--events", "10", "-o", str(tmp_path / "e.jsonl"), env={"CLICKSTREAM_LOG_FORMAT": "JSON"}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.splitlines()[-1])["message"].startswith("wrote 10 records")
    refused = run_cli("--log-format", "Yaml", "generate", "--events", "10", "-o", str(tmp_path / "f.jsonl"))
    assert_one_line(refused, 2, "--log-format: must be auto, json or text (got 'Yaml')")


def test_the_worker_stop_deadline_flag_is_that_setting() -> None:
    result = CliRunner().invoke(main, ["worker", "--stop-deadline", "5"])
    assert result.exit_code == 2, result.output
    assert "--stop-deadline must be longer than CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS" in result.output


@pytest.mark.parametrize(
    ("environment", "fix"),
    [
        ({"CLICKSTREAM_SSE": "aws:kms"}, {"CLICKSTREAM_SSE_KMS_KEY_ID": "alias/rfm"}),
        # a stop would kill the KCL while its shards still flush
        ({"CLICKSTREAM_STOP_DEADLINE_SECONDS": "15"}, {"CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS": "10000"}),
    ],
)
def test_a_combination_that_cannot_work_is_a_config_error_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], fix: dict[str, str]
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    for variable in (*environment, *fix):
        assert variable in str(raised.value)
    for variable, value in fix.items():
        monkeypatch.setenv(variable, value)
    load_settings()  # the other half set right: accepted


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


def test_the_group_alone_shows_its_help_as_text_even_off_a_terminal() -> None:
    """With no argument click shows the help by raising a usage error: it came out as one JSON record."""
    result = run_cli()
    assert "Usage: " in result.stdout + result.stderr and "Commands:" in result.stdout + result.stderr
    assert not (result.stdout + result.stderr).lstrip().startswith("{"), result.stderr


def test_python_dash_m_clickstream_is_the_same_command_line() -> None:
    """Where the console script is not on the PATH (another venv's python), ``python -m clickstream`` said "No module
    named clickstream.__main__"."""
    result = subprocess.run(
        [sys.executable, "-m", "clickstream", "score", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: clickstream score [OPTIONS]"), result.stdout


def test_a_ctrl_c_while_the_command_line_loads_is_one_line_and_130() -> None:
    """A Ctrl-C in the first half second (boto3, pyarrow and duckdb loading) printed a traceback of the imports.
    The interruption is made to land in the import of the command line itself, whatever the machine's speed."""
    interrupted_import = textwrap.dedent(
        """
        import builtins, sys
        real_import = builtins.__import__
        def importing(name, *args, **kwargs):
            if name == "clickstream.cli":
                raise KeyboardInterrupt
            return real_import(name, *args, **kwargs)
        builtins.__import__ = importing
        sys.argv = ["clickstream", "summary"]
        from clickstream.__main__ import run
        run()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", interrupted_import], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr == "clickstream: interrupted while starting (Ctrl-C): nothing was done\n"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"{command} [OPTIONS]" in result.output
    if command == "health":  # a health check's: what Docker reads (it reserves 2)
        assert "Exit codes: 0 healthy; 1 unhealthy, or this check's own settings" in result.output
        assert "2 bad usage" not in result.output
    else:
        assert "Exit codes: 0 done" in result.output and "130 stopped by Ctrl-C" in result.output
        assert "141 its output's reader went away" in result.output


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


def test_a_worker_without_java_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    result = CliRunner().invoke(
        main, ["--log-format", "text", "worker", "--state-dir", str(tmp_path / "state")]
    )

    assert result.exit_code == 2
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


def test_generate_says_how_many_customers_drew_no_event(tmp_path: Path) -> None:
    """`produce --customers 200 --events 2000` put 149 customers' events, and nothing said why."""
    path = tmp_path / "few.jsonl"
    result = invoke("generate", "--customers", "200", "--events", "2000", "--output", str(path))
    assert result.exit_code == 0, result.output
    customers = {json.loads(line)["customer_id"] for line in path.read_bytes().splitlines()}
    assert len(customers) < 200, "a run this short leaves some customers without an event"
    assert f"for {len(customers)} customers; {200 - len(customers)} of the 200 customers drew no event" in (
        result.output
    )


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


def test_generate_warns_of_a_history_reaching_today_and_names_the_start_that_ends_it_yesterday(
    tmp_path: Path,
) -> None:
    """The history began on a fixed day: --days 400 from 2026-03-01 put most events in the future, all rejected by
    the worker, while generate said only "wrote N records"."""
    today = datetime.now(UTC).date()
    path = tmp_path / "late.jsonl"
    late_start = (today - timedelta(days=10)).isoformat()
    result = invoke(
        "generate", "--events", "300", "--start", late_start, "--days", "30", "--output", str(path)
    )
    assert result.exit_code == 0, result.output
    suggested = (today - timedelta(days=30)).isoformat()
    assert (
        "event_time_in_future" in result.output and f"--start {suggested} ends it yesterday" in result.output
    )

    result = invoke(
        "generate", "--events", "300", "--start", suggested, "--days", "30", "--output", str(path)
    )
    assert result.exit_code == 0 and "event_time_in_future" not in result.output, result.output
    times = [json.loads(line)["event_time"] for line in path.read_bytes().splitlines()]
    assert min(times) >= suggested and max(times) < today.isoformat()


def test_generate_warns_of_a_history_before_the_oldest_event_time_the_worker_takes(tmp_path: Path) -> None:
    """--start takes 1970 on, but the worker rejects events before CLICKSTREAM_MIN_EVENT_TIME (2000 by default):
    a 1995 history was written without a word, every event of it to be rejected."""
    path = tmp_path / "old.jsonl"
    result = invoke(
        "generate", "--events", "100", "--start", "1995-01-01", "--days", "30", "--output", str(path)
    )
    assert result.exit_code == 0, result.output
    assert "--start 1995-01-01: the history begins before 2000-01-01" in result.output
    assert "event_time_too_old" in result.output
    result = invoke(
        "generate", "--events", "100", "--start", "2000-01-01", "--days", "30", "--output", str(path)
    )
    assert result.exit_code == 0 and "event_time_too_old" not in result.output, result.output


@pytest.mark.parametrize("start", ["2026-03-01T10", "2026-02-30", "yesterday"])
def test_generate_refuses_a_start_that_is_not_a_day(start: str) -> None:
    result = invoke("generate", "--start", start, "--output", "-")
    assert result.exit_code == 2 and "'--start'" in result.output, result.output


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
        where_logs_are_json = CliRunner().invoke(main, ["--log-format", "json", *arguments[2:]])

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
    # its answer is a record like every other command's where logs are JSON (it was the one plain line)
    answer = json.loads(where_logs_are_json.output.strip().splitlines()[-1])
    assert answer["level"] == "INFO" and "s3://clicks-setup-bucket are ready" in answer["message"]
    assert streams == ["clicks-setup"]
    assert (summary["StreamStatus"], summary["OpenShardCount"]) == ("ACTIVE", 2)
    rule = encryption["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(public_access.values())


# ---------------------------------------------------------------------------------------------------- settings file
def test_the_settings_file_gives_processors_the_workers_settings_whatever_their_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLICKSTREAM_PREFIX", "from-env")
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_BYTES", "4096")
    resolved = load_settings(prefix="from-flag", state_dir=tmp_path / "x", flush_max_records=9)
    path = write_settings_file(resolved, tmp_path / "worker-settings.json")
    monkeypatch.setenv("CLICKSTREAM_PREFIX", "changed-after")
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", "elsewhere")

    monkeypatch.setenv(SETTINGS_FILE_ENV, str(path))
    loaded = settings_for_process()

    assert loaded == resolved
    assert (loaded.prefix, loaded.state_dir, loaded.flush_max_records, loaded.flush_max_bytes) == (
        "from-flag",
        tmp_path / "x",
        9,
        4096,
    )
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_without_a_settings_file_a_process_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_PREFIX", "env-only")
    assert settings_for_process().prefix == "env-only"


def test_an_unreadable_settings_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=SETTINGS_FILE_ENV):
        settings_for_process()


# ---------------------------------------------------------------------------------------------------- typos
def test_a_misspelled_variable_is_warned_about_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_RECORDZ", "5")
    monkeypatch.setenv("CLICKSTREAM_ZZZ", "1")
    monkeypatch.setattr("runtime.settings._warned", set())

    with caplog.at_level(logging.WARNING, logger="runtime.settings"):
        load_settings()

    messages = [record.getMessage() for record in caplog.records]
    assert any(
        "CLICKSTREAM_FLUSH_MAX_RECORDZ" in m and "did you mean CLICKSTREAM_FLUSH_MAX_RECORDS?" in m
        for m in messages
    ), messages
    assert any("CLICKSTREAM_ZZZ is not a setting" in m and "did you mean" not in m for m in messages), (
        messages
    )


def test_a_prefixed_aws_variable_is_pointed_at_the_variable_read() -> None:
    """The region and the endpoint are read from AWS_REGION and AWS_ENDPOINT_URL, which have no prefix: the hint
    names them (it named CLICKSTREAM_AWS_REGION, itself not a setting)."""
    environ = {"CLICKSTREAM_AWS_REGION": "eu-west-1", "CLICKSTREAM_ENDPOINT_URL": "http://127.0.0.1:1"}
    assert unknown_variables(environ) == [
        ("CLICKSTREAM_AWS_REGION", "AWS_REGION"),
        ("CLICKSTREAM_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
    ]


def test_variables_read_outside_the_settings_object_are_not_typos() -> None:
    environ = {name: "x" for name in OTHER_VARIABLES} | {"CLICKSTREAM_KCL_LOG_LEVEL": "INFO"}
    assert unknown_variables(environ) == []


# ---------------------------------------------------------------------------------------------------- one-line errors
def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real command in its own process: what an operator sees on stderr, and the exit code."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_") and k != "AWS_ENDPOINT_URL"
    }
    return subprocess.run(
        [sys.executable, "-m", "clickstream.cli", *args],
        env={
            **base,
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_REGION": "us-east-1",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """The error lines on stderr, whichever format they are in: click's ``Error: ...`` on a terminal, and off one
    (the tests' case) the JSON log record of level ERROR, whose message is returned."""
    errors = []
    for line in stderr.splitlines():
        if line.startswith("Error: "):
            errors.append(line)
        elif line.startswith("{"):
            record = json.loads(line)
            if record.get("level") == "ERROR":
                errors.append(record["message"])
    return errors


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    errors = error_lines(result.stderr)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [["setup"], ["summary"]])
def test_an_endpoint_that_is_down_is_one_line_and_exit_1(command: list[str]) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_cli(*command, env={"AWS_ENDPOINT_URL": endpoint})
    assert_one_line(result, 1, "cannot reach", "127.0.0.1", "AWS_ENDPOINT_URL")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://clickstream-rfm.s3.amazonaws.com/?list-type=2&prefix=rfm%2F",
            "cannot reach https://clickstream-rfm.s3.amazonaws.com: check the network path to AWS",
        ),
        ("http://127.0.0.1:4566/?list-type=2", "cannot reach http://127.0.0.1:4566: is it running?"),
    ],
)
def test_an_unreachable_endpoint_is_named_without_the_request_and_with_a_hint_for_where_it_is(
    url: str, expected: str
) -> None:
    from botocore.exceptions import EndpointConnectionError

    from clickstream.errors import explain

    failure = explain(EndpointConnectionError(endpoint_url=url))
    assert failure.message.startswith(expected), failure.message
    assert "list-type" not in failure.message
    assert failure.exit_code == 1


@pytest.mark.parametrize("command", ["generate", "produce", "demo"])
def test_more_customers_than_the_generator_can_plan_is_refused_at_once(command: str, tmp_path: Path) -> None:
    """A mistyped --customers (10^11) used to fill the machine's memory for minutes before anything was said."""
    from producer.generator import MAX_CUSTOMERS

    extra = {"generate": ["-o", str(tmp_path / "out.jsonl")], "produce": [], "demo": []}[command]
    # planning them would outlast its timeout
    result = run_cli(command, "--customers", str(MAX_CUSTOMERS + 1), *extra)
    assert_one_line(result, 2, "--customers", f"{MAX_CUSTOMERS + 1:,} is more than", "in memory")
    assert not (tmp_path / "out.jsonl").exists()


def test_score_of_a_folder_without_aggregates_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("score", "--input", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out"))
    assert_one_line(result, 2, "no customer_aggregates files in")
    assert "arviz" not in result.stderr, "the model library's import chatter stays out of the operator's view"


def test_output_piped_into_a_reader_that_stops_early_ends_quietly() -> None:
    """`generate -o - | head`: the closed pipe is the reader's choice, not an error to report; its exit code is a
    Unix tool's (141, 128 + SIGPIPE), not a failure's (1)."""
    command = (
        f"{shlex.quote(sys.executable)} -m clickstream.cli generate -o - --events 200000 | head -n 1; "
        'echo "generate exited ${PIPESTATUS[0]}" >&2'
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("{")
    assert result.stderr == "generate exited 141\n", result.stderr


def test_a_download_onto_a_full_disk_names_the_file_and_says_the_copy_is_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3transfer's "No space left on device" named no file and said nothing of the files already copied."""
    import errno

    from clickstream import outputs

    write_copy = outputs.write_copy
    folder = tmp_path / "copy"

    def disk_fills(body: Any, target: Path) -> None:
        if target.is_relative_to(folder):  # the copies (the reads before them go to a temporary folder)
            raise OSError(errno.ENOSPC, "No space left on device")
        write_copy(body, target)

    monkeypatch.setattr(outputs, "write_copy", disk_fills)
    with mock_aws():
        two_committed_flushes("full-disk", OutputLayout("rfm"))
        result = CliRunner().invoke(
            main,
            ["summary", "--bucket", "full-disk", "--download", str(tmp_path / "copy")],
            terminal_width=80,
        )
    assert result.exit_code == 1, result.output
    assert (
        f"--download {tmp_path / 'copy'}: [Errno 28] No space left on device: '{tmp_path / 'copy'}/rfm/"
        in (result.output)
    ), result.output
    assert "the folder holds only part of the files: run it again" in result.output


def test_summary_piped_into_a_reader_that_stops_early_ends_quietly(emulator_endpoint: str) -> None:
    """`summary | head` exited 1 (rich's own answer to a closed pipe), which `set -o pipefail` reads as a failure."""
    bucket = "piped-summary"
    environment = {
        **os.environ,
        "AWS_ENDPOINT_URL": emulator_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    from tests.moto_support import emulator_client

    s3 = emulator_client("s3", environment)
    s3.create_bucket(Bucket=bucket)
    # a top table far longer than a pipe's buffer
    put_committed_flush(
        s3, bucket, OutputLayout("rfm"), "shardId-000000000000", [f"c-{n}" for n in range(3000)]
    )
    command = (
        f"{shlex.quote(sys.executable)} -m clickstream.cli summary --bucket {bucket} --top 3000 | head -n 1; "
        'echo "summary exited ${PIPESTATUS[0]}" >&2'
    )
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False, env=environment
    )
    assert result.stdout.count("\n") == 1, result.stdout
    assert result.stderr.endswith("summary exited 141\n"), result.stderr
    assert "rror" not in result.stderr, result.stderr


def test_demo_refuses_an_output_folder_holding_files_it_did_not_write(tmp_path: Path) -> None:
    """The demo replaces its output folder: a folder of someone's files must not be deleted."""
    (tmp_path / "mine" / "sub").mkdir(parents=True)
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = run_cli("demo", "--output-dir", str(tmp_path / "mine"), "--events", "10")
    assert_one_line(result, 2, "--output-dir", "holds files a demo did not write")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and (tmp_path / "mine" / "sub").is_dir()


def test_demo_says_why_it_cannot_run_the_worker_on_stderr_before_making_records(tmp_path: Path) -> None:
    """A Java the worker cannot use was said only inside worker.log ("worker exited with 2; see ..." on stdout), and
    only after the records were generated and put."""
    result = run_cli(
        "demo",
        "--output-dir",
        str(tmp_path / "out"),
        "--events",
        "10",
        env={"CLICKSTREAM_JAVA": "/nonexistent/java"},
    )
    assert_one_line(result, 2, "CLICKSTREAM_JAVA=/nonexistent/java is not an executable java binary")
    assert not (tmp_path / "out" / "events.jsonl").exists(), "checked before the records are generated"


def test_a_demo_whose_worker_failed_says_the_workers_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's reason, the last error of its log, is the demo's one-line error, with the log's path."""
    from clickstream import demo

    def failing_worker(_console: Any, output_dir: Path, *_: Any) -> int:
        (output_dir / "worker.log").write_text(
            '{"level": "ERROR", "message": "an earlier error"}\nnot json "level": "ERROR"\n'
            '{"level": "ERROR", "message": "the shard processors cannot start: no KCL jars", "exit_code": 1}\n'
            '{"level": "INFO", "message": "stopped"}\n',
            encoding="utf-8",
        )
        return 1

    monkeypatch.setattr(demo, "_run_worker", failing_worker)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "the caller's")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    before = dict(os.environ)
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "out"), "--events", "10"])
    assert result.exit_code == 1, result.output
    # the demo's stopped endpoint was left in AWS_ENDPOINT_URL: the next AWS client of the process met a closed port
    assert dict(os.environ) == before
    assert "the demo's worker exited with 1: the shard processors cannot start: no KCL jars (its log: " in (
        result.output
    )
    assert demo.last_error(tmp_path / "nothing.log") is None


def test_generate_refuses_a_name_asking_for_a_compression_it_does_not_write(tmp_path: Path) -> None:
    """`--output x.jsonl.bz2` wrote plain JSONL under that name, exit 0 (bzcat: not a bzip2 file)."""
    for name, asked in (("x.jsonl.bz2", "bzip2"), ("x.JSONL.ZST", "zstd"), ("x.tgz", "tar")):
        result = run_cli("generate", "--customers", "2", "--events", "5", "--output", str(tmp_path / name))
        assert_one_line(result, 2, f"its name asks for {asked}", ".jsonl.gz")
        assert not (tmp_path / name).exists()
    written = run_cli(
        "generate", "--customers", "2", "--events", "5", "--output", str(tmp_path / "x.jsonl.gz")
    )
    assert written.returncode == 0, written.stderr
    assert gzip.decompress((tmp_path / "x.jsonl.gz").read_bytes()).count(b"\n") >= 5


def test_demo_names_its_flag_for_an_output_folder_it_cannot_write(tmp_path: Path) -> None:
    """A place it cannot write (read-only, or under a file as here: root may write anywhere else) gave "Not a
    directory (...)", exit 1, naming no flag, where every other output flag is a usage error named by its flag."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = run_cli("demo", "--output-dir", str(a_file / "demo"), "--events", "10")
    assert_one_line(result, 2, f"--output-dir {a_file / 'demo'}")
    # a device where the folder should be: said so, not "holds files a demo did not write"
    assert_one_line(run_cli("demo", "--output-dir", "/dev/null", "--events", "10"), 2, "/dev/null: is a file")


def test_an_earlier_demo_output_folder_may_be_replaced(tmp_path: Path) -> None:
    from clickstream.demo import DEMO_MARK, replaceable_output

    earlier = tmp_path / "demo-output"
    (earlier / "state").mkdir(parents=True)
    (earlier / "events.jsonl").write_text("{}")
    (earlier / "report.html").write_text("<html/>")
    (earlier / DEMO_MARK).write_text("")
    assert replaceable_output(earlier) and replaceable_output(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    assert replaceable_output(tmp_path / "empty")
    (earlier / "notes.txt").write_text("x")
    assert not replaceable_output(earlier)


def test_demo_refuses_a_folder_with_a_demos_names_but_not_its_mark(tmp_path: Path) -> None:
    """A worker's state/ and an operator's events.jsonl were taken for an earlier demo's and deleted."""
    mine = tmp_path / "mine"
    (mine / "state").mkdir(parents=True)
    (mine / "state" / "shardId-000000000000.duckdb").write_bytes(b"state")
    (mine / "events.jsonl").write_text("{}\n")
    result = run_cli("demo", "--output-dir", str(mine), "--events", "10")
    assert_one_line(result, 2, "--output-dir", "holds files a demo did not write", ".clickstream-demo")
    assert (mine / "events.jsonl").read_text() == "{}\n" and (
        mine / "state" / "shardId-000000000000.duckdb"
    ).exists()


def test_a_second_demo_on_a_folder_in_use_is_refused_and_empties_nothing(tmp_path: Path) -> None:
    """Two demos given one folder (two terminals, the default demo-output): the second emptied the folder under the
    first one's running worker."""
    import fcntl
    import os

    from clickstream.demo import DEMO_MARK

    running = tmp_path / "demo-output"
    (running / "state").mkdir(parents=True)
    (running / "events.jsonl").write_text("{}\n")
    (running / DEMO_MARK).write_text("")
    folder = os.open(running, os.O_RDONLY)  # what the running demo holds
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_cli("demo", "--output-dir", str(running), "--events", "10")
    finally:
        os.close(folder)
    assert_one_line(result, 2, "is the output folder of a demo still running", "another --output-dir")
    assert (running / "events.jsonl").read_text() == "{}\n" and (running / "state").is_dir()


def test_a_demo_folder_behind_a_link_or_the_working_directory_is_emptied_not_removed(tmp_path: Path) -> None:
    """``--output-dir LINK`` ended in 'Cannot call rmtree on a symbolic link', ``--output-dir .`` in 'Invalid
    argument'; both after the check had passed."""
    from clickstream.demo import DEMO_MARK, _empty, replaceable_output

    target = tmp_path / "scratch" / "demo"
    (target / "s3" / "rfm").mkdir(parents=True)
    (target / "worker.log").write_text("log")
    (target / DEMO_MARK).write_text("")
    link = tmp_path / "demo-output"
    link.symlink_to(target)
    assert replaceable_output(link)
    _empty(link)
    assert link.is_symlink() and target.is_dir() and list(target.iterdir()) == []


@pytest.mark.parametrize("day", ["20261345", "20260230", "2026-03-01", "2026311"])
def test_manifest_refuses_a_day_that_does_not_exist(day: str) -> None:
    result = CliRunner().invoke(main, ["manifest", "--output", "events", "--arrival-day", day])
    assert result.exit_code == 2, result.output
    assert "is not a calendar day as YYYYMMDD" in result.output


@pytest.mark.parametrize("day", ["99991231", "19691231"])
def test_manifest_refuses_a_day_outside_the_years_of_the_data(day: str) -> None:
    """99991231 printed a manifest, then failed on the day after it: 'unexpected OverflowError', exit 1."""
    result = CliRunner().invoke(main, ["manifest", "--output", "events", "--arrival-day", day])
    assert result.exit_code == 2, result.output
    assert "is outside the years 1970-2199" in result.output


def claim_prefix(s3: Any, bucket: str, prefix: str = "rfm") -> None:
    """What a worker's first start leaves on its prefix (readers refuse a prefix no worker started on)."""
    s3.put_object(Bucket=bucket, Key=OutputLayout(prefix).prefix_owner_key, Body=b"{}")


def test_manifest_of_a_real_day_lists_that_partition() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="days")
        claim_prefix(s3, "days")
        result = CliRunner().invoke(
            main, ["manifest", "--output", "events", "--arrival-day", "20240229", "--bucket", "days"]
        )
    assert result.exit_code == 0, result.output
    assert '"entries": []' in result.output
    assert "no committed events files of arrival day 20240229: the manifest is empty" in result.output
    assert '"level": "WARNING"' in result.output, "an empty manifest is worth a warning"


def test_produce_to_an_endpoint_that_is_down_fails_at_once_in_one_line() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("produce", "--events", "10", "--no-progress", env={"AWS_ENDPOINT_URL": endpoint})
    assert_one_line(result, 1, "cannot reach", "127.0.0.1")
    assert "retrying" not in result.stderr and "undelivered" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--from", "2026-03-02", "--to", "2026-03-01"], "must be after --from"),
        (["--from", "2026-03-01", "--to", "2026-03-02", "--name", "../x"], "--name may contain only"),
        # folders Spectrum, Hive and Spark skip, or read as a partition column
        (["--from", "2026-03-01", "--to", "2026-03-02", "--name", "_x"], "--name may contain only"),
        (["--from", "2026-03-01", "--to", "2026-03-02", "--name", ".x"], "--name may contain only"),
        (["--from", "2026-03-01", "--to", "2026-03-02", "--name", "day=1"], "--name may contain only"),
    ],
)
def test_a_replay_request_that_cannot_run_is_refused_before_s3_is_asked(flags: list[str], said: str) -> None:
    """With the endpoint down it said "cannot reach" and exited 1: the request was only checked once S3 answered."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("replay", *flags, "--dry-run", env={"AWS_ENDPOINT_URL": endpoint})
    assert_one_line(result, 2, said)


def test_produce_to_a_missing_stream_says_how_to_create_it() -> None:
    with mock_aws():
        result = CliRunner().invoke(
            main, ["produce", "--events", "10", "--no-progress", "--stream", "nowhere"]
        )
    assert result.exit_code == 2, result.output
    assert "nowhere" in result.output and "clickstream setup" in result.output, result.output
    assert "does not exist in us-east-1" in result.output, "the region it looked in"


def test_an_endpoint_that_is_not_a_url_is_a_configuration_error_naming_the_variable() -> None:
    result = run_cli("setup", env={"AWS_ENDPOINT_URL": "notaurl"})
    assert_one_line(result, 2, "AWS_ENDPOINT_URL", "'notaurl'")


def test_https_against_a_plain_http_port_says_to_use_http() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run_cli("setup", env={"AWS_ENDPOINT_URL": f"https://127.0.0.1:{server.server_port}"})
    finally:
        server.shutdown()
    assert_one_line(result, 1, "TLS", "http://")


@pytest.mark.parametrize("value", ["BOGUS", "verbose"])
def test_a_bad_log_level_in_the_environment_names_the_variable(value: str) -> None:
    result = run_cli("summary", env={"CLICKSTREAM_LOG_LEVEL": value})
    assert_one_line(result, 2, "CLICKSTREAM_LOG_LEVEL", repr(value))


def test_a_bad_log_level_flag_names_the_flag() -> None:
    assert_one_line(run_cli("--log-level", "loud", "summary"), 2, "--log-level")


def test_warn_is_taken_for_warning_as_the_kcl_and_logging_spell_it() -> None:
    result = CliRunner().invoke(main, ["--log-level", "warn", "generate", "--events", "1", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == logging.WARNING


def test_a_missing_java_named_by_clickstream_java_stops_the_worker(tmp_path: Path) -> None:
    result = run_cli("worker", "--state-dir", str(tmp_path), env={"CLICKSTREAM_JAVA": "/nonexistent"})
    assert_one_line(result, 2, "CLICKSTREAM_JAVA=/nonexistent")


def test_an_invalid_setting_is_one_line_and_exit_2() -> None:
    result = run_cli("setup", env={"CLICKSTREAM_FLUSH_MAX_RECORDS": "-3"})
    assert_one_line(result, 2, "CLICKSTREAM_FLUSH_MAX_RECORDS", "'-3'")


def test_where_logs_are_json_a_failure_is_an_error_record_with_its_exit_code() -> None:
    """Off a terminal (an ECS task, a pipe to a log shipper) stderr is one JSON object per line, the failure too:
    a log query or alarm on level ERROR finds a scheduled command that failed. On a terminal, click's line."""
    endpoint = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}
    for arguments, env, code, hint in (
        (["setup"], {"CLICKSTREAM_FLUSH_MAX_RECORDS": "-3"}, 2, None),  # a setting refused
        (["summary"], endpoint, 1, None),  # a runtime failure
        (["replay", "--from", "someday", "--to", "2026-01-02"], {}, 2, "replay --help'"),  # a usage error
        (["scroe"], {}, 2, " --help'"),  # no such command (refused before the group's callback ran)
        (["--bogus", "score"], {}, 2, " --help'"),  # the group's own usage error
        (
            [],
            {},
            2,
            " --help'",
        ),  # a group option and no command: "Missing command", raised before the callback
    ):
        result = run_cli("--log-format", "json", *arguments, env=env)
        records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is a record
        errors = [record for record in records if record["level"] == "ERROR"]
        assert result.returncode == code and len(errors) == 1, result.stderr
        assert errors[0]["exit_code"] == code and errors[0]["logger"] == "clickstream", errors[0]
        assert (errors[0].get("hint") or "").endswith(hint or ""), errors[0]
        assert ("hint" in errors[0]) == (hint is not None), errors[0]
        text = run_cli("--log-format", "text", *arguments, env=env)
        assert text.returncode == code and text.stderr.splitlines()[-1].startswith("Error: "), text.stderr
        assert errors[0]["message"] in text.stderr


def test_a_misspelled_variable_is_warned_on_the_command_line() -> None:
    result = run_cli("--log-format", "text", "health", env={"CLICKSTREAM_FLUSH_MAX_RECORDZ": "5"})
    assert "did you mean CLICKSTREAM_FLUSH_MAX_RECORDS?" in result.stderr


def test_debug_shows_the_traceback_as_well() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("--debug", "summary", env={"AWS_ENDPOINT_URL": endpoint})
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert error_lines(result.stderr.rstrip().splitlines()[-1])[0].startswith("cannot reach")


def test_replay_of_a_missing_bucket_is_one_line_and_exit_2() -> None:
    with mock_aws():
        result = CliRunner().invoke(
            main, ["replay", "--from", "2026-03-01", "--to", "2026-03-02", "--bucket", "nonexistent"]
        )
    assert result.exit_code == 2, result.output
    assert "bucket nonexistent does not exist" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T10", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:30", datetime(2026, 3, 1, 10, 30, tzinfo=UTC)),  # kept, not cut to the hour
        ("2026-03-01T10:30+05:30", datetime(2026, 3, 1, 5, 0, tzinfo=UTC)),
        ("2026-03-01T00:15-01:00", datetime(2026, 3, 1, 1, 15, tzinfo=UTC)),
    ],
)
def test_a_replay_range_end_is_kept_to_the_minute_in_utc(text: str, expected: datetime) -> None:
    from clickstream.replay import parse_time

    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text", ["2026-03-01+02:00", "2026-03-01Z", "20260301", "2026-03-01x10:00", "2026-3-1"]
)
def test_a_time_flag_outside_the_documented_forms_is_refused(text: str) -> None:
    """Python's fromisoformat takes any character between day and time: "2026-03-01+02:00" read as 02:00 UTC."""
    from clickstream.replay import parse_time

    with pytest.raises(ValueError, match="is not a day or a time"):
        parse_time(text)
    result = CliRunner().invoke(main, ["score", "--output-dir", "/nonexistent", "--as-of", text])
    assert result.exit_code == 2 and "use YYYY-MM-DD" in result.output


@pytest.mark.parametrize(
    ("arguments", "flag", "needle"),
    [
        (["--from", "2026-13-01", "--to", "2026-03-02"], "--from", "month must be in 1..12"),
        (["--from", "2026-03-01", "--to", "tomorrow"], "--to", "YYYY-MM-DDTHH:MM"),
        (["--from", "2026-03-01T10:30:15", "--to", "2026-03-02"], "--from", "to the minute"),
        # 'unexpected OverflowError' from the UTC conversion
        (["--from", "0001-01-01T00+01:00", "--to", "2026-03-02"], "--from", "outside the years 1970-2199"),
        (["--from", "2026-03-01", "--to", "9999-12-31T23:00-01:00"], "--to", "outside the years 1970-2199"),
        # was Python's "not datetime.timedelta(days=4, seconds=10800)"
        (
            ["--from", "2026-03-01T10:00+99:00", "--to", "2026-03-02"],
            "--from",
            "offset outside -23:59 to +23:59",
        ),
    ],
)
def test_a_bad_replay_time_is_one_line_naming_its_flag(arguments: list[str], flag: str, needle: str) -> None:
    result = CliRunner().invoke(main, ["replay", *arguments, "--dry-run"])
    assert result.exit_code == 2, result.output
    assert f"'{flag}'" in result.output and needle in result.output, result.output


@pytest.mark.parametrize(
    ("as_of", "needle"),
    [
        ("9999-12-31T23:59:59-01:00", "outside the years 1970-2199"),  # was 'unexpected OverflowError'
        ("1969-12-31", "outside the years 1970-2199"),
        # a typo of 2026, scored as 36 years without a purchase (and a report that then failed on its bins)
        ("2062-05-01", "is in the future"),
    ],
)
def test_score_refuses_an_observation_end_out_of_reach(as_of: str, needle: str) -> None:
    result = CliRunner().invoke(main, ["score", "--output-dir", "/nonexistent", "--as-of", as_of])
    assert result.exit_code == 2 and "'--as-of'" in result.output and needle in result.output, result.output


def test_score_takes_today_and_tomorrow_as_observation_ends() -> None:
    """A day is observed to its end: tomorrow's (UTC) is more than a day ahead, and must be taken all the same."""
    from clickstream.clv_commands import _parse_as_of

    today = datetime.now(UTC).date()
    for day in (today, today + timedelta(days=1)):
        parsed = _parse_as_of(None, None, day.isoformat())  # type: ignore[arg-type]
        assert parsed == datetime.combine(day, datetime.max.time(), tzinfo=UTC)
    with pytest.raises(click.BadParameter, match="is in the future"):
        _parse_as_of(None, None, (today + timedelta(days=2)).isoformat())  # type: ignore[arg-type]


def test_a_replay_to_the_minute_reads_and_names_that_range() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="minutes")
        claim_prefix(s3, "minutes")
        result = CliRunner().invoke(
            main,
            [
                "replay",
                "--from",
                "2026-03-01T10:30",
                "--to",
                "2026-03-01T10:45",
                "--bucket",
                "minutes",
                "--dry-run",
            ],
        )
    assert result.exit_code == 0, result.output
    assert "from 2026-03-01 10:30 to 2026-03-01 10:45 UTC" in result.output
    assert "output s3://minutes/rfm/replays/20260301T1030-20260301T1045/" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["summary"],
        ["manifest", "--output", "events", "--upload"],
        ["report", "--output", "{tmp}/report.html"],
        ["replay", "--from", "2026-03-01", "--to", "2026-03-02"],
        ["score"],  # said "no customer_aggregates files", with no word of the prefix
    ],
)
def test_readers_refuse_a_prefix_no_worker_started_on(command: list[str], tmp_path: Path) -> None:
    """A mistyped --prefix read as "nothing committed" and exited 0; manifest --upload wrote an empty manifest
    there, which a COPY loads as nothing."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="typo")
        arguments = [part.replace("{tmp}", str(tmp_path)) for part in command]
        result = CliRunner().invoke(main, [*arguments, "--bucket", "typo", "--prefix", "nothing-here"])
        written = s3.list_objects_v2(Bucket="typo").get("KeyCount", 0)
    assert result.exit_code == 2, result.output
    assert error_lines(result.output)[0].startswith("no worker has written under s3://typo/nothing-here/"), (
        result.output
    )
    assert "--prefix" in result.output and "clickstream worker" in result.output
    assert "Traceback" not in result.output
    assert written == 0 and not (tmp_path / "report.html").exists()


def test_a_prefix_written_before_claims_existed_is_read() -> None:
    """Prefixes of versions before the stream claim have commit records: those count as a worker's prefix."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="older")
        s3.put_object(
            Bucket="older", Key=OutputLayout("rfm").commit_key("shardId-000000000000", None), Body=b"{}"
        )
        from consumer.s3_sink import prefix_in_use

        assert prefix_in_use(s3, "older", OutputLayout("rfm"))
        assert not prefix_in_use(s3, "older", OutputLayout("other"))


def test_a_claim_hidden_by_a_403_is_decided_by_the_commit_listing() -> None:
    """A role granted GetObject on its own prefix only gets 403 for another prefix's claim, present or not: that
    must not read as "no worker here" (an older prefix with commits) nor as an IAM failure (a mistyped prefix)."""
    from botocore.exceptions import ClientError

    from consumer.s3_sink import prefix_in_use

    class Reader:
        def __init__(self, commits: int) -> None:
            self.commits = commits

        def head_object(self, **_: Any) -> None:
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")

        def list_objects_v2(self, **_: Any) -> dict[str, int]:
            return {"KeyCount": self.commits}

    assert prefix_in_use(Reader(commits=1), "b", OutputLayout("rfm"))
    assert not prefix_in_use(Reader(commits=0), "b", OutputLayout("typo"))


def test_report_refuses_a_clv_dir_without_a_scoring_run(tmp_path: Path) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="reports")
        claim_prefix(s3, "reports")
        (tmp_path / "empty").mkdir()
        result = CliRunner().invoke(
            main,
            [
                "report",
                "--bucket",
                "reports",
                "--clv-dir",
                str(tmp_path / "empty"),
                "-o",
                str(tmp_path / "r.html"),
            ],
        )
    assert result.exit_code == 2, result.output
    (error,) = error_lines(result.output)
    assert error.startswith("--clv-dir") and "no committed scoring run" in error, result.output
    assert not (tmp_path / "r.html").exists()


def test_ctrl_c_in_any_command_says_what_it_leaves_and_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands without their own Ctrl-C handling printed "Aborted!" and exited 1, as a failure does."""

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("clickstream.summary.print_summary", interrupted)
    result = CliRunner().invoke(main, ["summary"])
    assert result.exit_code == 130, result.output
    assert (
        "summary interrupted (Ctrl-C) before it finished" in result.output and "Aborted" not in result.output
    )


def test_report_to_dash_is_refused_not_a_file_named_dash(tmp_path: Path) -> None:
    """`generate -o -` writes to stdout; `report -o -` wrote a file named "-" and printed its path."""
    result = CliRunner().invoke(main, ["report", "--input", str(tmp_path), "-o", "-"])
    assert result.exit_code == 2, result.output
    (error,) = error_lines(result.output)
    assert error.startswith("--output -: this command writes a file, not to stdout"), error
    assert not Path("-").exists()


@contextmanager
def summary_waiting_on_a_silent_endpoint(**popen: Any) -> Iterator[subprocess.Popen[str]]:
    """`clickstream summary` in its own process against an endpoint that takes the connection and never answers,
    yielded once the command waits on its first AWS call (the connection stays open until the block ends)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CLICKSTREAM_") and k != "AWS_ENDPOINT_URL"
        }
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}", "AWS_REGION": "us-east-1"}
        process = subprocess.Popen(
            [sys.executable, "-m", "clickstream.cli", "summary"],
            env={**base, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", **env},
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )
        silent.settimeout(60)
        connection, _ = silent.accept()
        with connection:
            yield process


def test_sigterm_in_any_command_says_what_it_leaves_and_exits_143() -> None:
    """A scheduled `score` or `summary` stopped by ECS (SIGTERM) ended without a word (the signal's default)."""
    import signal
    import time

    with summary_waiting_on_a_silent_endpoint() as process:
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "summary interrupted (SIGTERM) before it finished" in stderr


def test_a_command_started_with_sigterm_ignored_keeps_ignoring_it() -> None:
    """A script that ignores SIGTERM (trap '' TERM) for what it starts: the front door's stop must not undo that."""
    import signal
    import time

    ignoring = {"preexec_fn": lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)}  # before exec only
    with summary_waiting_on_a_silent_endpoint(**ignoring) as process:
        process.send_signal(signal.SIGTERM)
        time.sleep(1)
        still_running = process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert still_running, stderr
    assert process.returncode == 130 and "summary interrupted (Ctrl-C)" in stderr, stderr


def test_ctrl_c_while_duckdb_runs_a_statement_is_a_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB turns the KeyboardInterrupt of a Ctrl-C into RuntimeError("Query interrupted"), which read as an
    unexpected failure (exit 1). The signal here is SIGUSR1 with Ctrl-C's handler, to leave the test runner's alone."""
    import signal
    import threading

    import duckdb

    def ctrl_c(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    def summary_reading(*_: Any, **__: Any) -> None:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        duckdb.connect().sql(
            "SELECT count(*) FROM range(3000000000) t(i) WHERE i % 7 = 3"
        ).fetchall()  # seconds

    monkeypatch.setattr("clickstream.summary.print_summary", summary_reading)
    previous = signal.signal(signal.SIGUSR1, ctrl_c)
    try:
        result = CliRunner().invoke(main, ["summary"])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert result.exit_code == 130, result.output
    assert "summary interrupted (Ctrl-C) before it finished" in result.output


def test_a_replay_of_a_range_without_events_writes_nothing() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="empty-range")
        claim_prefix(s3, "empty-range")
        result = CliRunner().invoke(
            main, ["replay", "--from", "2026-03-01", "--to", "2026-03-02", "--bucket", "empty-range"]
        )
        written = s3.list_objects_v2(Bucket="empty-range").get("KeyCount", 0) - 1  # the claim
    assert result.exit_code == 0, result.output
    assert "nothing to replay: no committed events in that range" in result.output
    assert written == 0, "no 0-row customer file"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["setup", "--debug"], ["--debug", "setup"]),
        (
            ["produce", "--log-level", "debug", "--rate", "5"],
            ["--log-level", "debug", "produce", "--rate", "5"],
        ),
        (["summary", "--log-format=json"], ["--log-format=json", "summary"]),
        (["generate", "--", "--debug"], ["generate", "--", "--debug"]),  # after --: an argument, not the flag
    ],
)
def test_the_group_options_work_after_the_command_too(args: list[str], expected: list[str]) -> None:
    from clickstream.cli import group_options_first

    assert group_options_first(args) == expected


def test_a_group_option_after_the_command_is_read_as_the_group_option() -> None:
    result = run_cli("setup", "--log-level", "loud")
    assert_one_line(result, 2, "--log-level: must be one of")  # not "No such option: --log-level"


def test_emulator_refuses_a_non_loopback_host_in_one_line_naming_a_real_flag() -> None:
    result = run_cli("emulator", "--host", "0.0.0.0", "--port", "0")
    assert_one_line(result, 2, "non-loopback", "--allow-remote")
    assert "--allow-remote" in run_cli("emulator", "--help").stdout


def test_emulator_on_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("emulator", "--port", str(port))
    assert_one_line(result, 1, f"127.0.0.1:{port}", "--port")


def test_emulator_on_a_host_name_that_resolves_to_nothing_is_a_usage_error() -> None:
    """It was exit 1 with 'another emulator running? pick another --port', which does not fit a mistyped host;
    without --allow-remote it was refused as a remote host, and the advice to add --allow-remote led to the first."""
    result = run_cli("emulator", "--host", "nosuch.invalid", "--allow-remote", "--port", "0")
    assert_one_line(result, 2, "nosuch.invalid", "--host: a name or address of this machine")
    result = run_cli("emulator", "--host", "nosuch.invalid", "--port", "0")
    said = assert_one_line(result, 2, "nosuch.invalid", "--host: a name or address of this machine")
    assert "--allow-remote" not in said


def test_emulator_on_an_address_of_another_machine_is_a_usage_error() -> None:
    """192.0.2.1 (documentation's TEST-NET-1) is no address of this machine: the bind is refused as for a host
    that resolves to nothing, not as a port in use."""
    result = run_cli("emulator", "--host", "192.0.2.1", "--allow-remote", "--port", "0")
    assert_one_line(result, 2, "192.0.2.1", "--host: a name or address of this machine")


def test_produce_reports_its_summary_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="once", ShardCount=1)
        result = CliRunner().invoke(
            main,
            ["--log-format", "text", "produce", "--stream", "once", "--customers", "3", "--events", "20"],
        )
    assert result.exit_code == 0, result.output
    assert len([line for line in result.output.splitlines() if "put 20 records" in line]) == 1, result.output


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["score", "--output-dir", "{file}/sub"], "--output-dir"),
        (["report", "--output", "{file}/r.html"], "--output"),
        (["generate", "--events", "5", "--output", "{file}/e.jsonl"], "--output"),
        (
            ["replay", "--from", "2026-03-01", "--to", "2026-03-02", "--state-dir", "{file}/sub"],
            "--state-dir",
        ),
    ],
)
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(
    command: list[str], flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score found out after its fit (minutes at scale), replay after reading the commit chain: exit 1, late."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")

    def no_work(*_: Any, **__: Any) -> None:
        raise AssertionError("the command started its work before checking where it writes")

    monkeypatch.setattr("clickstream.score.run_score", no_work)
    monkeypatch.setattr("runtime.aws.aws_client", no_work)
    result = CliRunner().invoke(main, [part.replace("{file}", str(blocker)) for part in command])
    assert result.exit_code == 2, result.output
    (error,) = error_lines(result.output)
    assert f"{flag} {blocker}/" in error, result.output
    assert "is a file, not a folder" in result.output or "cannot be written" in result.output, result.output


def test_produce_prints_its_summary_at_any_log_level_and_warns_of_an_empty_input(tmp_path: Path) -> None:
    """The summary was a log line: at --log-level WARNING a produce said nothing at all."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="quiet", ShardCount=1)
        generated = CliRunner().invoke(
            main,
            ["--log-level", "WARNING", "produce", "--stream", "quiet", "--customers", "3", "--events", "20"],
        )
        from_empty = CliRunner().invoke(
            main, ["--log-level", "WARNING", "produce", "--stream", "quiet", "--input", str(empty)]
        )
    assert generated.exit_code == 0 and "put 20 records to quiet" in generated.output, generated.output
    assert "warning" not in generated.output
    assert from_empty.exit_code == 0, from_empty.output
    assert "put 0 records" in from_empty.output and "holds no records" in from_empty.output, from_empty.output
    # off a terminal (json logs by default) each line is a JSON record a log shipper can take
    lines = [json.loads(line) for line in from_empty.output.splitlines()]
    assert [(line["level"], line["message"][:5]) for line in lines] == [
        ("INFO", "put 0"),
        ("WARNING", str(empty)[:5]),
    ]


def test_produce_stopped_by_ctrl_c_says_what_it_delivered_and_exits_130(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from producer.kinesis_put import KinesisProducer

    send = KinesisProducer._send
    calls = []

    def send_then_interrupt(self: KinesisProducer, batch: Any, *args: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        send(self, batch, *args)

    monkeypatch.setattr(KinesisProducer, "_send", send_then_interrupt)
    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="ctrl-c", ShardCount=1)
        result = CliRunner().invoke(
            main, ["produce", "--stream", "ctrl-c", "--customers", "20", "--events", "1200"]
        )
    assert result.exit_code == 130, result.output
    assert f"interrupted: {calls[0]:,} records delivered" in result.output
    assert "Aborted!" not in result.output


def test_produce_stopped_by_sigterm_says_what_it_delivered_and_exits_143(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docker stop, ECS and `timeout` send SIGTERM: the run used to end with no word of what it had delivered."""
    import signal

    from producer.kinesis_put import KinesisProducer

    send = KinesisProducer._send
    calls = []

    def send_then_terminated(self: KinesisProducer, batch: Any, *args: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        send(self, batch, *args)

    monkeypatch.setattr(KinesisProducer, "_send", send_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="term", ShardCount=1)
        result = CliRunner().invoke(
            main, ["produce", "--stream", "term", "--customers", "20", "--events", "1200"]
        )
    assert result.exit_code == 143, result.output
    assert f"interrupted: {calls[0]:,} records delivered" in result.output, result.output
    assert signal.getsignal(signal.SIGTERM) == before, "the handler is put back"


# ---------------------------------------------------------------------------------------------------- summary
CUSTOMER_COLUMNS = {
    "customer_id": pa.string(),
    "version": pa.int64(),
    "as_of": pa.timestamp("us", tz="UTC"),
    "last_event_at": pa.timestamp("us", tz="UTC"),
    "first_purchase_at": pa.timestamp("us", tz="UTC"),
    "last_purchase_at": pa.timestamp("us", tz="UTC"),
    "purchases": pa.int64(),
    "revenue": pa.decimal128(18, 2),
    "frequency": pa.int64(),
    "recency": pa.int64(),
    "T": pa.int64(),
    "monetary_value": pa.float64(),
    "engagement_score": pa.float64(),
}


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def customers_table(
    names: list[str], revenue: int, as_of: datetime | None = None, last_purchase_at: datetime | None = None
) -> pa.Table:
    as_of = as_of or datetime(2026, 3, 9, tzinfo=UTC)
    rows = [
        {
            "customer_id": name,
            "version": 3,
            "as_of": as_of,
            "last_event_at": as_of,
            "first_purchase_at": datetime(2026, 3, 1, 12, tzinfo=UTC),
            "last_purchase_at": last_purchase_at or datetime(2026, 3, 5, 12, tzinfo=UTC),
            "purchases": 2,
            "revenue": Decimal(revenue),
            "frequency": 1,
            "recency": 4,
            "T": (as_of.date() - date(2026, 3, 1)).days,
            "monetary_value": float(revenue) / 2,
            "engagement_score": 12.5,
        }
        for name in names
    ]
    return pa.Table.from_pylist(rows, schema=pa.schema(CUSTOMER_COLUMNS))


def put_committed_flush(
    s3: Any,
    bucket: str,
    layout: OutputLayout,
    shard: str,
    customers: list[str],
    as_of: datetime | None = None,
    last_purchase_at: datetime | None = None,
) -> None:
    """One flush as the worker leaves it: data files, then the commit record naming them."""
    name = FlushName(shard, Position("1", 0), Position("9", 0), "attempt1")
    aggregates = layout.data_key("customer_aggregates", date(2026, 3, 9), name)
    errors = layout.data_key("errors", date(2026, 3, 9), name)
    s3.put_object(
        Bucket=bucket,
        Key=aggregates,
        Body=parquet_bytes(customers_table(customers, 100, as_of, last_purchase_at)),
    )
    s3.put_object(
        Bucket=bucket,
        Key=errors,
        Body=parquet_bytes(pa.table({"error_code": ["invalid_json", "invalid_json", "oversized"]})),
    )
    commit = CommitRecord(
        shard_id=shard,
        attempt_id="attempt1",
        worker_id="w",
        previous=None,
        first=Position("1", 0),
        last=Position("9", 0),
        records_in=len(customers) * 4 + 3,
        records_skipped=0,
        accepted=len(customers) * 4,
        duplicates=len(customers),
        rejected=3,
        customers_changed=len(customers),
        files={"customer_aggregates": [aggregates], "errors": [errors]},
        file_bytes={aggregates: 60, errors: 40},
        bytes_written=100,
        committed_at=datetime(2026, 3, 9, tzinfo=UTC),
        oldest_event_at=None,
        newest_event_at=None,
    )
    s3.put_object(Bucket=bucket, Key=layout.commit_key(shard, None), Body=commit.to_json())


def two_committed_flushes(bucket: str, layout: OutputLayout) -> Any:
    """A bucket (under ``mock_aws``) holding a flush of shard 0 (c-1, c-2) and one of shard 1 (c-3)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    put_committed_flush(s3, bucket, layout, "shardId-000000000000", ["c-1", "c-2"])
    put_committed_flush(s3, bucket, layout, "shardId-000000000001", ["c-3"])
    return s3


def test_a_flush_committed_while_outputs_are_read_is_left_out_whole() -> None:
    """The commit records are read first, the data prefixes listed next: a flush committing in between has data
    files that count as not committed (yet), and its commit record must not be taken either (``summary
    --download`` would copy a commit record without the files it names)."""
    from clickstream.outputs import committed_outputs

    layout = OutputLayout("rfm")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="race-bucket")
        put_committed_flush(s3, "race-bucket", layout, "shardId-000000000000", ["c-1"])

        class CommitsMeanwhile:
            """Lists as S3 does; the first listing of a data prefix comes after another shard's flush committed."""

            committed = False

            def get_paginator(self, operation: str) -> Any:
                pages = s3.get_paginator(operation)
                outer = self

                class Listing:
                    def paginate(self, **arguments: Any) -> Any:
                        if not outer.committed and arguments["Prefix"].startswith("rfm/customer_aggregates"):
                            outer.committed = True
                            put_committed_flush(s3, "race-bucket", layout, "shardId-000000000001", ["c-2"])
                        return pages.paginate(**arguments)

                return Listing()

            def __getattr__(self, name: str) -> Any:
                return getattr(s3, name)

        outputs = committed_outputs(CommitsMeanwhile(), load_settings(bucket="race-bucket", prefix="rfm"))

    assert [c.shard_id for c in outputs.commits] == ["shardId-000000000000"]
    assert outputs.commit_keys == [layout.commit_key("shardId-000000000000", None)]
    assert all("shardId-000000000001" not in key for key in outputs.all_committed_keys())


def test_summary_counts_what_is_committed_in_s3_not_the_download_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "demo-output" / "s3" / "rfm" / "customer_aggregates" / "old.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(parquet_bytes(customers_table([f"stale-{i}" for i in range(50)], 999_999)))
    monkeypatch.chdir(tmp_path)
    layout = OutputLayout("rfm")
    with mock_aws():
        s3 = two_committed_flushes("summary-bucket", layout)
        orphan = layout.data_key(
            "customer_aggregates",
            date(2026, 3, 9),
            FlushName("shardId-000000000001", Position("10", 0), Position("11", 0), "a2"),
        )
        s3.put_object(
            Bucket="summary-bucket", Key=orphan, Body=parquet_bytes(customers_table(["c-uncommitted"], 5))
        )

        result = CliRunner().invoke(main, ["summary", "--bucket", "summary-bucket"], terminal_width=80)
        downloaded = CliRunner().invoke(
            main,
            ["summary", "--bucket", "summary-bucket", "--download", str(tmp_path / "copy")],
            terminal_width=80,
        )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:4] == ["customer_aggregates", "2", "3", "0.0"] for line in lines), result.output
    assert "c-1" in result.output and "c-3" in result.output
    # fewer than the 10 asked: "Top 10 customers" headed 3 rows
    assert "All 3 customers by revenue (current rows)" in result.output, result.output
    assert "stale-" not in result.output and "c-uncommitted" not in result.output
    assert "1 data file on S3 is named by no commit record" in result.output
    assert any(line.split()[:2] == ["invalid_json", "4"] for line in lines), result.output
    assert not (tmp_path / "demo-output" / "s3" / "rfm" / "errors").exists(), "no download unless asked"
    assert downloaded.exit_code == 0, downloaded.output
    copies = sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*.*"))
    assert len(copies) == 6 and orphan not in copies, copies  # 2 flushes x (2 data files + 1 commit record)
    hint = next(line for line in downloaded.output.splitlines() if "import duckdb" in line)
    # the interpreter that ran the command, which has duckdb: not a path that exists in the repository only
    assert hint.startswith(f'{sys.executable} -c "import duckdb; duckdb.sql(\\"FROM ') and hint.endswith(
        '.show()"'
    )
    # the hinted query gives each customer's current row once (every flush appends a changed customer's row)
    newer = tmp_path / "copy" / "rfm" / "customer_aggregates" / "later" / "newer.parquet"
    newer.parent.mkdir(parents=True)
    newer.write_bytes(parquet_bytes(customers_table(["c-1"], 999)))
    query = hint.split('duckdb.sql(\\"', 1)[1].rsplit('\\").show()', 1)[0]
    import duckdb

    rows = duckdb.sql(query.replace("LIMIT 5", "")).fetchall()
    assert sorted(row[0] for row in rows) == ["c-1", "c-2", "c-3"], rows


@pytest.mark.parametrize("name", ['it\'s $HOME `x` "copy"', "copy!it's $HOME", "two\nlines"])
def test_the_printed_duckdb_line_runs_as_printed_whatever_the_folder_is_called(
    tmp_path: Path, name: str
) -> None:
    """A download folder named with a quote made the printed line a DuckDB parser error; a `$` or a backtick in it
    was expanded by the shell; a `!`, by an interactive shell's history expansion (on in the script below)."""
    folder = tmp_path / name
    with mock_aws():
        two_committed_flushes("quoted-bucket", OutputLayout("rfm"))
        result = CliRunner().invoke(
            main, ["summary", "--bucket", "quoted-bucket", "--download", str(folder)], terminal_width=80
        )
    assert result.exit_code == 0, result.output
    hint = next(line for line in result.output.splitlines() if "import duckdb" in line)
    script = tmp_path / "pasted.sh"
    script.write_text(f"set -o history -H\n{hint}\n")
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert all(customer in ran.stdout for customer in ("c-1", "c-2", "c-3")), ran.stdout


def test_summary_download_refuses_a_folder_holding_another_runs_files(tmp_path: Path) -> None:
    """A download into the folder of an earlier run (the prefix emptied and written again) mixed the old files with
    the new, and the printed query read both. A download again of the same run refreshes the folder."""
    layout = OutputLayout("rfm")
    folder = tmp_path / "copy"
    arguments = ["summary", "--bucket", "stale-bucket", "--download", str(folder)]
    with mock_aws():
        two_committed_flushes("stale-bucket", layout)
        first = CliRunner().invoke(main, arguments, terminal_width=80)
        again = CliRunner().invoke(main, arguments, terminal_width=80)
        old = (
            folder / layout.output_prefix("customer_aggregates") / "arrival_yyyymmdd=20260101" / "old.parquet"
        )
        old.parent.mkdir(parents=True)
        old.write_bytes(parquet_bytes(customers_table(["c-old"], 5)))
        before = sorted(p for p in folder.rglob("*") if p.is_file())
        mixed = CliRunner().invoke(main, arguments, terminal_width=80)
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    assert mixed.exit_code == 2, mixed.output
    assert "holds 1 file of the outputs that no commit record names now" in mixed.output
    assert "old.parquet" in mixed.output and "nothing copied" in mixed.output
    assert "Committed outputs" not in mixed.output  # refused first, not after the whole summary
    assert sorted(p for p in folder.rglob("*") if p.is_file()) == before


def test_summary_download_refuses_a_folder_inside_an_earlier_copy(tmp_path: Path) -> None:
    """``--download dl/rfm`` after ``--download dl`` wrote dl/rfm/rfm/...: a query of dl read every row twice."""
    layout = OutputLayout("rfm")
    outer = tmp_path / "dl"
    with mock_aws():
        two_committed_flushes("nest-bucket", layout)
        first = CliRunner().invoke(main, ["summary", "--bucket", "nest-bucket", "--download", str(outer)])
        before = sorted(p for p in outer.rglob("*") if p.is_file())
        nested = {
            inner: CliRunner().invoke(main, ["summary", "--bucket", "nest-bucket", "--download", str(inner)])
            for inner in (outer / "rfm", outer / "other" / "copy")
        }
        beside = CliRunner().invoke(
            main, ["summary", "--bucket", "nest-bucket", "--download", str(tmp_path / "beside")]
        )
    assert first.exit_code == 0 and before, first.output
    for inner, result in nested.items():
        assert result.exit_code == 2, result.output
        assert f"{inner} is inside {outer}, which holds a copy of s3://nest-bucket/rfm/" in result.output
        assert "every row twice" in result.output and "nothing copied" in result.output
    assert sorted(p for p in outer.rglob("*") if p.is_file()) == before
    assert beside.exit_code == 0, beside.output


def test_a_copy_is_written_whole_or_not_at_all_and_a_partial_one_left_by_a_kill_is_not_refused(
    tmp_path: Path,
) -> None:
    """A copy goes through ``<file>.part``, which no ``*.parquet`` query reads. A stop does not wait for the
    copying threads, so a partial file may stay behind: the download run again is not refused as a folder holding
    another run's files, and it completes the copy."""
    from clickstream.outputs import PARTIAL_COPY, write_copy

    class BrokenBody:  # the connection dropped after the first chunk
        def iter_chunks(self, size: int) -> Any:
            yield b"PAR1"
            raise ConnectionResetError("connection reset by peer")

    target = tmp_path / "one" / "f.parquet"
    target.parent.mkdir()
    with pytest.raises(ConnectionResetError):
        write_copy(BrokenBody(), target)
    assert list(target.parent.iterdir()) == [], "neither the file nor its partial copy"

    layout = OutputLayout("rfm")
    folder = tmp_path / "copy"
    arguments = ["summary", "--bucket", "cut-bucket", "--download", str(folder)]
    with mock_aws():
        two_committed_flushes("cut-bucket", layout)
        first = CliRunner().invoke(main, arguments, terminal_width=80)
        copied = sorted(path for path in folder.rglob("*.parquet"))
        assert first.exit_code == 0 and copied, first.output
        whole = copied[0].read_bytes()
        copied[0].unlink()  # as a kill midway leaves it: the partial copy, no file
        left = copied[0].with_name(copied[0].name + PARTIAL_COPY)
        left.write_bytes(whole[:10])
        again = CliRunner().invoke(main, arguments, terminal_width=80)
    assert again.exit_code == 0, again.output
    assert copied[0].read_bytes() == whole


def test_a_copy_cut_off_midway_is_copied_again_and_one_that_keeps_breaking_says_the_folder_is_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore retries a request until its answer begins, not a body cut off while it streams: one connection
    reset among thousands of files failed the whole download (boto3's download_file had retried it)."""
    from botocore.exceptions import ResponseStreamingError

    from clickstream import summary as summary_module

    layout = OutputLayout("rfm")
    breaks_left = {"count": 2}

    class CutOff:
        def __init__(self, body: Any) -> None:
            self.body = body

        def iter_chunks(self, size: int) -> Any:
            if breaks_left["count"]:
                breaks_left["count"] -= 1
                yield b"PAR1"
                raise ResponseStreamingError(error="Connection broken: ConnectionResetError(104)")
            yield from self.body.iter_chunks(size)

        def read(self, *size: int) -> bytes:  # the commit records' reads: not the copies
            return bytes(self.body.read(*size))

        def close(self) -> None:
            self.body.close()

    with mock_aws():
        two_committed_flushes("cut-off", layout)
        s3 = boto3.client("s3", region_name="us-east-1")

        class Breaking:
            def get_object(self, **arguments: Any) -> Any:
                answer = s3.get_object(**arguments)
                return {**answer, "Body": CutOff(answer["Body"])}

            def __getattr__(self, name: str) -> Any:
                return getattr(s3, name)

        monkeypatch.setattr(summary_module, "aws_client", lambda *_, **__: Breaking())
        arguments = ["summary", "--bucket", "cut-off", "--download", str(tmp_path / "copy")]
        recovered = CliRunner().invoke(main, arguments, terminal_width=80)
        copies = {
            path.relative_to(tmp_path / "copy").as_posix(): path.read_bytes()
            for path in (tmp_path / "copy").rglob("*")
            if path.is_file()
        }
        originals = {key: s3.get_object(Bucket="cut-off", Key=key)["Body"].read() for key in copies}
        unused_breaks = breaks_left["count"]
        breaks_left["count"] = 10**6  # a connection that breaks every time
        failed = CliRunner().invoke(main, [*arguments[:-1], str(tmp_path / "again")], terminal_width=80)
    assert recovered.exit_code == 0, recovered.output
    assert unused_breaks == 0 and copies == originals and copies, "copied whole after two breaks"
    assert failed.exit_code == 1, failed.output
    assert "the folder holds only part of the files: run it again" in failed.output, failed.output


def test_summary_download_of_rejects_only_prints_no_query_of_a_folder_it_did_not_write(
    tmp_path: Path,
) -> None:
    """Every record rejected: no customer_aggregates/ folder, and the printed query failed on it."""
    from tests.test_current_rows import Worker

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="rejects-only")
        Worker(s3, Settings(bucket="rejects-only", prefix="rfm")).flush(
            "shardId-000000000000", [b"{not json"]
        )
        result = CliRunner().invoke(
            main,
            ["summary", "--bucket", "rejects-only", "--download", str(tmp_path / "copy")],
            terminal_width=80,
        )
    assert result.exit_code == 0, result.output
    assert "copied 2 committed files" in result.output, result.output  # the errors file and its commit record
    assert "import duckdb" not in result.output
    assert not (tmp_path / "copy" / "rfm" / "customer_aggregates").exists()


def test_summary_and_manifest_name_committed_files_that_s3_no_longer_has(tmp_path: Path) -> None:
    """summary counted a deleted events file as there (exit 0), and a deleted aggregates file ended it with a bare
    "NoSuchKey"; manifest listed a deleted file as mandatory, for a COPY that would fail."""
    layout = OutputLayout("rfm")
    with mock_aws():
        s3 = two_committed_flushes("gone-bucket", layout)
        (gone,) = [
            key
            for key in [obj["Key"] for obj in s3.list_objects_v2(Bucket="gone-bucket")["Contents"]]
            if key.startswith(layout.output_prefix("customer_aggregates")) and "shardId-000000000001" in key
        ]
        s3.delete_object(Bucket="gone-bucket", Key=gone)
        summary = CliRunner().invoke(
            main,
            ["summary", "--bucket", "gone-bucket", "--download", str(tmp_path / "copy")],
            terminal_width=80,
        )
        manifests = [
            CliRunner().invoke(
                main,
                ["manifest", "--output", "customer_aggregates", "--bucket", "gone-bucket", *day, "--upload"],
            )
            for day in ([], ["--arrival-day", "20260309"])
        ]
        uploaded = s3.list_objects_v2(Bucket="gone-bucket", Prefix=f"{layout.control_prefix}manifests/")
    assert summary.exit_code == 1, summary.output
    assert "c-1" in summary.output and "c-3" not in summary.output, "the files still there are read"
    assert f"1 committed data file is missing from s3://gone-bucket/ (the first: {gone})" in summary.output
    assert (tmp_path / "copy").exists() and not (tmp_path / "copy" / gone).exists()
    for manifest in manifests:  # of every file, and of the day: its errors file leads to the flush's commit
        assert manifest.exit_code == 1, manifest.output
        assert (
            "1 committed customer_aggregates file is missing" in manifest.output and gone in manifest.output
        )
    assert uploaded.get("KeyCount", 0) == 0, "no manifest written"


def test_summary_reads_each_customers_current_row_as_score_does_not_every_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """summary read every customer_aggregates file ever committed into one table (every version of every customer:
    about 900 MiB for 2 M rows); it now reads the rows the last run kept and the files committed since."""
    from clickstream import summary as summary_module
    from tests.moto_support import CountingReads, moto_bucket
    from tests.test_current_rows import Worker, purchases

    layout, shard = OutputLayout("rfm"), "shardId-000000000000"
    aggregates = layout.output_prefix("customer_aggregates")
    arguments = ["summary", "--bucket", "kept-rows", "--top", "1"]
    with moto_bucket("kept-rows") as s3:
        worker = Worker(s3, Settings(bucket="kept-rows", prefix="rfm"))
        for day in (1, 2, 3):
            worker.flush(shard, purchases(range(1, 3), day, "a"))
        reads = CountingReads(s3)
        monkeypatch.setattr(summary_module, "aws_client", lambda *_, **__: reads)
        first = CliRunner().invoke(main, arguments, terminal_width=120)
        first_reads = [key for key in reads.read if key.startswith(aggregates)]
        first_commits = [key for key in reads.read if key.startswith(layout.all_commits_prefix)]
        worker.flush(shard, purchases(range(1, 3), 4, "a"))
        reads.read.clear()
        second = CliRunner().invoke(main, arguments, terminal_width=120)
        second_reads = [key for key in reads.read if key.startswith(aggregates)]
        second_commits = [key for key in reads.read if key.startswith(layout.all_commits_prefix)]
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert len(first_reads) == 3 and len(second_reads) == 1, (first_reads, second_reads)
    # each commit record read once a run: the customers' rows take the commits the counts read (beside them, each
    # kept result's check that the commit it covers is still there)
    newest = layout.commit_key(shard, worker.flushed[-1][1])
    assert sorted(first_commits) == sorted(set(first_commits)) and len(first_commits) == 3, first_commits
    assert second_commits.count(newest) == 1, second_commits
    top = {
        run: [line.split() for line in result.output.splitlines() if line.strip().startswith("c-")]
        for run, result in (("first", first), ("second", second))
    }
    purchases_column = [header for header, _ in TOP_COLUMNS].index("purchases")
    assert top["first"][0][0] == top["second"][0][0] == "c-a002", top  # the higher revenue
    assert (top["first"][0][purchases_column], top["second"][0][purchases_column]) == ("3", "4"), top


@pytest.mark.parametrize(
    ("command", "output"),
    [("summary", "errors"), ("summary", "customer_aggregates"), ("score", "customer_aggregates")],
)
def test_a_committed_file_that_is_not_parquet_is_named_by_its_key(command: str, output: str) -> None:
    """summary said "unexpected ArrowInvalid: Could not open Parquet input source '<Buffer>'" (exit 1), naming no
    file; score named its deleted local copy."""
    layout = OutputLayout("rfm")
    with mock_aws():
        s3 = two_committed_flushes("junk-bucket", layout)
        (damaged, *_) = sorted(
            obj["Key"]
            for obj in s3.list_objects_v2(Bucket="junk-bucket", Prefix=layout.output_prefix(output))[
                "Contents"
            ]
        )
        s3.put_object(Bucket="junk-bucket", Key=damaged, Body=b"not parquet at all")
        result = CliRunner().invoke(main, [command, "--bucket", "junk-bucket"], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert f"s3://junk-bucket/{damaged}" in result.output, result.output
    assert "unexpected" not in result.output and "/tmp/" not in result.output


def test_a_downloads_copy_of_a_commit_record_is_skipped_offline_as_on_s3(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`report --input` read every .json under the folder's commits/: a copy put beside a commit record counted
    its flush twice, and one with a name no commit has stopped the report."""
    from clickstream.outputs import local_commit_records

    layout = OutputLayout("rfm")
    with mock_aws():
        s3 = two_committed_flushes("offline-copies", layout)
        for obj in s3.list_objects_v2(Bucket="offline-copies")["Contents"]:
            (tmp_path / obj["Key"]).parent.mkdir(parents=True, exist_ok=True)
            body = s3.get_object(Bucket="offline-copies", Key=obj["Key"])["Body"].read()
            (tmp_path / obj["Key"]).write_bytes(body)
    settings = Settings(bucket="offline-copies", prefix="rfm")
    before = local_commit_records(tmp_path, settings)
    start = tmp_path / layout.commit_key("shardId-000000000000", None)
    shutil.copy(start, start.with_name("start-backup.json"))
    shutil.copy(start, tmp_path / layout.commit_key("shardId-000000000000", Position("77", 0)))
    with caplog.at_level(logging.WARNING):
        assert local_commit_records(tmp_path, settings) == before and len(before) == 2
    assert "start-backup.json: not a commit record's name" in caplog.text
    assert (
        f"holds the commit record whose key is {layout.commit_key('shardId-000000000000', None)}"
        in caplog.text
    )


def test_summary_counts_t_to_the_newest_as_of_as_score_does() -> None:
    """A quiet shard's rows stop at its last flush; their own T would be days short of the busy shard's."""
    layout = OutputLayout("rfm")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="t-bucket")
        put_committed_flush(
            s3, "t-bucket", layout, "shardId-000000000000", ["c-busy"], datetime(2026, 3, 21, tzinfo=UTC)
        )
        put_committed_flush(
            s3, "t-bucket", layout, "shardId-000000000001", ["c-quiet"], datetime(2026, 3, 9, tzinfo=UTC)
        )
        result = CliRunner().invoke(main, ["summary", "--bucket", "t-bucket"], terminal_width=120)

    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line.split() for line in result.output.splitlines() if line.strip().startswith("c-")
    }
    t_column = [header for header, _ in TOP_COLUMNS].index("T")
    assert rows["c-busy"][t_column] == rows["c-quiet"][t_column] == "20"  # March 1st to March 21st


@pytest.mark.parametrize("purchase_ahead", [False, True])
def test_summary_counts_t_to_now_when_an_event_is_stamped_ahead_unless_a_purchase_is(
    purchase_ahead: bool,
) -> None:
    """A client clock ahead (events are taken up to CLICKSTREAM_MAX_FUTURE_SKEW_SECONDS after arrival) may stamp an
    event in a day not yet begun: T ends today, as `clickstream score` ends it, unless a purchase is in that day."""
    layout = OutputLayout("rfm")
    ahead = datetime.now(UTC) + timedelta(days=3)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="t-bucket")
        put_committed_flush(
            s3,
            "t-bucket",
            layout,
            "shardId-000000000000",
            ["c-ahead"],
            ahead,
            last_purchase_at=ahead if purchase_ahead else None,
        )
        before = datetime.now(UTC).date()
        result = CliRunner().invoke(main, ["summary", "--bucket", "t-bucket"], terminal_width=120)
        after = datetime.now(UTC).date()

    assert result.exit_code == 0, result.output
    row = next(line.split() for line in result.output.splitlines() if line.strip().startswith("c-ahead"))
    t = int(row[[header for header, _ in TOP_COLUMNS].index("T")])
    first_purchase_day = date(2026, 3, 1)
    if purchase_ahead:
        assert t == (ahead.date() - first_purchase_day).days
    else:
        assert (before - first_purchase_day).days <= t <= (after - first_purchase_day).days


def test_summary_tables_fit_80_columns_when_piped(tmp_path: Path) -> None:
    layout = OutputLayout("rfm")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="narrow-bucket")
        put_committed_flush(
            s3, "narrow-bucket", layout, "shardId-000000000000", [f"c-{i:06d}" for i in range(12)]
        )
        # not a TTY
        result = CliRunner().invoke(main, ["summary", "--bucket", "narrow-bucket", "--top", "12"])

    assert result.exit_code == 0, result.output
    table_lines = result.output.splitlines()
    too_wide = [line for line in table_lines if len(line) > 80]
    assert too_wide == [], "\n".join(too_wide)
    for i in range(12):
        assert f"c-{i:06d}" in result.output, "customer ids are neither wrapped nor cut"
    outputs_header = next(line for line in table_lines if line.split()[:1] == ["output"])
    assert outputs_header.split() == ["output", "files", "rows", "MiB"], "a title is not a column"
    header = next(line for line in table_lines if line.split()[:1] == ["customer"])
    assert header.split() == [
        "customer",
        "purchases",
        "revenue",
        "frequency",
        "recency",
        "T",
        "monetary",
        "engagement",
    ]
    overview = next(line for line in table_lines if line.split()[:1] == ["measure"])
    assert overview.split() == ["measure", "customers", "mean", "p25", "median", "p75", "max"]
    assert "\x1b[" not in result.output, "no colour codes in a pipe"


def test_a_client_keeps_a_connection_for_each_parallel_reader() -> None:
    """summary --download, score and report read with 16 threads on one client: botocore's default pool of 10 made
    urllib3 warn 'Connection pool is full' and reconnect."""
    from clickstream.outputs import MAX_WORKERS
    from runtime.aws import aws_client

    client = aws_client("s3", load_settings())
    assert client.meta.config.max_pool_connections >= MAX_WORKERS


def test_a_client_without_retries_has_no_client_side_rate_limit() -> None:
    """The producer retries, counts and logs its own retries on a client of one attempt; botocore's adaptive mode
    still rate-limited that client after throttling, so a retry logged "in 0.060s" came about 2 s later."""
    from runtime.aws import aws_client

    retried_by_botocore = aws_client("kinesis", load_settings())
    retried_by_the_caller = aws_client("kinesis", load_settings(), total_attempts=1)
    assert retried_by_botocore.meta.config.retries["mode"] == "adaptive"
    assert retried_by_the_caller.meta.config.retries == {"total_max_attempts": 1, "mode": "standard"}


@pytest.mark.parametrize(
    "arguments",
    [
        ["generate", "--duplicate-rate", "nan", "-o", "-"],
        ["generate", "--malformed-rate", "inf", "-o", "-"],
        ["produce", "--rate", "nan"],
        ["worker", "--until-idle", "nan"],
        ["generate", "--days", "3000000", "-o", "-"],
    ],
)
def test_a_flag_value_that_is_not_a_finite_number_in_range_is_a_usage_error(arguments: list[str]) -> None:
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert f"--{arguments[1].lstrip('-')}" in result.output and "Traceback" not in result.output


def test_produce_refuses_generator_options_with_an_input_file(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"a": 1}\n')
    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="clickstream", ShardCount=1)
        result = CliRunner().invoke(
            main, ["produce", "--input", str(source), "--events", "999", "--seed", "3"]
        )
    assert result.exit_code == 2, result.output
    assert "--events, --seed: the generator's options do not apply with --input" in result.output


def test_health_flags_win_over_the_environment_when_no_worker_wrote_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a worker's settings file, a flag joins the environment's settings: it wins over the variable."""
    monkeypatch.setenv("CLICKSTREAM_STUCK_SHARD_SECONDS", "5")  # invalid alone (the flush limit is 60 s)
    result = CliRunner().invoke(main, ["health", "--state-dir", str(tmp_path), "--stuck-after", "100"])
    assert result.exit_code == 1, result.output  # judged (no heartbeat), not refused as a configuration
    assert "heartbeat" in result.output and "CLICKSTREAM_STUCK_SHARD_SECONDS" not in result.output


def test_health_with_a_damaged_worker_settings_file_is_unhealthy_not_a_usage_error(tmp_path: Path) -> None:
    """Docker reserves a health check's exit 2; a damaged file the worker wrote is the worker's problem."""
    (tmp_path / "worker-settings.json").write_text('{"stream_name": ')
    result = CliRunner().invoke(main, ["health", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["healthy"] is False
    assert report["problems"][0].startswith(
        "the worker's settings file is damaged: cannot read the settings file "
    )
    assert str(tmp_path / "worker-settings.json") in report["problems"][0]


def test_health_with_invalid_flags_answers_unhealthy_not_a_usage_error(tmp_path: Path) -> None:
    """--stuck-after below the worker's flush limit is the health check's own mistake: still 1 with a report
    naming where the limit came from, never Docker's reserved 2."""
    from runtime.settings import SETTINGS_FILE, write_settings_file

    write_settings_file(load_settings(state_dir=tmp_path, flush_max_seconds=60), tmp_path / SETTINGS_FILE)
    result = CliRunner().invoke(main, ["health", "--state-dir", str(tmp_path), "--stuck-after", "1"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["healthy"] is False and "--stuck-after" in report["problems"][0]
    assert str(tmp_path / "worker-settings.json") in report["problems"][0]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLICKSTREAM_LOG_LEVEL": "LOUD"}, "CLICKSTREAM_LOG_LEVEL"),
        ({"CLICKSTREAM_LOG_FORMAT": "tex"}, "CLICKSTREAM_LOG_FORMAT"),
        ({"CLICKSTREAM_LOG_LEVEL": ""}, "CLICKSTREAM_LOG_LEVEL"),
    ],
)
def test_health_with_a_bad_log_setting_answers_unhealthy_not_dockers_reserved_2(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    """The group's own settings are read before health runs: they exited 2 while every other bad setting gave 1
    with its report."""
    result = run_cli("health", "--state-dir", str(tmp_path), env=env)
    assert_one_line(result, 1, named)
    report = json.loads(result.stdout)
    assert report["healthy"] is False and named in report["problems"][0], report
    assert run_cli("summary", env=env).returncode == 2, "another command: still a usage error"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["health", "--stuck-after", "abc"], "--stuck-after"),  # its own flag, after its name
        (["--bogus", "health"], "--bogus"),  # an unknown option before its name
        (["health", "--log-level"], "--log-level"),  # a group option without its value, typed last
    ],
)
def test_health_answers_any_usage_error_as_a_health_check(arguments: list[str], named: str) -> None:
    """The same typo gave 2 or 1 by the side of `health` it was typed on; a group option typed last took the
    command's name for its value ("--log-level: must be one of ... (got 'health')")."""
    result = run_cli(*arguments)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is False and named in report["problems"][0], report
    assert "got 'health'" not in result.stderr


def test_health_loads_neither_arrow_nor_the_aws_sdk(tmp_path: Path) -> None:
    """The container runs `clickstream health` every 30 seconds beside the worker, to read a few local files:
    loading pyarrow, numpy and boto3 for it took 0.9 CPU-seconds and 99 MB each time, about half of it theirs."""
    from consumer.health import Heartbeat, write_heartbeat

    write_heartbeat(tmp_path, Heartbeat(pid=os.getpid(), phase="running", started_at=time.time()))
    probe = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('clickstream.cli', run_name='__main__')\n"
        "finally:\n"
        "    loaded = {name.split('.')[0] for name in sys.modules}\n"
        "    heavy = {'pyarrow', 'numpy', 'duckdb', 'boto3', 'tqdm'}\n"
        "    print('loaded:', sorted(loaded & heavy), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "health", "--state-dir", str(tmp_path)],
        env={**os.environ, "AWS_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # it judged the worker
    assert result.returncode == 0 and json.loads(result.stdout)["healthy"] is True, result
    assert "loaded: []" in result.stderr, result.stderr


def test_a_group_option_typed_last_without_its_value_is_named_not_fed_the_command() -> None:
    assert_one_line(run_cli("summary", "--log-format"), 2, "Option '--log-format' requires an argument")


def test_compressed_output_of_one_seed_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    from producer.generator import ClickstreamGenerator, write_jsonl

    for attempt in ("first", "second"):
        (tmp_path / attempt).mkdir()
        write_jsonl(tmp_path / attempt / "events.jsonl.gz", ClickstreamGenerator(20, 200, seed=5).events())
    first = (tmp_path / "first" / "events.jsonl.gz").read_bytes()
    assert first == (tmp_path / "second" / "events.jsonl.gz").read_bytes()
    assert first[4:8] == bytes(4), (
        "no modification time in the gzip header (runs a second apart would differ)"
    )


def test_a_bad_value_is_named_as_it_was_given_the_flag_or_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_flag = CliRunner().invoke(main, ["setup", "--shards", "0"])
    assert by_flag.exit_code == 2 and "--shards: Input should be greater than or equal to 1" in by_flag.output
    assert "CLICKSTREAM_STREAM_SHARDS" not in by_flag.output
    monkeypatch.setenv("CLICKSTREAM_STREAM_SHARDS", "0")
    by_variable = CliRunner().invoke(main, ["setup"])
    assert by_variable.exit_code == 2 and "CLICKSTREAM_STREAM_SHARDS: Input should be" in by_variable.output


def test_the_region_of_the_aws_profile_is_used_when_no_variable_names_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[profile eu]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "eu")
    assert load_settings().aws_region == "eu-west-1"
    assert aws_environment(load_settings())["AWS_REGION"] == "eu-west-1"  # what the KCL is given
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert load_settings().aws_region == "ap-south-1", "the variable wins, as with boto3"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    assert load_settings().aws_region == "us-east-1", "nothing names one"


@pytest.mark.parametrize(
    "code", ["UnrecognizedClientException", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"]
)
def test_refused_credentials_are_a_configuration_error_naming_what_to_check(code: str) -> None:
    from botocore.exceptions import ClientError

    from clickstream.errors import explain

    failure = explain(
        ClientError({"Error": {"Code": code, "Message": "The token is invalid."}}, "ListObjectsV2")
    )
    assert failure.exit_code == 2
    assert failure.message.startswith(f"AWS refused the credentials ({code} on ListObjectsV2)")
    assert "AWS_PROFILE" in failure.message


@pytest.mark.skipif(
    not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file that is always full"
)
def test_a_full_disk_names_the_file_it_could_not_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate and report said only 'No space left on device'."""
    from clickstream import html_report

    result = run_cli("generate", "--events", "10", "-o", "/dev/full")
    assert_one_line(result, 1, "No space left on device (/dev/full)")

    monkeypatch.setattr(
        html_report, "load_inputs", lambda *_, **__: html_report.ReportInputs(source="s3://b/p")
    )
    monkeypatch.setattr(html_report, "render_report", lambda _inputs: "<html></html>" * 100_000)
    with pytest.raises(OSError, match="No space left on device") as raised:
        html_report.write_report(load_settings(), Path("/dev/full"))
    assert raised.value.filename == "/dev/full"


@pytest.mark.parametrize("code", ["KMSAccessDeniedException", "KMSDisabledException", "KMSNotFoundException"])
def test_a_stream_key_kinesis_cannot_use_is_a_setup_error_naming_the_permission(code: str) -> None:
    from botocore.exceptions import ClientError

    from clickstream.errors import explain

    failure = explain(ClientError({"Error": {"Code": code, "Message": "the key refused"}}, "PutRecords"))
    assert failure.exit_code == 2
    assert failure.message.startswith(f"PutRecords needs the stream's KMS key, which refused: {code}")
    assert "kms:GenerateDataKey" in failure.message
    throttled = explain(ClientError({"Error": {"Code": "KMSThrottlingException"}}, "PutRecords"))
    assert throttled.exit_code == 1, "throttling by KMS is the service's, retried"


def test_records_refused_for_good_by_the_stream_key_are_a_setup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same KMS refusal, record by record in a call that succeeded, exited 1 where the whole call's exits 2."""
    from producer.generator import generate_events
    from producer.kinesis_put import KinesisProducer, PutRecordsError, PutSummary

    def refused(self: KinesisProducer, records: Any, **_: Any) -> PutSummary:
        list(records)
        summary = PutSummary(0, 1, 0, 0, 0, 0.1)
        raise PutRecordsError(
            "20 records rejected by in with KMSAccessDeniedException",
            [("k", b"{}")] * 20,
            summary,
            refused_with=("KMSAccessDeniedException",),
        )

    monkeypatch.setattr(KinesisProducer, "put", refused)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(generate_events(5, 20, 1)) + b"\n")
    result, _ = produce_file(source)
    assert result.exit_code == 2, result.output
    assert (
        "PutRecords needs the stream's KMS key, which refused: KMSAccessDeniedException (check"
        in result.output
    )
    assert "20 records rejected by in with KMSAccessDeniedException" in result.output


def test_a_bucket_not_found_without_its_name_reads_as_a_sentence() -> None:
    """HeadBucket's 404 has no body: it was said as 'bucket the bucket does not exist'."""
    from botocore.exceptions import ClientError

    from clickstream.errors import explain

    failure = explain(ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket"))
    assert failure.exit_code == 2 and failure.message.startswith(
        "the bucket does not exist (CLICKSTREAM_BUCKET"
    )
    named = explain(ClientError({"Error": {"Code": "NoSuchBucket", "BucketName": "b1"}}, "ListObjectsV2"))  # type: ignore[typeddict-unknown-key]
    assert named.message.startswith("bucket b1 does not exist (CLICKSTREAM_BUCKET")


def test_an_endpoint_that_is_not_aws_is_said_in_one_line() -> None:
    """A web server at AWS_ENDPOINT_URL: its HTML page was the message (a dozen lines), and its 404 to a listing
    was read as a missing bucket alone."""
    from botocore.exceptions import ClientError

    from clickstream.errors import explain

    page = "<!DOCTYPE HTML>\n<html lang='en'>\n<head><title>Error response</title></head>\n</html>\n"
    failure = explain(
        ClientError(
            {"Error": {"Code": "501", "Message": page}, "ResponseMetadata": {"HTTPStatusCode": 501}},  # type: ignore[typeddict-item]
            "CreateStream",
        )
    )
    assert failure.message.startswith("AWS CreateStream failed: 501: a web page, not an AWS error"), failure
    assert (
        "AWS_ENDPOINT_URL" in failure.message and "<" not in failure.message and "\n" not in failure.message
    )
    listing = explain(ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "ListObjectsV2"))
    assert listing.exit_code == 2 and "AWS_ENDPOINT_URL is not an S3 endpoint" in listing.message, listing
    # S3's own answer names the bucket: no doubt about the endpoint then
    named = explain(ClientError({"Error": {"Code": "NoSuchBucket", "Message": "gone"}}, "ListObjectsV2"))
    assert "AWS_ENDPOINT_URL" not in named.message
    spread = explain(ClientError({"Error": {"Code": "InvalidRequest", "Message": "one\n  two"}}, "PutObject"))
    assert spread.message == "AWS PutObject failed: InvalidRequest: one two"


def test_a_service_unavailable_or_throttling_after_retries_says_it_is_on_the_service_side() -> None:
    """`setup` in an S3 outage ended with "AWS HeadBucket failed: 503: Service Unavailable" and no advice."""
    from botocore.exceptions import ClientError

    from clickstream.errors import explain

    for response in (
        {
            "Error": {"Code": "503", "Message": "Service Unavailable"},
            "ResponseMetadata": {"HTTPStatusCode": 503},
        },
        {"Error": {"Code": "SlowDown", "Message": "Reduce your request rate."}},
    ):
        failure = explain(ClientError(response, "HeadBucket"))  # type: ignore[arg-type]
        assert failure.exit_code == 1 and failure.message.startswith("AWS HeadBucket failed: "), failure
        assert (
            "throttling or unavailable, on its side; run the command again once it answers" in failure.message
        )
    other = explain(ClientError({"Error": {"Code": "InvalidRequest", "Message": "no"}}, "PutObject"))
    assert other.message == "AWS PutObject failed: InvalidRequest: no"


def test_the_worker_preflight_leaves_refused_credentials_to_the_command_line() -> None:
    """Not 'not allowed to read stream ... (check the task role)': the keys are wrong, not the policy."""
    from botocore.exceptions import ClientError

    from consumer.preflight import check_stream

    class RefusingKinesis:
        def describe_stream_summary(self, **_: Any) -> Any:
            raise ClientError({"Error": {"Code": "UnrecognizedClientException"}}, "DescribeStreamSummary")

    with pytest.raises(ClientError):
        check_stream(RefusingKinesis(), load_settings())


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AWS_PROFILE": "no-such-profile"}, "AWS_PROFILE"),
        ({"AWS_REGION": "eu west"}, "AWS_REGION, e.g. eu-west-1"),
        # an unset ${AWS_REGION} of a rendered task template
        ({"AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-west-1"}, "AWS_REGION: empty: leave it out"),
    ],
)
def test_a_missing_profile_or_a_malformed_region_is_exit_2(
    env: dict[str, str], needle: str, tmp_path: Path
) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[default]\n")
    result = run_cli("setup", env={"AWS_CONFIG_FILE": str(config), **env})
    assert_one_line(result, 2, needle)


def test_a_region_the_endpoint_does_not_serve_is_exit_2_naming_it(emulator_endpoint: str) -> None:
    """Against the emulator, a mistyped region was moto's 500: 'throttling or unavailable, on its side', exit 1."""
    result = run_cli("setup", env={"AWS_ENDPOINT_URL": emulator_endpoint, "AWS_REGION": "mars-1"})
    assert_one_line(
        result, 2, "AWS refused the region (InvalidSignatureException on CreateStream)", "'mars-1'"
    )
    assert "AWS_REGION" in result.stderr


@pytest.mark.parametrize(
    ("code", "message", "operation", "needle"),
    [
        # S3's answer to a request signed for another region than the bucket's
        (
            "AuthorizationHeaderMalformed",
            "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'",
            "ListObjectsV2",
            "expecting 'eu-west-1' (check AWS_REGION)",
        ),
        # the same to a HEAD, which has no body: botocore has only the status (expired keys look the same)
        ("400", "Bad Request", "HeadObject", "HeadObject failed: 400 Bad Request"),
    ],
)
def test_a_refused_region_is_a_configuration_error_naming_aws_region(
    code: str, message: str, operation: str, needle: str
) -> None:
    from botocore.exceptions import ClientError

    from clickstream.errors import explain

    failure = explain(ClientError({"Error": {"Code": code, "Message": message}}, operation))
    assert failure.exit_code == 2
    assert needle in failure.message
    assert "AWS_REGION" in failure.message
    assert ("AWS_SESSION_TOKEN" in failure.message) == (code == "400"), "a bare 400 may be expired keys too"


def test_a_malformed_authorization_header_that_is_not_about_the_region_is_not_called_a_region_error() -> None:
    from botocore.exceptions import ClientError

    from clickstream.errors import explain

    message = 'The authorization header is malformed; the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD"'
    failure = explain(
        ClientError({"Error": {"Code": "AuthorizationHeaderMalformed", "Message": message}}, "GetObject")
    )
    assert "AWS refused the region" not in failure.message
    assert "AuthorizationHeaderMalformed" in failure.message


def produce_file(path: Path, shards: int = 1, stdin: bytes | None = None) -> tuple[Any, int]:
    """``produce --input path`` against moto: the CLI result and how many records the stream then holds."""
    with mock_aws():
        kinesis = boto3.client("kinesis", region_name="us-east-1")
        kinesis.create_stream(StreamName="in", ShardCount=shards)
        result = CliRunner().invoke(main, ["produce", "--stream", "in", "--input", str(path)], input=stdin)
        held = 0
        for shard in kinesis.list_shards(StreamName="in")["Shards"]:
            iterator = kinesis.get_shard_iterator(
                StreamName="in", ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            held += len(kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"])
    return result, held


def test_produce_of_a_file_that_breaks_off_says_what_was_delivered(tmp_path: Path) -> None:
    import gzip

    from producer.generator import generate_events

    events = list(generate_events(30, 3_000, 2))
    whole = gzip.compress(b"\n".join([*events[:10], b"[", *events[10:]]) + b"\n")
    truncated = tmp_path / "events.jsonl.gz"
    truncated.write_bytes(whole[: len(whole) * 2 // 3])

    result, held = produce_file(truncated)

    assert result.exit_code == 1, result.output
    assert f"{truncated}: unreadable after line" in result.output
    assert f"the {held:,} records read before it were delivered" in result.output and held > 500
    # what the worker will reject of what was read is said on a failure too (it was said only on success)
    assert f"records of {truncated} read (delivered or not) is not a JSON object (the first is record 11" in (
        result.output
    )


def test_produce_of_a_file_without_line_breaks_stops_at_the_line_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`produce --input /dev/zero` (or a binary) used to read its one "line" into memory until the machine gave out."""
    import producer.generator
    from producer.generator import generate_events

    monkeypatch.setattr(producer.generator, "MAX_LINE_BYTES", 2**20)
    records = list(generate_events(10, 50, 3))
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(records) + b"\n" + b"\0" * (2**20 + 10))

    result, held = produce_file(source)

    assert result.exit_code == 1, result.output
    assert f"{source}: line {len(records) + 1} is longer than 1 MiB: not a record" in result.output
    assert held == len(records), "the records before it are delivered"


def test_produce_exits_1_when_a_record_was_too_large_to_send_and_skips_blank_lines(tmp_path: Path) -> None:
    from producer.generator import generate_events

    records = list(generate_events(10, 50, 3))
    big = json.dumps({"customer_id": "c-big", "pad": "x" * (1024 * 1024)}).encode()
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join([*records[:20], b"", big, b"  ", *records[20:]]) + b"\n\n")

    result, held = produce_file(source)

    assert result.exit_code == 1, result.output
    assert "1 record larger than the 1 MiB PutRecords limit was not sent" in result.output
    assert f"{len(records)} other records were delivered" in result.output
    # the record is quoted from its start, to be found in the input
    assert """starting b'{\\"customer_id\\": \\"c-big\\", \\"pad\\": \\"xxx""" in result.stderr, result.stderr
    assert held == len(records), "every other record, and no blank line, is on the stream"
    assert "larger than the worker's limit" not in result.output, "not sent: not one the worker will reject"


def test_produce_says_which_records_of_its_input_the_worker_will_reject(tmp_path: Path) -> None:
    """A pretty-printed JSON array or a record over the worker's 32 KiB limit is sent as it is (the file is the
    user's), and the run says the worker will reject them, naming the first."""
    from producer.generator import generate_events

    records = list(generate_events(10, 40, 3))
    oversized = json.dumps({"customer_id": "c-big", "pad": "x" * 40_000}).encode()
    source = tmp_path / "events.jsonl"
    source.write_bytes(
        b"\n".join([*records[:5], b"[", b"  " + records[5], b"]", oversized, *records[6:]]) + b"\n"
    )

    result, held = produce_file(source)

    assert result.exit_code == 0, result.output
    assert held == len(records) + 3, "sent as they are"
    warnings = [json.loads(line)["message"] for line in result.stderr.splitlines() if '"WARNING"' in line]
    assert len(warnings) == 2, result.stderr
    assert (
        f"2 of the {len(records) + 3} records of {source} are not JSON objects (the first is record 6;"
        in (warnings[0])
    )
    assert (
        "1 record of" in warnings[1]
        and "is larger than" in warnings[1]
        and "limit of 32,768 bytes (CLICKSTREAM_MAX_RECORD_BYTES)" in warnings[1]
    )
    after_blanks = tmp_path / "after-blanks.jsonl"
    after_blanks.write_bytes(b"\n\n" + b"\n".join([*records[:2], b"[1]", *records[2:]]) + b"\n")
    counted, _ = produce_file(after_blanks)
    assert "(the first is record 3, on line 5 (blank lines are no records);" in counted.stderr, counted.stderr
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join(records) + b"\n")
    quiet, _ = produce_file(clean)
    assert quiet.exit_code == 0 and '"WARNING"' not in quiet.stderr, quiet.stderr


def _tar_of(lines: bytes, *, compressed: bool) -> bytes:
    import io
    import tarfile

    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz" if compressed else "w") as archive:
        member = tarfile.TarInfo("events.jsonl")
        member.size = len(lines)
        archive.addfile(member, io.BytesIO(lines))
    return packed.getvalue()


@pytest.mark.parametrize("source", ["file", "stdin-file", "pipe"])
def test_produce_refuses_another_compression_before_sending_anything(
    tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .bz2 (or .xz, .zst, .zip, .tar.gz) was sent line by line as binary garbage, exit 0, with advice about JSON
    arrays."""
    import bz2
    import lzma
    import zipfile

    from producer.generator import generate_events

    lines = b"\n".join(generate_events(5, 40, 3)) + b"\n"
    zipped = tmp_path / "events.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("events.jsonl", lines)
    for name, body, kind, command in [
        ("events.jsonl.bz2", bz2.compress(lines), "a bzip2", "bzip2 -dc"),
        ("events.jsonl.xz", lzma.compress(lines), "a xz", "xz -dc"),
        ("events.zip", zipped.read_bytes(), "a zip", "unzip -p"),
        ("events.tar", _tar_of(lines, compressed=False), "a tar", "tar -xOf"),
        ("events.tar.gz", _tar_of(lines, compressed=True), "a gzip-compressed tar", "tar -xzOf"),
    ]:
        path = tmp_path / name
        path.write_bytes(body)
        if source == "stdin-file":  # `--input - < events.jsonl.bz2`: its first bytes, read as stdin's
            from producer.generator import InputFormatError, read_jsonl

            with path.open("rb") as stdin:
                monkeypatch.setattr("sys.stdin", stdin)
                with pytest.raises(InputFormatError) as refused:
                    next(read_jsonl(Path("-")))
            monkeypatch.undo()
            assert str(
                refused.value
            ) == f"stdin is {kind} file: an input is JSONL, plain or gzip-compressed; decompress it " + (
                f"first, e.g. {command} FILE | clickstream produce --input -"
            )
            continue
        # checked at the input's first bytes, before anything is sent (a pipe is read once)
        result, held = produce_file(path) if source == "file" else produce_file(Path("-"), stdin=body)
        assert held == 0, "nothing sent"
        assert result.exit_code == 2, result.output
        shown, named = (str(path), str(path)) if source == "file" else ("stdin", "FILE")
        assert f"{shown} is {kind} file: an input is JSONL" in result.output, result.output
        assert f"{command} {named} | clickstream produce --input -" in result.output
        assert "delivered" not in result.output


def test_produce_refuses_parquet_and_utf16_and_unwraps_gzip_in_its_advice(tmp_path: Path) -> None:
    """A Parquet file (an errors/ file, as the re-drive starts from one) and UTF-16 text (PowerShell's `>`) were sent
    as garbage records with exit 0; a gzip-compressed .bz2 was answered `bzip2 -dc FILE`, which bzip2 refuses."""
    import bz2
    import gzip
    import io

    import pyarrow.parquet as pq

    from producer.generator import generate_events

    records = generate_events(5, 40, 3)
    lines = b"\n".join(records) + b"\n"
    parquet = io.BytesIO()
    pq.write_table(pa.table({"raw_data": records}), parquet)
    cases = [
        (
            "errors.parquet",
            parquet.getvalue(),
            "a Parquet",
            "its rows are no records: an errors/ file's records",
        ),
        ("ps.jsonl", lines.decode().encode("utf-16"), "a UTF-16 text", "iconv -f UTF-16 -t UTF-8 {path} |"),
        (
            "le.jsonl",
            lines.decode().encode("utf-16-le"),
            "a UTF-16 text",
            "iconv -f UTF-16LE -t UTF-8 {path} |",
        ),
        ("w.jsonl", lines.decode().encode("utf-32"), "a UTF-32 text", "iconv -f UTF-32 -t UTF-8 {path} |"),
        # no byte order mark, a blank line first
        (
            "n.jsonl",
            ("\n" + lines.decode()).encode("utf-16-le"),
            "a UTF-16 text",
            "iconv -f UTF-16LE -t UTF-8",
        ),
        (
            "b.jsonl",
            ("\r\n" + lines.decode()).encode("utf-32-be"),
            "a UTF-32 text",
            "iconv -f UTF-32BE -t UTF-8",
        ),
        (
            "e.bz2.gz",
            gzip.compress(bz2.compress(lines)),
            "a gzip-compressed bzip2",
            "gzip -dc {path} | bzip2 -dc |",
        ),
    ]
    for name, body, kind, advice in cases:
        path = tmp_path / name
        path.write_bytes(body)
        result, held = produce_file(path)
        assert held == 0, "nothing sent"
        assert result.exit_code == 2, result.output
        assert f"{path} is {kind} file: an input is JSONL" in result.output, result.output
        assert advice.format(path=path) in result.output, result.output
    # the advice works: iconv's output is the records
    converted = subprocess.run(
        ["iconv", "-f", "UTF-16", "-t", "UTF-8", str(tmp_path / "ps.jsonl")], capture_output=True, check=True
    )
    assert converted.stdout == lines


def test_a_text_that_starts_as_a_format_s_magic_does_is_no_such_file() -> None:
    from producer.generator import format_refusal

    assert format_refusal("in.jsonl", b"BZh is a word\n{}") is None
    assert format_refusal("in.jsonl", b'PK: {"a": 1}') is None
    assert format_refusal("in.jsonl", b"BZh91AY&SY...") is not None
    text_with_ustar = b'{"search_query": "' + b"x" * 239 + b'ustar  and more"}'
    assert text_with_ustar.index(b"ustar") == 257
    assert format_refusal("in.jsonl", text_with_ustar) is None


def test_produce_counts_every_line_of_a_json_array_of_one_object_a_line(tmp_path: Path) -> None:
    """``[``, ``{...},`` a line, ``]``: the worker rejects every line but the last object's, and the run says so."""
    from producer.generator import generate_events

    records = list(generate_events(5, 20, 4))
    source = tmp_path / "array.json"
    source.write_bytes(
        b"\n".join([b"[", *(record + b"," for record in records[:-1]), records[-1], b"]"]) + b"\n"
    )

    result, held = produce_file(source)

    assert result.exit_code == 0, result.output
    assert held == len(records) + 2
    warnings = [json.loads(line)["message"] for line in result.stderr.splitlines() if '"WARNING"' in line]
    assert len(warnings) == 1, result.stderr
    assert (
        f"{len(records) + 1} of the {len(records) + 2} records of {source} are not JSON objects"
        in warnings[0]
    )
    assert "not a JSON array" in warnings[0]


def test_produce_reads_stdin_as_input_dash(tmp_path: Path) -> None:
    from producer.generator import generate_events

    records = list(generate_events(10, 40, 3))
    result, held = produce_file(Path("-"), stdin=b"\n".join(records) + b"\n")
    assert result.exit_code == 0 and held == len(records), result.output


def test_produce_from_stdin_that_breaks_off_says_what_read_is_gone(tmp_path: Path) -> None:
    """ "The same input can be sent again" does not hold for a pipe: what was read from it is no longer in it."""
    import gzip

    from producer.generator import generate_events

    whole = gzip.compress(b"\n".join(generate_events(30, 3_000, 2)) + b"\n")
    broken = whole[: len(whole) * 2 // 3]
    piped, _ = produce_file(Path("-"), stdin=broken)
    assert piped.exit_code == 1, piped.output
    assert "the input was stdin: the records read from it and not delivered" in piped.output
    (tmp_path / "broken.jsonl.gz").write_bytes(broken)
    from_file, _ = produce_file(tmp_path / "broken.jsonl.gz")
    assert from_file.exit_code == 1 and "the input was stdin" not in from_file.output


def test_produce_from_a_named_pipe_that_breaks_off_says_what_read_is_gone(tmp_path: Path) -> None:
    """A FIFO fed by another process is read ahead as stdin is: what was read from it is no longer in it."""
    import gzip

    from producer.generator import generate_events

    whole = gzip.compress(b"\n".join(generate_events(30, 3_000, 2)) + b"\n")
    fifo = tmp_path / "events.jsonl.gz"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(whole[: len(whole) * 2 // 3])

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    result, _ = produce_file(fifo)
    feeder.join(timeout=30)
    assert result.exit_code == 1, result.output
    assert (
        f"the input was {fifo} (not a regular file): the records read from it and not delivered"
        in result.output
    )


def test_linger_with_a_regular_file_says_it_has_no_effect(tmp_path: Path) -> None:
    from producer.generator import generate_events

    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(generate_events(5, 20, 1)) + b"\n")
    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="in", ShardCount=1)
        result = CliRunner().invoke(
            main, ["produce", "--stream", "in", "--input", str(source), "--linger", "0.5"]
        )
    assert result.exit_code == 0, result.output
    assert f"--linger has no effect: {source} is a regular file" in result.output


def test_produce_stopped_after_its_records_went_out_does_not_say_nothing_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop outside the sending (here while the summary is said) reached the front door, which said "nothing
    was written" of a run that had delivered everything."""
    from producer.generator import generate_events
    from producer.kinesis_put import PutSummary

    def stopped(*_: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(PutSummary, "describe", stopped)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(generate_events(5, 20, 1)) + b"\n")
    result, held = produce_file(source)
    assert held == 20 and result.exit_code == 130, result.output
    assert "records sent before the stop stay on the stream" in result.output
    assert "nothing was written" not in result.output


def test_score_of_a_folder_of_other_files_says_what_they_are_not(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    pq.write_table(pa.table({"event_id": ["e-1"], "customer_id": ["c-1"]}), events / "part.parquet")
    result = run_cli("score", "--input", str(events), "--output-dir", str(tmp_path / "out"))
    assert_one_line(result, 2, f"the Parquet files in {events} are not customer_aggregates files")

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.parquet").write_bytes(b"not parquet at all")
    result = run_cli("score", "--input", str(junk), "--output-dir", str(tmp_path / "out2"))
    assert_one_line(result, 2, f"{junk}: ", "x.parquet")


def test_summary_download_with_a_file_where_its_prefix_folder_goes_is_exit_2_before_any_work(
    tmp_path: Path,
) -> None:
    """It printed the whole summary, then failed copying with 'Not a directory', exit 1, naming no flag."""
    (tmp_path / "rfm").write_text("x")
    result = run_cli("summary", "--download", str(tmp_path), env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert_one_line(result, 2, f"--download {tmp_path / 'rfm'}: is a file, not a folder")


def test_summary_download_into_a_path_that_cannot_be_a_folder_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = run_cli("summary", "--download", str(tmp_path / "a-file" / "sub"))
    assert_one_line(
        result, 2, f"--download {tmp_path / 'a-file' / 'sub'}: cannot be written (Not a directory)"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["summary"],
        ["manifest", "--output", "events"],
        ["replay", "--from", "2026-03-01", "--to", "2026-03-02"],
        ["score", "--no-progress"],
    ],
)
def test_a_damaged_commit_record_is_named_and_exit_2_for_every_reader(command: list[str]) -> None:
    """The readers of the commit chain stop on a record they cannot read, each in one line naming the object
    (summary and manifest said "unexpected ControlRecordError", exit 1, naming nothing)."""
    key = OutputLayout("rfm").commit_key("shardId-000000000000", None)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="damaged")
        s3.put_object(Bucket="damaged", Key=key, Body=b'{"trunc')
        result = CliRunner().invoke(main, [*command, "--bucket", "damaged"])
    assert result.exit_code == 2, result.output
    assert f"s3://damaged/{key}" in result.output and "not JSON" in result.output
    assert "unreadable control record" in result.output and "unexpected" not in result.output


def test_record_processor_lines_carry_its_module_name_when_run_as_main() -> None:
    """The KCL runs it as `python -m consumer.record_processor`: its logger must not be '__main__'."""
    command = (
        "import runpy; "
        "print(runpy.run_module('consumer.record_processor', run_name='__main__-probe')['log'].name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", command], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "consumer.record_processor"


def test_produce_puts_generated_events_on_a_real_stream_only_when_asked_for() -> None:
    with mock_aws():  # no AWS_ENDPOINT_URL: as in AWS itself
        kinesis = boto3.client("kinesis", region_name="us-east-1")
        kinesis.create_stream(StreamName="prod", ShardCount=1)
        refused = CliRunner().invoke(main, ["produce", "--stream", "prod", "--no-progress"])
        asked = CliRunner().invoke(main, ["produce", "--stream", "prod", "--events", "30", "--no-progress"])
    assert refused.exit_code == 2, refused.output
    assert "give --events N" in refused.output
    assert asked.exit_code == 0, asked.output


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://kinesis.eu-west-1.amazonaws.com",
        "https://vpce-0abc-1x2y.kinesis.eu-west-1.vpce.amazonaws.com",
        "https://kinesis.us-east-1.api.aws",  # dual-stack
        "https://kinesis.us-east-1.amazonaws.com.",  # a fully qualified name
        "https://kinesis.cn-north-1.api.amazonwebservices.com.cn",
    ],
)
def test_an_aws_endpoint_is_aws_itself_for_demo_load_and_metrics(endpoint: str) -> None:
    refused = CliRunner().invoke(
        main, ["produce", "--stream", "prod", "--no-progress"], env={"AWS_ENDPOINT_URL": endpoint}
    )
    assert refused.exit_code == 2, refused.output
    assert "give --events N" in refused.output
    assert Settings(aws_endpoint_url=endpoint).effective_metrics_level == "SUMMARY"
    assert Settings(aws_endpoint_url="http://127.0.0.1:4566").effective_metrics_level == "NONE"


def test_every_aws_partitions_endpoints_are_aws_itself() -> None:
    """botocore knows AWS's partitions and their DNS suffixes: each endpoint and dual-stack endpoint is AWS."""
    import importlib.resources

    from runtime.settings import AWS_DNS_SUFFIXES, is_aws_host

    partitions = json.loads((importlib.resources.files("botocore") / "data" / "partitions.json").read_text())
    suffixes = {
        partition["outputs"][kind]
        for partition in partitions["partitions"]
        for kind in ("dnsSuffix", "dualStackDnsSuffix")
    }
    assert suffixes <= set(AWS_DNS_SUFFIXES)
    assert all(is_aws_host(f"https://kinesis.some-region-1.{suffix}") for suffix in suffixes)
    assert not is_aws_host("http://localhost.localstack.cloud:4566")
    assert not is_aws_host("https://notamazonaws.com")


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("s3://bucket/out", "is a URL: this takes a local path"),  # written to a folder named s3:
        # the current folder: ``--state-dir "$STATE_DIR"`` with the variable unset ran a worker there
        ("", "is empty: give a path"),
        (" ", "is empty: give a path"),
    ],
    ids=["url", "empty", "blank"],
)
@pytest.mark.parametrize(
    "command",
    [
        ["report", "-o"],
        ["summary", "--download"],
        ["generate", "-o"],
        ["score", "--output-dir"],
        ["worker", "--state-dir"],
        ["demo", "--output-dir"],
    ],
    ids=lambda command: command[0],
)
def test_a_url_or_nothing_given_for_a_local_path_is_refused_and_nothing_written(
    command: list[str], value: str, refusal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from clickstream.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*command, value])
    assert result.exit_code == 2, result.output
    assert refusal in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["report", "-o"], ["generate", "-o"]], ids=lambda command: command[0])
def test_a_file_output_ending_with_a_slash_is_refused_and_nothing_written(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`generate -o out/` wrote a file named "out" (a path drops the slash)."""
    monkeypatch.chdir(tmp_path)
    for value in ("out/", "out/.", "out/.."):
        result = CliRunner().invoke(main, [*command, value])
        assert result.exit_code == 2, result.output
        assert f"{value!r} names a folder: give a file's name" in result.output
        assert not list(tmp_path.iterdir())


def test_a_state_dir_url_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", "s3://bucket/state")
    with pytest.raises(ConfigError, match="CLICKSTREAM_STATE_DIR: is a URL"):
        load_settings()


def test_an_empty_state_dir_is_refused_by_the_worker_and_by_health(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CLICKSTREAM_STATE_DIR= (an unset ${X:-}) was the current folder for the worker and state/ for health: a
    health check always unhealthy, a restart loop."""
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", "")
    with pytest.raises(ConfigError, match="CLICKSTREAM_STATE_DIR: empty"):
        load_settings()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["health"])
    assert result.exit_code == 1, result.output  # a health check answers 1 (Docker reserves 2)
    assert "CLICKSTREAM_STATE_DIR: empty" in result.output


def _generate_stopped_once_written(output: Path, written: Path) -> str:
    """``generate -o output`` of 5 million events, stopped by SIGTERM once ``written`` holds 100 kB: its stderr."""
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "clickstream.cli", "generate", "--events", "5000000", "-o", str(output)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while (not written.exists() or written.stat().st_size < 100_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert written.exists() and written.stat().st_size >= 100_000, "stopped once it was writing"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    return stderr


def test_generate_stopped_by_sigterm_says_so_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """SIGTERM (a task stopped, `timeout`) ended generate without a word, a partial file under its final name; then
    with a word, the partial file still there (a `.gz` of it failed its CRC)."""
    stderr = _generate_stopped_once_written(tmp_path / "events.jsonl", tmp_path / ".events.jsonl.partial")
    assert "generate interrupted (SIGTERM) before it finished: no output file was written" in stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_stopped_while_writing_in_place_says_the_file_holds_what_was_written(tmp_path: Path) -> None:
    """Through a link to nothing yet the lines are written in place; a stop said "no output file was written" of
    a file holding 2 million lines."""
    target = tmp_path / "target.jsonl"
    output = tmp_path / "events.jsonl"
    output.symlink_to(target)
    stderr = _generate_stopped_once_written(output, target)
    assert (
        f"generate interrupted (SIGTERM) before it finished: {output} holds the records generated" in stderr
    )
    assert "no output file was written" not in stderr
    assert target.stat().st_size >= 100_000


def test_generate_shows_its_progress_toward_the_planned_records(tmp_path: Path) -> None:
    """A long generate (100M events is allowed) said nothing until its last line; it now reports as it writes."""
    from clickstream.cli import _counted

    reported: list[tuple[int, int]] = []
    records = list(
        _counted(iter([b"{}"] * 25), 25, lambda done, total: reported.append((done, total)), every=10)
    )
    assert records == [b"{}"] * 25
    assert reported == [(0, 25), (10, 25), (20, 25), (25, 25)]

    output = tmp_path / "events.jsonl"
    result = run_cli("generate", "--events", "30000", "--customers", "500", "-o", str(output), "--progress")
    assert result.returncode == 0, result.stderr
    assert "generating" in result.stderr and "/30000" in result.stderr  # the bar's last redraw may be skipped
    assert sum(1 for _ in output.open("rb")) == 30000


def test_produce_sends_a_trickling_pipe_as_it_comes(emulator_endpoint: str) -> None:
    """``tail -F ... | clickstream produce --input -``: the records of a pipe that trickles reach the stream once
    they have waited --linger, while the pipe stays open (they waited for 500 records or the end of the input)."""
    import signal
    import time

    from producer.generator import generate_events

    records = list(generate_events(5, 20, 6))
    env = {"AWS_ENDPOINT_URL": emulator_endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    kinesis = boto3.client("kinesis", region_name="us-east-1", **_client_options(env))
    kinesis.create_stream(StreamName="trickle", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName="trickle", WaiterConfig={"Delay": 0.2})
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_") and k != "AWS_ENDPOINT_URL"
    }
    command = ["produce", "--stream", "trickle", "--input", "-", "--linger", "0.2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "clickstream.cli", *command],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**base, **env, "AWS_REGION": "us-east-1"},
    )
    assert process.stdin is not None
    try:
        process.stdin.write(b"\n".join(records[:3]) + b"\n")
        process.stdin.flush()
        held: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(held) < 3 and time.monotonic() < deadline:
            held = _stream_records(kinesis, "trickle")
            time.sleep(0.1)
        assert len(held) == 3, "the three records written reached the stream"
        assert process.poll() is None, "while the pipe was still open"
        process.stdin.write(b"\n".join(records[3:]) + b"\n")
    finally:
        process.stdin.close()
    assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    assert sorted(_stream_records(kinesis, "trickle")) == sorted(records)

    # stopped while the pipe is open and its reader waits on it: the stop is said, exit 143 (the reader thread
    # held stdin's lock at the interpreter's shutdown: a fatal error, SIGABRT)
    stopped = subprocess.Popen(
        [sys.executable, "-m", "clickstream.cli", *command],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **env, "AWS_REGION": "us-east-1"},
    )
    assert stopped.stdin is not None
    try:
        stopped.stdin.write(records[0].decode() + "\n")
        stopped.stdin.flush()
        deadline = time.monotonic() + 60
        while len(_stream_records(kinesis, "trickle")) <= len(records) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_stream_records(kinesis, "trickle")) == len(records) + 1, "the record was sent"
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=60) == 143, stopped.stderr.read() if stopped.stderr else ""
    finally:
        stopped.stdin.close()
    assert stopped.stderr is not None
    said = stopped.stderr.read()
    assert "1 records delivered" in said or "1 record delivered" in said, said
    assert "Fatal Python error" not in said


def _client_options(env: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def _stream_records(kinesis: Any, stream: str) -> list[bytes]:
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    return [r["Data"] for r in kinesis.get_records(ShardIterator=iterator["ShardIterator"])["Records"]]


def test_produce_from_a_closed_stdin_is_a_usage_error() -> None:
    """`produce --input - <&-` was "unexpected AttributeError", exit 1."""
    result = subprocess.run(
        [sys.executable, "-m", "clickstream.cli", "produce", "--stream", "s", "--input", "-"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.close(0),
    )
    assert result.returncode == 2, result.stderr
    assert "--input -: stdin is closed" in result.stderr


def test_only_an_input_that_is_not_a_regular_file_lingers(tmp_path: Path) -> None:
    """A file is read at disk speed and fills its batches: the background reader is for pipes."""
    from clickstream.cli import _is_regular_file

    regular = tmp_path / "events.jsonl"
    regular.write_bytes(b"{}\n")
    fifo = tmp_path / "events.pipe"
    os.mkfifo(fifo)
    assert _is_regular_file(regular)
    assert not _is_regular_file(fifo)
    assert not _is_regular_file(Path("/dev/null"))


@pytest.mark.parametrize(
    ("code", "said"),
    [
        ("AccessDeniedException", "check the IAM policy"),
        ("ExpiredTokenException", "AWS refused the credentials"),
    ],
)
def test_produce_refused_by_the_callers_identity_says_so_and_what_was_delivered(
    emulator_endpoint: str, tmp_path: Path, code: str, said: str
) -> None:
    """A task role without kinesis:PutRecords passes the stream check (DescribeStreamSummary) and is refused at the
    first put: a usage error naming the action and the policy, besides what was delivered."""
    from emulator.faults import clear_faults, set_fault
    from producer.generator import generate_events

    stream = f"refused-{code.lower()}"
    env = {"AWS_ENDPOINT_URL": emulator_endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    kinesis = boto3.client("kinesis", region_name="us-east-1", **_client_options(env))
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
    records = tmp_path / "three.jsonl"
    records.write_bytes(b"\n".join(generate_events(3, 3, 7)) + b"\n")
    message = (
        "User: arn:aws:sts::000000000000:assumed-role/task is not authorized to perform: kinesis:PutRecords"
    )
    set_fault(emulator_endpoint, "kinesis", 400, 60, operations=["PutRecords"], code=code, message=message)
    try:
        result = run_cli("produce", "--stream", stream, "--input", str(records), "--no-progress", env=env)
    finally:
        clear_faults(emulator_endpoint)
    line = assert_one_line(result, 2, said, "PutRecords", "0 records delivered")
    if code == "AccessDeniedException":
        assert "kinesis:PutRecords" in line, "the service's own words name the action"


@pytest.mark.parametrize("command", [["demo"], ["emulator", "--port", "0"]])
@pytest.mark.parametrize("missing", ["moto", "emulator"])
def test_the_emulator_commands_without_the_emulator_say_where_to_get_it(
    command: list[str], missing: str
) -> None:
    """As in the container image (no moto, no emulator package): a set-up error (exit 2, not a run-time failure)
    in one line saying it is a source checkout's."""
    script = (
        f"import sys; sys.modules[{missing!r}] = None; sys.argv = ['clickstream', *{command!r}]; "
        "from clickstream.__main__ import run; run()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parents[1],
    )
    assert_one_line(result, 2, "is for development and demos", f"({missing}", "make setup")


def test_produce_refuses_linger_without_an_input_it_could_apply_to() -> None:
    """It was ignored without a word: generated events never wait for a batch to fill."""
    result = CliRunner().invoke(main, ["produce", "--events", "10", "--linger", "0.5", "--no-progress"])
    assert result.exit_code == 2 and "--linger applies to an --input read from a pipe" in result.output


@pytest.mark.parametrize(("lasting", "exit_code"), [(True, 2), (False, 1)])
def test_produce_to_a_stream_that_takes_no_records_says_why_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lasting: bool, exit_code: int
) -> None:
    """Being deleted is the set-up's to fix (2); still being created after the wait is worth another run (1)."""
    from producer.generator import generate_events
    from producer.kinesis_put import StreamNotWritableError

    def refuse(client: Any, stream_name: str) -> None:
        raise StreamNotWritableError(f"stream {stream_name} is not writable (a test's)", lasting=lasting)

    monkeypatch.setattr("producer.kinesis_put.require_stream", refuse)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(generate_events(5, 20, 3)) + b"\n")
    result, held = produce_file(source)
    assert result.exit_code == exit_code, result.output
    assert "stream in is not writable (a test's); nothing was sent" in result.output and held == 0


def test_produce_stopped_while_it_waits_for_the_stream_says_nothing_was_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop in the wait for a stream being created (up to 2 minutes) said "records sent before the stop stay on
    the stream", before any was sent."""
    from producer.generator import generate_events

    def stopped(client: Any, stream_name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("producer.kinesis_put.require_stream", stopped)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(generate_events(5, 20, 3)) + b"\n")
    result, held = produce_file(source)
    assert result.exit_code == 130, result.output
    assert "produce interrupted (Ctrl-C) before it finished: nothing was sent" in result.output and held == 0


@pytest.mark.parametrize("flag", ["--progress", "--no-progress"])
def test_summary_and_manifest_take_the_progress_flag_down_to_every_long_read(
    flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """summary and manifest drew bars on a terminal with no way to turn them off (and none in a pipe on request),
    where every other long command takes --progress/--no-progress."""
    import clickstream.current_rows as current_rows
    import clickstream.manifest as manifest_module
    import clickstream.outputs as outputs
    import clickstream.summary as summary_module

    bars: dict[str, list[bool]] = {}

    @contextmanager
    def recording(description: str, _unit: str, *, bar: bool) -> Iterator[Any]:
        bars.setdefault(description, []).append(bar)
        yield lambda _done, _total: None

    for module in (summary_module, outputs, current_rows, manifest_module):
        monkeypatch.setattr(module, "progress_of", recording)
    wanted = flag == "--progress"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: not wanted)  # the flag, not the terminal, decides
    layout = OutputLayout("rfm")
    with mock_aws():
        two_committed_flushes("flag-bucket", layout)
        runs = [
            CliRunner().invoke(
                main, ["summary", "--bucket", "flag-bucket", flag, "--download", str(tmp_path / "dl")]
            ),
            CliRunner().invoke(main, ["manifest", "--bucket", "flag-bucket", "--output", "events", flag]),
        ]
    assert [run.exit_code for run in runs] == [0, 0], [run.output for run in runs]
    assert {
        "downloading committed files",
        "listing customer_aggregates/",
        "reading customer_aggregates",
    } <= set(bars)
    assert {bar for shown in bars.values() for bar in shown} == {wanted}, bars


def test_the_cli_says_its_version() -> None:
    """An operator asking which version a task runs had no --version."""
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"clickstream {version('clickstream-rfm')}\n", (
        result.output
    )
