"""Specification of the MultiLangDaemon supervisor's pure parts: properties, JVM command, idle detection, Java lookup,
two-stage signals and exit codes. No Java is started here (tests/test_e2e_kcl.py runs the real daemon)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import boto3
import pytest
from botocore.exceptions import CredentialRetrievalError, EndpointConnectionError, NoCredentialsError
from click.testing import CliRunner
from moto import mock_aws
from rich.console import Console

from clickstream.cli import main
from consumer.health import HEARTBEAT_FILE, Heartbeat, assess, write_heartbeat
from consumer.kcl_worker import (
    MAIN_CLASS,
    IdleCheck,
    KclWorker,
    WorkerError,
    find_java,
    java_command,
    jvm_memory_limit,
    kcl_properties,
    lock_state_dir,
    machine_memory_bytes,
    processor_command,
    require_heap_fits,
    require_java,
)
from consumer.preflight import PreflightError, preflight
from consumer.status import ShardStatus, StatusWriter
from consumer.worker_output import LogSink, status_view
from runtime.settings import (
    SETTINGS_FILE,
    SETTINGS_FILE_ENV,
    Settings,
    load_settings,
    load_settings_file,
    write_settings_file,
)

EXECUTABLE = processor_command()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CLICKSTREAM_") or name in (
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def properties(text: str) -> dict[str, str]:
    parsed = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            parsed[key] = value
    return parsed


def fake_java(
    directory: Path, version_line: str = 'openjdk version "17.0.12" 2024-07-16', code: int = 0
) -> Path:
    """An executable that answers ``-version`` as a java does (on stderr)."""
    directory.mkdir(parents=True, exist_ok=True)
    java = directory / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\nexit {code}\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return java


# ---------------------------------------------------------------------------------------------------- properties
def test_the_kcl_reads_back_every_value_as_the_settings_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written plainly, a worker id CORP\\host1 was read by the KCL as CORPhost1 and wörker as wÃ¶rker (Java's
    Properties.load reads ISO 8859-1 with backslash escapes): its lease owner was not the id the worker checks."""
    monkeypatch.delenv("CLICKSTREAM_JAVA", raising=False)
    java = find_java(load_settings())
    worker_id = "CORP\\höst-1 ☃ 𝄞"  # a backslash, Latin-1, the BMP beyond it, and a surrogate pair
    settings = load_settings(worker_id=worker_id, stream_name="s", state_dir=tmp_path)
    written = tmp_path / "kcl.properties"
    written.write_text(
        kcl_properties(settings, "/opt/ä b/python -m consumer.record_processor"), encoding="utf-8"
    )
    reader = tmp_path / "Load.java"
    reader.write_text(
        "import java.io.*; import java.util.*;\n"
        "public class Load { public static void main(String[] a) throws Exception {\n"
        "  Properties p = new Properties(); try (InputStream in = new FileInputStream(a[0])) { p.load(in); }\n"
        '  try (Writer out = new OutputStreamWriter(new FileOutputStream(a[1]), "UTF-8")) {\n'
        '    out.write(p.getProperty("workerId") + "\\n" + p.getProperty("executableName")); } } }\n'
    )
    read = tmp_path / "read.txt"
    subprocess.run([java, str(reader), str(written), str(read)], check=True, timeout=120, capture_output=True)
    assert read.read_text(encoding="utf-8").split("\n") == [
        worker_id,
        "/opt/ä b/python -m consumer.record_processor",
    ]


def test_kcl_properties_name_the_processor_stream_application_worker_and_polling_mode() -> None:
    settings = load_settings(
        stream_name="clicks",
        application_name="rfm-app",
        worker_id="worker-7",
        kcl_shutdown_grace_millis=15_000,
    )
    props = properties(kcl_properties(settings, EXECUTABLE))

    assert props["executableName"] == EXECUTABLE
    assert props["streamName"] == "clicks"
    assert props["applicationName"] == "rfm-app"
    assert props["workerId"] == "worker-7"
    assert props["retrievalMode"] == "POLLING"
    assert props["callProcessRecordsEvenForEmptyRecordList"] == "true"
    assert props["shutdownGraceMillis"] == "15000"
    assert props["initialPositionInStream"] == "TRIM_HORIZON"
    assert props["regionName"] == "us-east-1"
    # the graceful lease handoff can strand a shard (KCL #1743, pinned in test_e2e_chaos): it must stay off
    assert props["isGracefulLeaseHandoffEnabled"] == "false"


def test_kcl_properties_carry_endpoints_only_when_an_endpoint_is_set() -> None:
    in_aws = properties(kcl_properties(load_settings(), EXECUTABLE))
    emulated = properties(kcl_properties(load_settings(aws_endpoint_url="http://127.0.0.1:4566"), EXECUTABLE))

    assert "kinesisEndpoint" not in in_aws
    assert "dynamoDBEndpoint" not in in_aws
    assert emulated["kinesisEndpoint"] == emulated["dynamoDBEndpoint"] == "http://127.0.0.1:4566"


@pytest.mark.parametrize(
    ("endpoint", "explicit", "expected"),
    [
        ("http://127.0.0.1:4566", None, "NONE"),
        (None, None, "SUMMARY"),
        ("http://127.0.0.1:4566", "DETAILED", "DETAILED"),
        (None, "NONE", "NONE"),
    ],
)
def test_metrics_level_defaults_to_none_against_an_emulator_and_summary_in_aws_unless_set(
    endpoint: str | None, explicit: str | None, expected: str
) -> None:
    settings = load_settings(aws_endpoint_url=endpoint, kcl_metrics_level=explicit)
    assert properties(kcl_properties(settings, EXECUTABLE))["metricsLevel"] == expected


@pytest.mark.parametrize(
    ("endpoint", "explicit", "expected"),
    [
        ("http://127.0.0.1:4566", None, (1_000, 2_000)),
        (None, None, (60_000, 20_000)),
        ("https://kinesis.eu-west-1.amazonaws.com", None, (60_000, 20_000)),
        ("http://127.0.0.1:4566", 30_000, (30_000, 30_000)),
        (None, 1_000, (1_000, 1_000)),
    ],
)
def test_kcl_intervals_default_to_seconds_against_an_emulator_and_to_the_kcls_own_in_aws_unless_set(
    endpoint: str | None, explicit: int | None, expected: tuple[int, int]
) -> None:
    """Against the emulator without the README's two exports, a first worker run took 2.5 minutes, showing only
    "waiting for the KCL to take leases"."""
    settings = load_settings(
        aws_endpoint_url=endpoint,
        kcl_shard_sync_interval_millis=explicit,
        kcl_lease_assignment_interval_millis=explicit,
    )
    written = properties(kcl_properties(settings, EXECUTABLE))
    assert (
        int(written["shardSyncIntervalMillis"]),
        int(written["leaseAssignmentIntervalMillis"]),
    ) == expected


def test_metrics_level_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_KCL_METRICS_LEVEL", "DETAILED")
    assert properties(kcl_properties(load_settings(), EXECUTABLE))["metricsLevel"] == "DETAILED"


# ---------------------------------------------------------------------------------------------------- JVM command
@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:4566"])
def test_java_command_runs_the_multilang_daemon_from_the_bundled_jars(
    tmp_path: Path, endpoint: str | None
) -> None:
    java = fake_java(tmp_path / "jdk" / "bin")
    settings = load_settings(java=str(java), aws_endpoint_url=endpoint)
    command = java_command(settings, tmp_path / "kcl.properties")

    assert command[0] == str(java)
    assert ("-Daws.cborEnabled=false" in command) == (endpoint is not None)
    classpath = command[command.index("-cp") + 1]
    assert classpath.endswith("/*")
    jars = Path(classpath[:-2])
    assert Path(jars).name == "jars"
    assert Path(jars).parent.name == "amazon_kclpy"
    assert list(jars.glob("amazon-kinesis-client-multilang-*.jar"))
    logback = next(arg for arg in command if arg.startswith("-Dlogback.configurationFile="))
    assert Path(logback.partition("=")[2]).is_file()
    assert command[-3:] == [MAIN_CLASS, "--properties-file", str(tmp_path / "kcl.properties")]


def test_prepare_writes_the_properties_file_and_removes_stale_status_files(tmp_path: Path) -> None:
    settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "state")
    writer = StatusWriter(tmp_path / "state" / "status")
    writer.write(ShardStatus(shard_id="shardId-000000000000", pid=1), force=True)

    command = KclWorker(settings).prepare()

    written = properties((tmp_path / "state" / "kcl.properties").read_text())
    assert written["executableName"] == EXECUTABLE
    assert command[-1] == str(tmp_path / "state" / "kcl.properties")
    assert list((tmp_path / "state" / "status").glob("*.json")) == []


def test_processors_get_the_resolved_settings_file_and_the_log_setup(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path / "state", prefix="alt", flush_max_seconds=2)
    worker = KclWorker(settings, log_level="DEBUG")

    path = worker.settings_file()
    env = worker.child_environment(path, tmp_path / "log.sock")

    assert env[SETTINGS_FILE_ENV] == str(path) and path.is_absolute()
    loaded = load_settings_file(path)
    assert (loaded.prefix, loaded.flush_max_seconds) == ("alt", 2)
    assert loaded.state_dir == (tmp_path / "state").resolve()
    assert (env["CLICKSTREAM_LOG_LEVEL"], env["CLICKSTREAM_LOG_FORMAT"]) == ("DEBUG", "json")


def test_the_jvm_gets_the_kcl_log_level_setting(tmp_path: Path) -> None:
    settings = load_settings(java=str(fake_java(tmp_path / "bin")), kcl_log_level="warning")
    assert "-DCLICKSTREAM_KCL_LOG_LEVEL=WARN" in java_command(settings, tmp_path / "kcl.properties")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_child_started_with_the_hook_is_killed_when_its_parent_dies(tmp_path: Path) -> None:
    """The hook on a grandchild whose parent (standing in for the worker) is killed with SIGKILL."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from consumer.kcl_worker import die_with_parent_hook\n"
            "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent_hook())\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n",
        ]
    )
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while not _gone(child):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    """``pid`` has ended: no /proc entry (reaped, even between two reads of it) or a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


# ---------------------------------------------------------------------------------------------------- no lease
def test_a_worker_holding_no_lease_too_long_is_unhealthy_with_the_reason(tmp_path: Path) -> None:
    now = time.time()
    write_heartbeat(
        tmp_path,
        Heartbeat(
            pid=os.getpid(),
            phase="running",
            started_at=now - 400,
            lease_detail="the lease table cannot be read",
        ),
    )
    report = assess(tmp_path, stuck_after=300, no_lease_after=300, now=now)
    assert not report.healthy
    assert report.problems == [
        "worker has held no shard lease for 400s since it started: the lease table cannot be read"
    ]
    assert assess(tmp_path, stuck_after=300, no_lease_after=500, now=now).healthy, "not yet"
    assert assess(tmp_path, stuck_after=300, no_lease_after=0, now=now).healthy, "0 turns the check off"


def test_a_standby_worker_or_one_holding_a_lease_is_healthy(tmp_path: Path) -> None:
    now = time.time()
    write_heartbeat(tmp_path, Heartbeat(pid=os.getpid(), phase="running", started_at=now - 400, standby=True))
    assert assess(tmp_path, stuck_after=300, no_lease_after=60, now=now).healthy
    write_heartbeat(tmp_path, Heartbeat(pid=os.getpid(), phase="running", started_at=now - 400))
    StatusWriter(tmp_path / "status").write(drained_status(last_call_at=now), force=True)
    assert assess(tmp_path, stuck_after=300, no_lease_after=60, now=now).healthy


def lease_table(name: str) -> Any:
    """A DynamoDB table keyed as the KCL's lease table (in the moto of the caller's ``mock_aws``)."""
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return dynamodb


def test_the_supervisor_tells_a_standby_from_a_worker_that_cannot_take_leases(tmp_path: Path) -> None:
    with mock_aws():
        dynamodb = lease_table("lease-app")
        settings = load_settings(
            state_dir=tmp_path, application_name="lease-app", worker_id="me", no_lease_unhealthy_seconds=60
        )
        for shard, owner in (("shardId-0", "other"), ("shardId-1", "other")):
            dynamodb.put_item(
                TableName="lease-app", Item={"leaseKey": {"S": shard}, "leaseOwner": {"S": owner}}
            )
        # a parent shard's lease after a reshard: processed to its end, owned by nobody until the KCL deletes it
        dynamodb.put_item(
            TableName="lease-app", Item={"leaseKey": {"S": "shardId-9"}, "checkpoint": {"S": "SHARD_END"}}
        )
        worker = KclWorker(settings)
        worker._heartbeat.started_at -= 120
        worker._track_leases({})
        assert worker._heartbeat.standby and "held by 1 other workers" in str(worker._heartbeat.lease_detail)

        dynamodb.put_item(TableName="lease-app", Item={"leaseKey": {"S": "shardId-2"}})
        worker._last_lease_scan = 0.0
        worker._track_leases({})
        assert not worker._heartbeat.standby
        assert worker._heartbeat.lease_detail == "1 of 3 leases have no owner and none was taken"

        # the lease table says this worker holds a lease, yet none of its processors is processing: not a standby,
        # and not "no owner" either (its processors initialize, restore or wait)
        dynamodb.put_item(
            TableName="lease-app", Item={"leaseKey": {"S": "shardId-2"}, "leaseOwner": {"S": "me"}}
        )
        worker._last_lease_scan = 0.0
        worker._track_leases({})
        assert not worker._heartbeat.standby
        assert str(worker._heartbeat.lease_detail).startswith(
            "1 of 3 leases are this worker's, but none of its"
        )

        # its processor of that shard restores a large state (initializing, minutes): the lease is held, and the
        # worker is not reported for holding none (ECS would replace it mid-restore, the next one restart it)
        restoring = ShardStatus(
            shard_id="shardId-2", pid=os.getpid(), phase="initializing", started_at=time.time()
        )
        worker._heartbeat.started_at -= 3_600
        worker._track_leases({"shardId-2": restoring})
        assert worker._heartbeat.last_lease_at is not None
        assert time.time() - worker._heartbeat.last_lease_at < 60
        write_heartbeat(tmp_path, worker._heartbeat)
        StatusWriter(tmp_path / "status").write(restoring, force=True)
        assert assess(tmp_path, stuck_after=300, no_lease_after=10).healthy
        ended = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        StatusWriter(tmp_path / "status").write(replace(restoring, pid=int(ended.stdout)), force=True)
        # a processor that died initializing holds nothing
        worker._heartbeat.last_lease_at = time.time() - 3_600
        write_heartbeat(tmp_path, worker._heartbeat)
        assert not assess(tmp_path, stuck_after=300, no_lease_after=10).healthy


# ---------------------------------------------------------------------------------------------------- preflight
def test_preflight_names_the_missing_stream_bucket_or_denied_table() -> None:
    with mock_aws():
        settings = load_settings(stream_name="pre-stream", bucket="pre-bucket", application_name="pre-app")
        with pytest.raises(PreflightError, match="stream 'pre-stream' does not exist"):
            preflight(settings)
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="pre-stream", ShardCount=1)
        with pytest.raises(PreflightError, match="bucket 'pre-bucket' does not exist"):
            preflight(settings)
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="pre-bucket")
        preflight(settings)  # no lease table yet: the KCL creates it


def test_a_prefix_belongs_to_the_first_stream_that_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard ids repeat across streams: a second stream on the same prefix (a copied configuration) took the first's
    commit chains for its own, lost its commits to them and skipped its records as redeliveries, silently. The
    first worker on a prefix claims it for its stream; a worker of another stream is refused before it starts."""
    from botocore.exceptions import ClientError

    from consumer.preflight import check_prefix_owner, check_stream
    from schemas.control import PrefixOwner
    from schemas.layout import OutputLayout

    with mock_aws():
        kinesis, s3 = (
            boto3.client("kinesis", region_name="us-east-1"),
            boto3.client("s3", region_name="us-east-1"),
        )
        for stream in ("clicks-a", "clicks-b"):
            kinesis.create_stream(StreamName=stream, ShardCount=1)
        s3.create_bucket(Bucket="shared-bucket")
        first = load_settings(
            stream_name="clicks-a", bucket="shared-bucket", prefix="rfm", application_name="app-a"
        )
        second = first.model_copy(update={"stream_name": "clicks-b", "application_name": "app-b"})
        key = OutputLayout("rfm").prefix_owner_key

        preflight(first)
        preflight(first)  # its own prefix, again: a restart
        claim = PrefixOwner.from_json(s3.get_object(Bucket="shared-bucket", Key=key)["Body"].read())
        assert claim.stream_arn.endswith(":stream/clicks-a")
        with pytest.raises(
            PreflightError, match=r"holds the commit chains of stream .*clicks-a, not of .*clicks-b"
        ):
            preflight(second)
        preflight(second.model_copy(update={"prefix": "rfm-b"}))  # its own prefix: claimed for it

        # two workers claiming at once: the one whose conditional put loses reads the winner's claim
        s3.delete_object(Bucket="shared-bucket", Key=key)

        class ClaimedMeanwhile:
            def __init__(self) -> None:
                self.raced = False

            def put_object(self, **arguments: Any) -> Any:
                if not self.raced:
                    self.raced = True
                    s3.put_object(Bucket="shared-bucket", Key=key, Body=claim.to_json())
                return s3.put_object(**arguments)

            def __getattr__(self, name: str) -> Any:
                return getattr(s3, name)

        stream_b = check_stream(kinesis, second)
        with pytest.raises(PreflightError, match=r"holds the commit chains of stream .*clicks-a"):
            check_prefix_owner(ClaimedMeanwhile(), second, stream_b)

        # S3 answers 409 to a conditional create racing another: the other claim may not be readable yet
        s3.delete_object(Bucket="shared-bucket", Key=key)

        class Conflicting:
            def __init__(self, conflicts: int, theirs_lands_after: int | None) -> None:
                self.conflicts, self.theirs_lands_after, self.puts = conflicts, theirs_lands_after, 0

            def put_object(self, **arguments: Any) -> Any:
                self.puts += 1
                if self.puts == self.theirs_lands_after:
                    s3.put_object(Bucket="shared-bucket", Key=key, Body=claim.to_json())
                if self.puts <= self.conflicts:
                    raise ClientError(
                        {
                            "Error": {"Code": "ConditionalRequestConflict"},
                            "ResponseMetadata": {"HTTPStatusCode": 409},
                        },
                        "PutObject",
                    )
                return s3.put_object(**arguments)

            def __getattr__(self, name: str) -> Any:
                return getattr(s3, name)

        monkeypatch.setattr("consumer.preflight._CLAIM_PAUSE_SECONDS", 0.0)
        racing_with_a_claim_that_failed = Conflicting(conflicts=1, theirs_lands_after=None)
        # the other create failed: ours wins
        check_prefix_owner(racing_with_a_claim_that_failed, second, stream_b)
        assert racing_with_a_claim_that_failed.puts == 2
        ours = PrefixOwner.from_json(s3.get_object(Bucket="shared-bucket", Key=key)["Body"].read())
        assert ours.stream_arn == stream_b.arn
        s3.delete_object(Bucket="shared-bucket", Key=key)
        with pytest.raises(PreflightError, match=r"holds the commit chains of stream .*clicks-a"):
            # theirs is read on the retry
            check_prefix_owner(Conflicting(conflicts=2, theirs_lands_after=2), second, stream_b)
        s3.delete_object(Bucket="shared-bucket", Key=key)
        with pytest.raises(PreflightError, match=r"could not claim .*4 conditional creates lost"):
            check_prefix_owner(Conflicting(conflicts=9, theirs_lands_after=None), second, stream_b)
        assert s3.list_objects_v2(Bucket="shared-bucket", Prefix=key)["KeyCount"] == 0

        # the same name, deleted and created again: the same ARN, shard ids that start over
        s3.put_object(Bucket="shared-bucket", Key=key, Body=claim.to_json())
        kinesis.delete_stream(StreamName="clicks-a")
        time.sleep(0.01)
        kinesis.create_stream(StreamName="clicks-a", ShardCount=1)
        assert check_stream(kinesis, first).arn == claim.stream_arn
        with pytest.raises(
            PreflightError, match=r"as created .* UTC; the stream now was created .*started over"
        ):
            preflight(first)

        s3.put_object(Bucket="shared-bucket", Key=key, Body=b"{}")
        with pytest.raises(PreflightError, match="is not a readable claim of the prefix"):
            preflight(first)


@pytest.mark.parametrize("answer", ["ignored", "NotImplemented"])
@pytest.mark.parametrize(
    ("header", "refused"),
    [
        ("IfNoneMatch", "does not refuse a create over an existing object"),
        ("IfMatch", "does not refuse a replace of an object whose ETag is not the one named"),
    ],
)
def test_a_store_that_ignores_a_conditional_write_is_refused_before_the_worker_starts(
    answer: str, header: str, refused: str
) -> None:
    """The fencing of the commit chain rests on If-None-Match: * being answered 412; an S3-compatible store that
    ignores it would let two writers of a shard both commit one position, silently. Snapshot pointers move forward
    only through If-Match: a store honouring the one but not the other passed the check, and a paused writer's
    pointer could then replace a newer one, naming swept tables."""
    from botocore.exceptions import ClientError

    from consumer.preflight import check_conditional_writes
    from schemas.layout import OutputLayout

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="cond-bucket")
        settings = load_settings(bucket="cond-bucket", prefix="rfm")
        key = OutputLayout("rfm").prefix_owner_key
        s3.put_object(Bucket="cond-bucket", Key=key, Body=b'{"claim": 1}')
        check_conditional_writes(s3, settings)  # moto refuses the create: passes
        assert s3.get_object(Bucket="cond-bucket", Key=key)["Body"].read() == b'{"claim": 1}'

        class Unconditional:
            def put_object(self, **arguments: Any) -> Any:
                if answer == "NotImplemented" and header in arguments:
                    raise ClientError(
                        {"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}},
                        "PutObject",
                    )
                arguments.pop(header, None)
                return s3.put_object(**arguments)

            def __getattr__(self, name: str) -> Any:
                return getattr(s3, name)

        with pytest.raises(PreflightError, match=refused):
            check_conditional_writes(Unconditional(), settings)
        assert s3.get_object(Bucket="cond-bucket", Key=key)["Body"].read() == b'{"claim": 1}', "unchanged"

        class Racing:  # workers starting together: S3 answers a conditional write racing another with 409
            def put_object(self, **arguments: Any) -> Any:
                raise ClientError(
                    {
                        "Error": {"Code": "ConditionalRequestConflict"},
                        "ResponseMetadata": {"HTTPStatusCode": 409},
                    },
                    "PutObject",
                )

            def __getattr__(self, name: str) -> Any:
                return getattr(s3, name)

        check_conditional_writes(Racing(), settings)  # the condition was evaluated: passes


def test_a_lease_table_with_checkpoints_beside_a_prefix_without_commits_is_refused() -> None:
    """The lease table is named by the application name and keyed by shard ids, which repeat across streams: the
    default application name with a second stream (or a stream created again, given a new prefix as told) started
    each shard after the other stream's checkpoints and skipped its records, exit 0."""
    from schemas.layout import OutputLayout

    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="second", ShardCount=1)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="lease-bucket")
        dynamodb = lease_table("shared-app")

        def lease(shard: str, checkpoint: str) -> None:
            dynamodb.put_item(
                TableName="shared-app", Item={"leaseKey": {"S": shard}, "checkpoint": {"S": checkpoint}}
            )

        settings = load_settings(
            stream_name="second", bucket="lease-bucket", prefix="second", application_name="shared-app"
        )
        lease("shardId-000000000000", "TRIM_HORIZON")  # a table the KCL made, nothing processed yet
        lease("shardId-000000000001", "SHARD_END")
        preflight(settings)

        lease("shardId-000000000000", "49590338271490256608559692538361571095921575989136588802")
        with pytest.raises(
            PreflightError,
            match=r"lease table 'shared-app' holds checkpoints \(shardId-000000000000 at 4959.*\) and "
            r"s3://lease-bucket/second/_control/commits/ no commit.*new CLICKSTREAM_APPLICATION_NAME",
        ):
            preflight(settings)
        # refused before it claims the prefix: the readers still say no worker wrote under a mistyped one
        typo = settings.model_copy(update={"prefix": "secnod"})
        with pytest.raises(PreflightError, match=r"s3://lease-bucket/secnod/_control/commits/ no commit"):
            preflight(typo)
        assert not s3.list_objects_v2(Bucket="lease-bucket", Prefix="secnod/").get("KeyCount"), (
            "nothing written"
        )

        # a prefix changed on purpose on this very stream: said, and started from the table's checkpoints
        preflight(settings.model_copy(update={"adopt_lease_checkpoints": True}))

        # the prefix's own worker checkpoints only after it commits: its restarts are not refused
        commits = OutputLayout("second").all_commits_prefix
        s3.put_object(Bucket="lease-bucket", Key=f"{commits}shardId-000000000000/start.json", Body=b"{}")
        preflight(settings)


def test_a_lease_table_still_being_created_is_not_read() -> None:
    """A fleet starting together: one worker's KCL creates the table while another's preflight looks. DynamoDB
    describes a CREATING table, then refuses a scan of it (ResourceNotFoundException): that was exit 2 with "check
    the name; `clickstream setup` creates the stream"."""
    from botocore.stub import Stubber

    from consumer.preflight import check_lease_table

    settings = load_settings(stream_name="fleet", bucket="fleet-bucket", application_name="fleet-app")
    dynamodb = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(dynamodb) as stub:
        stub.add_response("describe_table", {"Table": {"TableName": "fleet-app", "TableStatus": "CREATING"}})
        check_lease_table(dynamodb, None, settings)  # not scanned, and S3 not asked
        stub.assert_no_pending_responses()
    with Stubber(dynamodb) as stub:  # described ACTIVE, gone (or not ACTIVE) by the scan
        stub.add_response("describe_table", {"Table": {"TableName": "fleet-app", "TableStatus": "ACTIVE"}})
        stub.add_client_error("scan", "ResourceNotFoundException", "Requested resource not found")
        check_lease_table(dynamodb, None, settings)

    class NoCommits:
        def list_objects_v2(self, **_: Any) -> dict[str, Any]:
            return {"KeyCount": 0}

    with Stubber(dynamodb) as stub:  # UPDATING (a capacity change, an index added) is read as ACTIVE is
        stub.add_response("describe_table", {"Table": {"TableName": "fleet-app", "TableStatus": "UPDATING"}})
        checkpointed = {"leaseKey": {"S": "shardId-000000000000"}, "checkpoint": {"S": "4959033827149"}}
        stub.add_response("scan", {"Items": [checkpointed]})
        with pytest.raises(PreflightError, match="holds checkpoints"):
            check_lease_table(dynamodb, NoCommits(), settings)


# ---------------------------------------------------------------------------------------------------- live status
def test_the_live_status_fits_80_columns_with_many_shards() -> None:
    now = 10_000.0
    statuses = {
        f"shardId-{i:012d}": drained_status(
            f"shardId-{i:012d}",
            records_received=123_456_789,
            accepted=123_000_000,
            rejected=456_789,
            buffered_records=49_999,
            millis_behind_latest=86_400_000,
            last_flush_at=now - 7200,
        )
        for i in range(12)
    }
    console = Console(width=80, file=io.StringIO(), force_terminal=False)
    console.print(status_view(statuses, now, headline="clickstream worker w | stream s -> s3://b/p | up 5m"))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert max(len(line) for line in lines) <= 80, lines
    assert any(line.split()[:2] == ["11", "processing"] for line in lines), lines
    assert "12 shards held" in lines[1]


def test_after_a_reshard_the_live_status_shows_the_held_shards_first_and_counts_the_rest() -> None:
    """8 finished parents sorted first and the rows cut at 16 left out 8 of 16 held children without a word."""
    from dataclasses import replace

    now = 10_000.0
    parents = {
        f"shardId-{i:012d}": replace(drained_status(f"shardId-{i:012d}"), phase="shut_down") for i in range(8)
    }
    children = {f"shardId-{i:012d}": drained_status(f"shardId-{i:012d}") for i in range(8, 24)}
    console = Console(width=80, file=io.StringIO(), force_terminal=False)
    console.print(status_view({**parents, **children}, now, headline="clickstream worker w"))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    rows = [
        line.split() for line in lines if len(line.split()) > 1 and line.split()[1] in ("processing", "shut")
    ]
    assert [row[1] for row in rows] == ["processing"] * 16, lines
    assert lines[-1].strip() == "... 8 more shards", lines
    assert "16 shards held" in lines[1]


def test_a_processor_ended_by_an_error_holds_no_lease_though_its_status_still_says_processing() -> None:
    """A deleted bucket ended both processors; for the 20 s until the JVM exited, health said healthy with 2 shards
    processing and the status line '2 shards held'."""
    from dataclasses import replace

    from consumer.health import holds_lease
    from consumer.worker_output import WorkerTotals

    ended = replace(drained_status("shardId-000000000000"), terminal_error="NoSuchBucket: gone")
    alive = drained_status("shardId-000000000001")
    assert holds_lease(alive) and not holds_lease(ended)
    assert WorkerTotals.of({"a": ended, "b": alive}, 10_000.0).shards_held == 1


def test_log_lines_become_text_or_stay_json(capsys: pytest.CaptureFixture[str]) -> None:
    line = (
        '{"time": "2026-03-01T10:15:30.123Z", "level": "WARN", "logger": "a.b.Scheduler", "message": "slow"}'
    )
    LogSink(json_logs=True).line(line)
    LogSink(json_logs=False).line(line)
    assert capsys.readouterr().err.splitlines() == [line, "10:15:30 WARN  Scheduler: slow"]


def test_lines_the_jvm_writes_outside_its_logger_are_json_lines_under_json_logs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A start-up failure's usage text or an uncaught exception's trace went to stderr raw under --log-format json:
    a log pipeline's level filters and alarms missed exactly those lines."""
    raw = "Error occurred during initialization of VM"
    LogSink(json_logs=True).line(raw + "\n")
    LogSink(json_logs=False).line(raw + "\n")
    as_json, as_text = capsys.readouterr().err.splitlines()
    entry = json.loads(as_json)
    assert entry["message"] == raw and entry["level"] == "WARNING" and entry["logger"] == "kcl.output"
    assert entry["time"].endswith("+00:00")
    assert as_text == raw, "a person reading text sees the line as the JVM wrote it"


def test_metric_lines_stay_json_or_go_only_to_the_log_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor's own metrics and the processors' go through the sink: JSON on stderr for a machine; in text
    mode never printed (a metric line as text is no metric), while the worker.log behind a live status keeps them."""
    import logging

    from consumer.metrics import emit
    from runtime.logs import METRICS_LOGGER

    # as configure_logging sets it; setLevel (not the attribute) also drops the logger's cached isEnabledFor
    # answers, which an earlier test in the same process may have left saying no
    caplog.set_level(logging.INFO, logger=METRICS_LOGGER)
    worker = KclWorker(load_settings(state_dir=tmp_path))
    for json_logs in (True, False):
        sink = LogSink(json_logs=json_logs)
        with worker._logging_into(sink):
            emit({"ShardsProcessing": 2}, {"StreamName": "s"})
            logging.getLogger("consumer.kcl_worker").warning("a warning")
        sink.close()
    err = capsys.readouterr().err.splitlines()
    assert ['"ShardsProcessing": 2' in line for line in err] == [True, False, False]
    assert json.loads(err[0])["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "ShardsProcessing", "Unit": "Count"}
    ]
    assert err[2].endswith("a warning")
    behind_a_console = LogSink(
        json_logs=False, console=Console(file=io.StringIO()), log_file=tmp_path / "worker.log"
    )
    with worker._logging_into(behind_a_console):
        emit({"ShardsProcessing": 3}, {"StreamName": "s"})
    behind_a_console.close()
    assert '"ShardsProcessing": 3' in (tmp_path / "worker.log").read_text()


def test_the_kcls_usual_start_warnings_stay_in_the_log_off_the_live_view(tmp_path: Path) -> None:
    """Every start off AWS printed "WARN WorkerMetricsSelector: Did not find an operating range metadata provider."
    (and a first lease assignment "Not able to assign all expiredOrUnAssignedLeases") over the live status, which
    read as something gone wrong. They stay in worker.log; other warnings of the same loggers are shown."""
    shown = io.StringIO()
    now = [0.0]
    sink = LogSink(
        json_logs=False,
        console=Console(file=shown, width=200),
        log_file=tmp_path / "worker.log",
        clock=lambda: now[0],
    )
    lines = [
        {
            "level": "WARN",
            "logger": "software.amazon.kinesis.worker.WorkerMetricsSelector",
            "message": "Did not find an operating range metadata provider.",
        },
        {
            "level": "WARN",
            "logger": "software.amazon.kinesis.coordinator.assignment.LeaseAssignmentManager",
            "message": "Not able to assign all expiredOrUnAssignedLeases",
        },
        {
            "level": "WARN",
            "logger": "software.amazon.kinesis.coordinator.assignment.LeaseAssignmentManager",
            "message": "Something else went wrong",
        },
    ]
    for line in lines:
        sink.line(json.dumps({"time": "2026-12-03T08:22:28.675Z", **line}))
    assert "operating range" not in shown.getvalue() and "expiredOrUnAssignedLeases" not in shown.getvalue()
    assert "Something else went wrong" in shown.getvalue()
    now[0] = 61.0  # past the start, leases not assignable mean workers at their limits: shown
    sink.line(json.dumps({"time": "2026-12-03T08:23:30.000Z", **lines[1]}))
    sink.close()
    assert "expiredOrUnAssignedLeases" in shown.getvalue()
    assert len((tmp_path / "worker.log").read_text().splitlines()) == 4


# ---------------------------------------------------------------------------------------------------- idle check
NOW = 10_000.0
IDLE = 5.0
OPEN = {"ShardId": "shardId-000000000001", "SequenceNumberRange": {"StartingSequenceNumber": "100"}}
CLOSED = {
    "ShardId": "shardId-000000000000",
    "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "99"},
}


def drained_status(shard_id: str = "shardId-000000000001", **changes: Any) -> ShardStatus:
    """A shard that is caught up, flushed, checkpointed and quiet for longer than IDLE."""
    base: dict[str, Any] = {
        "shard_id": shard_id,
        "pid": 1,
        "phase": "processing",
        "flushes": 2,
        "buffered_records": 0,
        "millis_behind_latest": 0,
        "applied_sequence": "500",
        "checkpointed_sequence": "500",
        "last_call_at": NOW - 0.1,
        "last_record_at": NOW - IDLE - 1,
        "last_flush_at": NOW - IDLE - 0.5,
        "started_at": NOW - 100,
    }
    base.update(changes)
    return ShardStatus(**base)


@pytest.mark.parametrize(
    ("shards", "statuses", "expected"),
    [
        pytest.param([OPEN], {}, False, id="no-status-yet"),
        pytest.param(
            [OPEN], {"shardId-000000000001": drained_status(phase="initializing")}, False, id="initializing"
        ),
        pytest.param(
            [OPEN], {"shardId-000000000001": drained_status(last_call_at=None)}, False, id="never-called"
        ),
        pytest.param(
            [OPEN], {"shardId-000000000001": drained_status(buffered_records=3)}, False, id="buffered"
        ),
        pytest.param(
            [OPEN], {"shardId-000000000001": drained_status(millis_behind_latest=1)}, False, id="behind"
        ),
        pytest.param(
            [OPEN],
            {"shardId-000000000001": drained_status(last_record_at=NOW - 1)},
            False,
            id="record-recently",
        ),
        pytest.param(
            [OPEN],
            {"shardId-000000000001": drained_status(last_flush_at=NOW - 1)},
            False,
            id="flushed-recently",
        ),
        pytest.param(
            [OPEN],
            {"shardId-000000000001": drained_status(checkpointed_sequence="400")},
            False,
            id="applied-not-checkpointed",
        ),
        pytest.param([OPEN], {"shardId-000000000001": drained_status()}, True, id="quiet-and-checkpointed"),
        pytest.param(
            [OPEN],
            {
                "shardId-000000000001": drained_status(
                    flushes=0,
                    applied_sequence=None,
                    checkpointed_sequence="TRIM_HORIZON",
                    last_record_at=None,
                    last_flush_at=None,
                )
            },
            True,
            id="empty-shard-quiet-since-start",
        ),
        pytest.param(
            [OPEN, CLOSED],
            {
                "shardId-000000000001": drained_status(),
                "shardId-000000000000": drained_status("shardId-000000000000"),
            },
            False,
            id="closed-parent-still-processing",
        ),
        pytest.param(
            [OPEN, CLOSED],
            {
                "shardId-000000000001": drained_status(),
                "shardId-000000000000": drained_status("shardId-000000000000", phase="ended"),
            },
            True,
            id="closed-parent-ended",
        ),
        pytest.param(
            [OPEN, CLOSED], {"shardId-000000000001": drained_status()}, True, id="closed-parent-before-us"
        ),
        pytest.param([CLOSED], {}, False, id="no-open-shard"),
        pytest.param(
            [OPEN, {**OPEN, "ShardId": "shardId-000000000002"}],
            {"shardId-000000000001": drained_status()},
            False,
            id="one-open-shard-without-status",
        ),
    ],
)
def test_idle_check_reports_drained_only_when_every_open_shard_is_flushed_checkpointed_and_quiet(
    shards: list[dict[str, Any]], statuses: dict[str, ShardStatus], expected: bool
) -> None:
    assert IdleCheck(IDLE).drained(shards, statuses, NOW) is expected


SECOND: Final = {**OPEN, "ShardId": "shardId-000000000002"}


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        pytest.param(
            {"shardId-000000000001": drained_status()}, {"shardId-000000000002"}, id="own-done-other-not-here"
        ),
        pytest.param({}, {"shardId-000000000001", "shardId-000000000002"}, id="none-here-yet"),
        pytest.param(
            {"shardId-000000000001": drained_status(buffered_records=10)}, set(), id="own-shard-busy"
        ),
        pytest.param(
            {"shardId-000000000001": drained_status(phase="initializing")}, set(), id="own-shard-starting"
        ),
        pytest.param(
            {"shardId-000000000001": drained_status(phase="lease_lost")},
            {"shardId-000000000001", "shardId-000000000002"},
            id="moved-away",
        ),
        pytest.param(
            {
                "shardId-000000000001": drained_status(),
                "shardId-000000000002": drained_status("shardId-000000000002"),
            },
            set(),
            id="drained",
        ),
    ],
)
def test_idle_check_names_the_shards_it_waits_on_once_done_with_its_own(
    statuses: dict[str, ShardStatus], expected: set[str]
) -> None:
    """Beside another worker, --until-idle waits on the shards it does not process (their holder may be dead with
    records left): it does not stop, and the worker says which shards keep it, instead of waiting without a word."""
    check = IdleCheck(IDLE)
    assert check.waiting_on([OPEN, SECOND], statuses, NOW) == expected
    assert check.drained([OPEN, SECOND], statuses, NOW) is (not expected and len(statuses) == 2)


def test_the_worker_says_which_other_workers_hold_the_shards_until_idle_waits_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Said when other workers hold some of them; a worker alone, waiting for the KCL to assign its shards (no
    owner yet, or no lease table yet at start), says nothing."""
    settings = load_settings(state_dir=tmp_path / "state", worker_id="worker-a")
    worker = KclWorker(settings, until_idle=IDLE)
    monkeypatch.setattr("consumer.kcl_worker.aws_client", lambda *_, **__: None)
    owners: dict[str, str | None] = {"shardId-000000000002": None, "shardId-000000000003": "worker-a"}
    monkeypatch.setattr("consumer.kcl_worker.lease_owners", lambda *_: owners)
    waiting = {"shardId-000000000002", "shardId-000000000003"}
    with caplog.at_level(logging.WARNING, logger="consumer.kcl_worker"):
        worker._say_who_holds(waiting, 1)
        assert not caplog.records, "alone: nothing to say"
        owners["shardId-000000000002"] = "worker-b"
        worker._say_who_holds(waiting, 1)
    said = caplog.records[-1].getMessage()
    assert "other workers hold shardId-000000000002 (held by worker-b)." in said
    assert "shardId-000000000003" not in said and "stop it with SIGTERM" in said


def test_a_worker_at_its_lease_cap_says_until_idle_waits_on_shards_nobody_will_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """CLICKSTREAM_KCL_MAX_LEASES_FOR_WORKER=1 on a 2-shard stream: --until-idle ran on for good, and said nothing
    but the status line's '1 shard held'."""
    settings = load_settings(state_dir=tmp_path / "state", worker_id="worker-a", kcl_max_leases_for_worker=1)
    worker = KclWorker(settings, until_idle=IDLE)
    monkeypatch.setattr("consumer.kcl_worker.aws_client", lambda *_, **__: None)
    owners = {"shardId-000000000002": None, "shardId-000000000003": "worker-a"}
    monkeypatch.setattr("consumer.kcl_worker.lease_owners", lambda *_: owners)
    with caplog.at_level(logging.WARNING, logger="consumer.kcl_worker"):
        worker._say_who_holds({"shardId-000000000002"}, 0)
        assert not caplog.records, "below its cap: the KCL will assign it"
        worker._say_who_holds({"shardId-000000000002"}, 1)
    said = caplog.records[-1].getMessage()
    assert (
        "holds its cap of 1 lease (CLICKSTREAM_KCL_MAX_LEASES_FOR_WORKER) and no worker holds shardId-000000000002"
        in said
    )


class ShortLivedJvm:
    """The JVM as the supervision loop sees it: running for ``polls`` polls (a few seconds of the loop), then
    exited 0."""

    def __init__(self, polls: int) -> None:
        self.polls, self.lifetime = 0, polls

    def poll(self) -> int | None:
        self.polls += 1
        return None if self.polls < self.lifetime else 0


def test_until_idle_judges_every_page_of_the_shard_listing(tmp_path: Path) -> None:
    """AWS answers ListShards with at most 1,000 shards a call: a drain judged on the first page alone could stop
    the worker with the shards of later pages never read."""
    (tmp_path / "state").mkdir()
    worker = KclWorker(load_settings(state_dir=tmp_path / "state"), until_idle=IDLE)
    judged: list[list[str]] = []

    class Recording(IdleCheck):
        def drained(self, shards: list[dict[str, Any]], statuses: dict[str, ShardStatus], now: float) -> bool:
            judged.append([shard["ShardId"] for shard in shards])
            return False

    class Paged:
        def list_shards(self, **arguments: Any) -> dict[str, Any]:
            if "NextToken" in arguments:
                assert arguments == {"NextToken": "page-2"}, "a later page is asked by its token alone"
                return {"Shards": [SECOND]}
            return {"Shards": [OPEN], "NextToken": "page-2"}

    worker.until_idle = Recording(IDLE)
    worker._process = ShortLivedJvm(polls=8)  # type: ignore[assignment]
    worker._supervise(Paged(), lambda: None)
    assert judged, "the idle check ran"
    assert all(ids == [OPEN["ShardId"], SECOND["ShardId"]] for ids in judged), judged


@pytest.mark.parametrize(
    ("failure", "said_in_it"),
    [
        pytest.param(
            EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
            "Could not connect to the endpoint URL",
            id="network",
        ),
        # the container's credentials endpoint failing for a while: it ended the run with exit 2 and advice to set
        # AWS_ACCESS_KEY_ID
        pytest.param(NoCredentialsError(), "Unable to locate credentials", id="no-credentials"),
        pytest.param(
            CredentialRetrievalError(provider="container-role", error_msg="timed out"),
            "container-role",
            id="credentials-endpoint",
        ),
    ],
)
def test_until_idle_goes_on_when_the_stream_cannot_be_listed_and_says_so(
    failure: Exception, said_in_it: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ListShards that failed (after its short retries) ended the supervision loop with the exception: the worker
    left its JVM running unsupervised. It is "not drained yet", asked again, and said at most every 30 s."""
    from botocore.exceptions import ClientError

    (tmp_path / "state").mkdir()
    worker = KclWorker(load_settings(state_dir=tmp_path / "state"), until_idle=IDLE)

    class Kinesis:
        calls = 0

        def list_shards(self, **_: Any) -> dict[str, Any]:
            self.calls += 1
            raise failure

    kinesis = Kinesis()
    worker._process = ShortLivedJvm(polls=12)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="consumer.kcl_worker"):
        worker._supervise(kinesis, lambda: None)
    assert kinesis.calls >= 2, "asked again after the failure"
    said = [r.getMessage() for r in caplog.records if "cannot be listed" in r.getMessage()]
    assert len(said) == 1 and said_in_it in said[0], said

    class Gone:  # a stream deleted: no drain to wait for, as before (a scheduled drain failed in seconds)
        def list_shards(self, **_: Any) -> dict[str, Any]:
            raise ClientError(
                {"Error": {"Code": "ResourceNotFoundException", "Message": "gone"}}, "ListShards"
            )

    worker._process = ShortLivedJvm(polls=12)  # type: ignore[assignment]
    with pytest.raises(ClientError):
        worker._supervise(Gone(), lambda: None)


# ---------------------------------------------------------------------------------------------------- java
def test_find_java_raises_worker_error_with_advice_when_there_is_no_java(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(WorkerError) as raised:
        find_java(load_settings(java=None))

    message = str(raised.value)
    assert "openjdk-17-jre-headless" in message
    assert "CLICKSTREAM_JAVA" in message
    assert "JAVA_HOME" in message


def test_a_configured_java_that_is_not_executable_stops_the_worker_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_java(tmp_path / "path")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))  # a java elsewhere must not be picked silently
    monkeypatch.delenv("JAVA_HOME", raising=False)
    not_executable = tmp_path / "java.txt"
    not_executable.write_text("")
    for configured in (tmp_path / "missing" / "java", not_executable):
        with pytest.raises(WorkerError) as raised:
            find_java(load_settings(java=str(configured)))
        assert f"CLICKSTREAM_JAVA={configured}" in str(raised.value)
        assert raised.value.exit_code == 2


def test_a_configured_java_given_by_name_is_found_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLICKSTREAM_JAVA=java17 was checked as a file in the working directory and refused; a shell would run the
    java17 on the PATH (and so does `make setup`'s check)."""
    java17 = fake_java(tmp_path / "path").rename(tmp_path / "path" / "java17")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert find_java(load_settings(java="java17")) == str(java17)
    with pytest.raises(WorkerError, match="CLICKSTREAM_JAVA=java11 is not an executable java binary"):
        find_java(load_settings(java="java11"))
    # a name is looked up on the PATH only, as the JVM's start would: not in the working directory
    fake_java(tmp_path / "here").rename(tmp_path / "here" / "java11")
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(WorkerError, match="CLICKSTREAM_JAVA=java11 is not an executable java binary"):
        find_java(load_settings(java="java11"))


def test_a_java_home_without_java_stops_the_worker_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_java(tmp_path / "path")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(WorkerError, match="JAVA_HOME="):
        find_java(load_settings())


def test_find_java_prefers_the_setting_then_java_home_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = fake_java(tmp_path / "configured")
    home_java = fake_java(tmp_path / "home" / "bin")
    path_java = fake_java(tmp_path / "path")
    monkeypatch.setenv("PATH", str(path_java.parent))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "home"))

    assert find_java(load_settings(java=str(configured))) == str(configured)
    assert find_java(load_settings()) == str(home_java)
    monkeypatch.delenv("JAVA_HOME")
    assert find_java(load_settings()) == str(path_java)


# ---------------------------------------------------------------------------------------------------- stopping
class FakeJvm:
    pid = 4_000_000  # never a real process group: os.killpg is replaced below

    def __init__(self) -> None:
        self.signals: list[int] = []

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def poll(self) -> int | None:
        return None


def test_first_signal_stops_gracefully_and_the_second_forces_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, signum: killed.append((pid, signum)))
    worker = KclWorker(load_settings(state_dir=tmp_path))
    jvm = FakeJvm()
    worker._process = jvm  # type: ignore[assignment]

    worker._on_signal(signal.SIGINT, None)
    assert jvm.signals == [signal.SIGTERM]
    assert killed == []

    with pytest.raises(SystemExit) as exited:
        worker._on_signal(signal.SIGINT, None)
    assert exited.value.code == 130
    assert killed == [(FakeJvm.pid, signal.SIGKILL)]
    assert jvm.signals == [signal.SIGTERM], "the graceful stop is requested once"

    # forced by a second SIGTERM (an orchestrator's stop repeated): 143, as a shell reports SIGTERM's end
    terminated = KclWorker(load_settings(state_dir=tmp_path / "again"))
    terminated._process = FakeJvm()  # type: ignore[assignment]
    terminated._on_signal(signal.SIGTERM, None)
    with pytest.raises(SystemExit) as forced:
        terminated._on_signal(signal.SIGTERM, None)
    assert forced.value.code == 143


def test_a_signal_that_lands_while_the_worker_writes_a_log_line_still_stops_the_jvm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler runs on the main thread, maybe in the middle of the worker's own log line (the status or metric
    line), while that line holds the sink's lock: the handler's own log call waited on it forever (every further
    signal too), the JVM was never told to stop, and only SIGKILL ended the worker."""
    from consumer.worker_output import LogSink

    worker = KclWorker(load_settings(state_dir=tmp_path))
    jvm = FakeJvm()
    worker._process = jvm  # type: ignore[assignment]
    sink = LogSink(json_logs=True, log_file=tmp_path / "worker.log")

    def signal_inside_a_log_line() -> None:
        with worker._logging_into(sink), sink._lock:  # a line being written when the signal arrives
            worker._on_signal(signal.SIGTERM, None)

    caplog.set_level(logging.INFO, logger="consumer.kcl_worker")  # restored after the test

    handler = threading.Thread(target=signal_inside_a_log_line, daemon=True)
    handler.start()
    handler.join(timeout=10)
    assert not handler.is_alive(), "the signal handler waited on the log line it interrupted"
    assert jvm.signals == [signal.SIGTERM]
    assert "received SIGTERM" in (tmp_path / "worker.log").read_text()


def test_a_signal_before_the_jvm_runs_stops_it_as_soon_as_it_does(tmp_path: Path) -> None:
    """Between the handlers' installation and the JVM's start (clients, the log relay) a SIGTERM was counted and
    forgotten: the JVM then ran until a second signal or SIGKILL."""
    worker = KclWorker(load_settings(state_dir=tmp_path))
    worker._on_signal(signal.SIGTERM, None)  # no JVM yet
    process = worker._start_jvm(["sleep", "30"], dict(os.environ))
    try:
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


class UnstoppableJvm(FakeJvm):
    """A daemon that ignores its stop: only SIGKILL (through ``os.killpg``, replaced in the test) ends it."""

    def wait(self) -> int:
        return -signal.SIGKILL


def test_shards_that_outlive_the_stop_deadline_get_the_kcl_killed_and_a_runtime_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An orchestrator's SIGKILL comes at its stop timeout: past the stop deadline the worker kills the KCL itself
    and says so in an error record with its exit code, so that the stop is not taken for a clean one."""
    from runtime.exit_codes import RUNTIME

    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, signum: killed.append((pid, signum)))
    settings = load_settings(state_dir=tmp_path, stop_deadline_seconds=2.0, kcl_shutdown_grace_millis=1000)
    write_status(settings, pid=os.getpid(), phase="processing", buffered_records=7)  # a shard still at work
    worker = KclWorker(settings)
    worker._process = UnstoppableJvm()  # type: ignore[assignment]
    worker._stop_requested_at = time.monotonic() - 1.5  # asked, within the deadline

    with caplog.at_level(logging.ERROR, logger="consumer.kcl_worker"):
        code = worker._supervise(kinesis=None, refresh=lambda: None)
    waited = time.monotonic() - worker._stop_requested_at
    assert code == RUNTIME == 1
    assert waited > settings.stop_deadline_seconds, "not before the deadline"
    assert killed == [(UnstoppableJvm.pid, signal.SIGKILL)]
    [record] = caplog.records
    assert record.getMessage() == "shards did not stop within 2s; killing the KCL"
    assert record.exit_code == RUNTIME  # type: ignore[attr-defined]


def write_status(settings: Settings, **fields: Any) -> None:
    StatusWriter(settings.state_dir / "status").write(drained_status(**fields), force=True)


def test_exit_code_is_zero_after_a_requested_stop_with_everything_flushed(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    write_status(settings, phase="shut_down", buffered_records=0)
    worker = KclWorker(settings)
    worker._stop_requested_at = 1.0
    assert worker._exit_code(0) == 0


def test_exit_code_is_one_when_a_shard_still_had_records_buffered_at_stop(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    write_status(settings, phase="processing", buffered_records=12)
    worker = KclWorker(settings)
    worker._stop_requested_at = 1.0
    assert worker._exit_code(0) == 1


def test_a_stop_waits_for_processing_shards_but_not_for_one_still_restoring(tmp_path: Path) -> None:
    """A restore holds no record and resumes where it was cut; since a restoring processor's status shows it (so
    its lease counts as held), it must not hold every stop until the deadline and exit 1."""
    settings = load_settings(state_dir=tmp_path)
    worker = KclWorker(settings)
    write_status(settings, shard_id="shardId-1", phase="shut_down", pid=2**22 + 7)  # no such process
    write_status(settings, shard_id="shardId-2", phase="initializing", pid=os.getpid())
    assert worker._processors_done()
    write_status(settings, shard_id="shardId-3", phase="processing", pid=os.getpid())
    assert not worker._processors_done()


def test_a_stop_before_any_shard_processor_started_stops_the_kcl_at_once_and_says_nothing_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop during the KCL's first lease wait (or of a standby) waited out the JVM's 20 s shutdown grace, which
    logged an ERROR TimeoutException, and then said "every shard flushed and checkpointed" of a worker that held
    none. A processor writes its status before it is given a record, so with none written there is nothing to
    flush: the KCL is stopped at once, and the last line says that nothing was read."""
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, signum: killed.append((pid, signum)))
    settings = load_settings(state_dir=tmp_path, stop_deadline_seconds=30.0)
    worker = KclWorker(settings)
    worker._process = UnstoppableJvm()  # type: ignore[assignment]
    worker._stop_requested_at = time.monotonic()
    with caplog.at_level(logging.INFO, logger="consumer.kcl_worker"):
        code = worker._supervise(kinesis=None, refresh=lambda: None)
    assert code == 0
    assert killed == [(UnstoppableJvm.pid, signal.SIGKILL)]
    assert time.monotonic() - worker._stop_requested_at < 10, "not after a shutdown grace or the deadline"
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "no shard processor had started; stopping the KCL",
        "stopped cleanly: no shard processor had started, so nothing was read",
    ], said
    from consumer.worker_output import final_words

    assert final_words(0, tmp_path / "worker.log", shards_started=False).startswith(
        "stopped cleanly: no shard processor had started, so nothing was read; the full log is "
    )


def test_a_stop_waits_for_a_shard_processor_that_could_not_write_its_status(tmp_path: Path) -> None:
    """A processor whose status write failed (a full disk, a folder left unwritable) goes on reading records: the
    JVM's child processes say it started, so the stop waits for its flush rather than kill it as one never begun."""
    worker = KclWorker(load_settings(state_dir=tmp_path))
    jvm = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)  # one shard processor
    try:
        worker._process = jvm  # type: ignore[assignment]
        deadline = time.monotonic() + 10
        while not worker._shards_started() and time.monotonic() < deadline:
            time.sleep(0.05)  # the shell forks its child
        assert worker._shards_started() and not worker._processors_done()
    finally:
        os.killpg(jvm.pid, signal.SIGKILL)  # the shell and its child
        jvm.wait()
    alone = subprocess.Popen(["sleep", "30"])  # a JVM with none
    try:
        worker._process = alone  # type: ignore[assignment]
        assert not worker._shards_started() and worker._processors_done()
    finally:
        alone.kill()
        alone.wait()


def test_a_stop_waits_for_a_shard_whose_status_file_cannot_be_read(tmp_path: Path) -> None:
    """Only a processor that wrote no status file at all has been given no record: a damaged one is waited for."""
    settings = load_settings(state_dir=tmp_path)
    worker = KclWorker(settings)
    assert worker._processors_done() and not worker._shards_started()
    (settings.state_dir / "status").mkdir()
    (settings.state_dir / "status" / "shardId-1.json").write_text("{half a status")
    assert not worker._processors_done() and worker._shards_started()


def test_exit_code_is_one_when_a_shard_ended_on_an_error_while_stopping(tmp_path: Path) -> None:
    """Its shutdown flush never finished; an error left by an earlier processor, before the stop, does not count."""
    settings = load_settings(state_dir=tmp_path)
    worker = KclWorker(settings)
    write_status(
        settings, shard_id="shardId-1", phase="processing", terminal_error="ClientError: AccessDenied"
    )
    worker.request_stop()
    assert worker._exit_code(0) == 0, "an error from before the stop"
    write_status(
        settings, shard_id="shardId-3", phase="shut_down", terminal_error="OSError: closing the state"
    )
    assert worker._exit_code(0) == 0, "an error after a shutdown that flushed and checkpointed everything"
    write_status(
        settings, shard_id="shardId-2", phase="processing", terminal_error="ClientError: AccessDenied"
    )
    assert worker._exit_code(0) == 1


@pytest.mark.parametrize("java_code", [0, 2, 3, -9, -15, 143])
def test_an_unrequested_daemon_exit_is_a_failure(tmp_path: Path, java_code: int) -> None:
    """Exit codes stay within the README's contract: any end of the JVM nobody asked for is a run-time failure, 1,
    whatever its own code (a 2 or 3 passed on would read as bad settings or an unhealthy worker; a JVM killed by a
    signal, as an OOM kill is, SIGKILL -9, is not 256 - 9 = 247)."""
    assert KclWorker(load_settings(state_dir=tmp_path))._exit_code(java_code) == 1


@pytest.mark.parametrize(
    ("version_line", "code", "needle"),
    [
        ("", 1, "exited 1 without a version. Is it a java runtime?"),  # e.g. CLICKSTREAM_JAVA=/bin/false
        # a java that cannot start was said to be no java, its own words swallowed
        (
            "Error occurred during initialization of VM",
            1,
            "exited 1 without a version, saying: Error occurred during initialization of VM. Is it a java runtime?",
        ),
        ('java version "1.8.0_392"', 0, "is Java 8; the KCL MultiLangDaemon needs Java 17+"),
        ('openjdk version "11.0.21" 2023-10-17', 0, "is Java 11"),
    ],
)
def test_a_java_that_cannot_run_the_kcl_is_a_configuration_error(
    tmp_path: Path, version_line: str, code: int, needle: str
) -> None:
    java = fake_java(tmp_path / "bin", version_line, code)
    with pytest.raises(WorkerError) as raised:
        require_java(str(java))
    assert raised.value.exit_code == 2 and needle in str(raised.value)
    assert require_java(str(fake_java(tmp_path / "ok", 'openjdk version "21.0.5" 2024-10-15'))) == 21


def test_a_java_check_that_fails_quotes_the_command_it_ran(tmp_path: Path) -> None:
    """With the worker's heap the check runs more than `java -version`: what the program said may answer the heap
    flags (/bin/ls said "invalid option -- '2'" of a quoted `/bin/ls -version`)."""
    java = fake_java(tmp_path / "bin", "", 1)
    with pytest.raises(WorkerError) as raised:
        require_java(str(java), "512m")
    assert f"`{java} " in str(raised.value) and "-Xmx512m" in str(raised.value), raised.value
    assert "-XshowSettings:system -version` exited 1" in str(raised.value), raised.value


def test_a_heap_the_jvm_cannot_reserve_is_a_configuration_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CLICKSTREAM_KCL_JAVA_HEAP=999999g passed every check, then the daemon died at once: 'exited unexpectedly', 1."""
    monkeypatch.delenv("CLICKSTREAM_JAVA", raising=False)
    java = find_java(load_settings())  # the real one: the worker's tests need it anyway
    with pytest.raises(WorkerError) as raised:
        require_java(java, "999999g")  # a petabyte: more than any address space
    assert raised.value.exit_code == 2 and "CLICKSTREAM_KCL_JAVA_HEAP=999999g" in str(raised.value)
    assert require_java(java, "512m") >= 17


def test_a_heap_the_memory_the_worker_may_use_cannot_hold_is_refused_at_start(tmp_path: Path) -> None:
    """-Xmx only reserves address space: 8g in a 4 GiB task passed `java -version`, then the JVM was killed. The
    limit is the one the JVM itself sees (its container's, through the cgroup hierarchy), else the machine's."""
    in_a_task = 'openjdk version "17.0.12" 2024-07-16\nOperating System Metrics:\n    Memory Limit: 4.00G'
    java = fake_java(tmp_path / "task", in_a_task)
    for heap in ("8g", "4g", "3841m"):  # 3841m + the JVM's own 512 MiB is over 4 GiB
        with pytest.raises(WorkerError) as raised:
            require_java(str(java), heap)
        assert raised.value.exit_code == 2
        assert f"CLICKSTREAM_KCL_JAVA_HEAP={heap} does not fit the 4.0 GiB" in str(raised.value)
    assert require_java(str(java), "3584m") == 17
    assert require_java(str(java), "1g") == 17

    assert jvm_memory_limit("    Memory Limit: 512.00M\n") == 512 * 2**20
    assert jvm_memory_limit("    Memory Limit: Unlimited\n") is None
    machine = machine_memory_bytes()
    assert machine is not None and 2**28 < machine < 2**50
    outside = fake_java(
        tmp_path / "host", 'openjdk version "17.0.12" 2024-07-16\n    Memory Limit: Unlimited'
    )
    with pytest.raises(WorkerError, match="the machine's"):
        require_java(str(outside), f"{machine // 2**30 + 1}g")  # no container limit: the machine's memory
    require_heap_fits("1g", None)  # neither known: not refused


def test_health_judges_by_the_worker_limits_unless_given_its_own(tmp_path: Path) -> None:
    """The worker was started with a longer stuck-shard limit (a flag, written to its settings file): a health
    check run with only the environment must judge by that limit, and by its own flag when given one."""
    now = time.time()
    write_heartbeat(tmp_path, Heartbeat(pid=os.getpid(), phase="running", started_at=now - 1000))
    waiting = drained_status(last_call_at=now - 1, waiting_since=now - 400, last_flush_at=now - 500)
    StatusWriter(tmp_path / "status").write(replace(waiting, buffered_records=10), force=True)
    state = ["--state-dir", str(tmp_path)]

    assert CliRunner().invoke(main, ["health", *state]).exit_code == 1, "the default limit, 300 s"
    write_settings_file(load_settings(state_dir=tmp_path, stuck_shard_seconds=900), tmp_path / SETTINGS_FILE)
    healthy = CliRunner().invoke(main, ["health", *state])
    assert healthy.exit_code == 0, healthy.output
    stuck = CliRunner().invoke(main, ["health", *state, "--stuck-after", "350"])
    assert stuck.exit_code == 1
    waited = re.search(r"no flush for (\d+)s", stuck.output)
    assert waited, stuck.output
    # the check reads the clock itself: on a loaded machine a second or more may have passed since `now`
    assert 400 <= int(waited.group(1)) <= 400 + time.time() - now + 1, stuck.output


def test_health_checks_its_flags_against_the_worker_settings_not_the_environment(tmp_path: Path) -> None:
    """A worker flushing every 5 s may be judged stuck after 10 s; the environment's 60 s flush limit is not its."""
    now = time.time()
    write_heartbeat(tmp_path, Heartbeat(pid=os.getpid(), phase="running", started_at=now - 1000))
    StatusWriter(tmp_path / "status").write(drained_status(last_call_at=now - 1), force=True)
    write_settings_file(
        load_settings(state_dir=tmp_path, flush_max_seconds=5, stuck_shard_seconds=60),
        tmp_path / SETTINGS_FILE,
    )
    state = ["--state-dir", str(tmp_path)]
    quick = CliRunner().invoke(main, ["health", *state, "--stuck-after", "10"])
    assert quick.exit_code == 0, quick.output
    too_quick = CliRunner().invoke(main, ["health", *state, "--stuck-after", "4"])
    assert too_quick.exit_code == 1, too_quick.output  # unhealthy with the reason: Docker reserves 2
    assert "--stuck-after must be larger than CLICKSTREAM_FLUSH_MAX_SECONDS" in too_quick.output


def test_checkpoint_age_counts_only_while_records_wait() -> None:
    """An idle shard checkpoints only when it flushes: its old checkpoint is current, not an alarm."""
    from consumer.kcl_worker import checkpoint_age

    idle = drained_status(last_checkpoint_at=NOW - 3_600, waiting_since=None)
    assert checkpoint_age(idle, NOW) == 0.0
    waiting = replace(idle, waiting_since=NOW - 90, buffered_records=10)
    assert checkpoint_age(waiting, NOW) == pytest.approx(90)  # since the records appeared, not for an hour
    flushed_since = replace(waiting, last_checkpoint_at=NOW - 20)
    assert checkpoint_age(flushed_since, NOW) == pytest.approx(20)


def test_a_shard_blocked_retrying_is_reported_by_its_error_not_as_one_the_kcl_forgot() -> None:
    from consumer.health import shard_problems

    now = time.time()
    silent = replace(drained_status(last_call_at=now - 400), shard_id="shardId-1")
    retrying = replace(silent, shard_id="shardId-2", last_error="ClientError: ServiceUnavailable", retries=12)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    gone = replace(retrying, shard_id="shardId-3", pid=int(finished.stdout))  # died while retrying (e.g. OOM)
    statuses = {"shardId-1": silent, "shardId-2": retrying, "shardId-3": gone}
    assert shard_problems(statuses, now, stuck_after=300) == [
        "shardId-1: not called by the KCL for 400s",
        "shardId-2: stuck for 400s in a call that keeps failing: ClientError: ServiceUnavailable",
        f"shardId-3: its processor (pid {gone.pid}) is gone, last called 400s ago; last error: "
        "ClientError: ServiceUnavailable",
    ]


@pytest.mark.parametrize(
    ("lag_step", "stuck"), [(-1_000, False), (0, True)], ids=["lag-shrinking", "lag-flat"]
)
def test_a_shard_reading_through_a_stretch_without_records_is_not_stuck(
    monkeypatch: pytest.MonkeyPatch, lag_step: int, stuck: bool
) -> None:
    """Behind the tip, the KCL can deliver empty batches while its iterator walks a part of the shard with no
    records: the lag shrinks call by call, and nothing is held to flush. That is progress (it was judged stuck after
    CLICKSTREAM_STUCK_SHARD_SECONDS and the worker exited 3); empty batches with a lag that does not move are not."""
    import consumer.shard_processor as shard_processor
    from consumer.health import shard_problems
    from consumer.shard_processor import FlushPolicy, ShardProcessor

    clock = [1_000_000.0]
    monkeypatch.setattr(shard_processor.time, "time", lambda: clock[0])
    processor = ShardProcessor("shardId-0", None, None, FlushPolicy(50_000, 1 << 26, 60.0))  # type: ignore[arg-type]
    processor.metrics.phase = "processing"
    lag = 86_400_000
    for _ in range(400):  # a call a second for 400 s, each empty
        clock[0] += 1
        lag += lag_step
        processor.on_records([], lag, None)  # type: ignore[arg-type]
    problems = shard_problems({"shardId-0": processor.metrics}, clock[0], stuck_after=300)
    assert bool(problems) == stuck, problems


def test_a_shard_whose_restore_keeps_failing_is_stuck_and_a_slow_one_is_not() -> None:
    """An initializing processor holds its lease (a large restore takes minutes), so a restore retrying a failure
    forever (an S3 outage, a policy that refuses the snapshot) must be judged by its failing, as a flush is."""
    from consumer.health import shard_problems

    now = time.time()
    restoring = ShardStatus(shard_id="shardId-1", pid=os.getpid(), phase="initializing", started_at=now - 900)
    failing = replace(restoring, last_error="ClientError: SlowDown", retries=40, failing_since=now - 400)
    recovered = replace(failing, failing_since=now - 100)  # a streak that began 100 s ago: not yet
    assert shard_problems({"shardId-1": restoring}, now, stuck_after=300) == []
    assert shard_problems({"shardId-1": recovered}, now, stuck_after=300) == []
    assert shard_problems({"shardId-1": failing}, now, stuck_after=300) == [
        "shardId-1: initializing, failing for 400s: ClientError: SlowDown"
    ]


def test_retries_record_when_their_failing_began_and_clear_it_on_success() -> None:
    from botocore.exceptions import ClientError

    from consumer.shard_processor import FlushPolicy, ShardProcessor

    processor = ShardProcessor(
        "shardId-0",
        None,
        None,
        FlushPolicy(50_000, 1 << 26, 60.0),
        sleep=lambda _: None,  # type: ignore[arg-type]
    )
    seen: list[float | None] = []
    outcomes = iter([ClientError({"Error": {"Code": "SlowDown"}}, "GetObject")] * 3 + [None])

    def action() -> str:
        seen.append(processor.metrics.failing_since)
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return "restored"

    assert processor._retrying("restore state", action) == "restored"
    assert seen[0] is None and seen[1] is not None and seen[1] == seen[2] == seen[3]  # set once, at the first
    assert processor.metrics.failing_since is None and processor.metrics.last_error is None


def test_health_without_a_heartbeat_asks_about_the_state_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["health", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "is a worker running with this state directory?" in result.output


@pytest.mark.parametrize(
    "heartbeat",
    [
        {"pid": 10**20, "phase": "running", "started_at": 1e9, "updated_at": 1e18},
        {"pid": 1, "phase": "stopped", "started_at": 1e9, "updated_at": 1e20},
    ],
    ids=["pid", "time"],
)
def test_health_with_a_damaged_heartbeat_still_reports(tmp_path: Path, heartbeat: dict[str, object]) -> None:
    """Numbers too large for the platform raised OverflowError: an 'unexpected' error and no report on stdout."""
    (tmp_path / HEARTBEAT_FILE).write_text(json.dumps(heartbeat), encoding="utf-8")
    result = CliRunner().invoke(main, ["health", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert any("heartbeat" in problem and "cannot be read (" in problem for problem in report["problems"]), (
        report
    )


def test_health_names_a_heartbeat_that_does_not_parse_as_damaged_not_missing(tmp_path: Path) -> None:
    """A heartbeat cut off or edited was said as none at all ("is a worker running with this state directory?")."""
    (tmp_path / HEARTBEAT_FILE).write_text('{"pid": 1, "pha', encoding="utf-8")
    result = CliRunner().invoke(main, ["health", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    (problem,) = json.loads(result.stdout)["problems"]
    assert f"the worker heartbeat {tmp_path / HEARTBEAT_FILE} cannot be read (JSONDecodeError: " in problem
    assert "none is writing it" in problem and "is a worker running" not in problem


def test_a_second_worker_on_the_same_state_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    """It would delete the first one's status files and rewrite its settings and heartbeat."""
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STATE_DIR, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=state)
        with pytest.raises(WorkerError) as refused:
            KclWorker(settings).prepare()
        assert refused.value.exit_code == 2
        assert f"in use by another worker (pid {holder.pid})" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    KclWorker(settings).prepare()  # the kernel dropped the killed worker's lock: nothing to clean up


HOLD_STATE_DIR = """
import sys, time
from pathlib import Path
from consumer.kcl_worker import lock_state_dir
lock = lock_state_dir(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def test_workers_racing_for_the_prefix_claim_is_no_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim lost to other workers' over and over is a start to try again (exit 1), not a setting to fix (2)."""
    import consumer.kcl_worker as kcl_worker
    from consumer.preflight import PrefixClaimRacedError

    def raced(_: Settings) -> None:
        raise PrefixClaimRacedError("could not claim s3://b/rfm/_control/stream.json")

    monkeypatch.setattr(kcl_worker, "preflight", raced)
    settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "state")
    with pytest.raises(WorkerError, match="could not claim") as raised:
        KclWorker(settings).run()
    assert raised.value.exit_code == 1


def test_a_worker_frees_its_state_dir_when_it_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import consumer.kcl_worker as kcl_worker

    def no_stream(_: Settings) -> None:
        raise PreflightError("stream 'x' does not exist")

    monkeypatch.setattr(kcl_worker, "preflight", no_stream)
    settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "state")
    stopped = KclWorker(settings)
    with pytest.raises(WorkerError):
        stopped.run()
    KclWorker(settings).prepare()  # the same process may start a worker on it again (the demo, tests)


def test_a_stop_signal_during_the_start_up_checks_stops_the_worker_at_once_with_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks before the JVM (up to half a minute against an endpoint that does not answer) ran under the
    command line's generic handler: a SIGTERM there (ECS stopping the task) waited for them, then exited 143 with
    'worker interrupted'. It stops at once, as a worker does, with 0; the JVM is never started."""
    import consumer.kcl_worker as kcl_worker

    settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "state")
    checked: list[str] = []

    def slow_checks(_: Settings) -> None:
        checked.append(json.loads((settings.state_dir / HEARTBEAT_FILE).read_text())["phase"])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # an endpoint that does not answer: the signal must cut this short
        checked.append("not stopped")

    def no_jvm(*_: Any) -> Any:
        raise AssertionError("the JVM was started after a stop")

    monkeypatch.setattr(kcl_worker, "preflight", slow_checks)
    worker = KclWorker(settings)
    monkeypatch.setattr(worker, "_start_jvm", no_jvm)
    before = signal.getsignal(signal.SIGTERM)
    assert worker.run() == 0
    assert checked == ["starting"], (
        "the heartbeat says starting during the checks, and the wait was cut short"
    )
    assert signal.getsignal(signal.SIGTERM) is before, "the handler in place before is back"
    KclWorker(settings).prepare()  # the state directory is free again

    class RefusalDuringSignalError(PreflightError):
        def __str__(self) -> str:  # read while the refusal is turned into the worker's error
            os.kill(os.getpid(), signal.SIGTERM)
            return "stream 'x' does not exist"

    def refused(_: Settings) -> None:
        raise RefusalDuringSignalError()

    monkeypatch.setattr(kcl_worker, "preflight", refused)
    assert KclWorker(settings).run() == 0, "a signal inside the handling of a refusal stops the worker too"
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_heartbeat_goes_on_while_slow_start_up_checks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "starting" heartbeat was written once: checks slowed by an endpoint (up to half a minute) read as a
    heartbeat gone stale, a dead worker, to `clickstream health`."""
    import consumer.kcl_worker as kcl_worker

    settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "state")
    stamps: list[float] = []

    def slow_checks(_: Settings) -> None:
        def stamp() -> float:
            return float(json.loads((settings.state_dir / HEARTBEAT_FILE).read_text())["updated_at"])

        stamps.append(stamp())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and stamp() == stamps[0]:
            time.sleep(0.1)
        stamps.append(stamp())
        raise PreflightError("stream 'x' does not exist")

    monkeypatch.setattr(kcl_worker, "preflight", slow_checks)
    with pytest.raises(WorkerError, match="does not exist"):
        KclWorker(settings).run()
    assert stamps[1] > stamps[0], "rewritten while the checks ran"
    assert not [t for t in threading.enumerate() if t.name == "starting-heartbeat"], (
        "and no longer once they end"
    )


def test_the_start_up_checks_wait_a_bounded_time_for_each_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections but never answers held the worker for 3 minutes (the SDK's 60 s read
    timeout, three tries) before it said why, longer than a health check's start period."""
    from botocore.exceptions import ReadTimeoutError

    import consumer.preflight as checks

    monkeypatch.setattr(checks, "_CHECK_READ_SECONDS", 1)
    accepted: list[socket.socket] = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(0.2)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    accepted.append(silent.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        settings = load_settings(aws_endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        try:
            with pytest.raises(ReadTimeoutError):
                checks.preflight(settings)
        finally:
            stop.set()
            thread.join(5)
            for connection in accepted:
                connection.close()
    assert len(accepted) == checks._CHECK_ATTEMPTS, "each try waited its read timeout, then gave up"
    # a bound, not a speed: the SDK's own 60 s timeout would take three minutes here
    assert time.monotonic() - started < 60, "each try waited the checks' read timeout, not the SDK's"


def test_a_state_dir_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "a-file" / "sub")
    with pytest.raises(WorkerError) as refused:
        KclWorker(settings).prepare()
    assert refused.value.exit_code == 2
    assert "--state-dir" in str(refused.value) and "Not a directory" in str(refused.value)


def test_a_second_worker_with_the_same_id_on_this_host_is_refused(tmp_path: Path) -> None:
    """Two workers on one host share the default id (the host name): they would fight over every lease."""
    java = str(fake_java(tmp_path / "bin"))
    names = {"java": java, "application_name": f"claim-{tmp_path.name}", "worker_id": "host-1"}
    first = KclWorker(load_settings(state_dir=tmp_path / "a", **names))
    first.prepare()
    with pytest.raises(WorkerError) as refused:
        KclWorker(load_settings(state_dir=tmp_path / "b", **names)).prepare()
    assert refused.value.exit_code == 2
    assert "already runs as worker id 'host-1'" in str(refused.value)

    KclWorker(load_settings(state_dir=tmp_path / "c", **{**names, "worker_id": "host-2"})).prepare()
    other_table = {**names, "application_name": f"other-{tmp_path.name}"}
    KclWorker(load_settings(state_dir=tmp_path / "d", **other_table)).prepare()  # another lease table


def test_a_lease_cap_reaches_the_daemon_under_the_name_it_reads() -> None:
    """Without a cap the last worker standing takes every shard (and a task sized for four runs out of memory)."""
    import zipfile

    from consumer.kcl_worker import kcl_jar_directory

    capped = properties(kcl_properties(load_settings(kcl_max_leases_for_worker=4), EXECUTABLE))
    assert capped["maxLeasesForWorker"] == "4"
    assert "maxLeasesForWorker" not in properties(kcl_properties(load_settings(), EXECUTABLE))
    (jar,) = kcl_jar_directory().glob("amazon-kinesis-client-multilang-*.jar")
    with zipfile.ZipFile(jar) as classes:
        configuration = classes.read(
            "software/amazon/kinesis/multilang/config/MultiLangDaemonConfiguration.class"
        )
    assert b"setMaxLeasesForWorker" in configuration


def test_a_live_worker_ends_by_saying_how_it_stopped_and_where_its_log_is(tmp_path: Path) -> None:
    """On a terminal the live view's last line read "stopping"; the clean-stop line went to the log file only."""
    from consumer.worker_output import final_words

    log_file = tmp_path / "worker.log"
    assert final_words(0, log_file) == (
        f"stopped cleanly: every shard flushed and checkpointed; the full log is {log_file}"
    )
    assert final_words(3, log_file).startswith("stopped with exit code 3 (the reason is printed above)")


def test_the_worker_gauges_sum_the_state_memory_of_its_shards(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """StateBytes: what grows until a task sized below its traffic runs out of memory, days later."""
    from types import SimpleNamespace

    from runtime.logs import METRICS_LOGGER

    writer = StatusWriter(tmp_path / "status")
    now = time.time()
    for shard, phase, state_bytes, error in (
        ("a", "processing", 300, None),
        ("b", "processing", 50, "No space left on device"),
        ("c", "ended", 999, "No space left on device"),
    ):
        writer.write(
            ShardStatus(
                shard,
                1,
                phase=phase,
                state_bytes=state_bytes,
                local_state_error=error,
                started_at=now,
                updated_at=now,
            ),
            force=True,
        )
    settings = Settings(stream_name="gauged", application_name="rfm-reprocess")
    worker = SimpleNamespace(status_dir=tmp_path / "status", settings=settings)
    with caplog.at_level(logging.INFO, logger=METRICS_LOGGER):
        KclWorker._emit_gauges(worker)  # type: ignore[arg-type]
    (line,) = [record.emf for record in caplog.records if hasattr(record, "emf")]
    assert (line["StateBytes"], line["ShardsProcessing"], line["StreamName"]) == (350, 2, "gauged")
    # held every minute while a shard runs without its local state (its event is counted once, when it began)
    assert line["ShardsWithoutLocalState"] == 1
    # a second application on the stream (a reprocessing) has metrics of its own, and the stream's total stays
    assert line["ApplicationName"] == "rfm-reprocess"
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["ApplicationName", "StreamName"],
        ["StreamName"],
    ]
    assert {"Name": "StateBytes", "Unit": "Bytes"} in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]


def test_shard_processors_never_import_code_from_the_directory_the_worker_started_in(tmp_path: Path) -> None:
    """`python -m` puts the working directory first on the import path: started from a folder holding an older
    checkout, the processors ran its code while the supervisor ran the installed one."""
    import shlex

    shadow = tmp_path / "consumer"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    (shadow / "record_processor.py").write_text("print('the shadow copy ran')\n")
    result = subprocess.run(
        shlex.split(processor_command()),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert "the shadow copy ran" not in result.stdout, result.stdout
    assert result.returncode == 0, (
        f"the installed processor ran (and ended at the end of its input): {result.stderr}"
    )


def test_the_status_line_says_which_shards_keep_failing_and_which_the_kcl_no_longer_calls() -> None:
    """Off a terminal (ECS) the status line is the one summary: in an S3 outage it said only "buffered 2,000;
    last flush 73s ago", and with reads throttled "behind latest 0ms; everything received is durable"."""
    from consumer.worker_output import WorkerTotals

    now = time.time()
    calm = ShardStatus("shardId-1", 1, phase="processing", last_call_at=now - 1)
    failing = replace(
        calm, shard_id="shardId-2", failing_since=now - 73, last_error="ClientError: ServiceUnavailable"
    )
    silent = replace(calm, shard_id="shardId-3", last_call_at=now - 45)
    assert "FAILING" not in WorkerTotals.of({"1": calm}, now).sentence()
    assert "not called" not in WorkerTotals.of({"1": calm}, now).sentence()
    line = WorkerTotals.of({"1": calm, "2": failing, "3": silent}, now).sentence()
    assert "FAILING on 1 shard, the longest for 73s (retried): ClientError: ServiceUnavailable" in line, line
    assert "the KCL has not called 1 shard for 45s" in line, line


def test_a_lease_table_that_never_answers_holds_up_the_supervision_loop_seconds_not_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease scan runs in the loop that writes the heartbeat, checks for stuck shards and handles a stop: with
    botocore's 60-second read timeout and three attempts, a DynamoDB that took the connection and never answered
    held all of that for three minutes."""
    from botocore.exceptions import ReadTimeoutError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        worker = KclWorker(
            load_settings(state_dir=tmp_path, aws_endpoint_url=endpoint, aws_region="us-east-1")
        )
        started = time.monotonic()
        with pytest.raises(ReadTimeoutError):
            worker._lease_owners()
        with pytest.raises(ReadTimeoutError):  # --until-idle's listing of the stream, in the same loop
            worker._supervision_client("kinesis").list_shards(StreamName="s")
        waited = time.monotonic() - started
    assert waited < 30, f"the scan waited {waited:.0f}s on a silent lease table"


def test_the_status_line_counts_redeliveries_already_applied_so_its_counts_add_up() -> None:
    """After a restart 588 of 1,801 records in were redeliveries: the line said in 1,801, accepted 1,212, rejected 1,
    and the rest read like loss."""
    from consumer.worker_output import WorkerTotals

    now = time.time()
    after_restart = ShardStatus(
        "shardId-1", 1, phase="processing", records_received=1_801, accepted=1_212, rejected=1, skipped=588
    )
    line = WorkerTotals.of({"1": after_restart}, now).sentence()
    assert (
        "records in 1,801, accepted 1,212, rejected 1, skipped 588 (already applied), buffered 0" in line
    ), line
    assert "skipped" not in WorkerTotals.of({"1": replace(after_restart, skipped=0)}, now).sentence()


def test_health_of_a_worker_that_is_gone_counts_no_shard_processing(tmp_path: Path) -> None:
    """Its shards' status files still say "processing": the report said 2 shards processing for a dead worker."""
    now = time.time()
    writer = StatusWriter(tmp_path / "status")
    for shard in ("shardId-1", "shardId-2"):
        writer.write(ShardStatus(shard, 1, phase="processing", last_call_at=now, started_at=now), force=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    write_heartbeat(tmp_path, Heartbeat(pid=int(gone.stdout), phase="running", started_at=now))
    report = assess(tmp_path, stuck_after=300, now=now)
    assert not report.healthy and report.shards_processing == 0, report
    assert any("is gone" in problem for problem in report.problems), report
    write_heartbeat(tmp_path, Heartbeat(pid=os.getpid(), phase="running", started_at=now))
    assert assess(tmp_path, stuck_after=300, now=now).shards_processing == 2, "alive: its shards count"


def test_shard_processors_import_the_supervisors_code_first(tmp_path: Path) -> None:
    """A checkout run without installing it, or an editable install: the processors import the packages the
    supervisor itself imported (``-P`` keeps the working directory out, PYTHONPATH puts the supervisor's first)."""
    import consumer
    from consumer.kcl_worker import supervisor_code_root

    worker = KclWorker(load_settings(state_dir=tmp_path / "state"))
    env = worker.child_environment(tmp_path / "settings.json", tmp_path / "log.sock")
    here = str(Path(consumer.__file__).resolve().parents[1])
    assert supervisor_code_root() == here, "this repository is an editable install: not site-packages"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == here
    # -S: no site-packages, so no editable-install finder either: what a checkout run without installing has
    probe = subprocess.run(
        [sys.executable, "-S", "-P", "-c", "import consumer; print(consumer.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.stdout.strip() == str(Path(consumer.__file__).resolve()), probe.stderr


# ---------------------------------------------------------------------------------------------------- a full disk
def _disk_full(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_status_file_the_disk_refuses_is_said_once_and_the_shard_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full state disk made a status write raise in the shard processor, which ended the MultiLangDaemon."""
    writer = StatusWriter(tmp_path / "status")
    status = ShardStatus("shardId-000000000000", os.getpid())
    write_text = Path.write_text
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with caplog.at_level(logging.WARNING, logger="consumer.status"):
        assert writer.write(status, force=True) is False
        assert writer.write(status, force=True) is False
    warnings = [r.getMessage() for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    monkeypatch.setattr(Path, "write_text", write_text)
    assert writer.write(status, force=True) is True
    assert list((tmp_path / "status").iterdir()) == [tmp_path / "status" / "shardId-000000000000.json"]


def test_a_heartbeat_the_disk_refuses_names_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker ended with "No space left on device" and no path: nothing said which disk was full."""
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.raises(OSError, match="No space left on device") as refused:
        write_heartbeat(tmp_path, Heartbeat(pid=os.getpid(), phase="running", started_at=time.time()))
    assert refused.value.filename is not None and str(tmp_path) in refused.value.filename


def test_a_python_at_a_path_with_a_space_is_refused_naming_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The KCL splits the processor command on spaces: from "/home/u/My Projects/.venv/bin/python" it ran
    "/home/u/My", every shard processor failed to start, and the worker held its leases doing nothing."""
    monkeypatch.setattr(sys, "executable", "/home/u/My Projects/.venv/bin/python")
    with pytest.raises(
        WorkerError, match=r"path with a space \(/home/u/My Projects/.venv/bin/python\)"
    ) as raised:
        processor_command()
    assert raised.value.exit_code == 2


def test_a_failure_of_the_supervision_stops_the_kcl_gracefully_before_the_worker_exits(
    tmp_path: Path,
) -> None:
    """Any error out of the supervision loop (a full disk under the heartbeat, say) SIGKILLed the JVM and its
    processors at once: every shard's buffered records were left to be read again. The KCL is stopped as on
    SIGTERM (flush and checkpoint), and killed only past the stop deadline."""
    (tmp_path / "state").mkdir()
    settings = load_settings(state_dir=tmp_path / "state")
    write_status(settings, pid=os.getpid(), phase="processing", buffered_records=7)  # a shard at work
    worker = KclWorker(settings)
    signals: list[int] = []

    class Daemon:  # the JVM: stops once told to, after a few polls
        pid = 999_999_999
        stdout = io.BytesIO(b"")
        polls_after_term = 0

        def poll(self) -> int | None:
            if signals:
                self.polls_after_term += 1
                return 0 if self.polls_after_term > 3 else None
            return None

        def send_signal(self, signum: int) -> None:
            signals.append(signum)

        def wait(self, timeout: float | None = None) -> int:
            return 0

    daemon = Daemon()

    def start(*_: Any) -> Any:
        worker._process = daemon  # type: ignore[assignment]
        return daemon

    def failing(*_: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    worker._start_jvm = start  # type: ignore[method-assign]
    worker._supervise = failing  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space left"):
        worker._run_checked(["java"])
    assert signals == [signal.SIGTERM], "asked to stop as on SIGTERM"
    assert daemon.polls_after_term > 3, "and waited for until it stopped (no kill: it was gone by then)"


def test_a_failure_before_the_jvm_starts_leaves_no_socket_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings file written before the JVM starts (a full disk) failed outside the clean-up: the log socket's
    folder and its relay thread were left behind."""
    import tempfile

    (tmp_path / "state").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    worker = KclWorker(load_settings(state_dir=tmp_path / "state"))

    def disk_full() -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(worker, "settings_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        worker._run_checked(["java"])
    assert not list(tmp_path.glob("clickstream-*")), "the socket folder is removed"


def test_health_after_a_worker_stopped_before_the_kcl_started_says_it_stopped_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stopped heartbeat was written only after a KCL run: a worker stopped during its start-up checks, or
    refused by them, left "starting", which `health` then read as "worker process N is gone"."""
    import consumer.kcl_worker as kcl_worker

    settings = load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "state")

    def stopped_during_checks(_: Settings) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)

    def no_stream(_: Settings) -> None:
        raise PreflightError("stream 'x' does not exist")

    def said(state_dir: Path) -> list[str]:
        return assess(state_dir, stuck_after=300).problems

    monkeypatch.setattr(kcl_worker, "preflight", stopped_during_checks)
    assert KclWorker(settings).run() == 0
    [problem] = said(settings.state_dir)
    assert problem.startswith("the worker stopped at ") and problem.endswith("(exit code 0)"), problem

    monkeypatch.setattr(kcl_worker, "preflight", no_stream)
    with pytest.raises(WorkerError) as refused:
        KclWorker(settings).run()
    assert refused.value.exit_code == 2
    [problem] = said(settings.state_dir)
    assert problem.startswith("the worker stopped at ") and problem.endswith("(exit code 2)"), problem

    def broken(_: Settings) -> None:  # an error whose exit code the command line decides
        raise RuntimeError("an unexpected failure")

    monkeypatch.setattr(kcl_worker, "preflight", broken)
    with pytest.raises(RuntimeError):
        KclWorker(settings).run()
    [problem] = said(settings.state_dir)
    assert problem.startswith("the worker stopped at ") and problem.endswith("on an error (its log names it)")

    # a worker refused because another one runs on the state directory leaves that one's heartbeat alone
    running = Heartbeat(pid=os.getpid(), phase="running", started_at=time.time())
    write_heartbeat(settings.state_dir, running)
    held = lock_state_dir(settings.state_dir)
    try:
        with pytest.raises(WorkerError, match="in use by another worker"):
            KclWorker(settings).run()
        assert Heartbeat.read(settings.state_dir).phase == "running"
    finally:
        held.close()


def test_health_after_a_worker_stopped_says_it_stopped_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a clean stop, `health` said "worker heartbeat is 276s old", as of a worker that hung or died."""
    import consumer.kcl_worker as kcl_worker

    monkeypatch.setattr(kcl_worker, "preflight", lambda _: None)
    worker = KclWorker(load_settings(java=str(fake_java(tmp_path / "bin")), state_dir=tmp_path / "state"))

    class Daemon:  # the JVM, already exited
        pid = 999_999_999
        stdout = io.BytesIO(b"")

        def poll(self) -> int | None:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    def start(*_: Any) -> Any:
        worker._process = Daemon()  # type: ignore[assignment]
        return worker._process

    worker._start_jvm = start  # type: ignore[method-assign]
    worker._supervise = lambda *_: 0  # type: ignore[method-assign]
    assert worker.run() == 0
    report = assess(tmp_path / "state", stuck_after=300, now=time.time() + 600)
    assert not report.healthy
    assert len(report.problems) == 1 and report.problems[0].startswith("the worker stopped at "), report
    assert report.problems[0].endswith("(exit code 0)") and "old" not in report.problems[0]
