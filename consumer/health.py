"""Liveness of a worker, from the files its processes keep up to date (so a separate command can judge it).

Unhealthy means one of:
- the supervisor's heartbeat (``<state_dir>/worker.json``) is missing or older than ``heartbeat_timeout``;
- a shard processor has not been called by the KCL for ``stuck_after`` seconds (the KCL calls it at least every
  ``idleTimeBetweenReadsInMillis`` even when there are no records);
- records have been waiting on a shard (buffered, or the shard behind the tip) for ``stuck_after`` seconds without a
  flush — the KCL's "stuck shard": leases held, nothing moving. A shard idle for hours is healthy;
- the worker has held no shard lease for ``no_lease_after`` seconds (since it started, or since it last held one),
  unless it found every lease held by other workers (a standby: more workers than shards). Seen when the KCL cannot
  take leases at all, e.g. with DynamoDB unreachable.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from consumer.status import ShardStatus, read_statuses, status_directory
from runtime.logs import one_line

HEARTBEAT_FILE = "worker.json"


@dataclass(slots=True)
class HealthReport:
    healthy: bool
    shards_processing: int
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(slots=True)
class Heartbeat:
    """What the supervisor tells ``clickstream health`` about itself."""

    pid: int
    phase: str  # starting | running | stopping | unhealthy | stopped
    started_at: float
    last_lease_at: float | None = None  # last time a shard processor of this worker was processing
    standby: bool = False  # every lease is held by other workers
    lease_detail: str | None = None  # why no lease is held, when known
    updated_at: float = 0.0  # when it was written last (``write_heartbeat``)
    # once stopped: the worker's exit code (None: an error whose exit code the command line decided)
    exit_code: int | None = None

    @classmethod
    def read(cls, state_dir: Path) -> Heartbeat:
        """The heartbeat the worker of ``state_dir`` wrote last (OSError, ValueError, TypeError if there is none
        readable)."""
        loaded = json.loads((state_dir / HEARTBEAT_FILE).read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise TypeError(f"{HEARTBEAT_FILE} holds no object")
        return cls(**loaded)


def write_heartbeat(state_dir: Path, heartbeat: Heartbeat) -> None:
    """The supervisor's sign of life, rewritten atomically about once a second."""
    heartbeat.updated_at = time.time()
    target = state_dir / HEARTBEAT_FILE
    temporary = target.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(asdict(heartbeat)), encoding="utf-8")
        temporary.replace(target)
    except OSError as error:
        if error.filename is None:  # a refused write (a full disk) names no file: the operator needs the path
            error.filename = str(temporary)
        raise


def holds_lease(status: ShardStatus) -> bool:
    """Whether a shard processor stands for a lease its worker holds: processing (``ShardStatus.processing``), or
    still initializing (restoring its state, which can take minutes for a large one) in a process that is alive and
    that no error ended."""
    if status.processing:
        return True
    return status.phase == "initializing" and not status.terminal_error and process_alive(status.pid)


def shard_problems(statuses: dict[str, ShardStatus], now: float, stuck_after: float) -> list[str]:
    """Stuck or silent shard processors: those processing, and those initializing that keep failing."""
    problems = []
    for shard_id, status in sorted(statuses.items()):
        if status.phase == "initializing" and status.failing_since and process_alive(status.pid):
            # a restore (or the settling before it) retrying a failure since then: a slow restore that is not
            # failing is no problem, however long it takes
            failing = now - status.failing_since
            if failing > stuck_after:
                problems.append(f"{shard_id}: initializing, failing for {failing:.0f}s: {status.last_error}")
            continue
        if status.phase != "processing":
            continue
        cause = f"; last error: {status.last_error}" if status.last_error else ""
        last_call = status.last_call_at or status.started_at
        if now - last_call > stuck_after:
            if status.pid and not process_alive(status.pid):
                problems.append(
                    f"{shard_id}: its processor (pid {status.pid}) is gone, last called "
                    f"{now - last_call:.0f}s ago{cause}"
                )
            elif status.last_error:  # the KCL waits on the processor, which keeps retrying inside its call
                problems.append(
                    f"{shard_id}: stuck for {now - last_call:.0f}s in a call that keeps failing: {status.last_error}"
                )
            else:
                problems.append(f"{shard_id}: not called by the KCL for {now - last_call:.0f}s")
            continue
        if status.waiting_since is None:
            continue  # nothing waiting: an idle shard is healthy however long it has been idle
        # Progress is a flush after the work appeared; the clock starts when records began to wait.
        last_progress = max(status.waiting_since, status.last_flush_at or 0.0)
        if now - last_progress > stuck_after:
            problems.append(
                f"{shard_id}: records waiting ({status.buffered_records} buffered, "
                f"{status.millis_behind_latest or 0} ms behind) but no flush for {now - last_progress:.0f}s{cause}"
            )
    return problems


def lease_problem(heartbeat: Heartbeat, processing: int, now: float, no_lease_after: float) -> str | None:
    """Why holding no lease is a problem (None: a lease is held, the worker is a standby, or it is too early)."""
    if processing or not no_lease_after or heartbeat.standby:
        return None
    since = heartbeat.last_lease_at or heartbeat.started_at
    if now - since <= no_lease_after:
        return None
    held_before = "since it last held one" if heartbeat.last_lease_at else "since it started"
    detail = heartbeat.lease_detail
    return f"worker has held no shard lease for {now - since:.0f}s {held_before}" + (
        f": {detail}" if detail else ""
    )


def assess(
    state_dir: Path,
    stuck_after: float,
    heartbeat_timeout: float = 30.0,
    now: float | None = None,
    no_lease_after: float = 0.0,
) -> HealthReport:
    """The health of the worker whose state directory is ``state_dir``."""
    now = time.time() if now is None else now
    problems = []
    statuses = read_statuses(status_directory(state_dir))
    processing = sum(1 for status in statuses.values() if holds_lease(status))
    worker_running = False
    try:
        heartbeat = Heartbeat.read(state_dir)
        age = now - float(heartbeat.updated_at)
        if heartbeat.phase == "stopped":  # its last word: said as such, not as a heartbeat gone stale
            stopped_at = datetime.fromtimestamp(float(heartbeat.updated_at), UTC).isoformat(
                timespec="seconds"
            )
            how = (
                "on an error (its log names it)"
                if heartbeat.exit_code is None
                else f"(exit code {heartbeat.exit_code})"
            )
            problems.append(f"the worker stopped at {stopped_at} {how}")
        elif age > heartbeat_timeout:
            problems.append(f"worker heartbeat is {age:.0f}s old")
        elif heartbeat.phase == "unhealthy":
            problems.append("worker reported itself unhealthy")
        elif not process_alive(int(heartbeat.pid)):
            problems.append(f"worker process {heartbeat.pid} is gone")
        else:
            worker_running = True
            if problem := lease_problem(heartbeat, processing, now, no_lease_after):
                problems.append(problem)
    except FileNotFoundError:
        problems.append(
            f"no worker heartbeat in {state_dir / HEARTBEAT_FILE} (is a worker running with this state directory?)"
        )
    # OverflowError: a damaged file's pid or time too large for the platform (a report still, as for any damage)
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as error:
        problems.append(
            f"the worker heartbeat {state_dir / HEARTBEAT_FILE} cannot be read ({one_line(error)}): a running "
            "worker rewrites it whole every second, so none is writing it (damaged, or from another version)"
        )
    problems += shard_problems(statuses, now, stuck_after)
    # a worker that is gone or stopped processes nothing, whatever its shards' last status files say
    return HealthReport(
        healthy=not problems, shards_processing=processing if worker_running else 0, problems=problems
    )


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
