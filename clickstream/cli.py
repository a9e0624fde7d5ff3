"""The ``clickstream`` command line: emulator, setup, generate, produce, worker, summary, demo.

Every setting comes from a ``CLICKSTREAM_*`` environment variable (see ``runtime.settings``); a flag given on
the command line wins over the environment. ``--help`` on each command names the variable behind each flag.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from runtime.settings import ConfigError, Settings, env_var_name, load_settings

log = logging.getLogger("clickstream")

_F = TypeVar("_F", bound=Callable[..., Any])


def setting_option(field: str, *flags: str, **kwargs: Any) -> Callable[[_F], _F]:
    """A flag that overrides one Settings field; its help names the environment variable behind it."""
    info = Settings.model_fields[field]
    default = info.default if info.default_factory is None else "per host"
    text = f"{info.description} [env: {env_var_name(field)}; default: {default}]"
    return click.option(*flags, field, default=None, help=text, show_default=False, **kwargs)


def build_settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--log-level",
    default="INFO",
    envvar="CLICKSTREAM_LOG_LEVEL",
    show_default=True,
    help="Log level. [env: CLICKSTREAM_LOG_LEVEL]",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default="json",
    envvar="CLICKSTREAM_LOG_FORMAT",
    show_default=True,
    help="Log format on stderr. [env: CLICKSTREAM_LOG_FORMAT]",
)
def main(log_level: str, log_format: str) -> None:
    """Clickstream -> Kinesis -> KCL worker -> per-customer RFM aggregates (DuckDB) -> Parquet on S3.

    Standard AWS variables apply (AWS_ENDPOINT_URL, AWS_REGION, credentials). Start with `clickstream demo`.
    """
    from runtime.logs import configure_logging

    configure_logging(log_level, json_format=log_format == "json")


# ---------------------------------------------------------------------------------------------------------- emulator
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback only).")
@click.option(
    "--port", default=4566, show_default=True, type=click.IntRange(0, 65535), help="Port to serve on."
)
def emulator(host: str, port: int) -> None:
    """Run the embedded AWS endpoint (moto: Kinesis, DynamoDB, S3, CloudWatch) in the foreground.

    It speaks HTTP/1.1 and h2c on one port, as the KCL needs. Point other commands at it with
    AWS_ENDPOINT_URL=http://127.0.0.1:PORT.
    """
    try:
        from emulator.server import run_foreground
    except ImportError as error:
        raise click.ClickException(
            f"the embedded endpoint needs the emulator extra ({error.name} is missing): "
            "pip install 'clickstream-rfm[emulator]'"
        ) from None
    run_foreground(host, port)


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
    click.echo(f"stream {settings.stream_name} ({arn}) and bucket s3://{settings.bucket} are ready")


# ---------------------------------------------------------------------------------------------------------- generate
def _generator_options(func: _F) -> _F:
    options = [
        click.option(
            "--customers", default=500, show_default=True, type=click.IntRange(1), help="Customers."
        ),
        click.option(
            "--events",
            default=50_000,
            show_default=True,
            type=click.IntRange(0),
            help="Valid events (duplicates and malformed records come on top).",
        ),
        click.option(
            "--seed", default=42, show_default=True, type=int, help="Random seed: same seed, same bytes."
        ),
        click.option(
            "--days",
            default=60,
            show_default=True,
            type=click.IntRange(1),
            help="Length of the simulated history in days (from 2026-03-01 UTC).",
        ),
        click.option(
            "--duplicate-rate",
            default=0.0,
            show_default=True,
            type=click.FloatRange(0, 1),
            help="Fraction of events re-sent with the same bytes (as producer retries do).",
        ),
        click.option(
            "--malformed-rate",
            default=0.0,
            show_default=True,
            type=click.FloatRange(0, 1),
            help="Fraction of extra malformed records (bad JSON/UTF-8, wrong types, ...).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _make_generator(
    *, customers: int, events: int, seed: int, days: int, duplicate_rate: float, malformed_rate: float
) -> Any:
    from producer.generator import ClickstreamGenerator

    return ClickstreamGenerator(
        customers, events, seed, days=days, duplicate_rate=duplicate_rate, malformed_rate=malformed_rate
    )


@main.command()
@_generator_options
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL file to write ('-' for stdout).",
)
def generate(output: Path, **options: Any) -> None:
    """Write deterministic demo clickstream as JSONL: one event per line, exactly the bytes put on the stream."""
    from producer.generator import write_jsonl

    generator = _make_generator(**options)
    if str(output) == "-":
        stream = sys.stdout.buffer
        for data in generator.events():
            stream.write(data + b"\n")
    else:
        write_jsonl(output, generator.events())
    summary = generator.summary
    click.echo(
        f"wrote {generator.total_records} records ({summary.valid_events} valid events, "
        f"{summary.duplicates} duplicates, {summary.malformed} malformed)",
        err=True,
    )


# ---------------------------------------------------------------------------------------------------------- produce
@main.command()
@click.option(
    "--input",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL file to put (one record per line). Without it, events are generated on the fly.",
)
@_generator_options
@click.option(
    "--rate", type=click.FloatRange(min=1), default=None, help="Max records per second (default: no limit)."
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr."
)
@setting_option("stream_name", "--stream")
def produce(
    input_file: Path | None, rate: float | None, progress: bool, stream_name: str | None, **options: Any
) -> None:
    """Put events on the stream with PutRecords (batched, retried, nothing silently dropped)."""
    from producer.generator import read_jsonl
    from producer.kinesis_put import KinesisProducer, PutRecordsError
    from runtime.aws import aws_client

    settings = build_settings(stream_name=stream_name)
    if input_file is not None:
        records = read_jsonl(input_file)
        total = None
    else:
        generator = _make_generator(**options)
        records, total = generator.events(), generator.total_records
    producer = KinesisProducer(
        aws_client("kinesis", settings), settings.stream_name, max_records_per_second=rate, progress=progress
    )
    try:
        summary = producer.put(records, total=total)
    except PutRecordsError as error:
        raise click.ClickException(f"{error} ({error.undelivered_count} records undelivered)") from None
    click.echo(
        f"put {summary.records_sent} records in {summary.requests} requests, {summary.seconds:.1f}s "
        f"({summary.records_per_second:,.0f} records/s, {summary.retried_records} retried)",
        err=True,
    )


# ---------------------------------------------------------------------------------------------------------- worker
@main.command()
@click.option(
    "--until-idle",
    type=click.FloatRange(min=0.5),
    default=None,
    metavar="SECONDS",
    help="Stop cleanly once every shard is drained, flushed, checkpointed and quiet this long.",
)
@click.option(
    "--stop-deadline",
    type=click.FloatRange(min=1),
    default=25.0,
    show_default=True,
    help="Seconds shards get to flush and checkpoint after SIGTERM (keep below ECS stopTimeout).",
)
@setting_option("stream_name", "--stream")
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
@setting_option("state_dir", "--state-dir", type=click.Path(file_okay=False, path_type=Path))
@setting_option("worker_id", "--worker-id")
@setting_option("flush_max_records", "--flush-max-records", type=int)
@setting_option("flush_max_seconds", "--flush-max-seconds", type=float)
def worker(until_idle: float | None, stop_deadline: float, **overrides: Any) -> None:
    """Run the long-running KCL worker (Java MultiLangDaemon + one Python record processor per shard).

    SIGTERM or Ctrl-C flushes and checkpoints every shard, then exits 0; a second signal forces exit.
    """
    from consumer.kcl_worker import KclWorker, WorkerError

    settings = build_settings(**overrides)
    try:
        code = KclWorker(settings, until_idle=until_idle, stop_deadline_seconds=stop_deadline).run()
    except WorkerError as error:
        raise click.ClickException(str(error)) from None
    sys.exit(code)


# ---------------------------------------------------------------------------------------------------------- replay
@main.command()
@click.option(
    "--from",
    "start",
    required=True,
    metavar="TIME",
    help="Start of the event-time range, UTC: YYYY-MM-DD or YYYY-MM-DDTHH (inclusive).",
)
@click.option(
    "--to",
    "end",
    required=True,
    metavar="TIME",
    help="End of the event-time range, UTC: YYYY-MM-DD or YYYY-MM-DDTHH (exclusive).",
)
@click.option("--name", default=None, help="Output folder under <prefix>/replays/ (default: from the range).")
@click.option(
    "--dry-run", is_flag=True, help="Only say which files would be read and where the result would go."
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr."
)
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
@setting_option("state_dir", "--state-dir", type=click.Path(file_okay=False, path_type=Path))
def replay(start: str, end: str, name: str | None, dry_run: bool, progress: bool, **overrides: Any) -> None:
    """Rebuild customer aggregates from the S3 events/ archive over a time range (backfills, fixes, audits).

    Runs the archived events through the same aggregation core into an empty state and writes each customer's row
    to <prefix>/replays/<name>/customer_aggregates/. It never touches the live outputs, the worker's state or the KCL
    checkpoints, so it is safe while a worker runs (files of flushes not yet committed are left out); re-running
    the same range overwrites the same object.
    """
    from clickstream.replay import parse_time, plan_replay, run_replay
    from runtime.aws import aws_client

    settings = build_settings(**overrides)
    try:
        window = parse_time(start), parse_time(end)
    except ValueError as error:
        raise click.BadParameter(f"{error}; use YYYY-MM-DD or YYYY-MM-DDTHH") from None
    s3 = aws_client("s3", settings)
    try:
        plan = plan_replay(s3, settings, *window, name=name)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(plan.describe(), err=True)
    if dry_run:
        return
    result = run_replay(s3, settings, plan, settings.state_dir / "replay", progress=progress)
    click.echo(
        f"replayed {result.events_read:,} events ({result.events_applied:,} applied) into {result.customers:,} "
        f"customers: s3://{settings.bucket}/{result.output_key}",
        err=True,
    )


# ---------------------------------------------------------------------------------------------------------- health
@main.command()
@setting_option("state_dir", "--state-dir", type=click.Path(file_okay=False, path_type=Path))
@setting_option("stuck_shard_seconds", "--stuck-after", type=float)
def health(**overrides: Any) -> None:
    """Liveness for the container health check: exit 0 when the worker and every shard make progress, else 1.

    Unhealthy: no fresh worker heartbeat, a shard processor not called by the KCL, or records waiting on a shard
    with no flush for CLICKSTREAM_STUCK_SHARD_SECONDS. Prints a JSON report.
    """
    from consumer.health import assess

    settings = build_settings(**overrides)
    report = assess(settings.state_dir, settings.stuck_shard_seconds)
    click.echo(report.to_json())
    sys.exit(0 if report.healthy else 1)


# ---------------------------------------------------------------------------------------------------------- summary
@main.command()
@click.option(
    "--download",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output/s3"),
    show_default=True,
    help="Local folder to copy the Parquet outputs into.",
)
@click.option("--top", default=10, show_default=True, type=click.IntRange(1), help="Top customers to show.")
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
def summary(download: Path, top: int, **overrides: Any) -> None:
    """Download the outputs from S3 and show files, rows, accepted/rejected, top customers and an RFM overview."""
    from clickstream.report import print_summary

    print_summary(build_settings(**overrides), download, top=top)


# ---------------------------------------------------------------------------------------------------------- demo
@main.command()
@click.option("--customers", default=300, show_default=True, type=click.IntRange(1), help="Customers.")
@click.option("--events", default=30_000, show_default=True, type=click.IntRange(1), help="Valid events.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed.")
@click.option("--shards", default=4, show_default=True, type=click.IntRange(1, 50), help="Stream shards.")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the JSONL input, worker state and Parquet copies go.",
)
def demo(customers: int, events: int, seed: int, shards: int, output_dir: Path) -> None:
    """End to end on the embedded AWS endpoint: generate, produce, run the real KCL worker until idle, summarise."""
    try:
        import moto  # noqa: F401 - the demo runs on the embedded endpoint
    except ImportError:
        raise click.ClickException(
            "the demo needs the emulator extra: pip install 'clickstream-rfm[emulator]' (or run `make demo`)"
        ) from None
    from clickstream.demo import run_demo

    sys.exit(run_demo(customers=customers, events=events, seed=seed, shards=shards, output_dir=output_dir))


# ---------------------------------------------------------------------------------------------- score, report
from clickstream.clv_commands import report, score  # noqa: E402 - they use the helpers above

main.add_command(score)
main.add_command(report)

if __name__ == "__main__":
    main()
