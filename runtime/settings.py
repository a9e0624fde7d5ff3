"""One frozen, typed settings object read from the environment.

Every field is read from ``CLICKSTREAM_<FIELD>`` (upper case); explicit keyword arguments (CLI flags) win over the
environment. Standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials) are read by boto3 and by
the KCL as usual; ``aws_endpoint_url`` and ``aws_region`` here only mirror them so one object describes a run.
Invalid values fail at start-up with the variable's name and the reason; a ``CLICKSTREAM_*`` variable that names
no setting (a typo) is warned about with the closest valid name.

``clickstream worker`` writes the resolved object to a file and hands its path to every record processor
(``CLICKSTREAM_SETTINGS_FILE``), so command-line flags reach the processors the Java MultiLangDaemon starts.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.logs import LOG_FORMAT_ENV, LOG_LEVEL_ENV, LOG_SOCKET_ENV
from schemas.control import StateWindows
from schemas.layout import OutputLayout

ENV_PREFIX = "CLICKSTREAM_"
#: The KCL's shard-sync and lease-assignment intervals unless set: its own defaults in AWS, seconds against an
#: emulator (one stream, one or two workers, nothing to throttle them).
AWS_SHARD_SYNC_MILLIS: Final = 60_000
AWS_LEASE_ASSIGNMENT_MILLIS: Final = 20_000
EMULATED_SHARD_SYNC_MILLIS: Final = 1_000
EMULATED_LEASE_ASSIGNMENT_MILLIS: Final = 2_000

#: Set by `clickstream worker` for its record processors: the JSON file holding the worker's resolved settings.
SETTINGS_FILE_ENV = "CLICKSTREAM_SETTINGS_FILE"
#: The file a worker writes its resolved settings to, under its state directory (for its processors and its health
#: check).
SETTINGS_FILE = "worker-settings.json"
#: The KCL daemon's initial JVM heap (-Xms), in MiB: the maximum heap (``kcl_java_heap``) must hold it.
KCL_INITIAL_HEAP_MIB = 256
#: CLICKSTREAM_* variables read outside this object (by the CLI's logging options, between worker processes).
OTHER_VARIABLES = frozenset({LOG_LEVEL_ENV, LOG_FORMAT_ENV, LOG_SOCKET_ENV, SETTINGS_FILE_ENV})

#: Bucket name beginnings and endings S3 keeps for its own features (access points, Outposts, directory buckets).
_BUCKET_RESERVED_PREFIXES: Final = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES: Final = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
#: A URL (``s3://bucket/key``): never a local path, which would turn it into a folder named ``s3:``.
URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A value that is only a number (an integer or a decimal, signed).
_NUMBER: Final = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")


def heap_mebibytes(heap: str) -> float:
    """A JVM heap size as ``CLICKSTREAM_KCL_JAVA_HEAP`` writes it (``1g``, ``1536m``, ``524288k``), in MiB."""
    return int(heap[:-1]) * {"k": 1 / 1024, "m": 1, "g": 1024}[heap[-1].lower()]


log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Raised for invalid configuration; the message names each setting (env var) and why it is wrong."""


#: The DNS suffixes of AWS's partitions, their endpoints and their dual-stack endpoints (botocore's partitions.json
#: lists them: a test keeps this in step).
AWS_DNS_SUFFIXES: Final = (
    "amazonaws.com",
    "api.aws",
    "amazonaws.com.cn",
    "api.amazonwebservices.com.cn",
    "amazonaws.eu",
    "api.amazonwebservices.eu",
    "c2s.ic.gov",
    "api.aws.ic.gov",
    "sc2s.sgov.gov",
    "api.aws.scloud",
    "cloud.adc-e.uk",
    "api.cloud-aws.adc-e.uk",
    "csp.hci.ic.gov",
    "api.aws.hci.ic.gov",
)


def is_aws_host(url: str) -> bool:
    """Whether ``url`` is AWS itself (a regional, dual-stack or VPC endpoint of any partition), not an emulator that
    stands in for it (taken as one, a stream in AWS would get the emulator's timings and demo load unasked)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")  # a fully qualified name may end with a dot
    return host.endswith(tuple(f".{suffix}" for suffix in AWS_DNS_SUFFIXES))


def _localstack_endpoint() -> str | None:
    """With LOCALSTACK_HOST set (LocalStack's own convention), talk to that LocalStack unless told otherwise."""
    if not os.environ.get("LOCALSTACK_HOST"):
        return None
    from localstack_client.config import get_service_endpoint

    endpoint: str | None = get_service_endpoint("kinesis")
    return endpoint


#: The most a KCL timing in milliseconds may be: the KCL reads each as a Java number and, on one it cannot hold,
#: falls back to its own default without a word; a day is far beyond any timing that makes sense.
KCL_MILLIS_MAX = 86_400_000
#: The most a duration in seconds may be (a week): far beyond any that makes sense, and within what the clocks and
#: ``timedelta`` built from it can hold (1e12 seconds overflowed a date).
SECONDS_MAX = 7 * 86_400.0
#: A Java int: the KCL's lease count (a larger number fell back to no limit, silently).
JAVA_INT_MAX = 2**31 - 1
#: The longest the KCL's first start on a new lease table waits before it makes the leases (a random 1-30 s, a
#: constant of its Scheduler).
KCL_FIRST_START_WAIT_MAX_SECONDS = 30

#: The region when neither the environment nor the AWS profile names one.
FALLBACK_REGION = "us-east-1"


@functools.lru_cache(maxsize=8)
def _profile_region(_profile: str | None, _config_file: str | None, _home: str | None) -> str | None:
    """The profile's region (cached by what locates it: reading the config costs about 10 ms a Settings)."""
    import botocore.session

    region: str | None = botocore.session.Session().get_config_variable("region")
    return region


def _configured_region() -> str:
    """The region boto3 itself would use (AWS_REGION, AWS_DEFAULT_REGION, then the profile's ``region``), so a
    profile's region is not silently replaced; us-east-1 only when nothing names one."""
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    config = os.environ.get("AWS_CONFIG_FILE")
    return _profile_region(profile, config, os.environ.get("HOME")) or FALLBACK_REGION


def _default_worker_id() -> str:
    """A stable id per host so a restarted worker reclaims its own leases at once.

    The KCL's default is a random UUID: after a restart the old id still looks alive until its leases expire, and
    shards assigned to it stall meanwhile.
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "worker"


class Settings(BaseSettings):
    """Everything a worker, producer or replay run needs, documented field by field."""

    # allow_inf_nan: "inf" would silently turn a limit off (a stuck shard never judged stuck)
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False
    )

    # --- AWS -----------------------------------------------------------------------------------------------
    aws_region: str = Field(
        default_factory=_configured_region,
        validation_alias=AliasChoices("aws_region", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region (AWS_REGION, else AWS_DEFAULT_REGION, else the AWS profile's region, else "
        "us-east-1).",
    )
    aws_endpoint_url: str | None = Field(
        default_factory=_localstack_endpoint,
        validation_alias=AliasChoices("aws_endpoint_url", "AWS_ENDPOINT_URL"),
        description="Override endpoint for every AWS service, e.g. the embedded emulator or LocalStack "
        "(AWS_ENDPOINT_URL; with only LOCALSTACK_HOST set, LocalStack's edge URL). Unset in AWS.",
    )

    # --- Stream and outputs ---------------------------------------------------------------------------------
    stream_name: str = Field(
        "clickstream",
        pattern=r"^[A-Za-z0-9_.-]{1,128}$",  # Kinesis's own rule for a stream name
        description="Kinesis data stream: the worker reads it, produce writes to it, setup creates it.",
    )
    stream_shards: int = Field(
        4, ge=1, le=500, description="Shard count used when `setup` creates the stream."
    )
    bucket: str = Field(
        "clickstream-rfm", min_length=3, max_length=63, description="S3 bucket for Parquet outputs."
    )
    prefix: str = Field(
        "rfm",
        description="Key prefix under which every output lives (events/, customer_aggregates/, errors/, clv/, "
        "replays/, _control/).",
    )
    sse: Literal["AES256", "aws:kms"] = Field(
        "AES256", description="Server-side encryption for every S3 put."
    )
    sse_kms_key_id: str | None = Field(
        None, min_length=1, description="KMS key id or ARN when sse is aws:kms."
    )

    # --- KCL worker -----------------------------------------------------------------------------------------
    application_name: str = Field(
        "clickstream-rfm",
        # a DynamoDB table name, with room for the KCL's suffixes (-CoordinatorState, -WorkerMetricStats)
        pattern=r"^[A-Za-z0-9_.-]{3,200}$",
        description="KCL application name: names the DynamoDB lease tables.",
    )
    worker_id: str = Field(
        default_factory=_default_worker_id,
        # not empty, no blank ends (an unset ${...} in a task template gives ""), no control character
        pattern=r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$",
        description="Stable KCL worker id (default: host name) so restarts reclaim leases immediately.",
    )
    initial_position: Literal["TRIM_HORIZON", "LATEST"] = Field(
        "TRIM_HORIZON", description="Where a shard without a checkpoint starts."
    )
    adopt_lease_checkpoints: bool = Field(
        False,
        description="Start a prefix without any commit from the checkpoints its lease table holds already (a "
        "prefix changed on purpose, keeping the application name: the records before them are not in the new "
        "prefix). Without it such a worker is refused: the table may be another stream's.",
    )
    state_dir: Path = Field(
        Path("state"),
        description="Local directory for each shard's local state (a journal of Arrow files) and the status files.",
    )
    java: str | None = Field(
        None, min_length=1, description="Path to the java binary (default: $JAVA_HOME/bin/java, then PATH)."
    )
    kcl_metrics_level: Literal["NONE", "SUMMARY", "DETAILED"] | None = Field(
        None,
        description="KCL CloudWatch metrics level; default NONE with an endpoint that is not AWS, else SUMMARY.",
    )
    kcl_shutdown_grace_millis: int = Field(
        20_000,
        ge=1_000,
        le=KCL_MILLIS_MAX,
        description="Time the KCL gives processors to flush and checkpoint on SIGTERM.",
    )
    stop_deadline_seconds: float = Field(
        25.0,
        ge=1,
        le=SECONDS_MAX,
        description="After SIGTERM, how long the worker waits for its shards to flush and checkpoint before it "
        "kills the KCL (longer than the KCL's grace, shorter than the orchestrator's stop timeout, e.g. ECS "
        "stopTimeout).",
    )
    kcl_idle_time_between_reads_millis: int = Field(
        250, ge=50, le=KCL_MILLIS_MAX, description="Polling pause when a shard is idle."
    )
    kcl_shard_sync_interval_millis: int | None = Field(
        None,
        ge=500,
        le=KCL_MILLIS_MAX,
        description="How often the KCL lists shards; default 60000 in AWS, 1000 against an emulator.",
    )
    kcl_lease_assignment_interval_millis: int | None = Field(
        None,
        ge=500,
        le=KCL_MILLIS_MAX,
        description="How often the KCL leader assigns leases; default 20000 in AWS, 2000 against an emulator.",
    )
    kcl_failover_time_millis: int = Field(
        10_000, ge=1_000, le=KCL_MILLIS_MAX, description="Lease duration before another worker may take it."
    )
    kcl_java_heap: str = Field(
        "1g",
        pattern=r"^[0-9]+[kmgKMG]$",
        description="Maximum JVM heap of the KCL daemon (-Xmx); size it with the shards a worker holds.",
    )
    kcl_max_records: int = Field(10_000, ge=1, le=10_000, description="Max records per GetRecords call.")
    kcl_max_leases_for_worker: int | None = Field(
        None,
        ge=1,
        le=JAVA_INT_MAX,
        description="Most shard leases one worker takes (unset: no limit). Set it to the shards a task's memory "
        "holds and run enough workers for all shards: without it, the last worker standing takes every shard.",
    )
    kcl_log_level: Literal["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF"] = Field(
        "INFO", description="Level of the KCL's own (Java) logs."
    )
    no_lease_unhealthy_seconds: float = Field(
        300.0,
        ge=0,
        le=SECONDS_MAX,
        description="A worker that has held no shard lease this long (since it started or last held one) is "
        "unhealthy, unless every lease is held by other workers (a standby); 0 turns the check off.",
    )

    stuck_shard_seconds: float = Field(
        300.0,
        gt=0,
        le=SECONDS_MAX,
        description="A shard with records waiting and no flush for this long is stuck: `clickstream health` "
        "reports it unhealthy, and the worker exits 3 so that the orchestrator restarts it.",
    )

    # --- Flushing ---------------------------------------------------------------------------------------------
    flush_max_records: int = Field(
        50_000,
        ge=1,
        description="Flush a shard once this many records are buffered (checked after each GetRecords batch: a "
        "flush holds up to this plus one batch, CLICKSTREAM_KCL_MAX_RECORDS).",
    )
    flush_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Flush after this many buffered bytes."
    )
    flush_max_seconds: float = Field(
        60.0, gt=0, le=SECONDS_MAX, description="Flush at most this long after the first buffered record."
    )
    flush_when_caught_up: bool = Field(
        True,
        description="Flush when a shard is caught up (nothing more delivered, 0 ms behind) instead of waiting for "
        "the limits above: fresher data; false waits for them (fewer, larger files under light traffic).",
    )
    flush_caught_up_min_seconds: float = Field(
        10.0,
        ge=0,
        le=SECONDS_MAX,
        description="A caught-up shard flushes once its oldest buffered record has waited this long: under a "
        "trickle of records, one flush (about five S3 requests and a commit record) per this many seconds rather "
        "than one per record. 0: at once.",
    )

    snapshot_every_flushes: int = Field(
        10,
        ge=1,
        description="Write a snapshot of a shard's state to S3 every this many flushes, at shard end, and at a "
        "graceful stop when the shard has no snapshot yet or the commits since its last one hold enough new events "
        "(snapshot_min_new_fraction).",
    )
    snapshot_min_new_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Write that snapshot only once the commits since the last one hold new events of at least this "
        "fraction of the rows a snapshot writes (customers, sessions, active days, event ids). A snapshot writes "
        "the whole state: this bounds its cost per event as the state grows, and a restore re-applies about this "
        "fraction of it from the commit chain at most. A fraction from 0 to 1 (0.25 is 25%); 0: every "
        "snapshot_every_flushes flushes.",
    )
    state_sync_records: int = Field(
        250_000,
        ge=1,
        description="Sync a shard's local state (its journal on disk) after this many applied records (S3 is the "
        "truth; the journal makes restarts fast, and a restart after a crash re-applies from S3 what it lacks).",
    )
    state_sync_seconds: float = Field(
        30.0,
        ge=0,
        le=SECONDS_MAX,
        description="Sync a shard's local state at least this often, in seconds, whatever the records "
        "(checked as flushes install; also written on a graceful stop).",
    )
    dedupe_window_days: int = Field(
        7,
        ge=1,
        le=3650,
        description="Remember (customer_id, event_id) pairs for this many days of Kinesis arrival time; an exact "
        "duplicate that arrives more than this many UTC days after the applied delivery is counted again (bounds "
        "the de-duplication memory; replay uses the same window).",
    )
    distinct_window_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="Remember the sessions and active days a customer's events counted for this many days of Kinesis "
        "arrival time after the event that counted each; an event of the same session (or day) arriving later "
        "counts it again (bounds the state, which would otherwise grow with the whole history; purchase days are "
        "kept for good; replay uses the same window).",
    )

    # --- Validation -------------------------------------------------------------------------------------------
    max_record_bytes: int = Field(
        32 * 1024,
        ge=256,
        le=10 * 1024 * 1024,  # Kinesis's largest record
        description="Records larger than this are rejected.",
    )
    max_revenue: int = Field(
        1_000_000,
        ge=1,
        le=1_000_000_000,  # a customer's sum of millions of purchases still fits revenue's DECIMAL(18, 2)
        description="Purchases with a larger revenue are rejected.",
    )
    min_event_time: datetime = Field(
        datetime.fromisoformat("2000-01-01T00:00:00+00:00"), description="Events before this are rejected."
    )
    max_future_skew_seconds: int = Field(
        3600,
        ge=0,
        le=10 * 365 * 86_400,
        description="Events later than their Kinesis arrival time plus this are rejected.",
    )

    # --- CLV scoring (clickstream score) ----------------------------------------------------------------------
    clv_horizon_months: int = Field(12, ge=1, le=120, description="CLV horizon in months.")
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

    @field_validator("aws_region")
    @classmethod
    def _region_given(cls, value: str) -> str:
        # an unset ${AWS_REGION} in a task template gives "": boto3 would build https://kinesis..amazonaws.com
        if not value.strip():
            raise ValueError("must not be empty: the region of the stream, the tables and the bucket")
        return value

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = value.strip("/")
        # keys would start at the bucket's root, outside the <bucket>/<prefix>/* that the IAM policy grants
        if not value:
            raise ValueError("must not be empty: every key the worker writes lives under it")
        if not re.fullmatch(r"[A-Za-z0-9_.=/-]*", value):
            raise ValueError("may contain only letters, digits and _ . = / -")
        if any(part in {"", ".", ".."} for part in value.split("/")):
            # keys are also folder paths where outputs are downloaded: '..' would climb out of the folder
            raise ValueError("must not have an empty, '.' or '..' part between its slashes")
        return value

    @field_validator("aws_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        # one endpoint for every service (Kinesis, S3, DynamoDB, CloudWatch): an emulator's or a gateway's, never a
        # single AWS service's (unset in AWS)
        example = "must be a URL like http://127.0.0.1:4566 or https://localstack.internal:4566"
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            raise ValueError(example) from None
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ValueError(example)
        if parts.path.strip("/") or parts.query or parts.fragment:
            # S3 would read the path as a bucket ('bucket some does not exist' for http://host/some/path)
            raise ValueError(f"{example}, without a path")
        return value

    @field_validator("initial_position", "kcl_metrics_level", mode="before")
    @classmethod
    def _upper_case_name(cls, value: object) -> object:
        """KCL enum names, in any case (as the log levels are)."""
        return value.upper() if isinstance(value, str) else value

    @field_validator("sse", mode="before")
    @classmethod
    def _sse_name(cls, value: object) -> object:
        """S3's names for the encryptions (``AES256``, ``aws:kms``), in any case."""
        if isinstance(value, str):
            return {"aes256": "AES256", "aws:kms": "aws:kms"}.get(value.lower(), value)
        return value

    @field_validator("kcl_log_level", mode="before")
    @classmethod
    def _java_level_name(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.upper()
            return {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(value, value)
        return value

    @field_validator("kcl_java_heap")
    @classmethod
    def _heap_holds_the_initial_heap(cls, value: str) -> str:
        if heap_mebibytes(value) < KCL_INITIAL_HEAP_MIB:
            raise ValueError(
                f"must be at least {KCL_INITIAL_HEAP_MIB}m, the KCL daemon's initial heap (-Xms)"
            )
        return value

    @field_validator("state_dir", mode="before")
    @classmethod
    def _local_state_dir(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():  # Path("") is "." (health would read another folder)
            raise ValueError("must not be empty: the folder of the worker's state, heartbeat and settings")
        if isinstance(value, str) and URL.match(value):
            raise ValueError("is a URL: the state directory is a local folder (S3 holds the outputs already)")
        return value

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        """S3's general purpose bucket naming rules: refused here (exit 2), not by CreateBucket at run time."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]+[a-z0-9]", value):
            raise ValueError("is not a valid S3 bucket name (lower-case letters, digits, dots and hyphens)")
        if ".." in value or ".-" in value or "-." in value:
            raise ValueError("is not a valid S3 bucket name (no two dots in a row, no dot next to a hyphen)")
        if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", value):
            raise ValueError("is not a valid S3 bucket name (it must not look like an IP address)")
        reserved = [part for part in _BUCKET_RESERVED_PREFIXES if value.startswith(part)]
        reserved += [part for part in _BUCKET_RESERVED_SUFFIXES if value.endswith(part)]
        if reserved:
            raise ValueError(f"is not a valid S3 bucket name ({reserved[0]!r} is reserved by S3)")
        return value

    @field_validator("min_event_time", mode="before")
    @classmethod
    def _read_a_time_not_a_number(cls, value: object) -> object:
        """An ISO time, or a date (UTC midnight); a number would be read as Unix seconds (20260101 -> 1970-08-23)."""
        forms = (
            "must be an ISO 8601 time with a UTC offset, e.g. 2000-01-01T00:00:00+00:00, or a date (2000-01-01, "
            "read as UTC midnight)"
        )
        if isinstance(value, bool | int | float) or (
            isinstance(value, str) and _NUMBER.fullmatch(value.strip())
        ):
            raise ValueError(f"{forms}, not a number")
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            return f"{value.strip()}T00:00:00+00:00"
        if isinstance(value, str):
            try:
                datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(forms) from None
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
        if self.stop_deadline_seconds * 1000 <= self.kcl_shutdown_grace_millis:
            raise ValueError(
                "CLICKSTREAM_STOP_DEADLINE_SECONDS must be longer than CLICKSTREAM_KCL_SHUTDOWN_GRACE_MILLIS "
                f"({self.stop_deadline_seconds} s <= {self.kcl_shutdown_grace_millis} ms), or a stop kills the "
                "KCL while its shards are still flushing"
            )
        first_lease = self.first_lease_within_seconds
        if 0 < self.no_lease_unhealthy_seconds < first_lease:
            raise ValueError(
                f"CLICKSTREAM_NO_LEASE_UNHEALTHY_SECONDS must be 0 (off) or at least {first_lease:g} "
                f"({self.no_lease_unhealthy_seconds:g} given): a starting worker may wait that long for its first "
                f"lease (the KCL's first start waits up to {KCL_FIRST_START_WAIT_MAX_SECONDS} s, its leader assigns "
                f"leases every {self.effective_lease_assignment_interval_millis / 1000:g} s, and the lease of a "
                f"stopped worker expires after {self.kcl_failover_time_millis / 1000:g} s), and would be reported "
                "unhealthy, and replaced, as it starts"
            )
        if self.stuck_shard_seconds <= self.flush_max_seconds:
            raise ValueError(
                "CLICKSTREAM_STUCK_SHARD_SECONDS must be larger than CLICKSTREAM_FLUSH_MAX_SECONDS "
                f"({self.stuck_shard_seconds} <= {self.flush_max_seconds}), or every healthy shard looks stuck"
            )
        return self

    @property
    def state_windows(self) -> StateWindows:
        """The windows a customer state forgets by, as the control records carry them."""
        return StateWindows(dedupe_days=self.dedupe_window_days, distinct_days=self.distinct_window_days)

    @property
    def emulated(self) -> bool:
        """Whether the run talks to an emulator (LocalStack, the embedded one): an endpoint that is not AWS's."""
        return self.aws_endpoint_url is not None and not is_aws_host(self.aws_endpoint_url)

    @property
    def effective_metrics_level(self) -> str:
        """NONE against emulators (they serve no CloudWatch for the KCL), SUMMARY in AWS, unless set."""
        if self.kcl_metrics_level:
            return self.kcl_metrics_level
        return "NONE" if self.emulated else "SUMMARY"

    @property
    def effective_shard_sync_interval_millis(self) -> int:
        """AWS's pace in AWS; against an emulator, seconds: at AWS's pace a first start there took minutes to take
        its leases, which read as a hang."""
        if self.kcl_shard_sync_interval_millis is not None:
            return self.kcl_shard_sync_interval_millis
        return EMULATED_SHARD_SYNC_MILLIS if self.emulated else AWS_SHARD_SYNC_MILLIS

    @property
    def effective_lease_assignment_interval_millis(self) -> int:
        """As ``effective_shard_sync_interval_millis``, for the leader's lease assignment."""
        if self.kcl_lease_assignment_interval_millis is not None:
            return self.kcl_lease_assignment_interval_millis
        return EMULATED_LEASE_ASSIGNMENT_MILLIS if self.emulated else AWS_LEASE_ASSIGNMENT_MILLIS

    @property
    def first_lease_within_seconds(self) -> float:
        """The longest a starting worker may wait for its first lease: the KCL's first-start wait, a lease
        assignment, and a stopped worker's lease expiring."""
        waits_millis = self.effective_lease_assignment_interval_millis + self.kcl_failover_time_millis
        return KCL_FIRST_START_WAIT_MAX_SECONDS + waits_millis / 1000

    @property
    def layout(self) -> OutputLayout:
        """Every S3 key under this prefix (schemas/layout.py is their one owner)."""
        return OutputLayout(self.prefix)

    @property
    def metric_dimensions(self) -> dict[str, str]:
        """The CloudWatch dimensions of the worker's metrics: the application too, as a second application reading
        the same stream (a reprocessing) would otherwise merge into the first's metrics and alarms."""
        return {"ApplicationName": self.application_name, "StreamName": self.stream_name}


def env_var_name(field_name: str) -> str:
    """The environment variable a field is read from (for --help texts and error messages)."""
    if field_name == "aws_region":
        return "AWS_REGION"
    if field_name == "aws_endpoint_url":
        return "AWS_ENDPOINT_URL"
    return ENV_PREFIX + field_name.upper()


def known_variables() -> frozenset[str]:
    """Every CLICKSTREAM_* variable something reads."""
    return frozenset(env_var_name(name) for name in Settings.model_fields) | OTHER_VARIABLES


def unknown_variables(environ: dict[str, str] | os._Environ[str]) -> list[tuple[str, str | None]]:
    """CLICKSTREAM_* variables that name nothing (typos), each with the closest valid name (or None)."""
    known = known_variables()
    # compared without the shared prefix, which says nothing; named in full, as AWS_REGION has no prefix
    by_suffix = {name.removeprefix(ENV_PREFIX): name for name in known}

    def closest(name: str) -> str | None:
        matches = difflib.get_close_matches(
            name.removeprefix(ENV_PREFIX), sorted(by_suffix), n=1, cutoff=0.75
        )
        return by_suffix[matches[0]] if matches else None

    return [
        (name, closest(name)) for name in sorted(environ) if name.startswith(ENV_PREFIX) and name not in known
    ]


_warned: set[str] = set()


def warn_about_unknown_variables() -> None:
    """Log one warning per misspelled CLICKSTREAM_* variable (once per process): it would be silently ignored."""
    for name, closest in unknown_variables(os.environ):
        if name in _warned:
            continue
        _warned.add(name)
        hint = f"; did you mean {closest}?" if closest else ""
        log.warning("%s is not a setting and is ignored%s", name, hint)


#: What each pattern-checked setting must look like, in words (pydantic would show the regular expression).
_PATTERN_MEANINGS: Final = {
    "stream_name": "must be 1-128 letters, digits, '_', '.' or '-' (Kinesis's rule for stream names)",
    "application_name": "must be 3-200 letters, digits, '_', '.' or '-' (it names the KCL's DynamoDB tables)",
    "worker_id": "must not be empty, begin or end with a blank, or hold a control character",
    "kcl_java_heap": "must be a whole number followed by k, m or g, e.g. 1g or 1536m",
}


def _default_of(field: str) -> str:
    """`` (<default>)`` for the message of an empty variable, when the default is a plain value."""
    info = Settings.model_fields[field]
    plain = info.default_factory is None and info.default not in (None, PydanticUndefined)
    return f" ({info.default})" if plain else ""


def _config_error(exc: ValidationError) -> ConfigError:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        source = env_var_name(field) if field in Settings.model_fields else field
        if error["type"] == "string_pattern_mismatch" and field in _PATTERN_MEANINGS:
            message = _PATTERN_MEANINGS[field]
        elif error["type"] == "value_error":  # our own validators: the message is a sentence already
            message = str(error["msg"]).removeprefix("Value error, ")
        else:
            message = str(error["msg"])
        shown = f" (got {error['input']!r})" if field in Settings.model_fields else ""
        # a variable set to nothing, e.g. `X=` or an unset ${X:-}
        if error["input"] == "" and field in Settings.model_fields:
            message = (
                f"empty: leave it out to use the default{_default_of(field)}, or give a value ({message})"
            )
            shown = ""
        # a check across settings (a model validator) names its settings in its own sentence
        problems.append(f"{source}: {message}{shown}" if error["loc"] else message)
    return ConfigError("; ".join(problems))


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; non-None overrides (CLI flags) win. Raises ConfigError."""
    warn_about_unknown_variables()
    explicit = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**explicit)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _config_error(exc) from None


def settings_json(settings: Settings) -> str:
    """Every field, resolved: what ``load_settings_file`` reads back into an equal object."""
    return json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True)


def write_settings_file(settings: Settings, path: Path) -> Path:
    """Write the resolved settings for child processes (owner-readable only; atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(settings_json(settings), encoding="utf-8")
    temporary.chmod(0o600)
    temporary.replace(path)
    return path


def load_settings_file(path: Path) -> Settings:
    """The settings a worker resolved (flags and environment) for its processors; the environment is not read."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the settings file {path}: {error}") from None
    try:
        # Every field is given, so nothing comes from the environment of the process reading it.
        return Settings(**document)
    except ValidationError as exc:
        raise _config_error(exc) from None


def with_overrides(settings: Settings, **overrides: object) -> Settings:
    """``settings`` with the non-None ``overrides`` on top, validated as a whole (a flag checked against the limits
    of the settings it joins, not the environment's). Raises ConfigError."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**{**settings.model_dump(), **given})
    except ValidationError as exc:
        raise _config_error(exc) from None


def configured_state_dir(given: Path | None = None) -> Path:
    """The state directory a command means (its flag, else the environment, else the default), read without
    validating the other settings: they may be the worker's, written in that directory."""
    if given is not None:
        return given
    value = os.environ.get(env_var_name("state_dir"))
    if value is not None and not value.strip():
        raise ConfigError(
            f"{env_var_name('state_dir')}: empty: leave it out to use the default (state), or give a value"
        )
    return Path(value or Settings.model_fields["state_dir"].default)


def worker_settings(state_dir: Path) -> Settings | None:
    """The settings of the worker whose state directory this is, or None if no worker wrote them there."""
    path = state_dir / SETTINGS_FILE
    return load_settings_file(path) if path.exists() else None


def settings_for_process() -> Settings:
    """The worker's settings file when this process was started by a worker, else the environment."""
    path = os.environ.get(SETTINGS_FILE_ENV)
    if not path:
        return load_settings()
    try:
        return load_settings_file(Path(path))
    except ConfigError as error:
        raise ConfigError(f"{SETTINGS_FILE_ENV}: {error}") from None


def aws_environment(settings: Settings) -> dict[str, str]:
    """Environment for child processes (KCL, Python record processors) that reproduces these settings."""
    env = dict(os.environ)
    env["AWS_REGION"] = settings.aws_region
    env.setdefault("AWS_DEFAULT_REGION", settings.aws_region)
    if settings.aws_endpoint_url:
        env["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
    return env
