"""Chaos and multi-worker tests through the real KCL MultiLangDaemon (Java) and the embedded AWS endpoint.

1. ``test_random_kill9_of_the_worker_keeps_exactly_once``: a seeded RNG (``CHAOS_SEED`` to reproduce, ``CHAOS_TRIALS``
   for more trials) kills ``clickstream worker`` with SIGKILL at random moments while the producer is putting load:
   the supervisor, the Java daemon and every Python record processor die at once, as on OOM or host loss. After each
   kill the worker restarts with its local state kept or deleted (restore from S3); the last restart drains the stream
   with ``--until-idle``. The outputs must be exactly what one clean run gives.
2. ``test_two_workers_share_the_stream_and_survive_a_kill9``: two workers (own ids, own state dirs, one application)
   balance the leases of a 4-shard stream; one is killed with SIGKILL and the other takes over its shards (restoring
   their state from S3, it never had it); more load; drain; the outputs are again exact.
3. ``test_survivor_restart_with_a_pending_handoff_to_the_dead_worker_resumes_every_shard`` (xfail, a bug): restarting
   the survivor while a lease handoff to the dead worker is pending leaves that shard unprocessed.

1 and 2 compare every customer with tests/reference.py and check the archive, the errors and the commit records.
Worker logs are in the test's tmp_path (``<worker>.log``); on a failure their tails are printed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
from botocore.config import Config

from clickstream.demo import emulator_environment
from clickstream.outputs import OUTPUTS, current_customer_rows, download_outputs, output_glob
from consumer.s3_sink import read_commit_records
from consumer.status import ShardStatus, read_statuses
from producer.generator import ClickstreamGenerator
from runtime.settings import Settings
from schemas.control import CommitRecord, FlushIntent
from schemas.layout import OutputLayout
from tests.reference import reference_aggregates

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
PREFIX = "rfm"


# ------------------------------------------------------------------------------------------------ processes
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses, so split after the last ')'
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(rest[1]), rest[0])
    return table


def _descendants(pid: int) -> list[int]:
    table = _proc_table()
    children: dict[int, list[int]] = defaultdict(list)
    for child, (parent, _) in table.items():
        children[parent].append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    entry = _proc_table().get(pid)
    return entry is not None and entry[1] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Worker:
    """One `clickstream worker` process (Python supervisor -> Java MultiLangDaemon -> one Python child per shard)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, until_idle: float | None = None):
        self.name = name
        self.env = env
        self.log_path = log_path
        self.state_dir = Path(env["CLICKSTREAM_STATE_DIR"])
        args = ["worker"] + (["--until-idle", str(until_idle)] if until_idle else [])
        with log_path.open("ab") as log:
            log.write(f"----- {time.strftime('%H:%M:%S')} start {name}: {' '.join(args)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "clickstream.cli", "--log-format", "json", *args],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()

    def java_pids(self) -> list[int]:
        return [pid for pid in _descendants(self.process.pid) if "MultiLangDaemon" in _cmdline(pid)]

    def processor_pids(self) -> list[int]:
        return [pid for pid in _descendants(self.process.pid) if "consumer.record_processor" in _cmdline(pid)]

    def statuses(self) -> dict[str, ShardStatus]:
        return read_statuses(self.state_dir / "status")

    def processing(self) -> set[str]:
        return {shard for shard, status in self.statuses().items() if status.phase == "processing"}

    def kill9(self) -> int:
        """SIGKILL the supervisor, the JVM's process group (the daemon and every record processor) and any other
        descendant, all at once; wait until none of them runs. Returns how many processes were killed."""
        tree = _descendants(self.process.pid)
        groups = set()
        for pid in self.java_pids():  # the JVM runs in its own session, so in its own process group
            with suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        os.kill(self.process.pid, signal.SIGKILL)
        for group in groups:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in tree):
            assert time.monotonic() < deadline, f"{self.name}: processes survived SIGKILL: {tree}"
            time.sleep(0.05)
        return 1 + len(tree)

    def stop(self) -> None:
        """Best-effort cleanup: kill whatever of this worker still runs (never touches other processes)."""
        if self.process.poll() is None:
            self.kill9()
        else:
            for pid in [p for p in self.java_pids() if _alive(p)]:
                os.killpg(os.getpgid(pid), signal.SIGKILL)

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(line[:400] for line in text[-lines:])


class Harness:
    """Owns the processes a test starts: kills them at the end, prints log tails when the test fails."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workers: list[Worker] = []
        self.producers: list[subprocess.Popen[bytes]] = []
        # AF_UNIX socket paths are short: the worker's log relay lives under $TMPDIR, which SIGKILL leaks.
        self.tmpdir = Path(tempfile.mkdtemp(prefix="chaos-"))

    def env(self, endpoint: str, state_dir: Path, **names: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
        return {
            **base,
            **emulator_environment(endpoint, state_dir),
            "CLICKSTREAM_FLUSH_MAX_SECONDS": "2",
            "CLICKSTREAM_FLUSH_MAX_RECORDS": "1000",
            "CLICKSTREAM_KCL_MAX_RECORDS": "500",  # a restart's backlog comes in several flushes, not one
            "CLICKSTREAM_KCL_FAILOVER_TIME_MILLIS": "10000",
            "CLICKSTREAM_LOG_FORMAT": "json",
            "TMPDIR": str(self.tmpdir),
            **{f"CLICKSTREAM_{key.upper()}": value for key, value in names.items()},
        }

    def worker(self, name: str, env: dict[str, str], until_idle: float | None = None) -> Worker:
        worker = Worker(name, env, self.workdir / f"{name}.log", until_idle)
        self.workers.append(worker)
        return worker

    def cli(self, *args: str, env: dict[str, str], timeout: float, log: str) -> None:
        with (self.workdir / log).open("ab") as out:
            result = subprocess.run(
                [sys.executable, "-m", "clickstream.cli", "--log-format", "text", *args],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        assert result.returncode == 0, f"clickstream {args[0]} failed:\n{_tail(self.workdir / log)}"

    def produce_in_background(self, jsonl: Path, env: dict[str, str], rate: float | None, log: str) -> None:
        args = ["produce", "--input", str(jsonl), "--no-progress"] + (["--rate", str(rate)] if rate else [])
        with (self.workdir / log).open("ab") as out:
            self.producers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "clickstream.cli", "--log-format", "text", *args],
                    env=env,
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def wait_producers(self, timeout: float) -> None:
        for producer in self.producers:
            code = producer.wait(timeout=timeout)
            assert code == 0, f"producer failed with {code}:\n{_tail(self.workdir / 'producer.log')}"

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for producer in self.producers:
            if producer.poll() is None:
                producer.kill()
                producer.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def dump_logs(self) -> None:
        seen = set()
        for worker in self.workers:
            if worker.log_path in seen:
                continue
            seen.add(worker.log_path)
            print(f"\n===== tail of {worker.log_path} =====\n{worker.tail()}")
            problems = [
                line[:400]
                for line in worker.log_path.read_text(errors="replace").splitlines()
                if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line or '"level": "WARNING"' in line
            ]
            if problems:
                print(f"----- warnings/errors in {worker.log_path.name} (last 30) -----")
                print("\n".join(problems[-30:]))
        for extra in sorted(self.workdir.glob("producer*.log")):
            print(f"\n===== tail of {extra} =====\n{_tail(extra)}")


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(line[:400] for line in path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def _harness(workdir: Path) -> Iterator[Harness]:
    harness = Harness(workdir)
    try:
        yield harness
    except BaseException:
        harness.dump_logs()
        raise
    finally:
        harness.close()


def _wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> float:
    """Poll until ``predicate()`` is truthy; returns the seconds waited, fails with ``what`` on timeout."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ data and checks
@dataclass
class Dataset:
    labelled: list[tuple[str, bytes]]
    jsonl: Path

    def split(self, fraction: float) -> tuple[Path, Path]:
        """Two JSONL files with the first ``fraction`` of the records and the rest, for two produce runs."""
        cut = int(len(self.labelled) * fraction)
        first, second = self.jsonl.with_suffix(".part1.jsonl"), self.jsonl.with_suffix(".part2.jsonl")
        first.write_bytes(b"".join(data + b"\n" for _, data in self.labelled[:cut]))
        second.write_bytes(b"".join(data + b"\n" for _, data in self.labelled[cut:]))
        return first, second


#: Simulated history in days. Live traffic touches one or two event hours per flush; a 60-day history squeezed into
#: 30 s of producing would make every flush write hundreds of events/ files (one per event hour) and take seconds.
DAYS = 4


def _generate(harness: Harness, env: dict[str, str], customers: int, events: int, seed: int) -> Dataset:
    """`clickstream generate` to JSONL; the labels come from the same generator in process (same bytes)."""
    jsonl = harness.workdir / "events.jsonl"
    options = [
        "--customers",
        str(customers),
        "--events",
        str(events),
        "--seed",
        str(seed),
        "--days",
        str(DAYS),
    ]
    options += ["--duplicate-rate", "0.02", "--malformed-rate", "0.005"]
    harness.cli("generate", *options, "--output", str(jsonl), env=env, timeout=120, log="generate.log")
    generator = ClickstreamGenerator(
        customers, events, seed, days=DAYS, duplicate_rate=0.02, malformed_rate=0.005
    )
    labelled = list(generator.records())
    assert jsonl.read_bytes() == b"".join(data + b"\n" for _, data in labelled), "CLI and generator disagree"
    return Dataset(labelled, jsonl)


def _clients(endpoint: str) -> dict[str, Any]:
    config = Config(retries={"max_attempts": 5, "mode": "adaptive"}, s3={"addressing_style": "path"})
    return {
        service: boto3.client(
            service,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )
        for service in ("s3", "dynamodb")
    }


def _commit_records(s3: Any, bucket: str) -> list[CommitRecord]:
    return read_commit_records(s3, bucket, OutputLayout(PREFIX))


def _torn_flushes(s3: Any, bucket: str) -> list[str]:
    """Shards with an intent whose position holds no commit: a flush the kill interrupted between steps 2 and 4."""
    layout = OutputLayout(PREFIX)
    torn = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{layout.control_prefix}intents/"
    ):
        for obj in page.get("Contents", []):
            intent = FlushIntent.from_json(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            commit = layout.commit_key(intent.shard_id, intent.previous)
            if not s3.list_objects_v2(Bucket=bucket, Prefix=commit).get("KeyCount"):
                torn.append(intent.shard_id)
    return torn


def _valid_documents(labelled: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [
        json.loads(data, parse_float=Decimal) for label, data in labelled if label in ("valid", "duplicate")
    ]


def _verify_outputs(s3: Any, bucket: str, labelled: list[tuple[str, bytes]], root: Path) -> dict[str, int]:
    """Every check of an exactly-once run; collects all problems before failing. Returns a few counts."""
    settings = Settings(bucket=bucket, prefix=PREFIX, stream_name="unused")
    inventory = download_outputs(s3, settings, root)
    commits = inventory.commits
    problems: list[str] = []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    # commit records: each balances; together they cover every record once; ranges never overlap within a shard
    for commit in commits:
        if commit.accepted + commit.rejected != commit.records_in - commit.records_skipped:
            problems.append(f"commit does not balance: {commit}")
    records_applied = sum(c.records_in - c.records_skipped for c in commits)
    if records_applied != len(labelled):
        problems.append(f"commits applied {records_applied} records, the stream holds {len(labelled)}")
    duplicates = sum(1 for label, _ in labelled if label == "duplicate")
    if sum(c.duplicates for c in commits) != duplicates:
        problems.append(
            f"commits count {sum(c['duplicates'] for c in commits)} duplicates, expected {duplicates}"
        )
    by_shard: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    for c in commits:
        by_shard[c.shard_id].append(
            (
                *c.first.sort_key(),
                *c.last.sort_key(),
            )
        )
    for shard, ranges in by_shard.items():
        ranges.sort()
        for before, after in pairwise(ranges):
            if (after[0], after[1]) <= (before[2], before[3]):
                problems.append(f"{shard}: committed flushes overlap: {before} and {after}")

    # no orphans: every data object belongs to a committed flush
    committed_files = {key for c in commits for keys in c.files.values() for key in keys}
    for output in OUTPUTS:
        folder = root / settings.output_prefix(output)
        for path in folder.rglob("*.parquet") if folder.exists() else []:
            key = str(path.relative_to(root))
            if key not in committed_files:
                problems.append(f"data object without a commit record: {key}")

    # the events archive holds each valid event exactly once
    archived = Counter(
        row[0]
        for row in con.sql(
            f"SELECT event_id FROM read_parquet('{output_glob(root, settings, 'events')}')"
        ).fetchall()
    )
    valid_ids = {str(doc["event_id"]).lower() for doc in _valid_documents(labelled)}
    missing, extra = valid_ids - set(archived), set(archived) - valid_ids
    repeated = {event: n for event, n in archived.items() if n > 1}
    if missing or extra or repeated:
        problems.append(
            f"events archive: {len(missing)} missing, {len(extra)} unexpected, {len(repeated)} repeated "
            f"(e.g. {sorted(missing)[:3]} {sorted(extra)[:3]} {sorted(repeated.items())[:3]})"
        )

    # every malformed record is in errors/ exactly once, byte for byte
    malformed = sorted(data for label, data in labelled if label.startswith("malformed"))
    rejected = sorted(
        bytes(row[0])
        for row in con.sql(
            f"SELECT raw_data FROM read_parquet('{output_glob(root, settings, 'errors')}')"
        ).fetchall()
    )
    if rejected != malformed:
        over = Counter(rejected) - Counter(malformed)
        under = Counter(malformed) - Counter(rejected)
        problems.append(
            f"errors/: {len(rejected)} rows for {len(malformed)} malformed records "
            f"({sum(under.values())} missing, {sum(over.values())} extra or repeated)"
        )

    # every customer's current row equals the reference
    rows = {
        row["customer_id"]: row
        for row in current_customer_rows(con, output_glob(root, settings, "customer_aggregates"))
        .to_arrow_table()
        .to_pylist()
    }
    expected = reference_aggregates(_valid_documents(labelled))
    if set(rows) != set(expected):
        problems.append(
            f"customers: {len(set(expected) - set(rows))} missing, {len(set(rows) - set(expected))} unexpected"
        )
    mismatches = []
    for customer, want in expected.items():
        got = rows.get(customer)
        if got is None:
            continue
        for column, value in want.items():
            if column == "T":
                if value is not None:
                    t = (got["as_of"].date() - want["first_purchase_at"].date()).days
                    if got["T"] != t:
                        mismatches.append((customer, "T", got["T"], t))
                continue
            if isinstance(value, float):
                same = got[column] is not None and abs(got[column] - value) <= 1e-9 * max(1.0, abs(value))
            else:
                same = got[column] == value
            if not same:
                mismatches.append((customer, column, got[column], value))
        if got["version"] != want["events"]:
            mismatches.append((customer, "version", got["version"], want["events"]))
        if got["as_of"] < got["last_event_at"]:
            mismatches.append((customer, "as_of", got["as_of"], got["last_event_at"]))
    if mismatches:
        problems.append(f"{len(mismatches)} aggregate mismatches, e.g. {mismatches[:5]}")

    assert problems == [], "\n".join(problems)
    return {
        "commits": len(commits),
        "customers": len(rows),
        "events": sum(archived.values()),
        "rejected": len(rejected),
        "skipped": sum(c.records_skipped for c in commits),
    }


def _log_lines(path: Path, needle: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if needle in line and line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


# ------------------------------------------------------------------------------------------------ test 1: chaos
@dataclass
class Trial:
    number: int
    mode: str
    delay: float
    keep_state: bool
    kill_after: float = 0.0
    processors: int = 0
    flushes_seen: int = 0
    reporting: int = 0
    commits: int = 0
    new_commits: int = 0
    records_durable: int = 0
    torn: list[str] = field(default_factory=list)
    restart_seconds: float | None = None


#: When a trial kills, counted from the moment the run's first record processor appears:
#: "startup" - while processors initialize (discard an uncommitted flush, restore from S3) or see their first records;
#: "running" - somewhere in the middle of processing and flushing;
#: "after-flush" - just after a shard reported a completed flush, when other shards are likely mid-flush.
KILL_MODES = (("startup", 0.25), ("running", 0.45), ("after-flush", 0.30))


def _plan(rng: random.Random, trials: int) -> list[Trial]:
    # Both "kept" and "deleted" local state happen at least once when there are two or more trials.
    keeps = [True, False][:trials] + [rng.random() < 0.5 for _ in range(trials - 2)]
    rng.shuffle(keeps)
    plan = []
    for number, keep in enumerate(keeps, start=1):
        mode = rng.choices([m for m, _ in KILL_MODES], weights=[w for _, w in KILL_MODES])[0]
        delay = {"startup": rng.uniform(0.0, 1.5), "running": rng.uniform(2.0, 12.0)}.get(
            mode, rng.uniform(0.0, 0.6)
        )
        plan.append(Trial(number, mode, round(delay, 2), keep))
    return plan


def _run_trials(
    harness: Harness,
    env: dict[str, str],
    plan: list[Trial],
    dataset: Dataset,
    s3: Any,
    bucket: str,
    state_dir: Path,
    started: float,
) -> int:
    """Start, SIGKILL and restart the worker as planned; the last restart drains. Returns its exit code."""
    worker = harness.worker("worker", env)
    commits_before = 0
    for trial in plan:
        _wait_for(
            f"a record processor of worker run {trial.number}",
            lambda w=worker: w.processor_pids() or w.process.poll() is not None,
            timeout=120,
        )
        assert worker.process.poll() is None, f"worker exited with {worker.process.returncode}"
        if trial.number == 1:
            # ~30 s of load from when the KCL holds its leases, so the kills land while records flow.
            harness.produce_in_background(dataset.jsonl, env, rate=400, log="producer.log")
        else:
            plan[trial.number - 2].restart_seconds = round(time.monotonic() - worker.started, 1)
        if trial.mode == "after-flush":
            with suppress(AssertionError):  # no flush within the bound: kill anyway
                _wait_for(
                    "a flush",
                    lambda w=worker: any(s.flushes for s in w.statuses().values()),
                    timeout=20,
                    interval=0.05,
                )
        time.sleep(trial.delay)
        trial.processors = len(worker.processor_pids())
        statuses = worker.statuses()
        trial.reporting = sum(1 for s in statuses.values() if s.phase == "processing")
        trial.flushes_seen = sum(s.flushes for s in statuses.values())
        trial.kill_after = round(time.monotonic() - started, 1)
        worker.kill9()
        commits = _commit_records(s3, bucket)
        trial.commits = len(commits)
        trial.new_commits = len(commits) - commits_before
        commits_before = len(commits)
        trial.records_durable = sum(c.records_in - c.records_skipped for c in commits)
        trial.torn = _torn_flushes(s3, bucket)
        if not trial.keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
        if trial.number < len(plan):
            worker = harness.worker("worker", env)
    harness.wait_producers(timeout=120)
    drain = harness.worker("worker", env, until_idle=3)
    _wait_for(
        "a record processor of the draining worker",
        lambda: drain.processor_pids() or drain.process.poll() is not None,
        timeout=120,
    )
    plan[-1].restart_seconds = round(time.monotonic() - drain.started, 1)
    return drain.process.wait(timeout=240)


def _print_trials(plan: list[Trial]) -> None:
    print(
        "trial | kill mode   | delay s | killed at s | processors (reporting) | flushes this run | commits (new) | "
        "records durable | torn flush (intent, no commit) | local state | restart->processor s"
    )
    for t in plan:
        if not t.kill_after:
            print(f"{t.number:5} | {t.mode:11} | {t.delay:7} | not reached")
            continue
        restart = "-" if t.restart_seconds is None else t.restart_seconds
        processors = f"{t.processors} ({t.reporting})"
        print(
            f"{t.number:5} | {t.mode:11} | {t.delay:7} | {t.kill_after:11} | {processors:22} | "
            f"{t.flushes_seen:16} | {f'{t.commits} ({t.new_commits})':13} | {t.records_durable:15} | "
            f"{','.join(t.torn) or '-':30} | {'kept' if t.keep_state else 'deleted':11} | {restart}"
        )


def test_random_kill9_of_the_worker_keeps_exactly_once(emulator_endpoint: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    trials = int(os.environ.get("CHAOS_TRIALS", "3"))
    print(f"\nchaos: CHAOS_SEED={seed} CHAOS_TRIALS={trials} (set these to reproduce the same decisions)")
    rng = random.Random(seed)
    names = {"stream_name": "chaos-kill", "bucket": "chaos-kill-out", "application_name": "chaos-kill-rfm"}
    shards = rng.choice((2, 3))
    plan = _plan(rng, trials)
    state_dir = tmp_path / "state"
    s3 = _clients(emulator_endpoint)["s3"]

    with _harness(tmp_path) as harness:
        env = harness.env(
            emulator_endpoint,
            state_dir,
            worker_id="chaos-worker",
            stream_shards=str(shards),
            snapshot_every_flushes="2",  # restores then start from a snapshot, and kills can hit a snapshot write
            **names,
        )
        harness.cli("setup", env=env, timeout=60, log="setup.log")
        dataset = _generate(harness, env, customers=200, events=12_000, seed=rng.randrange(1, 10**6))
        started = time.monotonic()
        try:
            code = _run_trials(harness, env, plan, dataset, s3, names["bucket"], state_dir, started)
        finally:  # the table also when a trial fails: it says what had happened before
            print(
                f"\nchaos summary: seed {seed}, {shards} shards, {len(dataset.labelled)} records, "
                f"{len(plan)} SIGKILLs planned, {time.monotonic() - started:.0f}s since the first start"
            )
            _print_trials(plan)
            log = tmp_path / "worker.log"
            restores = _log_lines(log, "restored shard state")
            discards = _log_lines(log, "files of an uncommitted flush")
            print(f"restores logged: {len(restores)}; uncommitted flushes discarded: {len(discards)}")
            for entry in restores + discards:
                print(f"  {entry.get('shard_id')}: {entry['message'][:160]}")
        assert code == 0, f"the draining worker exited with {code}"
        counts = _verify_outputs(s3, names["bucket"], dataset.labelled, tmp_path / "s3")
        print(f"verified: {counts}")


# ------------------------------------------------------------------------------------------------ test 2: two workers
DUO_SHARDS = frozenset(f"shardId-{i:012d}" for i in range(4))


def _leader(dynamodb: Any, application: str) -> str | None:
    try:
        item = dynamodb.get_item(TableName=f"{application}-CoordinatorState", Key={"key": {"S": "Leader"}})
    except dynamodb.exceptions.ResourceNotFoundException:
        return None
    owner = item.get("Item", {}).get("ownerName", {}).get("S")
    return str(owner) if owner else None


def _leases(dynamodb: Any, application: str) -> dict[str, dict[str, str]]:
    """shard -> the lease's owner fields, for failure messages."""
    items = dynamodb.scan(TableName=application)["Items"]
    fields = ("leaseOwner", "checkpointOwner", "leaseCounter", "checkpoint")
    return {
        item["leaseKey"]["S"]: {k: next(iter(v.values())) for k, v in item.items() if k in fields}
        for item in items
    }


@dataclass
class DuoRun:
    harness: Harness
    clients: dict[str, Any]
    names: dict[str, str]
    envs: dict[str, dict[str, str]]
    dataset: Dataset
    victim: str
    survivor: str
    workdir: Path


@pytest.fixture(scope="module")
def duo_run(emulator_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuoRun]:
    """Two workers (own ids and state dirs, one application) on a 4-shard stream; SIGKILL one once the leases are
    balanced; the survivor takes over, gets more load and drains with --until-idle (it never restarts)."""
    workdir = tmp_path_factory.mktemp("duo")
    names = {"stream_name": "chaos-duo", "bucket": "chaos-duo-out", "application_name": "chaos-duo-rfm"}
    clients = _clients(emulator_endpoint)
    kill_leader = os.environ.get("CHAOS_KILL_LEADER") == "1"
    with _harness(workdir) as harness:
        envs = {
            name: harness.env(
                emulator_endpoint, workdir / f"state-{name}", worker_id=name, stream_shards="4", **names
            )
            for name in ("worker-a", "worker-b")
        }
        env = envs["worker-a"]
        harness.cli("setup", env=env, timeout=60, log="setup.log")
        dataset = _generate(harness, env, customers=200, events=10_000, seed=4242)
        first, second = dataset.split(0.6)
        started = time.monotonic()
        # --until-idle needs every shard of the stream quiet in the worker's own status dir: while the leases are
        # shared neither worker can stop; the survivor stops once it has drained all four.
        workers = {name: harness.worker(name, worker_env, until_idle=8) for name, worker_env in envs.items()}
        _wait_for(
            "a first record processor",
            lambda: any(w.processor_pids() for w in workers.values()),
            timeout=120,
        )
        # ~45 s of load, so that no worker holding every lease before the balancing goes idle and stops.
        harness.produce_in_background(first, env, rate=140, log="producer.log")

        def balanced() -> bool:
            held = {name: w.processing() for name, w in workers.items()}
            exited = {
                name: w.process.returncode for name, w in workers.items() if w.process.poll() is not None
            }
            assert not exited, f"a worker exited before the leases were balanced: {exited}, held {held}"
            return all(held.values()) and set().union(*held.values()) == DUO_SHARDS

        waited = _wait_for("both workers to hold leases (each >= 1, all 4 shards covered)", balanced, 150)
        held = {name: sorted(w.processing()) for name, w in workers.items()}
        print(f"\nbalanced {time.monotonic() - started:.0f}s after start (waited {waited:.0f}s): {held}")
        time.sleep(3)  # both process and flush for a while

        leader = _leader(clients["dynamodb"], names["application_name"])
        # Killing the leader stalls lease assignment for the KCL leader lock's 2-minute lease (DynamoDB lock
        # client default, not configurable through the multilang properties); CHAOS_KILL_LEADER=1 does it anyway.
        victim = leader if kill_leader and leader else next(n for n in workers if n != leader)
        survivor = next(name for name in workers if name != victim)
        taken = workers[victim].processing()
        print(f"leader {leader}; SIGKILL {victim} holding {sorted(taken)}; survivor {survivor}")
        workers[victim].kill9()

        # For up to 2 x workerMetricsReporterFreqInMillis (60 s) after the kill the KCL's assignment still counts the
        # dead worker as active and hands it leases (graceful handoff), which then expire again: takeover can take
        # 15-70 s although the lease failover time is 10 s.
        takeover = _wait_for(
            f"{survivor} to process all 4 shards after {victim} was killed",
            lambda: (
                workers[survivor].processing() == DUO_SHARDS or workers[survivor].process.poll() is not None
            ),
            timeout=300 if kill_leader else 120,
        )
        assert workers[survivor].process.poll() is None, (
            f"{survivor} exited with {workers[survivor].process.returncode}"
        )
        print(f"{survivor} took over {sorted(taken)} {takeover:.0f}s after the kill")
        harness.wait_producers(timeout=120)
        harness.cli(
            "produce", "--input", str(second), "--no-progress", env=env, timeout=120, log="producer.log"
        )
        drained = _wait_for(
            f"{survivor} to drain every shard and stop (--until-idle)",
            lambda: workers[survivor].process.poll() is not None,
            timeout=180,
        )
        code = workers[survivor].process.returncode
        assert code == 0, f"{survivor} exited with {code}"
        print(f"{survivor} drained and stopped {drained:.0f}s after the second load")
        for entry in _log_lines(workdir / f"{survivor}.log", "restored shard state"):
            print(f"  {survivor} {entry.get('shard_id')}: {entry['message']}")
        yield DuoRun(harness, clients, names, envs, dataset, victim, survivor, workdir)


@contextmanager
def _logs_on_failure(harness: Harness) -> Iterator[None]:
    try:
        yield
    except BaseException:
        harness.dump_logs()
        raise


def test_two_workers_share_the_stream_and_survive_a_kill9(duo_run: DuoRun) -> None:
    with _logs_on_failure(duo_run.harness):
        counts = _verify_outputs(
            duo_run.clients["s3"], duo_run.names["bucket"], duo_run.dataset.labelled, duo_run.workdir / "s3"
        )
        print(f"verified: {counts}")


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="upstream KCL 3.1.3 bug (awslabs/amazon-kinesis-client#1743): a lease left with leaseOwner = a dead "
    "worker and checkpointOwner = the survivor (a pending graceful handoff) is never processed again. The worker "
    "now runs with isGracefulLeaseHandoffEnabled = false, so it no longer creates this state; the test writes it "
    "directly and pins the KCL's behaviour should an older deployment have left it",
)
def test_survivor_restart_with_a_pending_handoff_to_the_dead_worker_resumes_every_shard(
    duo_run: DuoRun,
) -> None:
    """The lease state this test starts from is what the KCL leaves when the survivor stops (deploy, SIGTERM) while
    its LeaseAssignmentManager is handing a lease to the killed worker, which it still counts as active for up to
    2 x workerMetricsReporterFreqInMillis (60 s) after the kill: leaseOwner = the dead worker, checkpointOwner = the
    survivor. Seen without any help in an earlier run of the two-worker scenario (the survivor was stopped and
    restarted ~20 s after the kill); written directly here so that it happens every time."""
    run = duo_run
    application = run.names["application_name"]
    dynamodb = run.clients["dynamodb"]
    stuck = "shardId-000000000002"
    dynamodb.update_item(
        TableName=application,
        Key={"leaseKey": {"S": stuck}},
        UpdateExpression="SET leaseOwner = :dead, checkpointOwner = :survivor",
        ExpressionAttributeValues={":dead": {"S": run.victim}, ":survivor": {"S": run.survivor}},
    )
    worker = run.harness.worker(run.survivor, run.envs[run.survivor])
    _wait_for(f"a record processor of the restarted {run.survivor}", worker.processor_pids, timeout=120)
    # A lease whose owner is dead is taken over after the failover time (10 s) plus an assignment interval (2 s);
    # 30 s is ample. (Seen without help: the shard stayed unprocessed for over 3 minutes, until the test gave up.)
    try:
        _wait_for(
            f"the restarted {run.survivor} to process all 4 shards",
            lambda: worker.processing() == DUO_SHARDS,
            timeout=30,
        )
    except AssertionError as error:
        health = subprocess.run(
            [sys.executable, "-m", "clickstream.cli", "--log-format", "text", "health"],
            env=run.envs[run.survivor],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        raise AssertionError(
            f"{error}: it processes {sorted(worker.processing())}; leases {_leases(dynamodb, application)}; "
            f"`clickstream health` exits {health.returncode}: {health.stdout.strip()[:600]}"
        ) from None
    finally:
        worker.stop()
