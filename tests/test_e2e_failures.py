"""Failure behaviour end to end: the real KCL MultiLangDaemon against the embedded endpoint with injected faults.

Each scenario has its own stream, bucket, KCL application (lease tables), worker id and state directory, and clears
the emulator's faults (emulator/faults.py) when it ends. The worker runs as `python -m clickstream.cli worker`,
exactly as in production; the tests watch it through the files it keeps (``<state_dir>/status/<shard>.json``,
``worker.json``), the KCL's checkpoints in the DynamoDB lease table and the outputs in S3, and finally compare every
customer with tests/reference.py and every valid event id with the ``events/`` archive (exactly once).

Timings: the KCL's first start on an empty lease table waits a random 1-30 s before it creates leases (constants in
the KCL's Scheduler, not configurable), then assigns them. Paid once per scenario in sequence that alone would be
about two minutes, so the module "warms" the lease tables of every selected scenario in parallel at once (a
``worker --until-idle 1`` on the still empty stream; each scenario awaits its own, the later ones finish while the
first scenarios run); each scenario's worker is then a restart with the same worker id and has its leases within
seconds. The lease failover time is 5 s instead of the emulator default of 10 s: the
KCL ends a graceful stop only once it is reached, so every stop is 5 s shorter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import boto3
import duckdb
import pytest
from botocore.config import Config

from clickstream.demo import emulator_environment
from clickstream.outputs import current_customer_rows
from consumer.health import Heartbeat, write_heartbeat
from consumer.kcl_worker import IdleCheck
from consumer.status import ShardStatus, StatusWriter, read_statuses
from emulator.faults import clear_faults, fault_hits, set_fault
from producer.generator import ClickstreamGenerator
from producer.kinesis_put import KinesisProducer
from runtime.exit_codes import INTERRUPTED
from runtime.settings import load_settings
from tests.parquet_support import download_outputs, output_glob
from tests.reference import mismatches_against_reference

pytestmark = pytest.mark.e2e

SHARDS = 2
CUSTOMERS = 150
EVENTS = 4_000
DAYS = 7
#: Generous bounds: a (warm) start takes 5-10 s, a cold one up to ~45 s on a busy 2-core machine.
FIRST_FLUSH_TIMEOUT = 90.0
STOP_TIMEOUT = 40.0
FAILOVER_MILLIS = "5000"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------- helpers
def generate(seed: int, events: int = EVENTS) -> list[tuple[str, bytes]]:
    """Deterministic labelled records ("valid", "duplicate", "malformed:<kind>") for CUSTOMERS customers.

    A week of history, not the default 60 days: a flush writes one events/ file per event hour, and a few hundred
    files per flush would make every flush and every read-back several times slower.
    """
    generator = ClickstreamGenerator(
        CUSTOMERS, events, seed=seed, days=DAYS, duplicate_rate=0.02, malformed_rate=0.004
    )
    return list(generator.records())


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (the JVM and its Python record processors below a worker)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Worker:
    """`clickstream worker` as a child process, its output in a log file (read for failure messages)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, characters: int = 6000) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return f"--- tail of {self.log_path} ---\n{text[-characters:]}"

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float, what: str) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not exit within {timeout:.0f}s ({what})\n{self.tail()}")

    def destroy(self) -> None:
        """Cleanup after a failed test: the worker's own two-stage stop, then SIGKILL for what is left."""
        if self.running():
            tree = descendants(self.pid)
            for _ in range(2):
                if self.running():
                    self.send(signal.SIGTERM)
                    time.sleep(0.5)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for pid in tree:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


@dataclass
class Pipeline:
    """One isolated pipeline (stream, bucket, lease tables, worker id, state dir) on the shared emulator."""

    endpoint: str
    workdir: Path
    name: str
    env: dict[str, str]
    labelled: list[tuple[str, bytes]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    warmup: Worker | None = None

    def await_warmup(self) -> None:
        """Wait for this pipeline's warm-up run (it creates the KCL's lease tables and leases) to end cleanly."""
        if self.warmup is not None:
            code = self.warmup.wait(150.0, f"warm-up of {self.name}")
            assert code == 0, f"warm-up of {self.name} exited with {code}\n{self.warmup.tail()}"
            self.warmup = None

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def stream(self) -> str:
        return self.env["CLICKSTREAM_STREAM_NAME"]

    @property
    def bucket(self) -> str:
        return self.env["CLICKSTREAM_BUCKET"]

    def client(self, service: str) -> Any:
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 10, "mode": "standard"}, s3={"addressing_style": "path"}),
        )

    def cli(
        self, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clickstream.cli", "--log-format", "text", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def health(self, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
        """`clickstream health` on this state dir: exit code and JSON report."""
        done = self.cli("health", *args, env=env)
        assert done.returncode in (0, 1), f"health failed to run ({done.returncode}): {done.stderr}"
        report: dict[str, Any] = json.loads(done.stdout)
        return done.returncode, report

    def setup(self) -> None:
        done = self.cli("setup")
        assert done.returncode == 0, done.stderr

    def put(self, records: list[tuple[str, bytes]]) -> None:
        """PutRecords (the product's producer, in process) and remember what went in, for the oracle."""
        producer = KinesisProducer(self.client("kinesis"), self.stream, progress=False)
        summary = producer.put(data for _, data in records)
        assert summary.records_sent == len(records)
        self.labelled += records

    def start_worker(self, *args: str, **env: str) -> Worker:
        command = [sys.executable, "-m", "clickstream.cli", "--log-format", "text", "worker", *args]
        log_path = self.workdir / f"worker-{len(self.workers) + 1}.log"
        worker = Worker(command, {**self.env, **env}, log_path)
        self.workers.append(worker)
        return worker

    def run_worker_until_idle(self, timeout: float = 150.0, **env: str) -> None:
        """`worker --until-idle 3` in the foreground: drain, flush, checkpoint, exit 0."""
        worker = self.start_worker("--until-idle", "3", **env)
        code = worker.wait(timeout, "--until-idle run")
        assert code == 0, f"worker --until-idle exited with {code}\n{worker.tail()}"

    def statuses(self) -> dict[str, ShardStatus]:
        return read_statuses(self.state_dir / "status")

    def checkpoints(self) -> dict[str, str]:
        """The KCL's checkpoints by shard, from its DynamoDB lease table (named after the application)."""
        table = self.env["CLICKSTREAM_APPLICATION_NAME"]
        items = self.client("dynamodb").scan(TableName=table, ConsistentRead=True)["Items"]
        return {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in items if "checkpoint" in item}

    def wait_for(self, what: str, probe: Callable[[], T], timeout: float, worker: Worker | None = None) -> T:
        """Poll ``probe`` until it returns something truthy; fail with the statuses and the worker's log."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if worker is not None and not worker.running():
                pytest.fail(
                    f"worker exited with {worker.process.returncode} while waiting for {what}\n"
                    f"{self.describe()}\n{worker.tail()}"
                )
            if time.monotonic() > deadline:
                tail = worker.tail() if worker is not None else ""
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{self.describe()}\n{tail}")
            time.sleep(0.25)

    def describe(self) -> str:
        lines = ["shard statuses:"]
        for shard_id, status in sorted(self.statuses().items()):
            lines.append(
                f"  {shard_id}: phase={status.phase} received={status.records_received} "
                f"flushed={status.records_flushed} buffered={status.buffered_records} flushes={status.flushes} "
                f"retries={status.retries} applied={status.applied_sequence} "
                f"checkpointed={status.checkpointed_sequence} last_error={status.last_error}"
            )
        return "\n".join(lines)

    def all_flushed(self, expected_records: int) -> bool:
        """Every shard reported, nothing buffered, ``expected_records`` flushed in all, all of it checkpointed."""
        statuses = self.statuses()
        return (
            len(statuses) == SHARDS
            and all(s.phase == "processing" and s.buffered_records == 0 for s in statuses.values())
            and sum(s.records_flushed for s in statuses.values()) == expected_records
            and all(s.checkpointed_sequence == s.applied_sequence for s in statuses.values())
        )


# ---------------------------------------------------------------------------------------------------- fixtures
def scenario_of(item: pytest.Item) -> str | None:
    """The pipeline a collected test uses: its class for class scenarios, else the test function itself."""
    if not isinstance(item, pytest.Function) or item.module is not sys.modules[__name__]:
        return None
    if item.cls is not None:
        return item.cls.__name__ if "stuck" in item.fixturenames else None
    return item.originalname if "pipeline" in item.fixturenames else None


def new_pipeline(endpoint: str, workdir: Path, scenario: str) -> Pipeline:
    slug = scenario.removeprefix("test_").replace("_", "-").lower()
    name = ("f-" + slug)[:40].rstrip("-")
    workdir.mkdir(parents=True)
    env = {
        **os.environ,
        **emulator_environment(endpoint, workdir / "state"),
        "CLICKSTREAM_STREAM_NAME": name,
        "CLICKSTREAM_BUCKET": name,
        "CLICKSTREAM_APPLICATION_NAME": name,
        "CLICKSTREAM_WORKER_ID": f"{name}-worker",
        "CLICKSTREAM_STREAM_SHARDS": str(SHARDS),
        "CLICKSTREAM_PREFIX": "rfm",
        "CLICKSTREAM_LOG_FORMAT": "text",
        "CLICKSTREAM_KCL_FAILOVER_TIME_MILLIS": FAILOVER_MILLIS,
    }
    pipeline = Pipeline(endpoint, workdir, name, env)
    pipeline.setup()
    return pipeline


@pytest.fixture(scope="module")
def warm_pipelines(
    emulator_endpoint: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Pipeline]]:
    """A pipeline per selected scenario; all warm-up runs start at once, each scenario awaits its own."""
    scenarios = sorted({s for s in map(scenario_of, request.session.items) if s is not None})
    root = tmp_path_factory.mktemp("failures")
    pipelines = {s: new_pipeline(emulator_endpoint, root / s, s) for s in scenarios}
    try:
        for pipeline in pipelines.values():
            pipeline.warmup = pipeline.start_worker("--until-idle", "1")
        yield pipelines
    finally:
        for pipeline in pipelines.values():
            for worker in pipeline.workers:
                worker.destroy()


@pytest.fixture
def pipeline(warm_pipelines: dict[str, Pipeline], request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    run = warm_pipelines[request.node.originalname]
    run.await_warmup()
    clear_faults(run.endpoint)
    try:
        yield run
    finally:
        clear_faults(run.endpoint)
        for worker in run.workers:
            worker.destroy()


def assert_exact_outputs(run: Pipeline) -> None:
    """Every customer equals the reference; every valid event once in events/; every record counted once."""
    settings = load_settings(bucket=run.bucket, prefix="rfm", stream_name=run.stream)
    root = run.workdir / f"s3-{time.monotonic_ns()}"
    inventory = download_outputs(run.client("s3"), settings, root)
    labelled = run.labelled
    documents = [
        json.loads(data, parse_float=Decimal) for label, data in labelled if label in ("valid", "duplicate")
    ]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    glob = output_glob(root, settings, "events")
    archived = Counter(row[0] for row in con.sql(f"SELECT event_id FROM read_parquet('{glob}')").fetchall())
    valid_ids = {str(doc["event_id"]).lower() for doc in documents}
    assert set(archived) == valid_ids, (
        f"{len(valid_ids - set(archived))} valid events missing, {len(set(archived) - valid_ids)} unexpected"
    )
    repeated = {event_id: n for event_id, n in archived.items() if n > 1}
    assert not repeated, f"{len(repeated)} events archived more than once, e.g. {list(repeated.items())[:3]}"

    commits = inventory.commits
    applied = sum(c.records_in - c.records_skipped for c in commits)
    assert applied == len(labelled), "every record applied exactly once (commit records)"
    assert sum(c.accepted + c.rejected for c in commits) == len(labelled)
    assert sum(c.duplicates for c in commits) == sum(1 for label, _ in labelled if label == "duplicate")
    rejected = con.sql(
        f"SELECT raw_data FROM read_parquet('{output_glob(root, settings, 'errors')}')"
    ).fetchall()
    assert sorted(bytes(row[0]) for row in rejected) == sorted(
        data for label, data in labelled if label.startswith("malformed")
    )

    rows = {
        row["customer_id"]: row
        for row in current_customer_rows(con, output_glob(root, settings, "customer_aggregates"))
        .to_arrow_table()
        .to_pylist()
    }
    mismatches = mismatches_against_reference(rows, documents)
    assert mismatches == [], mismatches[:10]


def seq(value: str | None) -> int:
    """A moto sequence number as an int (-1 for none yet)."""
    return -1 if value is None or not value.isdigit() else int(value)


# ---------------------------------------------------------------------------------------------------- faults
#: An injected fault that outlasts every step of a scenario; the test ends it itself (``end_fault``) once it has seen
#: what it needs, so a slow put cannot shorten the window the checks sample (the ``pipeline`` fixture clears every
#: fault when a test ends, however it ends).
OPEN_ENDED_SECONDS = 900


def end_fault(endpoint: str, fault: dict[str, Any]) -> int:
    """End the injected faults (all of them: ``fault`` is the only one active); returns how many requests ``fault``
    failed."""
    hits = fault_hits(endpoint, fault["id"])
    clear_faults(endpoint)
    return hits


# ---------------------------------------------------------------------------------------------------- a. S3 outage
#: How long the checks sample the outage once the second batch is in the stream.
OUTAGE_SECONDS = 10.0


def test_s3_outage_mid_run_holds_checkpoints_back_and_processing_resumes_by_itself(
    pipeline: Pipeline,
) -> None:
    records = generate(seed=101)
    first, second = records[: len(records) // 2], records[len(records) // 2 :]
    pipeline.env["CLICKSTREAM_FLUSH_MAX_SECONDS"] = "2"
    pipeline.put(first)
    worker = pipeline.start_worker()
    pipeline.wait_for(
        "the first batch to be flushed and checkpointed on every shard",
        lambda: pipeline.all_flushed(len(first)),
        FIRST_FLUSH_TIMEOUT,
        worker,
    )
    before = pipeline.checkpoints()
    assert before == {shard: s.applied_sequence for shard, s in pipeline.statuses().items()}, (
        pipeline.describe()
    )

    retried_before = {shard: status.retries for shard, status in pipeline.statuses().items()}
    fault = set_fault(pipeline.endpoint, "s3", 503, OPEN_ENDED_SECONDS)
    pipeline.put(second)  # Kinesis is fine: the records arrive, buffer and cannot be flushed
    retries: Counter[str] = Counter()
    buffered: Counter[str] = Counter()
    samples = 0
    first_sample = last_sample = time.monotonic()
    # The outage lasts until it is ended below: the checks run through OUTAGE_SECONDS of it after the put (and at
    # least 3 times), however long the put took and however slowly the machine samples.
    while samples < 3 or last_sample - first_sample < OUTAGE_SECONDS:
        checkpoints = pipeline.checkpoints()
        assert checkpoints == before, f"a checkpoint moved during the S3 outage: {before} -> {checkpoints}"
        for shard_id, status in pipeline.statuses().items():
            assert seq(status.checkpointed_sequence) <= seq(status.applied_sequence), pipeline.describe()
            retries[shard_id] = max(retries[shard_id], status.retries)
            buffered[shard_id] = max(buffered[shard_id], status.buffered_records)
        assert worker.running(), worker.tail()
        samples += 1
        last_sample = time.monotonic()
        time.sleep(0.5)
    hits = end_fault(pipeline.endpoint, fault)
    print(f"\nS3 outage: {samples} samples in {last_sample - first_sample:.1f}s; {hits} requests failed")
    assert hits > 0, "the worker's S3 requests met the fault"
    assert set(retries) == set(before), pipeline.describe()
    assert all(retries[shard] > retried_before[shard] for shard in retries), (
        f"every shard retries during the outage: {dict(retries)}, before it {retried_before}"
    )
    assert all(buffered.values()), f"every shard had records waiting during the outage: {dict(buffered)}"

    pipeline.wait_for(
        "processing to resume by itself after the outage",
        lambda: pipeline.all_flushed(len(pipeline.labelled)),
        60.0,
        worker,
    )
    after = pipeline.checkpoints()
    assert after == {shard: s.applied_sequence for shard, s in pipeline.statuses().items()}
    assert all(seq(after[shard]) > seq(before[shard]) for shard in before)
    assert all(s.last_error is None for s in pipeline.statuses().values()), pipeline.describe()

    worker.send(signal.SIGTERM)
    code = worker.wait(STOP_TIMEOUT, "SIGTERM after the outage")
    assert code == 0, worker.tail()
    assert_exact_outputs(pipeline)


# ---------------------------------------------------------------------------------------------------- b. stopping
BUFFERING = {
    "CLICKSTREAM_FLUSH_MAX_SECONDS": "120",
    "CLICKSTREAM_FLUSH_MAX_RECORDS": "1000000",
    "CLICKSTREAM_FLUSH_WHEN_CAUGHT_UP": "false",
}


def wait_until_everything_is_buffered(pipeline: Pipeline, worker: Worker, records: int) -> None:
    def buffered() -> bool:
        statuses = pipeline.statuses()
        return (
            len(statuses) == SHARDS
            and sum(s.records_received for s in statuses.values()) == records
            and all(s.buffered_records > 0 and s.flushes == 0 for s in statuses.values())
        )

    pipeline.wait_for(f"{records} records buffered on every shard", buffered, FIRST_FLUSH_TIMEOUT, worker)


def test_sigterm_flushes_and_checkpoints_every_shard_and_a_second_signal_forces_exit(
    pipeline: Pipeline,
) -> None:
    records = generate(seed=202)
    first, second = records[: len(records) // 2], records[len(records) // 2 :]

    # One SIGTERM: every shard flushes what it buffered and checkpoints it, then the worker exits 0.
    pipeline.put(first)
    worker = pipeline.start_worker(**BUFFERING)
    wait_until_everything_is_buffered(pipeline, worker, len(first))
    assert pipeline.checkpoints() == dict.fromkeys(pipeline.statuses(), "TRIM_HORIZON")
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    code = worker.wait(STOP_TIMEOUT, "a single SIGTERM")
    # exit 0 is the stop in time: past its stop deadline the worker kills the KCL and exits 1
    assert code == 0, worker.tail()
    print(f"\na single SIGTERM: flushed, checkpointed and stopped in {time.monotonic() - signalled:.1f}s")
    statuses = pipeline.statuses()
    assert all(s.flushes == 1 and s.buffered_records == 0 for s in statuses.values()), pipeline.describe()
    assert pipeline.checkpoints() == {shard: s.applied_sequence for shard, s in statuses.items()}
    assert sum(s.records_flushed for s in statuses.values()) == len(first)
    assert_exact_outputs(pipeline)

    # SIGTERM, then a second signal while the shards still flush: forced exit (130 for Ctrl-C, only the second signal
    # gives it; a graceful stop exits 0, or 1 with records unflushed), nothing left running.
    pipeline.put(second)
    worker = pipeline.start_worker(**BUFFERING)
    wait_until_everything_is_buffered(pipeline, worker, len(second))
    tree = descendants(worker.pid)
    assert len(tree) >= 1 + SHARDS, "the JVM and one record processor per shard run below the worker"
    worker.send(signal.SIGTERM)
    # The second signal only once the worker has taken the first: both pending at once, Python would run their
    # handlers in signal-number order, SIGINT's first (and then exit 143 for a forcing SIGTERM).
    pipeline.wait_for(
        "the worker to take the SIGTERM",
        lambda: "received SIGTERM" in worker.log_path.read_text(encoding="utf-8", errors="replace"),
        30.0,
        worker,
    )
    worker.send(signal.SIGINT)
    signalled = time.monotonic()
    code = worker.wait(STOP_TIMEOUT, "SIGTERM + SIGINT")
    assert code == INTERRUPTED, f"exit {code}, not the forced exit by Ctrl-C ({INTERRUPTED})\n{worker.tail()}"
    print(f"SIGTERM + SIGINT: forced exit {code} in {time.monotonic() - signalled:.1f}s")
    survivors = [pid for pid in tree if alive(pid)]
    deadline = time.monotonic() + 5
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = [pid for pid in survivors if alive(pid)]
    assert not survivors, f"processes left behind by the forced exit: {survivors}"

    # A restart on the same state dir gets the unflushed records again and ends complete, exactly once.
    pipeline.run_worker_until_idle(CLICKSTREAM_FLUSH_MAX_SECONDS="2")
    assert_exact_outputs(pipeline)


# ---------------------------------------------------------------------------------------------------- c. stuck shard
WORKER_STUCK_SECONDS = 10.0
#: The probe judges with a shorter threshold than the worker, so "unhealthy while the worker still runs" does not
#: race the worker's own check (every 5 s), which ends it with exit code 3.
PROBE_STUCK_SECONDS = 4.0


class TestStuckShard:
    """A long S3 outage: records wait, nothing can be flushed; health says so and the worker gives up (exit 3)."""

    @pytest.fixture(scope="class")
    @classmethod
    def stuck(cls, warm_pipelines: dict[str, Pipeline]) -> Iterator[dict[str, Any]]:
        pipeline = warm_pipelines[cls.__name__]
        pipeline.await_warmup()
        seen: dict[str, Any] = {"pipeline": pipeline}
        clear_faults(pipeline.endpoint)
        try:
            records = generate(seed=303)
            first, second = records[: len(records) // 2], records[len(records) // 2 :]
            pipeline.env["CLICKSTREAM_FLUSH_MAX_SECONDS"] = "2"
            pipeline.env["CLICKSTREAM_STUCK_SHARD_SECONDS"] = str(WORKER_STUCK_SECONDS)
            pipeline.put(first)
            worker = pipeline.start_worker()
            pipeline.wait_for(
                "the first batch to be flushed and checkpointed on every shard",
                lambda: pipeline.all_flushed(len(first)),
                FIRST_FLUSH_TIMEOUT,
                worker,
            )
            seen["healthy_before"] = pipeline.health()
            seen["checkpoints_before"] = pipeline.checkpoints()

            set_fault(pipeline.endpoint, "s3", 503, 120)
            injected = time.monotonic()
            pipeline.put(second)

            def unhealthy() -> dict[str, Any] | None:
                code, report = pipeline.health("--stuck-after", str(PROBE_STUCK_SECONDS))
                return report if code == 1 and worker.running() else None

            seen["probe"] = pipeline.wait_for(
                "`clickstream health` to report stuck shards", unhealthy, 30.0, worker
            )
            seen["exit_code"] = worker.wait(WORKER_STUCK_SECONDS + 25.0, "its own stuck-shard check")
            seen["exit_seconds"] = time.monotonic() - injected
            seen["log"] = worker.tail(20_000)
            seen["checkpoints_stuck"] = pipeline.checkpoints()
            statuses = pipeline.statuses()
            seen["statuses"] = statuses
            # The report of the frozen state once every shard's processor has been inside one call for too long.
            last_call = max(s.last_call_at or 0.0 for s in statuses.values())
            time.sleep(max(0.0, last_call + WORKER_STUCK_SECONDS + 0.5 - time.time()))
            seen["after_exit"] = pipeline.health()

            clear_faults(pipeline.endpoint)
            pipeline.run_worker_until_idle()
            yield seen
        finally:
            clear_faults(pipeline.endpoint)
            for worker in pipeline.workers:
                worker.destroy()

    def test_health_is_fine_before_and_reports_the_stuck_shards_while_the_worker_runs(
        self, stuck: dict[str, Any]
    ) -> None:
        assert stuck["healthy_before"][0] == 0, stuck["healthy_before"]
        problems = stuck["probe"]["problems"]
        assert [p for p in problems if p.startswith("shardId-")], stuck["probe"]

    def test_the_worker_exits_3_by_itself_and_checkpoints_nothing_meanwhile(
        self, stuck: dict[str, Any]
    ) -> None:
        assert stuck["exit_code"] == 3, stuck["log"][-5000:]
        assert "stuck shards, exiting" in stuck["log"], stuck["log"][-5000:]
        # stuck after WORKER_STUCK_SECONDS without a flush, not before: the records waiting arrived after the fault
        # (no upper bound: the time also holds the put, the worker's check every 5 s, the KCL's poll, the JVM's exit)
        assert stuck["exit_seconds"] >= WORKER_STUCK_SECONDS, stuck["exit_seconds"]
        assert stuck["checkpoints_stuck"] == stuck["checkpoints_before"]
        statuses = stuck["statuses"]
        assert all(s.retries > 0 and s.buffered_records > 0 for s in statuses.values()), statuses
        assert all("ServiceUnavailable" in (s.last_error or "") for s in statuses.values()), statuses
        code, report = stuck["after_exit"]
        assert code == 1, report
        assert [p for p in report["problems"] if p.startswith("shardId-")], report

    def test_a_restart_after_the_outage_completes_the_outputs_exactly_once(
        self, stuck: dict[str, Any]
    ) -> None:
        assert_exact_outputs(stuck["pipeline"])

    def test_the_stuck_report_names_the_shards_last_error(self, stuck: dict[str, Any]) -> None:
        _, report = stuck["after_exit"]
        shard_problems = [p for p in report["problems"] if p.startswith("shardId-")]
        assert shard_problems, report
        assert all("ServiceUnavailable" in problem for problem in shard_problems), report


# ---------------------------------------------------------------------------------------------------- d. throttling
#: How long the checks sample the GetRecords throttling once the second batch is in the stream.
KINESIS_THROTTLE_SECONDS = 5.0


def test_kinesis_and_dynamodb_throttling_is_ridden_out(pipeline: Pipeline) -> None:
    records = generate(seed=404)
    first, second = records[: len(records) // 2], records[len(records) // 2 :]
    pipeline.env["CLICKSTREAM_FLUSH_MAX_SECONDS"] = "2"
    # DynamoDB is throttled for 4 s below: keep the emulator default lease time, so leases outlive it.
    pipeline.env["CLICKSTREAM_KCL_FAILOVER_TIME_MILLIS"] = "10000"
    pipeline.put(first)
    worker = pipeline.start_worker()
    pipeline.wait_for(
        "the first batch to be flushed and checkpointed on every shard",
        lambda: pipeline.all_flushed(len(first)),
        FIRST_FLUSH_TIMEOUT,
        worker,
    )

    # GetRecords throttled until it is ended below: records put now cannot be read meanwhile. The checks run through
    # KINESIS_THROTTLE_SECONDS of it after the put (and at least 3 times), however long the put took.
    kinesis_fault = set_fault(
        pipeline.endpoint, "kinesis", 400, OPEN_ENDED_SECONDS, operations=["GetRecords"]
    )
    pipeline.put(second)
    samples = 0
    first_sample = last_sample = time.monotonic()
    while samples < 3 or last_sample - first_sample < KINESIS_THROTTLE_SECONDS:
        received = sum(s.records_received for s in pipeline.statuses().values())
        assert received == len(first), "no record can arrive while GetRecords is throttled"
        samples += 1
        last_sample = time.monotonic()
        time.sleep(0.25)
    kinesis_hits = end_fault(pipeline.endpoint, kinesis_fault)
    assert kinesis_hits > 0, "the KCL's GetRecords calls met the throttling"
    # Then DynamoDB throttled (lease renewals, checkpoints) while the second batch is flushed and checkpointed.
    dynamodb_fault = set_fault(pipeline.endpoint, "dynamodb", 400, 4)

    pipeline.wait_for(
        "every record to be flushed and checkpointed after the throttling",
        lambda: pipeline.all_flushed(len(pipeline.labelled)),
        90.0,
        worker,
    )
    dynamodb_hits = fault_hits(pipeline.endpoint, dynamodb_fault["id"])
    print(f"\nthrottling failed {kinesis_hits} GetRecords calls and {dynamodb_hits} DynamoDB calls")
    assert dynamodb_hits > 0, "the KCL's DynamoDB calls met the throttling"
    statuses = pipeline.statuses()
    assert pipeline.checkpoints() == {shard: s.applied_sequence for shard, s in statuses.items()}
    worker.send(signal.SIGTERM)
    code = worker.wait(STOP_TIMEOUT, "SIGTERM after the throttling")
    assert code == 0, worker.tail()
    assert_exact_outputs(pipeline)


# ---------------------------------------------------------------------------------------------------- fixed bugs
# Both were found with the real KCL; they are pinned here, as regression tests, on the product's own status files
# and checks, so they cost no KCL run.


@pytest.mark.parametrize(("waited", "exit_code"), [(1, 0), (120, 1)])
def test_a_shard_waking_up_after_a_quiet_period_is_judged_by_how_long_its_records_waited(
    tmp_path: Path, waited: int, exit_code: int
) -> None:
    """The last flush was 300 s ago, before the quiet period: the stuck clock starts when records began to wait.

    (Minutes, not seconds: the health command's own start on a loaded machine must not move the verdict.)"""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    now = time.time()
    write_heartbeat(state_dir, Heartbeat(pid=os.getpid(), phase="running", started_at=now))
    writer = StatusWriter(state_dir / "status")
    for shard_id, buffered in (("shardId-000000000000", 119), ("shardId-000000000001", 105)):
        # What a processor writes `waited` s after records arrive on a shard whose last flush was 300 s ago.
        status = ShardStatus(
            shard_id=shard_id,
            pid=os.getpid(),
            phase="processing",
            records_received=800 + buffered,
            records_flushed=800,
            flushes=1,
            buffered_records=buffered,
            millis_behind_latest=0,
            applied_sequence="800",
            checkpointed_sequence="800",
            last_call_at=now,
            last_record_at=now - 1,
            last_flush_at=now - 300,
            last_checkpoint_at=now - 300,
            started_at=now - 600,
            waiting_since=now - waited,
        )
        writer.write(status, force=True)
    env = {
        **os.environ,
        "CLICKSTREAM_STATE_DIR": str(state_dir),
        "CLICKSTREAM_STUCK_SHARD_SECONDS": "60",
        "CLICKSTREAM_FLUSH_MAX_SECONDS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "clickstream.cli", "health"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == exit_code, f"records have waited {waited} s (stuck after 60 s): {done.stdout}"


def test_until_idle_does_not_call_the_stream_drained_while_the_shards_are_not_being_polled() -> None:
    now = time.time()
    shards: list[dict[str, Any]] = [
        {"ShardId": f"shardId-00000000000{i}", "SequenceNumberRange": {"StartingSequenceNumber": "1"}}
        for i in range(2)
    ]
    statuses = {
        shard["ShardId"]: ShardStatus(
            shard_id=shard["ShardId"],
            pid=1,
            phase="processing",
            records_received=400,
            records_flushed=400,
            flushes=1,
            millis_behind_latest=0,
            applied_sequence="400",
            checkpointed_sequence="400",
            last_call_at=now - 10,  # polled every 250 ms while GetRecords works; not once in the last 10 s
            last_record_at=now - 12,
            last_flush_at=now - 10,
            started_at=now - 30,
        )
        for shard in shards
    }
    assert not IdleCheck(3.0).drained(shards, statuses, now)
