"""The ``clickstream`` command line: emulator, setup, generate, produce, worker, replay, health, summary, manifest,
score, report, demo.

Every setting comes from a ``CLICKSTREAM_*`` environment variable (see ``runtime.settings``); a flag given on
the command line wins over the environment. ``--help`` on each command names the variable behind each flag.
Every failure ends in one line on stderr (``clickstream.errors``): exit code 2 for bad usage or configuration,
1 for a runtime failure; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from click.core import ParameterSource

from clickstream.clv_commands import report, score
from clickstream.console import JsonShownError, json_mode, progress_of, say
from clickstream.errors import FrontDoorError, explain, kms_key_unusable, query_interrupted
from clickstream.options import (
    FiniteFloatRange,
    LocalPath,
    build_on,
    build_settings,
    command_progress_option,
    outside_flag_years,
    parse_flag_time,
    progress_option,
    setting_option,
    show_progress,
    top_option,
    writable_file,
    writable_folder,
)
from runtime.exit_codes import INTERRUPTED, OK, READER_GONE, RUNTIME, TERMINATED, USAGE
from runtime.logs import LOG_FORMAT_ENV, LOG_LEVEL_ENV, count_of, verb_for
from runtime.settings import Settings
from schemas.layout import DATA_OUTPUTS

log = logging.getLogger("clickstream")

_F = TypeVar("_F", bound=Callable[..., Any])

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class CommandFailed(click.ClickException):
    """A one-line error with an exit code (click prints ``Error: <message>`` on stderr)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


#: The group's own options, and whether each takes a value: also accepted after the command's name.
_GROUP_OPTIONS: Final = {"--debug": False, "--log-level": True, "--log-format": True}


def group_options_first(args: list[str]) -> list[str]:
    """``setup --debug`` read as ``--debug setup``: the group's options moved before the command (up to a ``--``),
    so that they work wherever they are typed."""
    end = args.index("--") if "--" in args else len(args)
    moved: list[str] = []
    kept: list[str] = []
    position = 0
    while position < end:
        token = args[position]
        takes_value = _GROUP_OPTIONS.get(token.split("=", 1)[0])
        if takes_value is None:
            kept.append(token)
        else:
            moved.append(token)
            if takes_value and "=" not in token:
                # moved before the command, it would take the command's name for its value
                if position + 1 >= end:
                    raise click.UsageError(f"Option '{token}' requires an argument.")
                position += 1
                moved.append(args[position])
        position += 1
    return [*moved, *kept, *args[end:]]


def _command_of(args: list[str]) -> str | None:
    """The command named in the raw arguments: the first that is no group option or its value."""
    position = 0
    while position < len(args):
        takes_value = _GROUP_OPTIONS.get(args[position].split("=", 1)[0])
        if takes_value is None and not args[position].startswith("-"):
            return args[position]
        # a group option with its value (an unknown option is taken for a flag)
        position += 2 if takes_value and "=" not in args[position] else 1
    return None


def _answer_as_health_check(error: click.ClickException, command: str | None) -> None:
    """``health``'s usage errors (its flags, the group's log settings) answered as a health check: its JSON report
    and 1, unhealthy, as for its other bad settings (Docker reserves 2)."""
    if command != "health" or error.exit_code != USAGE:
        return
    from consumer.health import HealthReport

    problem = f"this health check's settings are invalid: {error.format_message()}"
    click.echo(HealthReport(healthy=False, shards_processing=0, problems=[problem]).to_json())
    error.exit_code = RUNTIME  # type: ignore[misc]  # click declares it on the class


#: What a command stopped by Ctrl-C leaves behind (commands not named write nothing).
_INTERRUPTION_LEAVES: Final = {
    "setup": "run it again: it creates only what is still missing",
    "generate": "no output file was written (an earlier file of that name is as it was)",
    "produce": "records sent before the stop stay on the stream; the same input can be sent again: the worker counts "
    "an event id delivered twice once (within CLICKSTREAM_DEDUPE_WINDOW_DAYS)",
    "score": "no run was committed (readers and the next run ignore a run's files without its commit record); "
    "run it again",
    "report": "the report file may be missing or incomplete; run it again",
    "manifest": "with --upload, the manifest may not have been uploaded; run it again (it is rewritten whole)",
    "summary": "with --download, the folder may hold only part of the files; run it again",
    "demo": "the demo's emulator and worker were stopped; run it again",
}


#: Where a command's run leaves more specific words than ``_INTERRUPTION_LEAVES`` for a stop (``ctx.meta``).
_LEAVES_NOW: Final = "clickstream.interruption_leaves"


class FrontDoor(click.Group):
    """Turns any exception a command raises into one line and an exit code (2 usage/configuration, 1 runtime).

    The one place errors are handled, for every command (also ones added later): commands just raise.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # the group's own usage errors (--bogus, a bad --log-level) come before --log-format is read: looked for here
        try:
            return super().parse_args(ctx, group_options_first(args))
        except click.exceptions.NoArgsIsHelpError:
            raise  # `clickstream` alone: the help, as text, whatever the format
        except click.ClickException as error:
            _answer_as_health_check(error, _command_of(args))
            if _json_logs(_log_format_in(args)):
                raise JsonShownError(error) from None
            raise

    def invoke(self, ctx: click.Context) -> Any:
        # SIGTERM (ECS stopping a scheduled task, `timeout`) stops a command as Ctrl-C does, saying what it leaves
        # behind, where it ended it without a word; a command with a stop of its own (worker) sets its own handler
        on_main_thread = threading.current_thread() is threading.main_thread()
        terminated = threading.Event()
        try:
            with _sigterm_as_interrupt() if on_main_thread else nullcontext(terminated) as terminated:
                ctx.meta[_SIGTERM_SEEN] = terminated
                try:
                    return super().invoke(ctx)
                except RuntimeError as error:
                    if query_interrupted(error):  # Ctrl-C while DuckDB ran a statement
                        raise KeyboardInterrupt from error
                    raise
        except KeyboardInterrupt:  # commands that say more (produce, replay, worker) handle Ctrl-C themselves
            command = ctx.invoked_subcommand or "the command"
            left = ctx.meta.get(_LEAVES_NOW) or _INTERRUPTION_LEAVES.get(command, "nothing was written")
            say(
                f"{command} interrupted ({_stop_cause(terminated)}) before it finished: {left}",
                logging.WARNING,
            )
            sys.exit(_stop_exit_code(terminated))
        except click.ClickException as error:
            _answer_as_health_check(error, ctx.invoked_subcommand)
            # "Missing command" and an unknown command come before the group's callback decided the format: its
            # option decides here
            if json_mode() or _json_logs(str(ctx.params.get("log_format") or "auto")):
                raise JsonShownError(error) from None
            raise
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except BrokenPipeError:  # the reader went away (`generate -o - | head`): nothing to say to anyone
            # Python's own flush at exit would fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(READER_GONE)
        except Exception as error:  # noqa: BLE001 - the one place every failure becomes one line
            failure = explain(error)
            options = ctx.obj if isinstance(ctx.obj, dict) else {}
            if options.get("debug") or logging.getLogger().isEnabledFor(logging.DEBUG):
                traceback.print_exception(error, file=sys.stderr)
            failed = CommandFailed(failure.message, failure.exit_code)
            raise (JsonShownError(failed) if json_mode() else failed) from None


def _json_logs(log_format: str) -> bool:
    """Whether stderr is JSON for this --log-format (auto: JSON off a terminal), in any case."""
    log_format = log_format.lower()
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def _log_format_in(args: list[str]) -> str:
    """--log-format from the raw arguments (or its variable), for an error raised before click parsed it."""
    for number, argument in enumerate(args):
        if argument == "--log-format" and number + 1 < len(args):
            return args[number + 1]
        if argument.startswith("--log-format="):
            return argument.partition("=")[2]
    return os.environ.get(LOG_FORMAT_ENV) or "auto"


def _refuse_empty(ctx: click.Context, param: click.Parameter, variable: str, choices: str) -> None:
    """An empty variable is an error, as for every setting (click would read it as unset)."""
    if (
        os.environ.get(variable) == ""
        and ctx.get_parameter_source(str(param.name)) == ParameterSource.DEFAULT
    ):
        raise CommandFailed(
            f"{variable}: empty: leave it out to use the default ({param.default}), or give {choices}",
            USAGE,
        )


def _check_log_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    _refuse_empty(ctx, param, LOG_LEVEL_ENV, f"one of {', '.join(LOG_LEVELS)}")
    level = value.upper()
    level = "WARNING" if level == "WARN" else level  # WARN: the KCL's (Java) name, logging's alias
    if level not in LOG_LEVELS:
        from_env = ctx.get_parameter_source(str(param.name)) == ParameterSource.ENVIRONMENT
        source = LOG_LEVEL_ENV if from_env else "--log-level"
        raise CommandFailed(f"{source}: must be one of {', '.join(LOG_LEVELS)} (got {value!r})", USAGE)
    return level


def _check_log_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    _refuse_empty(ctx, param, LOG_FORMAT_ENV, "auto, json or text")
    if value.lower() not in ("auto", "json", "text"):  # in any case, as the log level
        from_env = ctx.get_parameter_source(str(param.name)) == ParameterSource.ENVIRONMENT
        source = LOG_FORMAT_ENV if from_env else "--log-format"
        raise CommandFailed(f"{source}: must be auto, json or text (got {value!r})", USAGE)
    return value.lower()


#: Shown under every --help of the group: what a script or an orchestrator can rely on.
EXIT_CODES_HELP: Final = (
    "Exit codes: 0 done; 1 failed at run time (endpoint down, an AWS call failing, records not delivered; "
    "`health`: unhealthy); 2 bad usage or configuration (named in one line); 3 `worker` found itself unhealthy "
    "(a stuck shard) and stopped; 130 stopped by Ctrl-C, saying what it leaves behind (`worker` and `emulator` "
    "stop cleanly on Ctrl-C: 0); 141 its output's reader went away (`| head`), without a word; 143 stopped by "
    "SIGTERM, saying the same (`worker` stops cleanly on SIGTERM: 0, or 1 with records left unflushed)."
)
#: ``health`` answers as a container health check: Docker reads 0 and 1 and reserves 2.
HEALTH_EXIT_CODES_HELP: Final = (
    "Exit codes: 0 healthy; 1 unhealthy, or this check's own settings, flags or values invalid (its JSON report "
    "names the problem: Docker reserves 2)."
)


@click.group(
    cls=FrontDoor,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EXIT_CODES_HELP,
)
@click.option(
    "--log-level",
    default="INFO",
    envvar=LOG_LEVEL_ENV,
    show_default=True,
    callback=_check_log_level,
    help=f"Log level: {', '.join(LOG_LEVELS)}. [env: {LOG_LEVEL_ENV}]",
)
@click.option(
    "--log-format",
    default="auto",
    envvar=LOG_FORMAT_ENV,
    show_default=True,
    callback=_check_log_format,
    help=f"Log format on stderr: json, text, or auto (text on a terminal, else json). [env: {LOG_FORMAT_ENV}]",
)
@click.option("--debug", is_flag=True, help="On an error, print the traceback too.")
@click.version_option(package_name="clickstream-rfm", message="clickstream %(version)s")
@click.pass_context
def main(ctx: click.Context, log_level: str, log_format: str, debug: bool) -> None:
    """Clickstream -> Kinesis -> KCL worker -> per-customer RFM aggregates -> Parquet on S3 -> CLV scores.

    Standard AWS variables apply (AWS_ENDPOINT_URL, AWS_REGION, credentials). Start with `clickstream demo`.
    """
    from runtime.logs import configure_logging

    json_logs = _json_logs(log_format)
    ctx.obj = {"debug": debug, "log_level": log_level, "json_logs": json_logs}
    configure_logging(log_level, json_format=json_logs)


# ---------------------------------------------------------------------------------------------------------- emulator
@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind (loopback unless --allow-remote).",
)
@click.option(
    "--port",
    default=4566,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to serve on (0: any free).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a non-loopback --host. The emulator has no authentication: anyone who reaches it can read and "
    "write everything in it.",
)
def emulator(host: str, port: int, allow_remote: bool) -> None:
    """Run the embedded AWS endpoint (moto: Kinesis, DynamoDB, S3, CloudWatch) in the foreground.

    It speaks HTTP/1.1 and h2c on one port, as the KCL needs. Point other commands at it with
    AWS_ENDPOINT_URL=http://127.0.0.1:PORT. For development and demos only (it is not in the container image).
    """
    _require_the_emulator("the embedded endpoint")
    from emulator.server import RemoteBindRefusedError, run_foreground

    if allow_remote:
        log.warning("serving the emulator on %s without authentication (--allow-remote)", host)
    try:
        run_foreground(host, port, allow_remote=allow_remote)
    except RemoteBindRefusedError as error:
        raise FrontDoorError(str(error), USAGE) from None
    except OSError as error:
        # the host name resolves to no address, or to an address of another machine
        if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
            raise FrontDoorError(
                f"cannot serve on {host}:{port}: {error.strerror or error} (--host: a name or address of this "
                "machine)",
                USAGE,
            ) from None
        raise FrontDoorError(
            f"cannot serve on {host}:{port}: {error.strerror or error} (another emulator running? pick another "
            "--port, or --port 0 for any free one)",
            1,
        ) from None


def _require_the_emulator(what: str) -> None:
    """The embedded endpoint (the emulator package and moto) is in a source checkout, not in the container image."""
    try:
        import moto  # noqa: F401 - the server imports it when it starts

        import emulator.server  # noqa: F401
    except ImportError as error:
        raise FrontDoorError(
            f"{what} is for development and demos ({error.name} is missing, as in the container image): install "
            "from a source checkout with `make setup` or pip install -e '.[emulator]'",
            USAGE,
        ) from None


# ---------------------------------------------------------------------------------------------------------- setup
@main.command()
@setting_option("stream_name", "--stream")
@setting_option("stream_shards", "--shards", type=int)
@setting_option("bucket", "--bucket")
def setup(**overrides: Any) -> None:
    """Create the Kinesis stream and the S3 bucket if they do not exist (safe to re-run)."""
    from clickstream.resources import setup_resources

    settings = build_settings(**overrides)
    arn = setup_resources(settings)
    say(f"stream {settings.stream_name} ({arn}) and bucket s3://{settings.bucket} are ready")


# ---------------------------------------------------------------------------------------------------------- generate
def _within_generator_bound(ctx: click.Context, param: click.Parameter, count: int | None) -> int | None:
    """The generator's bounds on customers and events, read where they are owned (the generator module loads only
    when used): it plans the whole world in memory before the first event."""
    from producer.generator import MAX_CUSTOMERS, MAX_EVENTS

    bound, planned = (
        (MAX_CUSTOMERS, "customer (about 0.5 KB each)")
        if param.name == "customers"
        else (MAX_EVENTS, "event's session (about 50 bytes an event)")
    )
    if count is not None and count > bound:
        raise click.BadParameter(
            f"{count:,} is more than the generator's {bound:,}: it plans every {planned} in memory before the "
            "first event",
            ctx,
            param,
        )
    return count


def _customers_option(default: int) -> Callable[[_F], _F]:
    return click.option(
        "--customers",
        default=default,
        show_default=True,
        type=click.IntRange(1),
        callback=_within_generator_bound,
        help="Customers (at most 10 million: each is planned in memory, about 0.5 KB).",
    )


def _generator_options(func: _F) -> _F:
    options = [
        _customers_option(default=500),
        click.option(
            "--events",
            default=50_000,
            show_default=True,
            type=click.IntRange(0),
            callback=_within_generator_bound,
            help="Valid events (duplicates and malformed records come on top; at most 100 million: their sessions "
            "are planned in memory, about 50 bytes each).",
        ),
        click.option(
            "--seed", default=42, show_default=True, type=int, help="Random seed: same seed, same bytes."
        ),
        click.option(
            "--start",
            default="2026-03-01",
            show_default=True,
            metavar="YYYY-MM-DD",
            callback=_history_start,
            help="First day (UTC) of the simulated history. Same start, days and seed: same bytes.",
        ),
        click.option(
            "--days",
            default=60,
            show_default=True,
            type=click.IntRange(1, 3650),
            help="Length of the simulated history in days (at most ten years). A history that reaches today has "
            "events the worker rejects as event_time_in_future: a warning says so, and which --start ends it "
            "yesterday.",
        ),
        click.option(
            "--duplicate-rate",
            default=0.0,
            show_default=True,
            type=FiniteFloatRange(0, 1),
            help="Fraction of events re-sent with the same bytes (as producer retries do).",
        ),
        click.option(
            "--malformed-rate",
            default=0.0,
            show_default=True,
            type=FiniteFloatRange(0, 1),
            help="Fraction of extra malformed records (bad JSON/UTF-8, wrong types, ...).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _history_start(_: click.Context, __: click.Parameter, value: str) -> datetime:
    try:
        day = parse_flag_time(value)
    except ValueError as error:
        raise click.BadParameter(f"{error}: use YYYY-MM-DD (a UTC day)") from None
    if isinstance(day, datetime):
        raise click.BadParameter(
            f"{value!r} is a time: give a day, YYYY-MM-DD (histories start at 00:00 UTC)"
        )
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def _make_generator(**options: Any) -> Any:
    """The generator of the command's generator options, warning first of a history that reaches today."""
    from producer.generator import ClickstreamGenerator

    start, days = options["start"], options["days"]
    today, last = datetime.now(UTC).date(), start.date() + timedelta(days=days - 1)
    oldest_taken = Settings.model_fields["min_event_time"].default
    if start < oldest_taken:
        say(
            f"--start {start.date()}: the history begins before {oldest_taken.date()}, the worker's default "
            "CLICKSTREAM_MIN_EVENT_TIME; with it, the worker rejects the events before that as event_time_too_old",
            logging.WARNING,
        )
    if last >= today:
        say(
            f"--start {start.date()} --days {days}: the history runs to {last}, past the time of today "
            f"({today} UTC); the worker rejects events more than CLICKSTREAM_MAX_FUTURE_SKEW_SECONDS ahead of its "
            f"clock (event_time_in_future); --start {today - timedelta(days=days)} ends it yesterday",
            logging.WARNING,
        )
    return ClickstreamGenerator(**options)


#: Output names whose suffix asks for a format ``generate`` does not write (it compresses by gzip alone): JSONL
#: under such a name reads as garbage to the tool its name calls for.
_NOT_WRITTEN: Final = {
    ".bz2": "bzip2",
    ".xz": "xz",
    ".zst": "zstd",
    ".zip": "zip",
    ".7z": "7z",
    ".tar": "tar",
    ".tgz": "tar",
    ".parquet": "Parquet",
}


@main.command()
@_generator_options
@click.option(
    "--output",
    "-o",
    required=True,
    type=LocalPath(dir_okay=False, path_type=Path),
    help="JSONL file to write ('-' for stdout); gzip-compressed when its name ends in .gz.",
)
@progress_option
def generate(output: Path, progress: bool | None, **options: Any) -> None:
    """Write deterministic demo clickstream as JSONL: one event per line, exactly the bytes put on the stream."""
    from producer.generator import write_jsonl, writes_in_place

    if (asked := _NOT_WRITTEN.get(output.suffix.lower())) is not None:
        raise FrontDoorError(
            f"--output {output}: its name asks for {asked}, and generate writes JSONL, gzip-compressed when the "
            "name ends in .gz: name it .jsonl or .jsonl.gz (or give '-' and pipe it)",
            USAGE,
        )
    generator = _make_generator(**options)
    # a stop (Ctrl-C, SIGTERM) is said by the front door: the output file is written whole or not at all, unless
    # it is written in place (stdout, a device or a pipe, a link write_jsonl cannot replace through)
    context = click.get_current_context()
    with progress_of("generating", "record", bar=show_progress(progress)) as report:
        records = _counted(generator.events(), generator.total_records, report)
        if str(output) == "-":
            context.meta[_LEAVES_NOW] = "the records generated before the stop were written to stdout"
            stream = sys.stdout.buffer
            for data in records:
                stream.write(data + b"\n")
        else:
            path = writable_file("--output", output)
            if writes_in_place(path):
                context.meta[_LEAVES_NOW] = (
                    f"{output} holds the records generated before the stop (written in place: a device, a pipe, or "
                    "a link to nothing yet or to a file a rename would change for others)"
                )
            write_jsonl(path, records)
    summary = generator.summary
    # fewer customers than asked drew an event: each one's activity is drawn, some draw none in a short run
    quiet = summary.customers - summary.customers_seen
    idle = (
        f"; {quiet:,} of the {count_of(summary.customers, 'customer')} drew no event (more --events for more)"
        if quiet
        else ""
    )
    say(
        f"wrote {count_of(generator.total_records, 'record')} ({count_of(summary.valid_events, 'valid event')}, "
        f"{count_of(summary.duplicates, 'duplicate')}, {summary.malformed:,} malformed) for "
        f"{count_of(summary.customers_seen, 'customer')}{idle}"
    )


def _counted(
    records: Iterator[bytes], total: int, report: Callable[[int, int], None], every: int = 10_000
) -> Iterator[bytes]:
    """``records``, reporting ``(done, total)`` every ``every`` records and at the end."""
    done = 0
    report(0, total)
    for done, data in enumerate(records, start=1):
        yield data
        if done % every == 0:
            report(done, total)
    report(done, total)


# ---------------------------------------------------------------------------------------------------------- produce
def _say_pipe_is_consumed(input_file: Path | None) -> None:
    """ "The same input can be sent again" does not hold for a pipe: what was read from it is gone from it."""
    if input_file is not None and not _is_regular_file(input_file):
        what = "stdin" if str(input_file) == "-" else f"{input_file} (not a regular file)"
        say(
            f"the input was {what}: the records read from it and not delivered (a batch of up to 500 is sent "
            "when full, at the end of the input, or once a record has waited --linger seconds) are no longer in "
            "the pipe: send them again from their source",
            logging.WARNING,
        )


def _is_regular_file(path: Path) -> bool:
    """Whether ``path`` (``-``: stdin) is a regular file, read at disk speed, rather than a pipe or a device."""
    # a stdin with no descriptor (an embedding program's byte stream) is no regular file
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode if str(path) == "-" else path.stat().st_mode
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return stat.S_ISREG(mode)


def replay_work_dir(settings: Settings) -> Path:
    """Where a replay keeps its lock: under the state directory, beside the worker's."""
    return settings.state_dir / "replay"


@contextmanager
def _sigterm_as_interrupt() -> Iterator[threading.Event]:
    """SIGTERM (docker stop, ECS, `timeout`) stops a command as Ctrl-C does, so it still says what it delivered or
    leaves behind; the event tells the two apart. The previous handler comes back afterwards."""
    terminated = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        terminated.set()
        raise KeyboardInterrupt

    # started ignoring it (a script's trap '' TERM): it stays ignored
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield terminated
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Where the front door keeps the event its SIGTERM handler sets (``click.Context.meta``, shared by the commands).
_SIGTERM_SEEN: Final = "clickstream.sigterm_seen"


def _sigterm_seen() -> threading.Event:
    """Set once a SIGTERM stopped the command: a command that says more on a stop tells it from Ctrl-C by it."""
    seen = click.get_current_context().meta.get(_SIGTERM_SEEN)
    return seen if isinstance(seen, threading.Event) else threading.Event()


def _stop_cause(terminated: threading.Event) -> str:
    return "SIGTERM" if terminated.is_set() else "Ctrl-C"


def _stop_exit_code(terminated: threading.Event) -> int:
    return TERMINATED if terminated.is_set() else INTERRUPTED


@main.command()
@click.option(
    "--input",
    "input_file",
    type=LocalPath(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="JSONL file to put, one record per line, sent byte for byte (gzip is recognised by its first bytes; - "
    "reads stdin). Without it, events are generated on the fly.",
)
@_generator_options
@click.option(
    "--rate", type=FiniteFloatRange(min=1), default=None, help="Max records per second (default: no limit)."
)
@click.option(
    "--linger",
    type=FiniteFloatRange(min=0.01, max=60),
    default=None,
    help="With an --input that is not a regular file (stdin, a pipe): the longest a record read waits for its "
    "batch of 500 to fill before the batch is sent, in seconds (default 1).",
)
@progress_option
@setting_option("stream_name", "--stream")
def produce(
    input_file: Path | None,
    rate: float | None,
    linger: float | None,
    progress: bool | None,
    stream_name: str | None,
    **options: Any,
) -> None:
    """Put events on the stream with PutRecords (batched, retried, nothing silently dropped).

    Without --input, generated demo events are put: against AWS itself (AWS_ENDPOINT_URL unset or an AWS endpoint)
    only with an explicit --events, so that demo load never reaches a production stream by accident."""
    from botocore.exceptions import ClientError

    from consumer.preflight import is_missing_stream, stream_missing
    from producer.generator import DoubtfulRecords, InputFormatError, JsonlRecords
    from producer.kinesis_put import (
        DEFAULT_LINGER_SECONDS,
        KinesisProducer,
        PutInputError,
        PutInterrupted,
        PutRecordsError,
        SendNow,
        StreamNotWritableError,
        fits_put_records,
        lingering,
        require_stream,
    )
    from runtime.aws import aws_client

    settings = build_settings(stream_name=stream_name)
    context = click.get_current_context()
    given = [name for name in options if context.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if input_file is not None and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise FrontDoorError(
            f"{flags}: the generator's options do not apply with --input (the file is sent as is)", USAGE
        )
    if input_file is None and linger is not None:
        raise FrontDoorError(
            "--linger applies to an --input read from a pipe or stdin: generated events are sent as they are made",
            USAGE,
        )
    if input_file is None and not settings.emulated and "events" not in given:
        # synthetic customers on what may be a production stream: only when asked for in so many words
        raise FrontDoorError(
            f"without --input, produce puts generated demo events on stream {settings.stream_name!r} in AWS "
            "(AWS_ENDPOINT_URL unset or an AWS endpoint): give --events N to do that, or --input FILE for real "
            "records",
            USAGE,
        )
    if input_file is not None:
        if str(input_file) == "-" and sys.stdin is None:  # started with stdin closed (`<&-`)
            raise FrontDoorError("--input -: stdin is closed: give a file, or a pipe on stdin", USAGE)
        records: Iterable[bytes] = JsonlRecords(input_file)
        total = None
    else:
        generator = _make_generator(**options)
        records, total = generator.events(), generator.total_records
    context.meta[_LEAVES_NOW] = "nothing was sent"  # a stop while a stream being created is waited for
    try:
        require_stream(aws_client("kinesis", settings), settings.stream_name)
    except ClientError as error:
        if is_missing_stream(error):  # said as the worker says it: where it was looked for, how to make it
            raise FrontDoorError(stream_missing(settings), USAGE) from None
        raise
    except StreamNotWritableError as not_writable:
        raise FrontDoorError(
            f"{not_writable}; nothing was sent", USAGE if not_writable.lasting else RUNTIME
        ) from None
    del context.meta[_LEAVES_NOW]
    # botocore retries nothing: every retry is the producer's, counted and logged
    producer = KinesisProducer(
        aws_client("kinesis", settings, total_attempts=1),
        settings.stream_name,
        max_records_per_second=rate,
        progress=show_progress(progress),
    )
    doubtful = DoubtfulRecords(settings.max_record_bytes, fits_put_records)
    sent: Iterator[bytes | SendNow]
    if input_file is None:
        sent = iter(records)
    elif not _is_regular_file(input_file):  # a pipe may trickle: its records are sent as they come
        sent = lingering(doubtful.counted(records), DEFAULT_LINGER_SECONDS if linger is None else linger)
    else:
        sent = doubtful.counted(records)
        if linger is not None:
            say(
                f"--linger has no effect: {input_file} is a regular file, read at disk speed", logging.WARNING
            )

    def say_doubtful(source: object) -> None:
        for warning in doubtful.warnings(source):
            say(warning, logging.WARNING)

    try:
        # the summary is the command's answer: printed at any log level, not logged
        summary = producer.put(sent, total=total, log_summary=False)
    except (PutRecordsError, PutInputError) as error:
        # refused at its first bytes, whatever the input (a file, stdin, a pipe): nothing read or sent
        if isinstance(error.__cause__, InputFormatError):
            raise FrontDoorError(str(error.__cause__), USAGE) from None
        say_doubtful(f"{input_file} read (delivered or not)")
        _say_pipe_is_consumed(input_file)
        refused = explain(error.__cause__) if isinstance(error.__cause__, ClientError) else None
        if isinstance(error, PutRecordsError) and error.refused_with:  # records refused for good: the key
            refused = kms_key_unusable(error.refused_with[0], "", "PutRecords")
        # refused for the caller's identity or policy (exit 2, as a set-up error), not by the service
        if refused is not None and refused.exit_code == USAGE:
            raise FrontDoorError(f"{refused.message}; {error.outcome()}", USAGE) from None
        raise FrontDoorError(error.outcome()) from None
    except PutInterrupted as interrupted:
        say(interrupted.outcome(), logging.WARNING)
        say_doubtful(f"{input_file} read (delivered or not)")
        _say_pipe_is_consumed(input_file)
        sys.exit(_stop_exit_code(_sigterm_seen()))
    say(summary.describe(settings.stream_name))
    if input_file is not None and summary.records_sent == 0 and not summary.rejected_too_large:
        say(f"{input_file} holds no records (only blank lines, or nothing): nothing sent", logging.WARNING)
    say_doubtful(input_file)
    if summary.rejected_too_large:
        skipped, sent_records = summary.rejected_too_large, summary.records_sent
        raise FrontDoorError(
            f"{count_of(skipped, 'record')} larger than the 1 MiB PutRecords limit {verb_for(skipped, 'was', 'were')} "
            f"not sent (each logged above with its partition key and first bytes); "
            f"{count_of(sent_records, 'other record')} {verb_for(sent_records, 'was', 'were')} delivered"
        )


# ---------------------------------------------------------------------------------------------------------- worker
@main.command()
@click.option(
    "--until-idle",
    type=FiniteFloatRange(min=0.5),
    default=None,
    metavar="SECONDS",
    help="Stop cleanly once every shard is drained, flushed, checkpointed and quiet this long in this worker (for "
    "a worker alone on its application: beside others it waits, saying on which shards).",
)
@setting_option("stop_deadline_seconds", "--stop-deadline", type=float)
@setting_option("stream_name", "--stream")
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
@setting_option("state_dir", "--state-dir", type=LocalPath(file_okay=False, path_type=Path))
@setting_option("application_name", "--application-name")
@setting_option("worker_id", "--worker-id")
@setting_option("flush_max_records", "--flush-max-records", type=int)
@setting_option("flush_max_bytes", "--flush-max-bytes", type=int)
@setting_option("flush_max_seconds", "--flush-max-seconds", type=float)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A live status on stderr (shards, records, lag, last flush) instead of log lines; warnings still show "
    "above it and every log line goes to <state-dir>/worker.log [default: on a terminal only].",
)
@click.pass_obj
def worker(
    options: dict[str, Any],
    /,
    until_idle: float | None,
    progress: bool | None,
    **overrides: Any,
) -> None:
    """Run the long-running KCL worker (Java MultiLangDaemon + one Python record processor per shard).

    Every setting, from flags or the environment, reaches each record processor. Before the JVM starts, the
    stream, the bucket and the lease table are checked. SIGTERM or Ctrl-C flushes and checkpoints every shard,
    then exits 0 (1 if a shard could not flush within --stop-deadline: its records are redelivered); a second
    signal forces exit (143 for SIGTERM, 130 for Ctrl-C). Exit 3: a shard stuck (see `clickstream health`), for the
    orchestrator to restart.
    """
    from consumer.kcl_worker import KclWorker, WorkerError

    settings = build_settings(**overrides)
    try:
        code = KclWorker(
            settings,
            until_idle=until_idle,
            log_level=options["log_level"],
            json_logs=options["json_logs"],
            live_status=show_progress(progress),
        ).run()
    except WorkerError as error:
        raise FrontDoorError(str(error), error.exit_code) from None
    sys.exit(code)


# ---------------------------------------------------------------------------------------------------------- replay
@main.command()
@click.option(
    "--from",
    "start",
    required=True,
    metavar="TIME",
    help="Start of the event-time range (inclusive): a UTC day YYYY-MM-DD, or a time YYYY-MM-DDTHH or "
    "YYYY-MM-DDTHH:MM, UTC unless an offset follows (e.g. 2026-03-01T10+02:00).",
)
@click.option(
    "--to",
    "end",
    required=True,
    metavar="TIME",
    help="End of the event-time range (exclusive), in the same forms as --from.",
)
@click.option(
    "--name",
    default=None,
    help="Output folder under <prefix>/replays/: letters, digits and _ . -, a letter or a digit first, at most 200 "
    "characters (default: from the range). A second replay of the same name from the same --state-dir is refused "
    "while the first runs.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only say how many committed files and events would be read and where the result would go (refusing what "
    "the run would refuse: a name claimed for another range, an events file gone). It writes only the commit "
    "ledger's index of the commit records it read (_control/commit_ledger/), as every reader does.",
)
@progress_option
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
@setting_option(
    "dedupe_window_days",
    "--dedupe-window-days",
    type=int,
    purpose="De-duplication window in days: give the worker's value, so that the replay counts re-sent events as "
    "the live rows counted them.",
)
@setting_option(
    "distinct_window_days",
    "--distinct-window-days",
    type=int,
    purpose="Window of the distinct counts of sessions and active days in days: give the worker's value, so that "
    "the replay counts them as the live rows did.",
)
@setting_option(
    "state_dir",
    "--state-dir",
    type=LocalPath(file_okay=False, path_type=Path),
    purpose="Where the replay keeps its lock (<dir>/replay/replay-<name>.lock); its state is in memory.",
)
def replay(
    start: str, end: str, name: str | None, dry_run: bool, progress: bool | None, **overrides: Any
) -> None:
    """Rebuild customer aggregates from the S3 events/ archive over a time range (backfills, fixes, audits).

    Runs the archived events through the same aggregation core into an empty state and writes each customer's row
    to <prefix>/replays/<name>/customer_aggregates/. It never touches the live outputs, the worker's state or the KCL
    checkpoints, so it is safe while a worker runs (files of flushes not yet committed are left out); re-running
    the same range overwrites the same object.

    Ctrl-C (exit 130) or SIGTERM (exit 143) stops it with nothing written, once the file being read or the batch
    being applied is done; one that comes during the final write lets it finish (a second one does not wait).
    """
    from clickstream.outputs import require_worker_prefix
    from clickstream.replay import (
        ReplayInterrupted,
        one_replay_of,
        parse_time,
        plan_replay,
        replay_name,
        run_replay,
    )
    from runtime.aws import aws_client
    from schemas.control import ControlRecordError

    settings = build_settings(**overrides)
    window: list[datetime] = []
    for flag, text in (("--from", start), ("--to", end)):
        try:
            window.append(parse_time(text))
        except ValueError as error:
            hint = "use YYYY-MM-DD, YYYY-MM-DDTHH or YYYY-MM-DDTHH:MM"
            raise click.BadParameter(f"{error}; {hint}", param_hint=f"'{flag}'") from None
    try:  # the request itself, before anything is asked of S3
        full_name = replay_name(window[0], window[1], name)
    except ValueError as error:
        raise FrontDoorError(str(error), USAGE) from None
    if not dry_run:  # its lock, checked before the commit records are read
        writable_folder("CLICKSTREAM_STATE_DIR / --state-dir", replay_work_dir(settings))
    s3 = aws_client("s3", settings)
    require_worker_prefix(s3, settings)
    # one replay of a name at a time, from its plan (whose check for another range in the folder it protects) on
    alone = nullcontext() if dry_run else one_replay_of(full_name, replay_work_dir(settings))
    terminated = _sigterm_seen()
    with alone:
        try:
            plan = plan_replay(s3, settings, window[0], window[1], name=name, progress=progress)
        except ControlRecordError:
            raise  # explained as every reader of the commit chain explains it
        except ValueError as error:
            raise FrontDoorError(str(error), USAGE) from None
        except KeyboardInterrupt:
            say(
                f"replay interrupted ({_stop_cause(terminated)}) while reading the commit records: nothing written",
                logging.WARNING,
            )
            sys.exit(_stop_exit_code(terminated))
        say(plan.describe())
        if (differing := plan.differing_windows()) is not None:
            say(differing, logging.WARNING)
        if not plan.files:
            say("nothing to replay: no committed events in that range (nothing written)")
            return
        if dry_run:
            return
        try:
            result = run_replay(
                s3, settings, plan, replay_work_dir(settings), progress=show_progress(progress)
            )
        except ReplayInterrupted as interrupted:
            say(
                f"replay interrupted ({_stop_cause(terminated)}) while writing "
                f"s3://{settings.bucket}/{interrupted.maybe_written}: it may or may not be there (run the replay "
                "again: it writes the same object)",
                logging.WARNING,
            )
            sys.exit(_stop_exit_code(terminated))
        except KeyboardInterrupt:
            say(
                f"replay interrupted ({_stop_cause(terminated)}): nothing written (its output is written once, at "
                "the end)",
                logging.WARNING,
            )
            sys.exit(_stop_exit_code(terminated))
    if result.output_key is None:
        say(
            f"nothing to replay: no committed event in that range ({count_of(len(plan.files), 'file')} read, "
            "whose events' time spans met it; nothing written)"
        )
        return
    say(
        f"replayed {count_of(result.events_read, 'event')} ({result.events_applied:,} applied) into "
        f"{count_of(result.customers, 'customer')}: s3://{settings.bucket}/{result.output_key}"
    )


# ---------------------------------------------------------------------------------------------------------- manifest
def _arrival_day(_: click.Context, __: click.Parameter, value: str | None) -> int | None:
    """A real calendar day as YYYYMMDD (an impossible one would only list nothing)."""
    if value is None:
        return None
    try:
        day = datetime.strptime(value, "%Y%m%d").strftime("%Y%m%d")
    except ValueError:
        day = None
    if day != value:  # strptime also takes one-digit months and days
        raise click.BadParameter(f"{value!r} is not a calendar day as YYYYMMDD")
    # 99991231: the day after it overflowed, after the manifest was printed
    if refusal := outside_flag_years(value):
        raise click.BadParameter(refusal)
    return int(day)


@main.command()
@click.option(
    "--output",
    "output",
    required=True,
    type=click.Choice(DATA_OUTPUTS),
    help="Which output's committed files to list.",
)
@click.option(
    "--arrival-day",
    callback=_arrival_day,
    default=None,
    metavar="YYYYMMDD",
    help="Only files of this arrival_yyyymmdd partition, reading only that day's commit records (default: every "
    "committed file, reading every commit record).",
)
@click.option(
    "--upload", is_flag=True, help="Store it under <prefix>/_control/manifests/ and print its s3:// URL."
)
@command_progress_option
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
def manifest(output: str, arrival_day: int | None, upload: bool, **overrides: Any) -> None:
    """A Redshift COPY manifest of exactly the files that commit records name (strict reads; see the README).

    Prints the manifest JSON, or with --upload stores it where sql/redshift/03_copy_tables.sql reads it (an empty
    one is not stored: a COPY of it fails).

    A flush writes into the arrival day its earliest record arrived on, so files still come into a day after its end:
    for CLICKSTREAM_FLUSH_MAX_SECONDS (give this command the worker's), and for as long as the worker is behind.
    Said here when it may be so; load such a day again later (03_copy_tables.sql loads nothing twice). A shard
    behind since before the day, with no file of it yet, cannot be seen here: load a day again after an outage.
    """
    from clickstream.manifest import copy_manifest, day_manifest, upload_manifest
    from clickstream.outputs import require_worker_prefix
    from runtime.aws import aws_client

    settings = build_settings(**overrides)
    s3 = aws_client("s3", settings)
    require_worker_prefix(s3, settings)
    newest_of_the_day: frozenset[str] = frozenset()
    if arrival_day is None:
        document = copy_manifest(s3, settings, output)
    else:
        document, newest_of_the_day = day_manifest(s3, settings, output, arrival_day)
    entries = len(document["entries"])
    if not upload:
        click.echo(json.dumps(document, indent=1))
    elif entries:
        click.echo(upload_manifest(s3, settings, output, document, arrival_day))
    if entries:
        say(count_of(entries, f"committed {output} file"))
    elif arrival_day is None:  # a COPY of it loads nothing
        say(f"no committed {output} files at all: the manifest is empty", logging.WARNING)
    else:  # a day not over yet, a mistyped or quiet one; one whose files were all deleted looks the same here
        say(
            f"no committed {output} files of arrival day {arrival_day}: the manifest is empty (if that day's "
            "files were deleted, by a lifecycle rule say, a manifest without --arrival-day names them)",
            logging.WARNING,
        )
    if upload and not entries:
        say("nothing uploaded: a COPY of an empty manifest fails, skip this one's COPY", logging.WARNING)
    if arrival_day is not None:
        _say_if_the_day_may_grow(arrival_day, newest_of_the_day, settings.flush_max_seconds)


def _say_if_the_day_may_grow(
    arrival_day: int, newest_of_the_day: frozenset[str], flush_max_seconds: float
) -> None:
    """Files come into an arrival day after its end: from flushes begun on it (for up to the flush age limit) and
    from shards behind. Said, so that a daily load of the day just over is run again later."""
    end = datetime.strptime(str(arrival_day), "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1)
    settled = end + timedelta(seconds=flush_max_seconds)
    now = datetime.now(UTC)
    if now < settled:
        say(
            f"arrival day {arrival_day} {'is not over' if now < end else 'has only just ended'}: "
            f"flushes begun on it write into it until about {settled:%Y-%m-%d %H:%M:%S} UTC (the flush age limit, "
            "CLICKSTREAM_FLUSH_MAX_SECONDS, after its end), and for as long as the worker is behind: load it "
            "again after then (03_copy_tables.sql loads nothing twice)",
            logging.WARNING,
        )
    elif newest_of_the_day:
        shards = sorted(newest_of_the_day)
        say(
            f"{len(shards):,} shard(s) committed nothing after arrival day {arrival_day} (e.g. {shards[0]}): idle "
            "since, or behind; if behind, more files of the day come as they catch up: load it again then "
            "(03_copy_tables.sql loads nothing twice)"
        )


# ---------------------------------------------------------------------------------------------------------- health
@main.command(epilog=HEALTH_EXIT_CODES_HELP)
@setting_option(
    "state_dir",
    "--state-dir",
    type=LocalPath(file_okay=False, path_type=Path),
    purpose="The worker's state directory: its heartbeat, shard status files and settings.",
)
@setting_option("stuck_shard_seconds", "--stuck-after", type=float)
@setting_option("no_lease_unhealthy_seconds", "--no-lease-after", type=float)
def health(**overrides: Any) -> None:
    """Liveness for the container health check: exit 0 when the worker and every shard make progress, else 1
    (also when its settings, its flags or their values are invalid, as the answer of a health check: Docker
    reserves 2; the JSON report names the problem).

    Unhealthy: no fresh worker heartbeat, a shard processor not called by the KCL, records waiting on a shard
    with no flush for CLICKSTREAM_STUCK_SHARD_SECONDS, or no shard lease held for
    CLICKSTREAM_NO_LEASE_UNHEALTHY_SECONDS (unless every lease is held by other workers). Prints a JSON report.

    It reads the worker's state directory (give it the worker's --state-dir if the worker got one), and judges by
    the worker's own limits, from the settings the worker wrote there, unless --stuck-after or --no-lease-after
    are given here (with that file there, their variables are not read: the file holds the worker's own).
    """
    from consumer.health import HealthReport, assess
    from runtime.settings import SETTINGS_FILE, ConfigError, configured_state_dir, worker_settings

    flags = {name: overrides.pop(name) for name in ("stuck_shard_seconds", "no_lease_unhealthy_seconds")}
    try:
        state_dir = configured_state_dir(overrides["state_dir"])
    except ConfigError as error:  # a health check's own mistake still answers as a health check: 1, not 2
        problem = f"this health check's settings are invalid: {error}"
        click.echo(HealthReport(healthy=False, shards_processing=0, problems=[problem]).to_json())
        sys.exit(RUNTIME)
    try:
        worker = worker_settings(state_dir)
    except ConfigError as error:  # a damaged file: unhealthy (1), not a usage error (Docker reserves 2)
        problem = f"the worker's settings file is damaged: {error}"
        click.echo(HealthReport(healthy=False, shards_processing=0, problems=[problem]).to_json())
        sys.exit(RUNTIME)
    # this command's flags on top of the worker's own settings, checked against those (e.g. its flush limit); with
    # no worker's file there, on top of the environment's
    try:
        limits = build_on(worker, **flags) if worker is not None else build_settings(**overrides, **flags)
    except ConfigError as error:  # a health check's own mistake still answers as a health check: 1, not 2
        where = f" (the worker's own settings: {state_dir / SETTINGS_FILE})" if worker is not None else ""
        problem = f"this health check's settings are invalid: {error}{where}"
        click.echo(HealthReport(healthy=False, shards_processing=0, problems=[problem]).to_json())
        sys.exit(RUNTIME)
    report = assess(state_dir, limits.stuck_shard_seconds, no_lease_after=limits.no_lease_unhealthy_seconds)
    click.echo(report.to_json())
    sys.exit(OK if report.healthy else RUNTIME)


# ---------------------------------------------------------------------------------------------------------- summary
@main.command()
@click.option(
    "--download",
    type=LocalPath(file_okay=False, path_type=Path),
    default=None,
    help="Also copy the committed files (and commit records) into this folder, keeping the S3 key layout.",
)
@top_option(10, "show")
@command_progress_option
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
def summary(download: Path | None, top: int, **overrides: Any) -> None:
    """Show what is committed in S3 now: files, rows, accepted/rejected, top customers, the CLV model inputs.

    Counts come from the commit records and the files they name, read from S3 on each call; --download copies
    those files (in parallel) for local queries.
    """
    from clickstream.summary import print_summary

    settings = build_settings(**overrides)
    if download is not None:
        writable_folder("--download", download)
        # the copies go under <download>/<prefix>/: a file in the way there failed the download at the very end
        writable_folder("--download", download / settings.prefix)
    print_summary(settings, download, top=top)


# ---------------------------------------------------------------------------------------------------------- demo
@main.command()
@_customers_option(default=300)
@click.option(
    "--events",
    default=30_000,
    show_default=True,
    type=click.IntRange(1),
    callback=_within_generator_bound,
    help="Valid events (at most 100 million).",
)
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed.")
@click.option("--shards", default=4, show_default=True, type=click.IntRange(1, 50), help="Stream shards.")
@click.option(
    "--output-dir",
    type=LocalPath(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the JSONL input, worker state, Parquet copies and report go. Emptied on every run, so it must be "
    "new, empty or an earlier demo's output folder (marked by its .clickstream-demo file).",
)
def demo(customers: int, events: int, seed: int, shards: int, output_dir: Path) -> None:
    """End to end on the embedded AWS endpoint: generate, produce, run the real KCL worker until idle, summarise,
    score the customers and write the HTML report."""
    _require_the_emulator("the demo, which runs on the embedded endpoint,")
    from clickstream.demo import DEMO_MARK, DEMO_OUTPUTS, DemoFolderBusyError, replaceable_output, run_demo

    # first: a file or a device there is not "files a demo did not write"
    writable_folder("--output-dir", output_dir)
    if not replaceable_output(output_dir):
        raise FrontDoorError(
            f"--output-dir {output_dir} holds files a demo did not write; the demo empties its output folder, so "
            f"give it a new or empty one (a demo's folder holds its mark {DEMO_MARK} and only "
            f"{', '.join(sorted(DEMO_OUTPUTS))}; delete an earlier demo's folder that has no mark yourself)",
            USAGE,
        )
    try:
        code = run_demo(customers=customers, events=events, seed=seed, shards=shards, output_dir=output_dir)
    except DemoFolderBusyError as error:
        raise FrontDoorError(str(error), USAGE) from None
    sys.exit(code)


# ---------------------------------------------------------------------------------------------- score, report
main.add_command(score)
main.add_command(report)
for _command in main.commands.values():  # every command's --help ends with what its exit code means
    _command.epilog = _command.epilog or EXIT_CODES_HELP

if __name__ == "__main__":
    main()
