"""Per-shard progress files: how the record processors (one process per shard) report to the worker.

Each processor atomically rewrites ``<state_dir>/status/<shard_id>.json``. The ``clickstream worker`` process reads
them to decide when the stream is drained (``--until-idle``), to answer health checks and to print progress.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ShardStatus:
    shard_id: str
    pid: int
    phase: str = "initializing"  # initializing | processing | ended | shut_down | lease_lost
    records_received: int = 0
    records_flushed: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    skipped: int = 0
    flushes: int = 0
    files_written: int = 0
    bytes_written: int = 0
    buffered_records: int = 0
    retries: int = 0
    commit_conflicts: int = 0  # flush attempts that lost their chain position to another writer
    arrival_to_durable_p99: float | None = None  # of the last flush, seconds
    newest_event_age: float | None = None  # of the last flush: commit time - newest event time, seconds
    millis_behind_latest: int | None = None
    # the shard's state in memory (CustomerState.memory_total), after its last change
    state_bytes: int | None = None
    applied_sequence: str | None = None
    checkpointed_sequence: str | None = None
    last_call_at: float | None = None
    last_record_at: float | None = None
    last_flush_at: float | None = None
    last_flush_seconds: float | None = None
    last_checkpoint_at: float | None = None
    waiting_since: float | None = None  # wall time since records have been waiting (buffered or shard behind)
    last_error: str | None = None  # the latest failure, also one being retried
    failing_since: float | None = None  # wall time the retries going on now began (None: none)
    terminal_error: str | None = None  # the error that ended this processor (it exited on it)
    local_state_error: str | None = None  # why the shard runs without its local state (None: it has one)
    started_at: float = 0.0
    updated_at: float = 0.0

    @property
    def processing(self) -> bool:
        """Processing its shard's records: its phase says so and no error ended it (a processor that exits on one
        keeps the phase until the KCL shuts it down, some 20 s)."""
        return self.phase == "processing" and not self.terminal_error


class StatusWriter:
    """Atomic, rate-limited writer of one shard's status file."""

    def __init__(self, directory: Path, min_interval_seconds: float = 1.0) -> None:
        self.directory = directory
        self.min_interval_seconds = min_interval_seconds
        self._last_write = 0.0
        self._refused = False  # the last write failed (said once until one succeeds)
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, status: ShardStatus, force: bool = False) -> bool:
        """Write ``status`` unless the last write is more recent than the interval (``force``: always); returns
        whether it wrote."""
        now = time.time()
        if not force and now - self._last_write < self.min_interval_seconds:
            return False
        if not status.started_at:
            status.started_at = now
        status.updated_at = now
        target = self.directory / _STATUS_FILES.replace("*", status.shard_id)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(asdict(status)), encoding="utf-8")
            temporary.replace(target)
        except OSError as error:
            # the shard's work goes on without its status file; the worker's heartbeat says it
            if not self._refused:
                log.warning("the status file %s could not be written: %s", target, error.strerror or error)
            self._refused = True
            temporary.unlink(missing_ok=True)
            return False
        self._refused = False
        self._last_write = now
        return True


#: A shard's status file in the status directory: ``<shard id>.json``.
_STATUS_FILES: Final = "*.json"


def status_directory(state_dir: Path) -> Path:
    """Where the shard status files of the worker whose state directory is ``state_dir`` live."""
    return state_dir / "status"


def clear_statuses(directory: Path) -> None:
    """Delete the status files a previous run of the worker left (its shards are not this run's)."""
    if directory.is_dir():
        for stale in directory.glob(_STATUS_FILES):
            stale.unlink()


def any_status_written(directory: Path) -> bool:
    """Whether a shard processor wrote its status file here, readable or not (``read_statuses`` skips a damaged
    one): whether one has started since ``clear_statuses``."""
    return directory.is_dir() and any(directory.glob(_STATUS_FILES))


def read_statuses(directory: Path) -> dict[str, ShardStatus]:
    """The latest status of every shard that reported, by shard id (unreadable files are skipped)."""
    statuses: dict[str, ShardStatus] = {}
    if not directory.is_dir():
        return statuses
    for path in directory.glob(_STATUS_FILES):
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            statuses[loaded["shard_id"]] = ShardStatus(**loaded)
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return statuses
