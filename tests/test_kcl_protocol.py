"""The KCL MultiLangDaemon wire protocol, driven in-process through the real ``amazon_kclpy.kcl.KCLProcess``.

Most flows run ``ColumnarKCLProcess`` (the KCLProcess that ``main`` runs, reading processRecords into columns);
two run amazon_kclpy's plain KCLProcess, whose ``Record`` objects take the per-record path.

As in the kclpy repository's own integration test, the daemon's side is a prepared input (one JSON message per
line) and a captured output. A synchronous checkpoint makes the processor write {"action": "checkpoint", ...} and
then *read* the daemon's answer from the input, so each answer line sits in the input right after the message
whose handling checkpoints.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from amazon_kclpy import kcl
from botocore.exceptions import ClientError

from aggregators.state_journal import JournalLockedError
from consumer import record_processor
from consumer.kcl_messages import ColumnarKCLProcess
from consumer.kcl_worker import KclWorker
from consumer.record_processor import RecordProcessor
from consumer.state_recovery import state_path
from consumer.status import ShardStatus, StatusWriter
from runtime.logs import DatagramLogHandler, JsonFormatter
from runtime.settings import Settings, load_settings
from tests.moto_support import isolate_environment, moto_bucket

SHARD = "shardId-000000000001"
BUCKET = "clickstream-kcl-protocol"
STREAM = "clickstream-kcl-protocol"
ARRIVAL_MILLIS = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    """One in-process moto for the module (starting moto costs more than most tests)."""
    # the processor looks its shard's parents up in the stream (Kinesis ListShards)
    with moto_bucket(BUCKET, streams={STREAM: 2}) as client:
        yield client


@pytest.fixture
def s3(aws: Any) -> Iterator[Any]:
    """The module's bucket, empty at the start of each test."""
    yield aws
    for page in aws.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            aws.delete_object(Bucket=BUCKET, Key=obj["Key"])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        bucket=BUCKET, prefix="rfm", stream_name=STREAM, state_dir=tmp_path / "state", flush_max_records=5
    )


# ---------------------------------------------------------------------------------------------------- messages
def event(index: int) -> tuple[str, bytes]:
    customer = f"c-{index % 3:06d}"
    document = {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=index + 1)),
        "event_type": "page_view",
        "customer_id": customer,
        "session_id": f"s-{index // 4}",
        "event_time": f"2026-03-01T10:{index:02d}:00Z",
    }
    return customer, json.dumps(document).encode()


def kcl_record(index: int) -> dict[str, Any]:
    customer, data = event(index)
    return {
        "action": "record",
        "data": base64.b64encode(data).decode(),
        "partitionKey": customer,
        "sequenceNumber": str(1000 + index),
        "subSequenceNumber": 0,
        "approximateArrivalTimestamp": ARRIVAL_MILLIS,
    }


def initialize() -> dict[str, Any]:
    return {
        "action": "initialize",
        "shardId": SHARD,
        "sequenceNumber": "TRIM_HORIZON",
        "subSequenceNumber": 0,
    }


def process_records(indexes: range, millis_behind: int = 0) -> dict[str, Any]:
    return {
        "action": "processRecords",
        "records": [kcl_record(i) for i in indexes],
        "millisBehindLatest": millis_behind,
    }


def checkpoint_answer(sequence: str | None, error: str | None = None) -> dict[str, Any]:
    return {
        "action": "checkpoint",
        "sequenceNumber": sequence,
        "subSequenceNumber": 0 if sequence is not None else None,
        "error": error,
    }


def status(action: str) -> dict[str, Any]:
    return {"action": "status", "responseFor": action}


def checkpoint(sequence: str | None) -> dict[str, Any]:
    return {"action": "checkpoint", "sequenceNumber": sequence, "subSequenceNumber": 0 if sequence else None}


def lines(*messages: dict[str, Any]) -> str:
    return "".join(json.dumps(message) + "\n" for message in messages)


def protocol_messages(output: str) -> list[dict[str, Any]]:
    """Every non-blank output line must be one JSON protocol message."""
    messages = []
    for line in output.splitlines():
        if not line.strip():
            continue
        message = json.loads(line)
        assert message.get("action") in ("status", "checkpoint"), f"not a protocol message: {line!r}"
        messages.append(message)
    return messages


def run_kcl(processor: RecordProcessor, input_text: str) -> tuple[list[dict[str, Any]], str]:
    output, errors = io.StringIO(), io.StringIO()
    ColumnarKCLProcess(processor, io.StringIO(input_text), output, errors).run()
    return protocol_messages(output.getvalue()), errors.getvalue()


def s3_keys(s3: Any, prefix: str) -> list[str]:
    return sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def event_ids_in_s3(s3: Any) -> list[str]:
    ids = []
    for key in s3_keys(s3, "rfm/events/"):
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        ids += table.column("event_id").to_pylist()
    return sorted(ids)


def expected_ids(indexes: range) -> list[str]:
    return sorted(str(uuid.UUID(int=i + 1)) for i in indexes)


# ---------------------------------------------------------------------------------------------------- flows
def test_records_are_flushed_and_checkpointed_through_the_protocol_then_shutdown_requested_flushes_the_rest(
    s3: Any, settings: Settings
) -> None:
    messages, errors = run_kcl(
        RecordProcessor(settings, s3_client=s3),
        lines(
            initialize(),
            process_records(range(3)),  # 3 buffered: below 5
            process_records(range(3, 6)),  # 6 buffered: flush, checkpoint at the 6th record
            checkpoint_answer("1005"),
            process_records(range(6, 8)),  # 2 buffered
            process_records(range(0), millis_behind=3_000),  # empty heartbeat, still behind: keep buffering
            {"action": "shutdownRequested"},  # flush the 2, checkpoint at the 8th record
            checkpoint_answer("1007"),
        ),
    )

    assert messages == [
        status("initialize"),
        status("processRecords"),
        checkpoint("1005"),
        status("processRecords"),
        status("processRecords"),
        status("processRecords"),
        checkpoint("1007"),
        status("shutdownRequested"),
    ]
    assert errors == "", "KCLProcess swallowed an exception"
    assert len(s3_keys(s3, f"rfm/_control/commits/{SHARD}/")) == 2
    assert event_ids_in_s3(s3) == expected_ids(range(8))
    assert s3_keys(s3, "rfm/_control/intents/") == [], "committed attempts delete their intents"
    every_key = s3_keys(s3, "")
    assert {key: s3.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") for key in every_key} == (
        dict.fromkeys(every_key, "AES256")
    )


def test_a_kpl_aggregate_the_kcl_could_not_unpack_is_rejected_and_checkpointed_where_it_was_delivered(
    s3: Any, settings: Settings
) -> None:
    """Unpacked here it would get sub-sequence numbers 0..n-1 the KCL never delivered, and the KCL refuses a
    checkpoint beyond what it delivered (IllegalArgumentException): the worker stopped on every restart."""
    from aws_kinesis_agg.aggregator import RecordAggregator

    aggregator = RecordAggregator()
    for i in range(3):
        customer, data = event(10 + i)
        assert aggregator.add_user_record(customer, data) is None
    partition_key, _, aggregate = aggregator.clear_and_get().get_contents()
    delivered = process_records(range(4))
    delivered["records"].append(
        {**kcl_record(4), "data": base64.b64encode(aggregate).decode(), "partitionKey": partition_key}
    )

    messages, errors = run_kcl(
        RecordProcessor(settings, s3_client=s3), lines(initialize(), delivered, checkpoint_answer("1004"))
    )

    assert checkpoint("1004") in messages, "the checkpoint names the delivered record, sub-sequence 0"
    assert errors == ""
    assert event_ids_in_s3(s3) == expected_ids(range(4))
    (rejects,) = s3_keys(s3, "rfm/errors/")
    rejected = pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=rejects)["Body"].read()))
    assert rejected.num_rows == 1 and rejected.column("sequence_number").to_pylist() == ["1004"]


def test_shard_ended_flushes_then_checkpoints_with_a_null_sequence_number(
    s3: Any, settings: Settings
) -> None:
    messages, errors = run_kcl(
        RecordProcessor(settings, s3_client=s3),
        lines(
            initialize(),
            process_records(range(2)),
            {"action": "shardEnded"},
            checkpoint_answer(None),
        ),
    )

    assert messages == [
        status("initialize"),
        status("processRecords"),
        {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None},
        status("shardEnded"),
    ]
    assert errors == ""
    assert event_ids_in_s3(s3) == expected_ids(range(2))


def test_lease_lost_answers_status_and_never_checkpoints(s3: Any, settings: Settings) -> None:
    messages, errors = run_kcl(
        RecordProcessor(settings, s3_client=s3),
        lines(initialize(), process_records(range(4)), {"action": "leaseLost"}),
    )

    assert messages == [status("initialize"), status("processRecords"), status("leaseLost")]
    assert errors == ""
    assert s3_keys(s3, "rfm/") == []


def test_a_checkpoint_refused_with_shutdown_exception_stops_flushing_but_keeps_answering(
    s3: Any, settings: Settings
) -> None:
    messages, errors = run_kcl(
        RecordProcessor(settings, s3_client=s3),
        lines(
            initialize(),
            process_records(range(5)),
            checkpoint_answer("1004", error="ShutdownException"),
            process_records(range(5, 12)),  # above the threshold, but the lease is gone
            {"action": "leaseLost"},
        ),
    )

    assert messages == [
        status("initialize"),
        checkpoint("1004"),
        status("processRecords"),
        status("processRecords"),
        status("leaseLost"),
    ]
    assert errors == ""
    assert len(s3_keys(s3, f"rfm/_control/commits/{SHARD}/")) == 1


def test_redelivery_after_restart_skips_records_already_applied(s3: Any, settings: Settings) -> None:
    """Crash after the state commit but before the checkpoint answer: the next process skips what was applied."""
    crashed = RecordProcessor(settings, s3_client=s3)
    output = io.StringIO()
    with pytest.raises(SystemExit):  # the daemon goes away instead of answering the checkpoint
        kcl.KCLProcess(
            crashed,
            input_file=io.StringIO(lines(initialize(), process_records(range(5)))),
            output_file=output,
            error_file=io.StringIO(),
        ).run()
    assert protocol_messages(output.getvalue()) == [status("initialize"), checkpoint("1004")]
    assert crashed.shard is not None
    crashed.shard.state.close()

    second, errors = run_kcl(
        RecordProcessor(settings, s3_client=s3),
        lines(
            initialize(),
            process_records(range(7)),
            checkpoint_answer("1006"),
            {"action": "shutdownRequested"},
        ),
    )

    assert second == [
        status("initialize"),
        checkpoint("1006"),
        status("processRecords"),
        status("shutdownRequested"),
    ]
    assert errors == ""
    assert event_ids_in_s3(s3) == expected_ids(range(7))


class DeniedPuts:
    """A moto S3 client that refuses every put with AccessDenied (a terminal error)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def put_object(self, **kwargs: Any) -> Any:
        raise ClientError(
            {
                "Error": {"Code": "AccessDenied", "Message": "denied"},
                "ResponseMetadata": {"HTTPStatusCode": 403},
            },
            "PutObject",
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_terminal_error_in_the_processor_exits_the_process_instead_of_being_swallowed(
    s3: Any, settings: Settings
) -> None:
    output, errors = io.StringIO(), io.StringIO()
    process = kcl.KCLProcess(
        RecordProcessor(settings, s3_client=DeniedPuts(s3)),
        input_file=io.StringIO(lines(initialize(), process_records(range(5)), checkpoint_answer("1004"))),
        output_file=output,
        error_file=errors,
    )

    with pytest.raises(SystemExit) as exited:
        process.run()

    assert exited.value.code == 1
    assert protocol_messages(output.getvalue()) == [status("initialize")]
    assert s3_keys(s3, "rfm/") == []


def test_the_worker_names_the_error_that_stopped_a_shard_when_the_daemon_exits(
    s3: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The cause, not only "exited unexpectedly" with the traceback many daemon log lines earlier."""
    process = kcl.KCLProcess(
        RecordProcessor(settings, s3_client=DeniedPuts(s3)),
        input_file=io.StringIO(lines(initialize(), process_records(range(5)), checkpoint_answer("1004"))),
        output_file=io.StringIO(),
        error_file=io.StringIO(),
    )
    with pytest.raises(SystemExit):
        process.run()
    # another shard, later, retrying a transient failure: it did not stop the daemon
    retrying = ShardStatus("shardId-000000000009", 1, last_error="ReadTimeoutError: read timed out")
    StatusWriter(settings.state_dir / "status").write(retrying, force=True)

    with caplog.at_level(logging.ERROR):
        assert KclWorker(settings)._exit_code(1) == 1

    (line,) = [r.getMessage() for r in caplog.records if "exited unexpectedly" in r.getMessage()]
    assert f"shard {SHARD} stopped on ClientError" in line and "AccessDenied" in line


def test_the_workers_own_failure_lines_carry_the_exit_code_in_json(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The README has alarms filter on ``exit_code``; only the CLI's failures carried it, not the worker's."""
    worker = KclWorker(settings)
    with caplog.at_level(logging.ERROR):
        assert worker._exit_code(1) == 1  # the daemon exited by itself
        assert worker._exit_code(-9) == 1  # killed
        worker._stop_requested_at = time.monotonic()
        StatusWriter(settings.state_dir / "status").write(
            ShardStatus(SHARD, 1, phase="processing", buffered_records=7), force=True
        )
        assert worker._exit_code(0) == 1  # stopped with records unflushed
    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    assert len(lines) == 3 and all(line["level"] == "ERROR" and line["exit_code"] == 1 for line in lines), (
        lines
    )


# ---------------------------------------------------------------------------------------------------- entry point
@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_entry_point_writes_only_protocol_json_to_stdout_and_logs_to_stderr(
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    monkeypatch.setenv("CLICKSTREAM_BUCKET", BUCKET)
    monkeypatch.setenv("CLICKSTREAM_STREAM_NAME", STREAM)
    monkeypatch.setenv("CLICKSTREAM_PREFIX", "rfm")
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLICKSTREAM_FLUSH_MAX_RECORDS", "3")
    monkeypatch.setenv("CLICKSTREAM_LOG_LEVEL", "DEBUG")
    monkeypatch.setattr(
        "sys.stdin",
        io.StringIO(
            lines(
                initialize(),
                process_records(range(4)),
                checkpoint_answer("1003"),
                {"action": "shutdownRequested"},
                {"action": "leaseLost"},
            )
        ),
    )

    watchers: list[bool] = []
    # In this test process the parent is pytest: a real watcher would outlive the test and exit pytest's worker.
    monkeypatch.setattr(record_processor, "watch_parent", lambda: watchers.append(True))
    # what it does to sys.modules belongs to a processor's own process (test_a_processor_process_never_loads_pandas)
    monkeypatch.setattr(record_processor, "keep_pandas_out", lambda: None)
    record_processor.main()

    assert watchers == [True], "main() watches its parent, so a processor never outlives its JVM"
    captured = capsys.readouterr()
    assert protocol_messages(captured.out) == [
        status("initialize"),
        checkpoint("1003"),
        status("processRecords"),
        status("shutdownRequested"),
        status("leaseLost"),
    ]
    logs = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert any(entry["message"].startswith("flushed 4 records") for entry in logs), captured.err
    assert all(entry.get("shard_id") == SHARD for entry in logs if entry["logger"].startswith("consumer."))
    assert event_ids_in_s3(s3) == expected_ids(range(4))


_BUSY_PROCESSOR = """
import logging, time
from consumer.record_processor import watch_parent
from runtime.logs import DatagramLogHandler
{handler}
watch_parent(0.05)
print("watching", flush=True)
time.sleep(60)  # a processor in a retry's backoff: its main thread touches no pipe for a while
"""
_JVM = """
import subprocess, sys, time
with open(sys.argv[2], "w") as out:
    child = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1]], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE
    )
print(child.pid, flush=True)
deadline = time.monotonic() + 30
while "watching" not in open(sys.argv[2]).read() and time.monotonic() < deadline:
    time.sleep(0.05)
"""  # then it exits, as a JVM killed with -9: its end of the processor's stderr pipe closes with it


def _ended(pid: int) -> bool:
    """Gone, or a zombie nobody reaps (a container's PID 1 may not)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except FileNotFoundError:
        return True


def test_a_busy_processor_exits_when_its_jvm_dies_even_though_its_stderr_is_a_broken_pipe(
    tmp_path: Path,
) -> None:
    """The watcher logged "the KCL is gone" first; with the worker's socket gone the line fell back to stderr, a pipe
    to the dead JVM, the write raised, and the watcher died before its exit: a processor in a retry's backoff lived
    on (17 s seen) and could still commit after its worker had stopped."""
    # the worker's log socket, gone with the worker
    handler = f'logging.getLogger().addHandler(DatagramLogHandler("{tmp_path / "gone.sock"}"))'
    assert _ends_with_its_jvm(_BUSY_PROCESSOR.format(handler=handler), tmp_path), (
        "the processor outlived its JVM"
    )


def test_a_processor_exits_when_its_jvm_dies_whatever_its_last_log_line_does(tmp_path: Path) -> None:
    """The watcher's exit may not hang on its log line: a handler that raises killed the watcher thread."""
    failing = """
class Failing(logging.Handler):
    def emit(self, record): raise RuntimeError("a handler that fails")
logging.getLogger().addHandler(Failing())
"""
    assert _ends_with_its_jvm(_BUSY_PROCESSOR.format(handler=failing), tmp_path), (
        "the processor outlived its JVM"
    )


def test_the_log_socket_handler_swallows_a_broken_stderr_once_its_socket_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its fallback to stderr raised BrokenPipeError out of the log call when the JVM (its stderr's reader) was gone."""

    class BrokenPipe(io.StringIO):
        def write(self, _text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", BrokenPipe())
    handler = DatagramLogHandler(str(tmp_path / "gone.sock"))
    handler.emit(logging.LogRecord("consumer", logging.WARNING, __file__, 0, "the KCL is gone", None, None))


def _ends_with_its_jvm(code: str, tmp_path: Path) -> bool:
    """Whether a processor running ``code`` ends within 15 s once the process that started it (its JVM) is gone."""
    jvm = subprocess.run(
        [sys.executable, "-c", _JVM, code, str(tmp_path / "out")], capture_output=True, text=True, check=True
    )
    pid = int(jvm.stdout.split()[0])
    assert (tmp_path / "out").read_text() == "watching\n", "the processor was watching before its JVM died"
    deadline = time.monotonic() + 15
    while not _ended(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = not _ended(pid)
    if alive:
        os.kill(pid, 9)
    return not alive


def test_a_message_that_does_not_decode_leaves_its_error_for_the_worker_to_name(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """A null arrival time fails while the line is read, outside the processor's calls: still a named stop."""
    monkeypatch.setenv("CLICKSTREAM_BUCKET", BUCKET)
    monkeypatch.setenv("CLICKSTREAM_STREAM_NAME", STREAM)
    monkeypatch.setenv("CLICKSTREAM_PREFIX", "rfm")
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(tmp_path / "state"))
    broken = process_records(range(2))
    broken["records"][1]["approximateArrivalTimestamp"] = None
    monkeypatch.setattr("sys.stdin", io.StringIO(lines(initialize(), broken)))
    monkeypatch.setattr(record_processor, "watch_parent", lambda: None)
    monkeypatch.setattr(record_processor, "keep_pandas_out", lambda: None)

    with pytest.raises(SystemExit) as exited:
        record_processor.main()

    assert exited.value.code == 1
    (status_file,) = (tmp_path / "state" / "status").glob("*.json")
    assert json.loads(status_file.read_text())["terminal_error"].startswith("TypeError")


def _state_file(settings: Settings) -> Path:
    return state_path(
        settings.state_dir,
        SHARD,
        stream_name=settings.stream_name,
        bucket=settings.bucket,
        prefix=settings.prefix,
    )


def test_a_shard_s_state_file_is_its_stream_s_and_prefix_s_own(settings: Settings) -> None:
    """A state directory reused for another stream or S3 prefix (shard ids repeat across streams) must not hand one
    the other's file: a file whose position happens to lie on the other chain would be trusted, its events counted
    twice. The processor opens the file of its own stream and prefix."""
    others = [
        settings.model_copy(update=change)
        for change in (
            {"stream_name": "other-stream"},
            {"prefix": "other-prefix"},
            {"bucket": "other-bucket"},
        )
    ]
    paths = {_state_file(each) for each in (settings, *others)}
    assert len(paths) == 4 and all(path.parent.parent == settings.state_dir / "shards" for path in paths)
    state = RecordProcessor(settings)._open_state(SHARD)
    try:
        assert state.local_dir == _state_file(settings)
    finally:
        state.close()


def _hold_state_file(path: Path) -> subprocess.Popen[str]:
    """Another process that opens the journal at ``path`` (taking its lock) until a line comes on its stdin;
    returns once it holds it. It prints ``releasing`` right before it lets go of it, then lives on for a while."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from aggregators.state_journal import StateJournal; "
            f"journal = StateJournal(Path({str(path)!r})); print('held', flush=True); "
            "sys.stdin.readline(); print('releasing', flush=True); journal.close(); time.sleep(30)",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_initialize_waits_for_an_earlier_processor_of_the_shard_that_still_holds_its_state_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease came back while this worker's earlier processor of the shard still finishes a flush: the new one
    waits for it instead of failing (which would stop the whole MultiLangDaemon)."""
    holder = _hold_state_file(_state_file(settings))
    monkeypatch.setattr(record_processor, "parent_pid", os.getpid)  # the holder counts as a sibling processor
    waits: list[float] = []
    real_sleep = time.sleep

    def wait_then_release(seconds: float) -> None:
        """The processor's wait for its sibling: the first one lets the holder go (no wall-clock race)."""
        waits.append(seconds)
        if len(waits) == 1:
            assert holder.stdin is not None
            holder.stdin.write("release\n")
            holder.stdin.flush()
        real_sleep(seconds)

    monkeypatch.setattr(record_processor.time, "sleep", wait_then_release)
    with caplog.at_level(logging.WARNING, logger="consumer.record_processor"):
        state = RecordProcessor(settings)._open_state(SHARD)
    monkeypatch.undo()
    try:
        # The file opened only once the holder let go of it: its last words were printed before it did.
        assert waits, "opened without waiting for the holder"
        assert holder.stdout is not None
        assert select.select([holder.stdout], [], [], 0)[0], "opened while the holder still held the file"
        assert holder.stdout.readline().strip() == "releasing"
        assert state.persistent and state.position() is None
        assert any(f"pid {holder.pid}" in record.getMessage() for record in caplog.records)
    finally:
        state.close()
        holder.kill()
        holder.wait()


def test_a_state_file_held_by_an_unrelated_process_is_still_an_error(settings: Settings) -> None:
    holder = _hold_state_file(_state_file(settings))
    try:
        assert record_processor.sibling_holding_lock(RuntimeError("no lock words")) is None
        with pytest.raises(JournalLockedError, match=f"held by process {holder.pid}") as raised:
            RecordProcessor(settings)._open_state(SHARD)
        assert raised.value.holder_pid == holder.pid
        assert record_processor.sibling_holding_lock(raised.value) is None  # held, but not by a sibling
    finally:
        holder.kill()
        holder.wait()


def test_a_processor_process_never_loads_pandas() -> None:
    """main() keeps pandas (installed for `clickstream score`) out of each shard processor: about 20 MiB each."""
    script = (
        "import sys\n"
        "from consumer.record_processor import keep_pandas_out, to_raw_records\n"
        "from consumer.kcl_messages import RecordColumns\n"
        "keep_pandas_out()\n"
        "import pyarrow as pa\n"
        "columns = RecordColumns.of([{'data': 'e30=', 'partitionKey': 'c', 'sequenceNumber': '1',\n"
        "                             'subSequenceNumber': 0, 'approximateArrivalTimestamp': 1}])\n"
        "batch = to_raw_records(columns)\n"
        "print(pa.array([1]).to_pylist(), len(batch), 'pandas' in sys.modules and sys.modules['pandas'] is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert done.stdout.split() == ["[1]", "1", "False"], done.stderr
