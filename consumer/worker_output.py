"""What ``clickstream worker`` shows: log lines from three sources, and a live status for a person at a terminal.

Three sources write log lines: the supervisor itself (Python logging), the Java MultiLangDaemon (JSON lines on its
stderr, see ``logback.xml``) and the record processors (JSON lines over the log socket). ``LogSink`` takes each
line and either writes it to stderr (JSON unchanged, or as text) or, under a live status, appends it to
``<state_dir>/worker.log`` and shows only warnings and errors above the status.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from consumer.status import ShardStatus
from runtime.logs import count_of
from runtime.settings import KCL_FIRST_START_WAIT_MAX_SECONDS

#: Levels (Python's and logback's names) shown above a live status; everything goes to the log file.
_LOUD = {"WARN", "WARNING", "ERROR", "CRITICAL", "FATAL"}


def _parse(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def as_text(entry: dict[str, Any]) -> str:
    """A JSON log entry as one readable line: time, level, short logger name, shard, message."""
    stamp = str(entry.get("time", ""))[11:19]
    logger = str(entry.get("logger", "")).rsplit(".", 1)[-1]
    shard = f" [{entry['shard_id']}]" if entry.get("shard_id") else ""
    message = str(entry.get("message", "")).split("\\n", 1)[0].split("\n", 1)[0]
    return f"{stamp} {entry.get('level', '')!s:<5} {logger}{shard}: {message}"


#: How a line a child wrote outside its logger (not a JSON log record) is logged under ``--log-format json``: the
#: JVM writes there only what its logger could not (start-up failures, uncaught exceptions, VM warnings); a JVM that
#: fails is also reported by the supervisor, as an error.
_UNLOGGED_LEVEL: Final = "WARNING"
_UNLOGGED_LOGGER: Final = "kcl.output"


#: Said while no shard processor runs yet: the KCL's first start on a new lease table waits a random while before it
#: makes the leases, which reads as a hang.
FIRST_START_WAIT: Final = f"a first start on a new lease table waits 1-{KCL_FIRST_START_WAIT_MAX_SECONDS} s"


#: KCL warnings of every start off AWS (no EC2/ECS metadata to size workers by) and of a first lease assignment,
#: kept in the log but not shown over the live view in the worker's first ``_START_SECONDS``: read there as
#: something gone wrong. Later, the second means workers at their limits, and is shown. (logger, message)
_START_SECONDS: Final = 60.0
_USUAL_AT_START: Final = frozenset(
    {
        (
            "software.amazon.kinesis.worker.WorkerMetricsSelector",
            "Did not find an operating range metadata provider.",
        ),
        (
            "software.amazon.kinesis.coordinator.assignment.LeaseAssignmentManager",
            "Not able to assign all expiredOrUnAssignedLeases",
        ),
    }
)


class LogSink:
    """Receives every log line of the worker and its children; thread-safe."""

    def __init__(
        self,
        *,
        json_logs: bool,
        console: Console | None = None,
        log_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.json_logs = json_logs
        self.console = console
        self._clock = clock
        self._started = clock()
        self._file: IO[str] | None = log_file.open("a", encoding="utf-8") if log_file else None
        # reentrant: the worker's signal handler logs, and may run while this thread is inside ``line``
        self._lock = threading.RLock()

    def line(self, text: str) -> None:
        text = text.rstrip("\n")
        if not text:
            return
        entry = _parse(text)
        if entry is None and self.json_logs:
            # the JVM's own output outside its logger (a start-up failure, an uncaught exception's trace, a VM
            # warning): JSON like every other line, or a log pipeline's level filters and alarms miss exactly these
            entry = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "level": _UNLOGGED_LEVEL,
                "logger": _UNLOGGED_LOGGER,
                "message": text,
            }
            text = json.dumps(entry)
        with self._lock:
            if self._file is not None:
                self._file.write(text + "\n")
                self._file.flush()
            if entry is not None and "_aws" in entry and not self.json_logs:
                return  # a CloudWatch metric line: JSON for a machine, or nothing (never text for a person)
            if self.console is not None:
                level = str(entry.get("level", "")).upper() if entry else "ERROR"
                usual = (
                    entry is not None
                    and (entry.get("logger"), entry.get("message")) in _USUAL_AT_START
                    and self._clock() - self._started < _START_SECONDS
                )
                if level in _LOUD and not usual:
                    shown = as_text(entry) if entry else text
                    style = "red" if level in ("ERROR", "CRITICAL", "FATAL") else "yellow"
                    self.console.print(Text(shown, style=style), soft_wrap=True)
                return
            sys.stderr.write((text if self.json_logs or entry is None else as_text(entry)) + "\n")
            sys.stderr.flush()

    def pump(self, stream: Iterable[bytes]) -> threading.Thread:
        """Copy a child's output into the sink line by line, in a thread (until end of file)."""

        def run() -> None:
            for raw in stream:
                self.line(raw.decode("utf-8", "replace"))

        thread = threading.Thread(target=run, name="log-pump", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class SinkHandler(logging.Handler):
    """Routes the supervisor's own log records into a ``LogSink`` (as JSON lines, like the children's)."""

    def __init__(self, sink: LogSink, formatter: logging.Formatter) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


# ------------------------------------------------------------------------------------------------ status
@dataclass(frozen=True, slots=True)
class WorkerTotals:
    """The worker at a glance, from the shard status files."""

    shards_held: int
    records_in: int
    accepted: int
    rejected: int
    buffered: int
    #: redeliveries found already applied (after a restart or a moved lease): in, but neither accepted nor rejected
    skipped: int
    behind_ms: int
    last_flush_age: float | None  # seconds since the newest flush of any shard
    oldest_unflushed: float | None  # seconds the oldest waiting record has waited (None: all durable)
    # shards whose S3 writes or checkpoints keep failing: how many, the longest for how long, its error
    failing: tuple[int, float, str] | None = None
    # held shards the KCL has not called for SILENT_SECONDS: how many, the longest for how long
    silent: tuple[int, float] | None = None

    @classmethod
    def of(cls, statuses: dict[str, ShardStatus], now: float) -> WorkerTotals:
        held = [s for s in statuses.values() if s.processing]
        flushes = [s.last_flush_at for s in statuses.values() if s.last_flush_at]
        waiting = [s.waiting_since for s in held if s.waiting_since]
        failing = sorted((s.failing_since, s.last_error or "") for s in held if s.failing_since)
        silent = [
            now - s.last_call_at for s in held if s.last_call_at and now - s.last_call_at > SILENT_SECONDS
        ]
        return cls(
            shards_held=len(held),
            records_in=sum(s.records_received for s in statuses.values()),
            accepted=sum(s.accepted for s in statuses.values()),
            rejected=sum(s.rejected for s in statuses.values()),
            buffered=sum(s.buffered_records for s in held),
            skipped=sum(s.skipped for s in statuses.values()),
            behind_ms=max((s.millis_behind_latest or 0 for s in held), default=0),
            last_flush_age=now - max(flushes) if flushes else None,
            oldest_unflushed=now - min(waiting) if waiting else None,
            failing=(len(failing), now - failing[0][0], failing[0][1]) if failing else None,
            silent=(len(silent), max(silent)) if silent else None,
        )

    def skipped_then(self, separator: str) -> str:
        """The redeliveries already applied and ``separator``, said only when there are some (after a restart or a
        moved lease the counts would not add up without them)."""
        return f"skipped {self.skipped:,} (already applied){separator}" if self.skipped else ""

    def sentence(self) -> str:
        """One line for logs (the JSON status line when there is no terminal). Its counts are those of the shard
        processors running now (a lease that moved starts its shard's from zero)."""
        line = (
            f"{count_of(self.shards_held, 'shard')} held; records in {self.records_in:,}, accepted {self.accepted:,}, "
            f"rejected {self.rejected:,}, {self.skipped_then(', ')}buffered {self.buffered:,}; "
            f"behind latest {_ms(self.behind_ms)}; "
            f"last flush {_ago(self.last_flush_age)}; freshness: {_freshness(self.oldest_unflushed)}"
        )
        if self.failing is not None:
            count, seconds, error = self.failing
            line += (
                f"; FAILING on {count_of(count, 'shard')}, the longest for {seconds:.0f}s (retried): {error}"
            )
        if self.silent is not None:
            count, seconds = self.silent
            line += (
                f"; the KCL has not called {count_of(count, 'shard')} for {seconds:.0f}s (reads refused or throttled? "
                "see its log lines): their lag and freshness above are as of then"
            )
        return line


#: A held shard the KCL has not called for this long is not being read (it calls every poll, records or not).
SILENT_SECONDS: Final = 30.0


def _ms(millis: int) -> str:
    return f"{millis / 1000:.1f}s" if millis >= 1000 else f"{millis}ms"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _freshness(oldest_unflushed: float | None) -> str:
    if oldest_unflushed is None:
        return "everything received is durable"
    return f"oldest unflushed record waiting {oldest_unflushed:.0f}s"


def _shard_label(shard_id: str) -> str:
    """``shardId-000000000007`` -> ``7`` (the table must fit 80 columns)."""
    tail = shard_id.rsplit("-", 1)[-1]
    return str(int(tail)) if tail.isdigit() else shard_id


def status_view(statuses: dict[str, ShardStatus], now: float, *, headline: str, max_rows: int = 16) -> Group:
    """The live status: a headline, totals and one row per shard (fits 80 columns)."""
    totals = WorkerTotals.of(statuses, now)
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1))
    for column, justify in (
        ("shard", "right"),
        ("phase", "left"),
        ("in", "right"),
        ("accepted", "right"),
        ("rejected", "right"),
        ("buffered", "right"),
        ("behind", "right"),
        ("flushed", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    # the shards held first (after a reshard, finished parents would push them out), then the others
    shown = sorted(statuses.items(), key=lambda item: (not item[1].processing, item[0]))
    for shard_id, status in shown[:max_rows]:
        table.add_row(
            _shard_label(shard_id),
            status.phase.replace("_", " "),
            f"{status.records_received:,}",
            f"{status.accepted:,}",
            f"{status.rejected:,}",
            f"{status.buffered_records:,}",
            _ms(status.millis_behind_latest or 0),
            _ago(now - status.last_flush_at if status.last_flush_at else None),
        )
    lines = [
        Text(headline, style="bold", no_wrap=True, overflow="ellipsis"),
        Text(
            f"{count_of(totals.shards_held, 'shard')} held | in {totals.records_in:,} | accepted {totals.accepted:,} | "
            f"rejected {totals.rejected:,} | {totals.skipped_then(' | ')}behind {_ms(totals.behind_ms)}",
            no_wrap=True,
            overflow="ellipsis",
        ),
        Text(
            f"last flush {_ago(totals.last_flush_age)} | freshness: {_freshness(totals.oldest_unflushed)}",
            no_wrap=True,
            overflow="ellipsis",
        ),
    ]
    if not statuses:
        lines.append(Text(f"waiting for the KCL to take leases ({FIRST_START_WAIT}) ...", style="dim"))
        return Group(*lines)
    if len(shown) > max_rows:
        return Group(*lines, table, Text(f"... {count_of(len(shown) - max_rows, 'more shard')}", style="dim"))
    return Group(*lines, table)


def uptime(started: float) -> str:
    seconds = time.monotonic() - started
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def clean_stop(shards_started: bool) -> str:
    """How a requested stop with nothing left behind is said: a worker that never started a shard processor (a
    stop during the KCL's first lease wait, or a standby) flushed nothing, and must not say it did."""
    if shards_started:
        return "stopped cleanly: every shard flushed and checkpointed"
    return "stopped cleanly: no shard processor had started, so nothing was read"


def final_words(code: int, log_file: Path, *, shards_started: bool = True) -> str:
    """The last line a worker with a live status prints (its INFO lines went to ``log_file`` only)."""
    if code == 0:
        outcome = clean_stop(shards_started)
    else:
        outcome = f"stopped with exit code {code} (the reason is printed above)"
    return f"{outcome}; the full log is {log_file}"
