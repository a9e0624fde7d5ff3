"""Structured JSON logs on stderr (stdout of a record processor is the KCL protocol channel)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Fields a record may carry (``extra=``) that a JSON line shows: a shard's context, and the exit code a failure ends
#: the process with (alarms filter on it).
_CONTEXT_FIELDS = ("shard_id", "sequence_number", "worker_id", "flush_range", "exit_code")

#: Set by `clickstream worker` for its record processors: the Unix datagram socket their logs go to.
LOG_SOCKET_ENV = "CLICKSTREAM_LOG_SOCKET"
#: The log level and format (the CLI's --log-level / --log-format), also handed by the worker to its processors.
LOG_LEVEL_ENV = "CLICKSTREAM_LOG_LEVEL"
LOG_FORMAT_ENV = "CLICKSTREAM_LOG_FORMAT"
#: The logger of CloudWatch EMF metric lines: written whatever the log level (alarms must not go dark because the
#: logs were made quieter), and only as JSON (a text line is no metric).
METRICS_LOGGER = "clickstream.metrics"


def count_of(count: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``: a count and its noun, in the form the count takes (``plural`` when not noun + s)."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def verb_for(count: int, one: str = "is", many: str = "are") -> str:
    """The verb that agrees with ``count`` things: ``1 file is``, ``2 files are`` (``was``/``were`` when asked)."""
    return one if count == 1 else many


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: for status files and log lines that must stay on one line."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus shard / sequence context when given."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        emf = getattr(record, "emf", None)
        if isinstance(emf, dict):  # CloudWatch EMF needs its fields at the top level of the line
            entry.update(emf)
        return json.dumps(entry, default=str)


class DatagramLogHandler(logging.Handler):
    """Sends each formatted line to the worker's log socket.

    The MultiLangDaemon re-logs whatever a processor writes to stderr as "ERROR Received error line", so processors
    send their logs to the supervising worker instead, which writes them to its own stderr unchanged. Falls back to
    stderr when the socket is gone (the worker still sees real crashes there).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        try:
            self.sock.sendto(line.encode("utf-8", "replace"), self.path)
        except OSError:
            # the worker and its JVM both gone, stderr is a broken pipe: the line has nowhere to go
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except OSError:
                self.handleError(record)


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class LogRelay:
    """The worker's side of the log socket: a thread that passes every datagram on as one line (to stderr)."""

    def __init__(self, path: Path, sink: Callable[[str], None] = _to_stderr) -> None:
        self.path = path
        self.sink = sink
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(256 * 1024)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sink(data.decode("utf-8", "replace"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _destination() -> logging.Handler:
    socket_path = os.environ.get(LOG_SOCKET_ENV)
    return DatagramLogHandler(socket_path) if socket_path else logging.StreamHandler(sys.stderr)


def configure_logging(level: str = "INFO", json_format: bool = True) -> None:
    """Send all logs to stderr (or the worker's log socket); JSON for machines, plain text for people.

    Metric lines (``METRICS_LOGGER``) go to the same place at any level when the format is JSON, and nowhere in
    text format (for a person at a terminal)."""
    handler = _destination()
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    metrics = logging.getLogger(METRICS_LOGGER)
    metrics.propagate = False
    metrics.setLevel(logging.INFO)
    metric_lines = _destination() if json_format else logging.NullHandler()
    metric_lines.setFormatter(JsonFormatter())
    metrics.handlers[:] = [metric_lines]
    # Libraries that log at INFO what an operator need not see ("arviz_base not installed" on every score run).
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "arviz", "pymc", "pytensor"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
