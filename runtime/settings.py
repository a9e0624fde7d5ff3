"""One frozen, typed settings object read from the environment.

Every field is read from ``CLICKSTREAM_<FIELD>`` (upper case); explicit keyword arguments (CLI flags) win over the
environment. Standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials) are read by boto3 and by
the KCL as usual; ``aws_endpoint_url`` and ``aws_region`` here only mirror them so one object describes a run.
Invalid values fail at start-up with the variable's name and the reason.
"""

from __future__ import annotations

import os
import re
import socket
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CLICKSTREAM_"


class ConfigError(ValueError):
    """Raised for invalid configuration; the message names each setting (env var) and why it is wrong."""


def _localstack_endpoint() -> str | None:
    """With LOCALSTACK_HOST set (LocalStack's own convention), talk to that LocalStack unless told otherwise."""
    if not os.environ.get("LOCALSTACK_HOST"):
        return None
    from localstack_client.config import get_service_endpoint

    endpoint: str | None = get_service_endpoint("kinesis")
    return endpoint


def _default_worker_id() -> str:
    """A stable id per host so a restarted worker reclaims its own leases at once (see LOCAL-AWS.md)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "worker"


class Settings(BaseSettings):
    """Everything a worker, producer or replay run needs, documented field by field."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", populate_by_name=True
    )

    # --- AWS -----------------------------------------------------------------------------------------------
    aws_region: str = Field(
        "us-east-1",
        validation_alias=AliasChoices("aws_region", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region (AWS_REGION).",
    )
    aws_endpoint_url: str | None = Field(
        default_factory=_localstack_endpoint,
        validation_alias=AliasChoices("aws_endpoint_url", "AWS_ENDPOINT_URL"),
        description="Override endpoint for every AWS service, e.g. the embedded emulator or LocalStack "
        "(AWS_ENDPOINT_URL; with only LOCALSTACK_HOST set, LocalStack's edge URL). Unset in AWS.",
    )

    # --- Stream and outputs ---------------------------------------------------------------------------------
    stream_name: str = Field("clickstream", description="Kinesis data stream to read and write.")
    stream_shards: int = Field(
        4, ge=1, le=500, description="Shard count used when `setup` creates the stream."
    )
    bucket: str = Field(
        "clickstream-rfm", min_length=3, max_length=63, description="S3 bucket for Parquet outputs."
    )
    prefix: str = Field(
        "rfm", description="Key prefix under which events/, customer_aggregates/, errors/ live."
    )
    sse: Literal["AES256", "aws:kms"] = Field(
        "AES256", description="Server-side encryption for every S3 put."
    )
    sse_kms_key_id: str | None = Field(None, description="KMS key id or ARN when sse is aws:kms.")

    # --- KCL worker -----------------------------------------------------------------------------------------
    application_name: str = Field(
        "clickstream-rfm", description="KCL application name: names the DynamoDB lease tables."
    )
    worker_id: str = Field(
        default_factory=_default_worker_id,
        description="Stable KCL worker id (default: host name) so restarts reclaim leases immediately.",
    )
    initial_position: Literal["TRIM_HORIZON", "LATEST"] = Field(
        "TRIM_HORIZON", description="Where a shard without a checkpoint starts."
    )
    state_dir: Path = Field(Path("state"), description="Local directory for each shard's DuckDB state file.")
    java: str | None = Field(
        None, description="Path to the java binary (default: $JAVA_HOME/bin/java, then PATH)."
    )
    kcl_metrics_level: Literal["NONE", "SUMMARY", "DETAILED"] | None = Field(
        None,
        description="KCL CloudWatch metrics level; default NONE with an endpoint override, else SUMMARY.",
    )
    kcl_shutdown_grace_millis: int = Field(
        20_000, ge=1_000, description="Time the KCL gives processors to flush and checkpoint on SIGTERM."
    )
    kcl_idle_time_between_reads_millis: int = Field(
        250, ge=50, description="Polling pause when a shard is idle."
    )
    kcl_shard_sync_interval_millis: int = Field(
        60_000, ge=500, description="How often the KCL lists shards (lower it for emulators and tests)."
    )
    kcl_lease_assignment_interval_millis: int = Field(
        20_000,
        ge=500,
        description="How often the KCL leader assigns leases (lower it for emulators and tests).",
    )
    kcl_failover_time_millis: int = Field(
        10_000, ge=1_000, description="Lease duration before another worker may take it."
    )
    kcl_java_heap: str = Field(
        "1g",
        pattern=r"^[0-9]+[kmgKMG]$",
        description="Maximum JVM heap of the KCL daemon (-Xmx); size it with the shards a worker holds.",
    )
    kcl_max_records: int = Field(10_000, ge=1, le=10_000, description="Max records per GetRecords call.")

    stuck_shard_seconds: float = Field(
        300.0,
        gt=0,
        description="A shard with records waiting and no flush for this long is stuck: the worker reports "
        "unhealthy and exits non-zero so the orchestrator restarts it.",
    )

    # --- Flushing ---------------------------------------------------------------------------------------------
    flush_max_records: int = Field(
        50_000, ge=1, description="Flush a shard after this many buffered records."
    )
    flush_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Flush after this many buffered bytes."
    )
    flush_max_seconds: float = Field(
        60.0, gt=0, description="Flush at most this long after the first buffered record."
    )

    snapshot_every_flushes: int = Field(
        10,
        ge=1,
        description="Write a snapshot of a shard's state to S3 every this many flushes (and on stop).",
    )

    # --- Validation -------------------------------------------------------------------------------------------
    max_record_bytes: int = Field(32 * 1024, ge=256, description="Records larger than this are rejected.")
    max_revenue: int = Field(1_000_000, ge=1, description="Purchases with a larger revenue are rejected.")
    min_event_time: datetime = Field(
        datetime.fromisoformat("2000-01-01T00:00:00+00:00"), description="Events before this are rejected."
    )
    max_future_skew_seconds: int = Field(
        3600, ge=0, description="Events later than their Kinesis arrival time plus this are rejected."
    )

    # --- CLV scoring (clickstream score) ----------------------------------------------------------------------
    clv_horizon_months: int = Field(
        12, ge=1, le=120, description="CLV horizon in months (clickstream score)."
    )
    clv_annual_discount_rate: float = Field(
        0.10,
        ge=0,
        lt=1,
        description="Annual discount rate of future purchases in CLV (applied monthly: (1 + rate) ** (1/12) - 1).",
    )
    clv_margin: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of revenue counted as value in CLV (1.0: revenue; your gross margin: profit).",
    )

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = value.strip("/")
        if not re.fullmatch(r"[A-Za-z0-9_.=/-]*", value):
            raise ValueError("may contain only letters, digits and _ . = / -")
        return value

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]+[a-z0-9]", value):
            raise ValueError("is not a valid S3 bucket name (lower-case letters, digits, dots and hyphens)")
        return value

    @field_validator("min_event_time")
    @classmethod
    def _require_timezone(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs an explicit UTC offset, e.g. 2000-01-01T00:00:00+00:00")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.sse == "aws:kms" and not self.sse_kms_key_id:
            raise ValueError("CLICKSTREAM_SSE=aws:kms needs CLICKSTREAM_SSE_KMS_KEY_ID")
        if self.stuck_shard_seconds <= self.flush_max_seconds:
            raise ValueError(
                "CLICKSTREAM_STUCK_SHARD_SECONDS must be larger than CLICKSTREAM_FLUSH_MAX_SECONDS "
                f"({self.stuck_shard_seconds} <= {self.flush_max_seconds}), or every healthy shard looks stuck"
            )
        return self

    @property
    def effective_metrics_level(self) -> str:
        """NONE against emulators (they serve no CloudWatch for the KCL), SUMMARY in AWS, unless set."""
        if self.kcl_metrics_level:
            return self.kcl_metrics_level
        return "NONE" if self.aws_endpoint_url else "SUMMARY"

    def output_prefix(self, output: str) -> str:
        """The S3 key prefix of one output (events, customer_aggregates, errors, _commits)."""
        return f"{self.prefix}/{output}/" if self.prefix else f"{output}/"


def env_var_name(field_name: str) -> str:
    """The environment variable a field is read from (for --help texts and error messages)."""
    if field_name == "aws_region":
        return "AWS_REGION"
    if field_name == "aws_endpoint_url":
        return "AWS_ENDPOINT_URL"
    return ENV_PREFIX + field_name.upper()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; non-None overrides (CLI flags) win. Raises ConfigError."""
    explicit = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**explicit)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "settings"
            source = env_var_name(field) if field in Settings.model_fields else field
            problems.append(f"  {source}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("invalid configuration:\n" + "\n".join(problems)) from None


def aws_environment(settings: Settings) -> dict[str, str]:
    """Environment for child processes (KCL, Python record processors) that reproduces these settings."""
    env = dict(os.environ)
    env["AWS_REGION"] = settings.aws_region
    env.setdefault("AWS_DEFAULT_REGION", settings.aws_region)
    if settings.aws_endpoint_url:
        env["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
    return env
