"""The ``score`` and ``report`` commands (registered on the ``clickstream`` group in clickstream/cli.py)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import click

from clickstream.console import say
from clickstream.errors import FrontDoorError
from clickstream.options import (
    LocalPath,
    build_settings,
    parse_flag_time,
    progress_option,
    setting_option,
    show_progress,
    top_option,
    writable_file,
    writable_folder,
)
from runtime.exit_codes import RUNTIME, USAGE
from runtime.logs import count_of, verb_for


def _parse_as_of(_: click.Context, __: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    # a time is UTC unless it carries an offset (as replay's range reads it); a day is observed whole, to its end
    try:
        parsed = parse_flag_time(value)
    except ValueError as error:
        raise click.BadParameter(
            f"{error}: use YYYY-MM-DD (a UTC day) or an ISO time, e.g. 2026-04-30T12:00:00Z"
        ) from None
    a_day_ahead = datetime.now(UTC) + timedelta(days=1)
    if isinstance(parsed, datetime):
        as_of, ahead = parsed, parsed > a_day_ahead
        if as_of.astimezone(UTC).time() == time.min:
            # midnight ends the day before: counted whole, its own day would add a day with no purchase to every
            # customer's T (--as-of 2026-04-30T00:00:00Z scores as 2026-04-29 does)
            as_of -= timedelta(microseconds=1)
    else:  # a day up to tomorrow (UTC), whose end is more than a day ahead
        as_of, ahead = datetime.combine(parsed, datetime.max.time(), tzinfo=UTC), parsed > a_day_ahead.date()
    if ahead:  # 2062 for 2026 was scored as 36 years without a purchase
        raise click.BadParameter(
            f"{value} is in the future: the models would count the time until then as observed with no purchase"
        )
    return as_of


@click.command()
@click.option(
    "--as-of",
    callback=_parse_as_of,
    metavar="TIME",
    help="Observation end for every customer: YYYY-MM-DD (the end of that UTC day) or an ISO time, UTC unless it "
    "carries an offset (refused if a purchase after it is in the aggregates, or if its UTC day has not begun "
    "unless a purchase is in that day: a client clock a little ahead may have stamped one tomorrow; a time more "
    "than a day ahead, or a day after tomorrow, is refused outright). The "
    "models count whole UTC days: the day of a time is observed whole, and midnight UTC is the end of the day before "
    "(2026-04-30T00:00:00Z scores as 2026-04-29). "
    "Default: the latest event time seen, not past the run's clock (a client clock ahead of UTC may stamp an "
    "event in a day not yet begun) unless a purchase is.",
)
@click.option(
    "--input",
    "input_dir",
    type=LocalPath(exists=True, file_okay=False, path_type=Path),
    help="Read customer_aggregates Parquet from this folder instead of S3: a `summary --download` copy (its "
    "<prefix>/customer_aggregates/, so give the --prefix it was downloaded with), a prefix's folder, or a folder "
    "of customer_aggregates files.",
)
@click.option(
    "--output-dir",
    type=LocalPath(file_okay=False, path_type=Path),
    help="Write clv/ and its commit records into this folder (same key layout) instead of S3.",
)
@click.option(
    "--publish",
    is_flag=True,
    help="With --input and no --output-dir: commit the scores to S3's clv/ all the same (they replace that day's "
    "run from the worker's rows).",
)
@progress_option
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
@setting_option("clv_horizon_months", "--horizon-months", type=int)
@setting_option("clv_annual_discount_rate", "--discount-rate", type=float)
@setting_option("clv_margin", "--margin", type=float)
def score(
    as_of: datetime | None,
    input_dir: Path | None,
    output_dir: Path | None,
    publish: bool,
    progress: bool | None,
    **overrides: Any,
) -> None:
    """CLV (BG/NBD + Gamma-Gamma), RFM scores and segments of every buyer, committed to <prefix>/clv/.

    Reads each customer's current customer_aggregates row (the files the worker committed), puts every customer on
    one observation end, fits the models with pymc-marketing (the `clv` extra) and writes one run per as-of day:
    Parquet parts and _model.json, then the commit record _control/clv/as_of_yyyymmdd=<day>.json. Re-running with
    the same inputs and as-of changes nothing. Each step is announced on stderr with the time it took.

    The models need at least 20 buyers and 10 repeat buyers (purchases on two days or more) with a positive spend:
    below that nothing is written (exit 1), RFM segments included, as they are columns of the same run. No
    customer_aggregates files at all is exit 2: a --prefix or --input that names no worker's output, or a worker
    that has not committed yet.
    """
    from clickstream.score import ConcurrentRunError, run_score
    from scoring.clv import ModelLibraryMissing, NotEnoughData, UnusableFit
    from scoring.inputs import InputError

    settings = build_settings(**overrides)
    if publish and (input_dir is None or output_dir is not None):
        raise FrontDoorError(
            "--publish goes with --input and without --output-dir (it sends a local copy's scores to S3)",
            USAGE,
        )
    if input_dir is not None and output_dir is None and not publish:
        raise FrontDoorError(
            f"--input scores a local copy: give --output-dir for its result, or --publish to commit it to "
            f"s3://{settings.bucket}/{settings.layout.output_prefix('clv')} (it replaces that day's run)",
            USAGE,
        )
    if output_dir is not None:
        writable_folder("--output-dir", output_dir)  # before the fit, not after it
    try:
        outcome = run_score(
            settings,
            input_dir=input_dir,
            output_dir=output_dir,
            as_of=as_of,
            progress=show_progress(progress),
            say=say,
        )
    except (NotEnoughData, UnusableFit, ConcurrentRunError) as error:  # the data or another run: exit 1
        raise FrontDoorError(str(error)) from None
    except (ModelLibraryMissing, InputError) as error:  # the set-up or the request: exit 2
        raise FrontDoorError(str(error), USAGE) from None
    commit = outcome.commit
    state = "already committed" if outcome.already_committed else "committed"
    say(
        f"scored {commit.rows:,} buyers as of {commit.as_of.isoformat()}: run {commit.run_id} {state} "
        f"({count_of(len(commit.files), 'file')}, {commit.bytes_written:,} bytes)"
    )


@click.command()
@click.option(
    "--output",
    "-o",
    type=LocalPath(dir_okay=False, path_type=Path),
    default=Path("clickstream-report.html"),
    show_default=True,
    help="The HTML file to write (self-contained: opens offline).",
)
@top_option(20, "list")
@click.option(
    "--clv-dir",
    type=LocalPath(exists=True, file_okay=False, path_type=Path),
    help="Read clv/ from this folder (a `score --output-dir`) instead of S3 (or --input).",
)
@click.option(
    "--input",
    "input_dir",
    type=LocalPath(exists=True, file_okay=False, path_type=Path),
    help="Read the pipeline's commit records and rejects from this `summary --download` folder instead of S3 "
    "(offline: S3 is not asked; give the --prefix it was downloaded with), and its scoring run if a `score "
    "--output-dir` wrote one there.",
)
@progress_option
@setting_option("bucket", "--bucket")
@setting_option("prefix", "--prefix")
def report(
    output: Path,
    top: int,
    clv_dir: Path | None,
    input_dir: Path | None,
    progress: bool | None,
    **overrides: Any,
) -> None:
    """One self-contained HTML report: segments, RFM heat map, CLV, top customers, records, freshness, files."""
    from clickstream.html_report import write_report

    settings = build_settings(**overrides)
    shown = write_report(
        settings,
        writable_file("--output", output),
        top=top,
        clv_dir=clv_dir,
        input_dir=input_dir,
        progress=progress,
    )
    click.echo(str(output.resolve()))
    if shown.errors_missing:  # said last, where it is seen, and as the exit code, as `summary` does
        raise FrontDoorError(
            f"{count_of(len(shown.errors_missing), 'committed errors/ file')} "
            f"{verb_for(len(shown.errors_missing))} missing from s3://{settings.bucket}/ (the first: "
            f"{shown.errors_missing[0]}; a lifecycle rule on the prefix?): the report was written without "
            "their rejected records",
            RUNTIME,
        )
