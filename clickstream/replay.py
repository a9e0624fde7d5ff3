"""``clickstream replay``: rebuild customer aggregates from the S3 ``events/`` archive over an event-time range.

The archive holds every applied delivery of a valid event once (a re-send after the de-duplication window is applied
and archived again, more than the window after the first, so a replay with the worker's window applies it again too),
so feeding it through the same core (``CustomerState``) into an empty state rebuilds the aggregates. The replay
reads only the files that commit records name (a strict reader: files of attempts that lost or never committed are
never read), and of those only commits whose events overlap the range. The result goes to
``<prefix>/replays/<name>/customer_aggregates/`` — never to the live outputs, the live state or the KCL checkpoints
— under a name fixed by the range, so a re-run overwrites it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from pathlib import Path
from time import monotonic
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from aggregators.customer_state import CustomerState
from clickstream.console import last_progress_line, progress_of
from clickstream.errors import FrontDoorError, explain, query_interrupted
from clickstream.options import parse_flag_time, show_progress
from clickstream.outputs import MAX_WORKERS, commit_records, unreadable_committed
from consumer.retry import is_transient
from consumer.s3_sink import S3ParquetSink, lost_to_another_writer, map_in_parallel
from consumer.state_recovery import state_options
from runtime.exit_codes import USAGE
from runtime.logs import count_of
from runtime.settings import Settings
from schemas import EVENTS_SCHEMA
from schemas.control import ControlRecordError, ReplayClaim, StateWindows
from schemas.positions import Position

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ReplayPlan:
    start: datetime
    end: datetime
    name: str
    files: list[str] = field(default_factory=list)  # committed events/ files whose events overlap the range
    events: int = 0  # new events those commits archived (an upper bound of what falls in the range)
    commits: int = 0
    output_key: str = ""
    bucket: str = ""
    #: the windows it aggregates with: the worker's must be the same for its rows to equal the live rows
    windows: StateWindows = field(default_factory=lambda: StateWindows(0, 0))
    #: the windows the worker's flushes of those files recorded
    worker_windows: set[StateWindows] = field(default_factory=set)
    #: commits of those files that record no windows (written by a version before them)
    commits_without_windows: int = 0

    def describe(self) -> str:
        return (
            f"replay {self.name}: events from {self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC (end "
            f"exclusive): committed events files overlapping it: {len(self.files):,} (of the "
            f"{count_of(self.commits, 'commit record')} read), up to {count_of(self.events, 'event')}; "
            f"{self.windows.describe()} (the worker's CLICKSTREAM_DEDUPE_WINDOW_DAYS and "
            f"CLICKSTREAM_DISTINCT_WINDOW_DAYS must be the same); output s3://{self.bucket}/{self.output_key} "
            "(replaced if there)"
        )

    def differing_windows(self) -> str | None:
        """What to say when the worker flushed these files with other windows than the replay's (each commit record
        carries its flush's): re-sent events, sessions and days would count otherwise than in the live rows."""
        other = sorted(self.worker_windows - {self.windows}, key=lambda w: (w.dedupe_days, w.distinct_days))
        if not other:
            return None
        unknown = (
            f" ({count_of(self.commits_without_windows, 'commit record')} of a version before windows say nothing)"
            if self.commits_without_windows
            else ""
        )
        if len(self.worker_windows) == 1:
            worker = other[0]
            return (
                f"the worker flushed these events with {worker.describe()}{unknown}, and this replay runs with "
                f"{self.windows.describe()}: re-sent events, sessions and active days will count otherwise than in "
                f"the live rows (give --dedupe-window-days {worker.dedupe_days} --distinct-window-days "
                f"{worker.distinct_days} to match them)"
            )
        seen = "; ".join(w.describe() for w in other)
        return (
            f"the worker's windows changed within this range (its commit records hold {seen}{unknown}, besides this "
            f"replay's {self.windows.describe()}): no one window gives the live rows for all of it"
        )


class ReplayInterrupted(KeyboardInterrupt):
    """Ctrl-C while the output was being written: it may or may not be there."""

    def __init__(self, maybe_written: str) -> None:
        super().__init__(maybe_written)
        self.maybe_written = maybe_written


@dataclass(slots=True)
class ReplayResult:
    events_read: int
    events_applied: int
    customers: int
    output_key: str | None  # None: no event of the files read was in the range, and nothing was written


#: The key of a replay output's Parquet key-value metadata that says what made it (range, windows, run).
REPLAY_METADATA_KEY: Final = "clickstream.replay"

#: A replay's name is a folder of its output and part of its lock file's name.
MAX_NAME_CHARACTERS: Final = 200


def replay_name(start: datetime, end: datetime, name: str | None) -> str:
    """The replay's name (given, or from the range), once the range and the name are found usable (ValueError)."""
    if end <= start:
        raise ValueError(f"--to ({end:%Y-%m-%d %H:%M}) must be after --from ({start:%Y-%m-%d %H:%M})")
    name = name or f"{_stamp(start)}-{_stamp(end)}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        # a folder whose name starts with _ or . is hidden from Spectrum, Hive and Spark, and one with = is read
        # as a partition column
        raise ValueError(
            "--name may contain only letters, digits and _ . - and must start with a letter or a digit (readers "
            "skip folders starting with _ or ., and take one with = for a partition)"
        )
    if len(name) > MAX_NAME_CHARACTERS:
        # it names the lock file too, and a name past the file system's 255 bytes failed after the archive's read
        raise ValueError(f"--name is {len(name)} characters long: at most {MAX_NAME_CHARACTERS}")
    return name


def plan_replay(
    s3: Any,
    settings: Settings,
    start: datetime,
    end: datetime,
    name: str | None = None,
    *,
    progress: bool | None = None,
) -> ReplayPlan:
    """Which committed archive files a replay of [start, end) reads, and where it writes."""
    name = replay_name(start, end, name)
    sink = S3ParquetSink(s3, settings)
    plan = ReplayPlan(
        start=start,
        end=end,
        name=name,
        bucket=settings.bucket,
        windows=settings.state_windows,
    )
    for record in commit_records(s3, settings, progress=progress):
        plan.commits += 1
        if record.oldest_event_at is None or record.newest_event_at is None:
            continue  # archived no new events
        if record.oldest_event_at < end and record.newest_event_at >= start:
            plan.files += record.files.get("events", [])
            plan.events += record.accepted - record.duplicates
            if record.windows is not None:
                plan.worker_windows.add(record.windows)
            else:
                plan.commits_without_windows += 1
    plan.output_key = sink.layout.replay_output_key(name, start, end)
    _refuse_another_range(sink, plan)
    held = _held_claim(sink, plan)
    if held is not None and not held.covers_the_same_range(plan.start, plan.end):
        raise _claimed_for_another_range(sink, plan, held)
    _require_the_files(sink, plan, progress)
    return plan


def _require_the_files(sink: S3ParquetSink, plan: ReplayPlan, progress: bool | None) -> None:
    """FrontDoorError (exit 1) if a planned events file is gone (deleted by hand, or by a lifecycle rule): found
    before the replay reads hours of files, not after, and by a dry run too."""
    with progress_of("checking the events files", "file", bar=show_progress(progress)) as report:
        there = map_in_parallel(sink.exists, plan.files, MAX_WORKERS, report)
    gone = [key for key, found in zip(plan.files, there, strict=True) if not found]
    if gone:
        others = f" and {len(gone) - 1:,} more of the {len(plan.files):,} files" if len(gone) > 1 else ""
        raise FrontDoorError(
            f"no such object: s3://{sink.bucket}/{gone[0]}{others}, committed events files the range needs "
            "(deleted by hand, or by a lifecycle rule?): the replay cannot rebuild the range without them; nothing "
            "was read or written"
        )


def _refuse_another_range(sink: S3ParquetSink, plan: ReplayPlan) -> None:
    """ValueError if the name's folder holds the output of another range: a reader of the folder would mix the two
    ranges' rows."""
    layout = sink.layout
    ours = (plan.output_key, layout.replay_write_check_key(plan.name), layout.replay_claim_key(plan.name))
    others = [key for key in sink.list_keys(layout.replay_prefix(plan.name)) if key not in ours]
    if others:
        raise ValueError(
            f"s3://{sink.bucket}/{layout.replay_prefix(plan.name)} holds another replay ({others[0]}): choose "
            "another --name or delete that folder"
        )


def _claim(sink: S3ParquetSink, plan: ReplayPlan, run_id: str) -> bool:
    """Claim the name's folder for the plan's range (a conditional create: one claim a name, whichever machine
    runs the replay); whether this run made the claim (False: one of the same range was there, a run before or
    beside this one, which writes the same object). FrontDoorError (exit 2) if it is another range's."""
    key = sink.layout.replay_claim_key(plan.name)
    claim = ReplayClaim(plan.start, plan.end, datetime.now(UTC), run_id)
    # a claim deleted between the refusal and its read (its replay stopped with nothing written) is tried again
    for _ in range(3):
        try:
            sink.put_bytes(key, claim.to_json(), "json", if_none_match=True)
        except ClientError as error:
            if not lost_to_another_writer(error):
                raise
        else:
            return True
        held = _held_claim(sink, plan)
        if held is None:
            continue
        if held.run_id == run_id:  # this run's own create landed; its answer was lost, and the retry got 412
            return True
        if held.covers_the_same_range(plan.start, plan.end):
            return False
        raise _claimed_for_another_range(sink, plan, held)
    raise FrontDoorError(f"s3://{sink.bucket}/{key} kept changing while it was claimed: try again")


def _claimed_for_another_range(sink: S3ParquetSink, plan: ReplayPlan, held: ReplayClaim) -> FrontDoorError:
    return FrontDoorError(
        f"replay {plan.name} is claimed for another range, {held.start:%Y-%m-%d %H:%M} to "
        f"{held.end:%Y-%m-%d %H:%M} UTC, since {held.claimed_at:%Y-%m-%d %H:%M} UTC "
        f"(s3://{sink.bucket}/{sink.layout.replay_claim_key(plan.name)}): choose another --name, or delete that "
        "folder if that replay is gone",
        USAGE,
    )


def _held_claim(sink: S3ParquetSink, plan: ReplayPlan) -> ReplayClaim | None:
    """The name's claim as S3 holds it now (None: there is none); FrontDoorError (exit 2) if it does not read."""
    key = sink.layout.replay_claim_key(plan.name)
    body = sink.get_bytes(key)
    if body is None:
        return None
    try:
        return ReplayClaim.from_json(body)
    except ControlRecordError as error:
        raise FrontDoorError(
            f"s3://{sink.bucket}/{key} is not a readable replay claim ({error}): delete it if no replay of "
            f"{plan.name} runs",
            USAGE,
        ) from None


def _hold_name(sink: S3ParquetSink, plan: ReplayPlan, run_id: str) -> bool:
    """The name claimed for the plan's range, and its folder free of any other range's output (a replay of another
    range that wrote before claims existed, or by hand): FrontDoorError (exit 2) if not. Whether this call made the
    claim (a claim it made for nothing is released before the refusal). Asked before the archive is read and again
    right before the output is written: a twin run of the same range, whose claim this one went on under, may have
    released it meanwhile, and another range may have claimed the name and written."""
    claimed = _claim(sink, plan, run_id)
    try:
        _refuse_another_range(sink, plan)
    except ValueError as error:
        if claimed:
            _release_claim(sink, plan, run_id)
        raise FrontDoorError(str(error), USAGE) from None
    return claimed


def run_replay(
    s3: Any,
    settings: Settings,
    plan: ReplayPlan,
    work_dir: Path,
    *,
    progress: bool = True,
    batch_events: int = 50_000,
    progress_log_seconds: float = 30.0,
    clock: Callable[[], float] = monotonic,
) -> ReplayResult:
    """Apply every planned file through the core into an empty state; write each customer's final row.

    Progress counts archived events (files differ a hundredfold in size): a bar on a terminal, else a log line
    every ``progress_log_seconds``. A stop (Ctrl-C, or SIGTERM) is acted on between steps (see ``_StopBetweenSteps``)
    and raises ``KeyboardInterrupt``, or ``ReplayInterrupted`` once the output is being written (a second stop
    then). The caller holds ``one_replay_of(plan.name, work_dir)`` from
    before the plan."""
    writing: list[bool] = []  # not empty once the output is being written
    try:
        with _StopBetweenSteps() as stop:
            result = _replay(
                s3,
                settings,
                plan,
                work_dir,
                writing,
                stop,
                progress,
                batch_events,
                progress_log_seconds,
                clock,
            )
            if stop.noted:  # came once the output was being written
                log.warning("replay %s: a stop came as it ended; its output is written whole", plan.name)
            return result
    except (KeyboardInterrupt, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not query_interrupted(error):
            raise
        if writing:  # stopped once the output was being written: it may or may not be there
            raise ReplayInterrupted(maybe_written=plan.output_key) from None
        raise KeyboardInterrupt from None


def _replay(  # noqa: PLR0917 - one private call site
    s3: Any,
    settings: Settings,
    plan: ReplayPlan,
    work_dir: Path,
    writing: list[bool],
    stop: _StopBetweenSteps,
    progress: bool,
    batch_events: int,
    progress_log_seconds: float,
    clock: Callable[[], float],
) -> ReplayResult:
    sink = S3ParquetSink(s3, settings)
    _check_writable(sink, plan)
    run_id = uuid.uuid4().hex
    claimed = _hold_name(sink, plan, run_id)
    state: CustomerState | None = None
    read = applied = batches = 0
    pending: list[pa.Table] = []  # one shard's files: the core orders a batch by position, which is per shard
    pending_shard: str | None = None

    def apply_pending() -> None:
        nonlocal applied, batches
        if pending and state is not None:  # one apply per ~batch_events, not per (small, hourly) file
            batches += 1
            applied += state.apply_events(
                pa.concat_tables(pending), Position(str(batches), 0)
            ).events.num_rows
            pending.clear()
            stop.check()

    # the command's: its plan's listing may have just said how far it got
    last_line = last_progress_line(clock)
    try:
        # from empty state (a re-run gives the same result), in memory: nothing reopens it; the worker's window
        # sessions and days kept for the run: forgetting follows the state's latest arrival day, another shard's
        state = CustomerState("replay", options=replace(state_options(settings), keep_counted=True))
        with tqdm(
            total=plan.events, unit="ev", unit_scale=True, desc=f"replay {plan.name}", disable=not progress
        ) as bar:
            # by shard, parents first, each shard's in stream order
            for done, key in enumerate(plan.files, start=1):
                try:
                    events = sink.get_parquet(key)
                except (FileNotFoundError, BotoCoreError):
                    raise  # gone, or the network: not the file's bytes
                # its bytes: no Parquet (ArrowInvalid), or a page that does not decode (OSError)
                except (pa.ArrowInvalid, OSError) as error:
                    raise unreadable_committed(sink.bucket, key, error) from None
                events = events.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
                shard = events.column("shard_id")[0].as_py() if events.num_rows else pending_shard
                if shard != pending_shard:
                    # sequence numbers compare only within a shard (the emulator's restart at 1 in each child):
                    # a batch mixing shards would put a child's re-send before its parent's original
                    apply_pending()
                    pending_shard = shard
                times = events.column("event_time")
                in_range = pc.and_(
                    pc.greater_equal(times, pa.scalar(plan.start, times.type)),
                    pc.less(times, pa.scalar(plan.end, times.type)),
                )
                pending.append(events.filter(in_range))
                read += pending[-1].num_rows
                if sum(table.num_rows for table in pending) >= batch_events:
                    apply_pending()
                bar.update(events.num_rows)
                stop.check()
                if not progress and clock() - last_line.at >= progress_log_seconds:
                    last_line.at = clock()
                    log.info(
                        "replay %s: %s of %s files read, %s events in the range so far",
                        plan.name,
                        f"{done:,}",
                        f"{len(plan.files):,}",
                        f"{read:,}",
                    )
            apply_pending()
        if read == 0:  # the files' spans met the range, none of their events did: no output of nothing
            return ReplayResult(events_read=0, events_applied=0, customers=0, output_key=None)
        rows = state.snapshot_rows()
        stop.check()
        try:
            # a twin's claim this run went on under may be gone: the claim made now is this run's to release
            claimed = _hold_name(sink, plan, run_id) or claimed
        except FrontDoorError as refused:
            raise FrontDoorError(f"{refused}; nothing written", refused.exit_code) from None
        stop.check()  # a stop during the claim's round trips came before the write: nothing written
        writing.append(True)
        log.info(
            "replay %s: writing %s to s3://%s/%s",
            plan.name,
            count_of(rows.num_rows, "customer's row", "customers' rows"),
            sink.bucket,
            plan.output_key,
        )
        sink.put_parquet(plan.output_key, _with_provenance(rows, plan, run_id), kind="customer_aggregates")
        return ReplayResult(
            events_read=read, events_applied=applied, customers=rows.num_rows, output_key=plan.output_key
        )
    finally:
        with _stops_held():  # the claim is released whatever stops the run, a second stop included
            if state is not None:
                state.close()
            if claimed and not writing:  # nothing written: the name is free for another range again
                _release_claim(sink, plan, run_id)


def _with_provenance(rows: pa.Table, plan: ReplayPlan, run_id: str) -> pa.Table:
    """``rows`` with what made them in the file's key-value metadata (``REPLAY_METADATA_KEY``): the range, the
    windows and the run. A re-run of the range replaces the file, and so what it says, whole."""
    made_by = {
        "start": plan.start.isoformat(),
        "end": plan.end.isoformat(),
        "dedupe_window_days": plan.windows.dedupe_days,
        "distinct_window_days": plan.windows.distinct_days,
        "run_id": run_id,
    }
    return rows.replace_schema_metadata(
        {**(rows.schema.metadata or {}), REPLAY_METADATA_KEY: json.dumps(made_by)}
    )


class _StopBetweenSteps:
    """Ctrl-C and SIGTERM noted when they come, and acted on between steps (``check``): raised as the handler this
    replaced raises it (the command's SIGTERM handler says which stop it was).

    A stop raised wherever Python happened to be could land inside DuckDB or a destructor, which swallowed it (the
    replay went on and wrote its output, exit 0) or turned it into another error (an aborted transaction, read as a
    full disk; an Arrow read that failed, exit 1). A second stop is acted on at once."""

    _STOPS: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.noted: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopBetweenSteps:
        try:
            for stop in self._STOPS:
                if signal.getsignal(stop) != signal.SIG_IGN:  # ignored (started in the background): left so
                    self._previous[stop] = signal.signal(stop, self._note)
        except ValueError:  # not the main thread, where handlers run: stops act as they would have
            self._previous = {}
        return self

    def __exit__(self, *_: object) -> None:
        for stop, handler in self._previous.items():
            signal.signal(stop, handler)

    def _note(self, signum: int, _frame: object) -> None:
        if self.noted is not None:
            self._act(signum)
        self.noted = signum

    def check(self) -> None:
        if self.noted is not None:
            self._act(self.noted)

    def _act(self, signum: int) -> None:
        handler = self._previous.get(signum)
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:  # what the signal would have done: end the process
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        raise KeyboardInterrupt


@contextmanager
def one_replay_of(name: str, work_dir: Path) -> Iterator[None]:
    """Held while a replay named ``name`` is planned and runs from ``work_dir`` (FrontDoorError if another holds
    it): a second one would write a second range into its folder after the first's check for one."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"replay-{name}.lock"
    while True:
        lock = path.open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise FrontDoorError(
                f"another replay named {name} is running from {work_dir} (it holds {path}): wait for it, or give "
                "this one another --name"
            ) from None
        try:  # locked, but maybe a file the replay before deleted as it ended: then lock the one there now
            if path.stat().st_ino == os.fstat(lock.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: nothing is left in the folder
        lock.close()


@contextmanager
def _stops_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block has run: a stop that comes meanwhile is only noted, then sent again
    to this process once the handlers are back, which act on it as they would have. (Blocking the signals would not
    do: the kernel may hand a process's signal to any of its threads.)"""
    stops = (signal.SIGINT, signal.SIGTERM)
    noted: list[int] = []
    try:
        previous = {stop: signal.signal(stop, lambda signum, _frame: noted.append(signum)) for stop in stops}
    except ValueError:  # not the main thread, where handlers run: nothing to hold
        yield
        return
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        if noted:
            signal.raise_signal(noted[0])


def _release_claim(sink: S3ParquetSink, plan: ReplayPlan, run_id: str) -> None:
    """Delete the claim this run made, unless another run has made it its own since (best effort)."""
    try:
        held = _held_claim(sink, plan)
    except FrontDoorError:
        return  # not readable: left for a person, as the message of the next run says
    if held is None or held.run_id != run_id:
        return
    _delete_if_allowed(
        sink,
        sink.layout.replay_claim_key(plan.name),
        f"another range under the name {plan.name} is refused until it is deleted",
    )


def _delete_if_allowed(sink: S3ParquetSink, key: str, left_means: str) -> None:
    """Delete ``key``, best effort: a refusal is said with what the object left there means."""
    try:
        sink.delete_keys([key])
    except ClientError as error:
        log.warning("could not delete s3://%s/%s (%s): %s", sink.bucket, key, error, left_means)


def _check_writable(sink: S3ParquetSink, plan: ReplayPlan) -> None:
    """Put (then delete) an empty object beside the output: a role that may not write there fails now, before the
    archive is read, rather than after hours of reading it. Its deletion is best effort (its name keeps it from
    readers)."""
    key = sink.layout.replay_write_check_key(plan.name)
    try:
        sink.put_bytes(key, b"", "bytes")
    except ClientError as error:
        if is_transient(error):  # S3 busy or failing: said as such, not as a refusal to write there
            raise
        failure = explain(error)
        raise FrontDoorError(
            f"cannot write the replay's output under s3://{sink.bucket}/{sink.layout.replay_prefix(plan.name)}: "
            f"{failure.message}; none of the archive was read",
            failure.exit_code,
        ) from None
    _delete_if_allowed(sink, key, "it is empty and readers skip it")


def parse_time(text: str) -> datetime:
    """A date (YYYY-MM-DD) or a time to the minute (YYYY-MM-DDTHH[:MM]), UTC unless it carries an offset; in UTC.

    The range is applied exactly (events are kept by their event time), so nothing is rounded: a time with seconds
    is refused rather than cut to the minute the output's name holds."""
    value = parse_flag_time(text)
    if not isinstance(value, datetime):
        return datetime.combine(value, time(), tzinfo=UTC)
    if value.second or value.microsecond:
        raise ValueError(f"{text!r} has seconds: a replay range is given to the minute")
    return value.astimezone(UTC)


def _stamp(moment: datetime) -> str:
    """A range end in a name: to the hour, or to the minute when it has minutes."""
    return f"{moment:%Y%m%dT%H}" if moment.minute == 0 else f"{moment:%Y%m%dT%H%M}"
