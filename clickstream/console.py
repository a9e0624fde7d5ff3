"""The CLI's voice on stderr: every line a command says, and its error line, in the format the logs are in.

Where logs are JSON (``--log-format json``, or ``auto`` off a terminal: an ECS task, a pipe to a log shipper),
stderr stays one JSON object per line, so a scheduled `score` that fails is an ERROR record that a log query or an
alarm finds, not a plain line among JSON ones. On a terminal the lines are plain sentences.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console
    from tqdm import tqdm

#: The logger name a command's own lines carry in JSON mode.
CLI_LOGGER = "clickstream"
#: Off a terminal, long work says how far it got this often (a log line), so a job's log shows it is alive.
PROGRESS_LOG_SECONDS = 30.0

log = logging.getLogger(CLI_LOGGER)


def json_mode() -> bool:
    """Whether the running command's stderr is JSON (decided once by the group from --log-format)."""
    context = click.get_current_context(silent=True)
    options = context.find_root().obj if context is not None else None
    return isinstance(options, dict) and bool(options.get("json_logs"))


def json_line(message: str, level: int, **fields: Any) -> str:
    """One JSON log record, as the logs write them, with ``fields`` added at its top level."""
    from runtime.logs import JsonFormatter

    record = logging.LogRecord(CLI_LOGGER, level, __file__, 0, message, None, None)
    entry = json.loads(JsonFormatter().format(record))
    entry.update(fields)
    return json.dumps(entry, default=str)


def say(message: str, level: int = logging.INFO) -> None:
    """A command's answer on stderr, shown at any --log-level: a JSON record where logs are JSON, else the plain
    sentence (a warning or an error led by its level)."""
    if json_mode():
        click.echo(json_line(message, level), err=True)
    else:
        prefix = "" if level < logging.WARNING else f"{logging.getLevelName(level).lower()}: "
        click.echo(prefix + message, err=True)


def stdout_console() -> Console:
    """A rich console on stdout whose reader going away (`summary | head`) ends the command as the front door ends
    every command then: 141, without a word. rich's own answer is SystemExit(1), which reads as a failure."""
    from rich.console import Console

    class _ReaderGoneConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _ReaderGoneConsole()


class JsonShownError(click.ClickException):
    """A command's failure shown as one ERROR record with its exit code (JSON mode), instead of click's
    ``Error: ...`` line and, for a usage error, the usage text."""

    def __init__(self, error: click.ClickException) -> None:
        super().__init__(error.format_message())
        self.exit_code = error.exit_code  # type: ignore[misc]  # click declares it on the class
        context = getattr(error, "ctx", None)
        self.help_hint = (
            f"see '{context.command_path} --help'"
            if isinstance(error, click.UsageError) and context
            else None
        )

    def show(self, file: IO[Any] | None = None) -> None:
        fields: dict[str, Any] = {"exit_code": self.exit_code}
        if self.help_hint:
            fields["hint"] = self.help_hint
        click.echo(json_line(self.format_message(), logging.ERROR, **fields), err=True, file=file)


class LastProgressLine:
    """When a command last said how far it got. One per command run, shared by its phases: a command whose phases
    each took 25 s (listing, reading records, reading files) said nothing for minutes when each phase kept its own
    timer."""

    def __init__(self, at: float) -> None:
        self.at = at


def last_progress_line(clock: Callable[[], float] = time.monotonic) -> LastProgressLine:
    """The running command's ``LastProgressLine``, started at the first ask (a fresh one outside a command, as in a
    test). Long work off a terminal logs once ``PROGRESS_LOG_SECONDS`` passed since it, and moves it on."""
    context = click.get_current_context(silent=True)
    if context is None:
        return LastProgressLine(clock())
    meta = context.find_root().meta
    last = meta.get(_LAST_LINE_KEY)
    if not isinstance(last, LastProgressLine):
        last = meta[_LAST_LINE_KEY] = LastProgressLine(clock())
    return last


_LAST_LINE_KEY = "clickstream.progress_logged_at"


class _Progress:
    """``(done, total)`` of one piece of work, shown as a bar or as a log line every ``log_seconds`` of the command's
    silence (``LastProgressLine``)."""

    def __init__(
        self, description: str, unit: str, bar: bool, log_seconds: float, clock: Callable[[], float]
    ) -> None:
        self.description, self.unit, self.bar, self.log_seconds, self.clock = (
            description,
            unit,
            bar,
            log_seconds,
            clock,
        )
        self.shown: tqdm[Any] | None = None
        self.last_line = last_progress_line(clock)

    def __call__(self, done: int, total: int) -> None:
        if self.bar:
            if self.shown is None:
                from tqdm import tqdm  # on the first bar shown: most commands never draw one

                self.shown = tqdm(
                    total=total, unit=self.unit, desc=self.description, file=sys.stderr, leave=False
                )
            if total != self.shown.total:  # a listing's total grows once it passes what it expected
                self.shown.total = total
                self.shown.refresh()
            self.shown.update(done - self.shown.n)
        elif self.clock() - self.last_line.at >= self.log_seconds:
            self.last_line.at = self.clock()
            log.info("%s: %s of %s %ss", self.description, f"{done:,}", f"{total:,}", self.unit)

    def close(self) -> None:
        if self.shown is not None:
            self.shown.close()


@contextmanager
def progress_of(
    description: str,
    unit: str,
    *,
    bar: bool,
    log_seconds: float = PROGRESS_LOG_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback for long work: a bar on stderr when ``bar`` (a terminal), else an INFO
    line once ``log_seconds`` passed since the command's first long work began or it last said how far it got
    (nothing for a command shorter than that): one timer across the command's phases."""
    progress = _Progress(description, unit, bar, log_seconds, clock)
    try:
        yield progress
    finally:
        progress.close()
