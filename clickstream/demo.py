"""``clickstream demo``: the whole product path on the embedded AWS endpoint, with progress for a person watching.

1. start the emulator on a free loopback port;  2. create stream and bucket;  3. generate deterministic events to
JSONL;  4. put them on the stream;  5. run the real KCL worker (Java MultiLangDaemon) until the stream is drained,
flushed and checkpointed;  6. download the Parquet outputs and print the summary;  7. score customers (CLV, RFM
segments) into clv/;  8. write the HTML report and print its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from rich.console import Console

from clickstream.errors import FrontDoorError
from consumer.status import read_statuses, status_directory
from consumer.worker_output import FIRST_START_WAIT
from runtime.settings import Settings
from schemas.control import ScoreCommit


def emulator_environment(endpoint: str, state_dir: Path) -> dict[str, str]:
    """Environment for commands that talk to the embedded endpoint (dummy credentials; the KCL's timings against an
    emulator are the settings' own defaults)."""
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "CLICKSTREAM_STATE_DIR": str(state_dir),
        "CLICKSTREAM_WORKER_ID": "demo-worker",
        "CLICKSTREAM_FLUSH_MAX_SECONDS": "5",
        "CLICKSTREAM_FLUSH_CAUGHT_UP_MIN_SECONDS": "1",  # a demo drains in seconds: show its rows at once
    }
    return env


@contextmanager
def _environment_of_the_run(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` (and no session token for the dummy keys) while a demo runs, the caller's
    environment back after: the demo's endpoint, stopped when it ends, was left in ``AWS_ENDPOINT_URL``, so a
    caller's next AWS client in the same process was sent to a closed port."""
    before = dict(os.environ)
    os.environ.update(values)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


#: What a demo writes in its output folder: the only entries it may replace when it runs again.
DEMO_OUTPUTS: Final = frozenset({"events.jsonl", "state", "worker.log", "s3", "report.html"})
#: Written first into a demo's output folder: names alone do not tell a demo's folder from a worker's (``state/``)
#: or an operator's (``events.jsonl``), and a folder with only those names was deleted.
DEMO_MARK: Final = ".clickstream-demo"


def replaceable_output(output_dir: Path) -> bool:
    """Whether ``output_dir`` is new, empty or a previous demo's output (marked, holding only what a demo writes):
    what ``run_demo`` may empty."""
    if not output_dir.exists():
        return True
    if not output_dir.is_dir():
        return False
    names = {entry.name for entry in output_dir.iterdir()}
    return not names or (DEMO_MARK in names and names <= DEMO_OUTPUTS | {DEMO_MARK})


def _empty(output_dir: Path) -> None:
    """The folder's entries deleted, the folder kept: it may be a symbolic link, a mount point or the working
    directory (``--output-dir .``)."""
    for entry in output_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class DemoFolderBusyError(RuntimeError):
    """Another demo is running on the same output folder."""


@contextmanager
def _locked_output_folder(output_dir: Path) -> Iterator[None]:
    """The output folder (created if new) locked for this run: a second demo given the same folder would empty it
    under the first one's worker. The lock goes with the process, so a demo killed leaves none behind."""
    output_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(output_dir, os.O_RDONLY)  # not inherited: the worker a demo starts does not hold it
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoFolderBusyError(
                f"{output_dir} is the output folder of a demo still running; wait for it, or give this one "
                "another --output-dir"
            ) from None
        yield
    finally:
        os.close(folder)


def run_demo(customers: int, events: int, seed: int, shards: int, output_dir: Path) -> int:
    """The whole demo; raises ``DemoFolderBusyError`` while another demo runs on ``output_dir``."""
    with _locked_output_folder(output_dir):
        return _run_demo(customers, events, seed, shards, output_dir)


def _run_demo(customers: int, events: int, seed: int, shards: int, output_dir: Path) -> int:
    from clickstream.console import stdout_console
    from clickstream.resources import setup_resources
    from clickstream.summary import print_summary
    from emulator.server import EmulatorHandle
    from producer.generator import ClickstreamGenerator, read_jsonl, write_jsonl
    from runtime.logs import configure_logging
    from runtime.settings import load_settings

    started = time.monotonic()
    configure_logging("WARNING", json_format=False)  # a person is watching: progress lines, not log records
    console = stdout_console()
    if not replaceable_output(output_dir):  # the CLI refuses it first; a caller of this function must too
        raise ValueError(f"{output_dir} holds files a demo did not write")
    _empty(output_dir)
    (output_dir / DEMO_MARK).write_text(
        "written by `clickstream demo`, which empties this folder when it runs again\n"
    )
    state_dir = output_dir / "state"

    with EmulatorHandle() as endpoint:
        console.rule("[bold]clickstream-rfm demo")
        console.print(f"1. embedded AWS endpoint (moto, HTTP/1.1 + h2c) at {endpoint}")
        environment = {**emulator_environment(endpoint, state_dir), "CLICKSTREAM_STREAM_SHARDS": str(shards)}
        with _environment_of_the_run(environment):
            settings = load_settings()
            # before the records are made and put: the worker would only fail on it later
            _require_java(settings)
            setup_resources(settings)
            console.print(
                f"2. stream [bold]{settings.stream_name}[/] ({shards} shards) and bucket "
                f"[bold]s3://{settings.bucket}[/] created"
            )

            jsonl = output_dir / "events.jsonl"
            generator = ClickstreamGenerator(
                customers, events, seed, duplicate_rate=0.01, malformed_rate=0.002
            )
            write_jsonl(jsonl, generator.events())
            generated = generator.summary
            total = generator.total_records
            console.print(
                f"3. generated {total:,} records for {customers:,} customers into {jsonl} "
                f"({generated.valid_events:,} valid events, {generated.duplicates:,} duplicates, "
                f"{generated.malformed:,} malformed, seed {seed})"
            )

            from producer.kinesis_put import KinesisProducer
            from runtime.aws import aws_client

            put = KinesisProducer(
                aws_client("kinesis", settings), settings.stream_name, progress=console.is_terminal
            )
            result = put.put(read_jsonl(jsonl), total=total)
            console.print(
                f"4. put {result.records_sent:,} records with PutRecords in {result.seconds:.1f}s "
                f"({result.records_per_second:,.0f} records/s)"
            )

            console.print(
                "5. running the KCL worker (Java MultiLangDaemon, one Python processor per shard) until idle;"
                f" logs in {output_dir / 'worker.log'}"
            )
            code = _run_worker(console, output_dir, state_dir, total, settings.stop_deadline_seconds)
            if code != 0:
                log_path = output_dir / "worker.log"
                said = last_error(log_path)
                # the reason on stderr as every command's error, not only in the log
                raise FrontDoorError(
                    f"the demo's worker exited with {code}"
                    + (f": {said}" if said else "")
                    + f" (its log: {log_path})",
                    code,
                )

            console.print(
                f"6. results: what is committed in S3 (copied to {output_dir / 's3'}/)", soft_wrap=True
            )
            print_summary(settings, output_dir / "s3", console=console)
            _score_and_report(console, settings, output_dir)
    _recap(console, output_dir, time.monotonic() - started)
    return 0


def _recap(console: Console, output_dir: Path, seconds: float) -> None:
    """What to look at, last: the run ends on the report's path, with the rest of its output scrolled away."""
    folder = output_dir.resolve()
    console.print(
        f"\nDone in {seconds:.0f}s. Open [bold]{folder / 'report.html'}[/bold] in a browser. In {folder}/: s3/ holds "
        "the committed outputs (query them with the DuckDB line above), worker.log the worker's log, events.jsonl "
        "the input. The emulator is gone with the demo; run it again to start over (it empties this folder).",
        soft_wrap=True,
    )


def _score_and_report(console: Console, settings: Settings, output_dir: Path) -> None:
    """7. CLV, RFM scores and segments (when the clv extra is installed), then the HTML report; prints its path."""
    from clickstream.html_report import write_report
    from clickstream.score import run_score
    from scoring.clv import ModelLibraryMissing

    console.print("7. scoring customers (BG/NBD + Gamma-Gamma, RFM segments) into clv/")
    try:
        outcome = run_score(settings, progress=False, say=lambda line: console.print(f"   {line}"))
    except (ModelLibraryMissing, ValueError) as error:  # the model library is an extra
        console.print(f"[yellow]   not scored: {error}[/yellow]")
    else:
        copied = _copy_run(settings, outcome.commit, output_dir / "s3")
        console.print(  # paths are never wrapped: they must stay copyable
            f"   run {outcome.commit.run_id}: {outcome.commit.rows:,} buyers scored, copied to {copied}",
            soft_wrap=True,
        )
    report = output_dir / "report.html"
    write_report(
        settings,
        report,
        source_note="demo data on the demo's embedded emulator, gone with it; the committed files are copied in s3/ "
        "beside this report",
    )
    console.print(f"8. report: [bold]{report.resolve()}[/bold]", soft_wrap=True)


def _require_java(settings: Settings) -> None:
    """The worker's own Java check (CLICKSTREAM_JAVA, JAVA_HOME or the PATH; 17+; its heap), as a one-line error."""
    from consumer.kcl_worker import WorkerError, find_java, require_java

    try:
        require_java(find_java(settings), settings.kcl_java_heap)
    except WorkerError as error:
        raise FrontDoorError(str(error), error.exit_code) from None


def last_error(log_path: Path) -> str | None:
    """The message of the last ERROR or CRITICAL record of a JSON log (the worker's, which ends on its reason)."""
    said = None
    with contextlib.suppress(OSError), log_path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if '"level": "ERROR"' not in line and '"level": "CRITICAL"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                    said = str(record.get("message", "")) or said
    return said


def _run_worker(
    console: Console, output_dir: Path, state_dir: Path, total: int, stop_deadline_seconds: float
) -> int:
    command = [sys.executable, "-m", "clickstream.cli", "--log-format", "json", "worker", "--until-idle", "3"]
    started = time.monotonic()
    with (output_dir / "worker.log").open("wb") as log_file:
        # its own session: a Ctrl-C on the terminal reaches the demo alone, which stops the worker with one signal
        # (a second one would force its exit)
        process = subprocess.Popen(command, stderr=log_file, stdout=log_file, start_new_session=True)
        try:
            with console.status("waiting for the KCL to take its leases ...") as status:
                while process.poll() is None:
                    statuses = read_statuses(status_directory(state_dir))
                    flushed = sum(s.records_flushed for s in statuses.values())
                    buffered = sum(s.buffered_records for s in statuses.values())
                    waiting = f" ({FIRST_START_WAIT})" if not statuses else ""
                    status.update(
                        f"{len(statuses)} shard processors{waiting} | {flushed:,} of {total:,} records flushed "
                        f"| {buffered:,} buffered | {time.monotonic() - started:.0f}s"
                    )
                    time.sleep(0.5)
        finally:
            _stop_worker(process, stop_deadline_seconds + _STOP_MARGIN_SECONDS, console)
    statuses = read_statuses(status_directory(state_dir))
    flushed = sum(s.records_flushed for s in statuses.values())
    console.print(
        f"   worker stopped after {time.monotonic() - started:.0f}s: {flushed:,} records flushed by "
        f"{len(statuses)} shard processors, exit code {process.returncode}"
    )
    return process.returncode


#: Beyond the worker's own stop deadline (after which it kills its KCL), before the demo kills the worker.
_STOP_MARGIN_SECONDS: Final = 10.0


def _stop_worker(process: subprocess.Popen[bytes], timeout: float, console: Console) -> None:
    """The worker stopped with the demo, however the demo ends (a SIGTERM sent to the demo alone, as ``kill`` or
    ``docker stop`` send it, reached no other process, and the worker went on without its emulator): SIGTERM, so
    it flushes and checkpoints while the emulator still runs, then SIGKILL past ``timeout`` or at a second
    interruption (its KCL dies with it). Says so: the stop takes seconds, which read as a hang after a Ctrl-C."""
    if process.poll() is not None:
        return
    console.print(
        f"   stopping the worker: flushing its shards (up to {timeout:.0f}s; Ctrl-C again to force) ..."
    )
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _copy_run(settings: Settings, commit: ScoreCommit, destination: Path) -> Path:
    """The committed run's files and commit records, into the local copy of the bucket (same keys)."""
    from clickstream.score import LocalStore, S3Store
    from runtime.aws import aws_client
    from schemas.layout import OutputLayout

    layout = OutputLayout(settings.prefix)
    source, local = S3Store(aws_client("s3", settings), settings), LocalStore(destination)
    day = commit.as_of.date()
    for key in (*commit.files, commit.model_key, layout.clv_commit_key(day), layout.clv_latest_key):
        body = source.get(key)
        if body is not None:
            local.put(key, body, "application/octet-stream")
    return destination / layout.clv_run_prefix(day, commit.run_id)
