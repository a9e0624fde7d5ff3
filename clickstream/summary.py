"""``clickstream summary``: what is in S3 now, for a person: committed files and rows, accepted and rejected, top
customers, RFM.

Counts come from the commit records and the committed files themselves, read from S3 at the time of the call
(never from a local folder, which may hold an older run); each customer's current row as ``score`` reads it.
``download`` copies the committed files, in parallel, only when asked. Tables fit 80 columns, so they survive a
narrow terminal and a pipe.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clickstream.console import progress_of, stdout_console
from clickstream.current_rows import read_committed_rows
from clickstream.errors import FrontDoorError
from clickstream.options import show_progress, top_heading
from clickstream.outputs import (
    BROKEN_DOWNLOAD,
    CURRENT_ROW,
    CommittedOutputs,
    committed_outputs,
    current_rows_of_table,
    download_keys,
    enclosing_copy,
    read_tables,
    require_worker_prefix,
    stale_copies,
)
from runtime.aws import aws_client
from runtime.exit_codes import RUNTIME, USAGE
from runtime.logs import count_of, verb_for
from runtime.settings import Settings
from schemas.control import CommitRecord
from schemas.layout import DATA_OUTPUTS
from scoring.inputs import InputError, observation_end

#: Columns of the top-customers table (header, column): the BG/NBD and Gamma-Gamma inputs and what drives them.
TOP_COLUMNS = (
    ("customer", "customer_id"),
    ("purchases", "purchases"),
    ("revenue", "revenue"),
    ("frequency", "frequency"),
    ("recency", "recency"),
    ("T", "T"),
    ("monetary", "monetary_value"),
    ("engagement", "engagement_score"),
)


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    return table


def _print(console: Console, title: str, table: Table) -> None:
    """The title on its own line (a table's title would wrap to the table's width), then the table."""
    console.print(Text(title, style="bold"))
    console.print(table)


def print_summary(
    settings: Settings, download: Path | None = None, top: int = 10, console: Console | None = None
) -> None:
    """Summarise the committed outputs under ``s3://bucket/prefix``; copy them to ``download`` if given."""
    console = console or stdout_console()
    s3 = aws_client("s3", settings)
    require_worker_prefix(s3, settings)
    outputs = committed_outputs(s3, settings)
    missing = [key for output in DATA_OUTPUTS for key in outputs.missing[output]]
    if download is not None:  # refused before the summary is read and printed
        if (outer := enclosing_copy(download, settings)) is not None:
            raise FrontDoorError(
                f"{download} is inside {outer}, which holds a copy of s3://{settings.bucket}/{settings.prefix}/: a "
                f"query of {outer} would read both copies, every row twice: give a folder outside it, or {outer} "
                "itself to refresh that copy (nothing copied)",
                USAGE,
            )
        stale = stale_copies(download, settings, {*outputs.all_committed_keys(), *missing})
        if stale:
            raise FrontDoorError(
                f"{download} holds {count_of(len(stale), 'file')} of the outputs that no commit record names now "
                f"(the first: {stale[0]}): a copy of another run (a prefix emptied and written again), which a "
                "query of the folder would read with this one's: give an empty folder, or delete them (nothing "
                "copied)",
                USAGE,
            )

    files = _table("output", "files", "rows", "MiB")
    for output in DATA_OUTPUTS:
        files.add_row(
            output,
            f"{len(outputs.present(output)):,}",
            f"{outputs.rows(output):,}",
            f"{outputs.bytes[output] / 2**20:,.1f}",
        )
    _print(console, f"Committed outputs in s3://{settings.bucket}/{settings.prefix}/", files)
    stray = sum(len(keys) for keys in outputs.uncommitted.values())
    if stray:
        console.print(
            f"{count_of(stray, 'data file')} on S3 {verb_for(stray)} named by no commit record (a flush "
            "still being written while a worker runs, or one that did not commit, which the next commit of its shard "
            "deletes): not counted."
        )

    totals = {
        "records in": sum(c.records_new for c in outputs.commits),
        "accepted": sum(c.accepted for c in outputs.commits),
        "duplicates": sum(c.duplicates for c in outputs.commits),
        "rejected": sum(c.rejected for c in outputs.commits),
        "redelivered": sum(c.records_skipped for c in outputs.commits),
    }
    records = _table(*totals)
    records.columns[0].justify = "right"
    records.add_row(*(f"{value:,}" for value in totals.values()))
    _print(console, f"Records ({len(outputs.commits):,} committed flushes)", records)
    console.print(
        "accepted includes duplicates (valid events seen before, applied once); redelivered records were "
        "skipped as already applied."
    )
    print_freshness(outputs.commits, console)

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    errors = read_tables(s3, settings.bucket, outputs.present("errors"), columns=["error_code"])
    if errors is not None and errors.num_rows:
        reasons = _table("error_code", "records")
        con.register("error_rows", errors)
        for code, count in con.sql(
            "SELECT error_code, count(*) FROM error_rows GROUP BY ALL ORDER BY 2 DESC, 1"
        ).fetchall():
            reasons.add_row(str(code), f"{count:,}")
        _print(console, "Rejected records by reason (errors/)", reasons)

    current = _current_customer_rows(s3, settings, outputs, con)
    if current is None or not current.num_rows:
        console.print("no customer aggregates committed yet")
    else:
        _print_customers(console, con, current, top)

    if download is not None:
        with progress_of("downloading committed files", "file", bar=show_progress(None)) as report:
            try:
                copied = download_keys(
                    s3, settings.bucket, outputs.all_committed_keys(), download, progress=report
                )
            except FileNotFoundError:
                raise  # a committed file S3 no longer has, named as such
            except (OSError, *BROKEN_DOWNLOAD) as error:  # the folder's disk (full, read-only), or S3 midway
                raise FrontDoorError(
                    f"--download {download}: {error}; the folder holds only part of the files: run it again once "
                    "the cause is fixed",
                    RUNTIME,
                ) from None
        console.print(f"copied {count_of(copied, 'committed file')} to {download}/")
    # the query reads customer_aggregates/: none when every record was rejected
    if download is not None and outputs.present("customer_aggregates"):
        glob = f"{download}/{settings.layout.output_prefix('customer_aggregates')}**/*.parquet"
        console.print("Query the copies with DuckDB, e.g. each customer's current row (the highest version):")
        # soft_wrap: printed as one line whatever the terminal width, so it can be copied and pasted.
        console.print(
            # the interpreter running this command has duckdb (in the image: /opt/venv/bin/python)
            f"{shlex.quote(sys.executable)} -c {_shell_word(_duckdb_code(glob))}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    if missing:  # said last, where it is seen, and as the exit code: data S3 no longer has
        raise FrontDoorError(
            f"{count_of(len(missing), 'committed data file')} {verb_for(len(missing))} missing from "
            f"s3://{settings.bucket}/ (the first: {missing[0]}):"
            " deleted or moved after they were committed (a lifecycle rule on the prefix?); the counts above come "
            "from their commit records, the tables from the files still there"
        )


def _duckdb_code(glob: str) -> str:
    """Python that shows five current rows of the copies under ``glob`` (quoted for SQL, then for Python)."""
    quoted = glob.replace("'", "''")
    sql = f"FROM '{quoted}' {CURRENT_ROW} LIMIT 5"
    return f"import duckdb; duckdb.sql({sql!r}).show()"  # repr: Python's own quoting, any path


def _shell_word(text: str) -> str:
    """``text`` as one shell word, in double quotes: readable where a path holds no special character, and exact
    where it does (``'``, ``$``, a backtick). With a ``!``, which an interactive shell expands even between double
    quotes, in single quotes."""
    if "!" in text:
        return shlex.quote(text)
    return '"' + "".join(f"\\{c}" if c in '\\"$`' else c for c in text) + '"'


def _current_customer_rows(
    s3: Any, settings: Settings, outputs: CommittedOutputs, con: duckdb.DuckDBPyConnection
) -> pa.Table | None:
    """Each customer's current row. Read as ``score`` reads them (the rows kept by the last run, merged with the
    files committed since, on disk): memory follows the customers, not every version of them ever written (all of
    the history's files in one table took about 900 MiB for 2 M rows). With committed files S3 no longer has, from
    the files still there (which only that history holds)."""
    if not outputs.present("customer_aggregates"):
        return None
    if outputs.missing["customer_aggregates"]:
        with progress_of("reading customer_aggregates", "file", bar=show_progress(None)) as report:
            aggregates = read_tables(
                s3, settings.bucket, outputs.present("customer_aggregates"), progress=report
            )
        return None if aggregates is None else current_rows_of_table(con, aggregates).to_arrow_table()
    with tempfile.TemporaryDirectory(prefix="clickstream-summary-") as workdir:
        try:
            return read_committed_rows(
                s3, settings, Path(workdir), progress=show_progress(None), commits=outputs.commits
            ).table
        except InputError as error:  # a committed file that does not read, named
            raise FrontDoorError(str(error), USAGE) from None


def _print_customers(console: Console, con: duckdb.DuckDBPyConnection, current: pa.Table, top: int) -> None:
    # T against one observation end for every customer, the one `clickstream score` takes (the newest event, not
    # past now unless a purchase is): a row's own T stops at its shard's last flush, short for a quiet shard
    end = observation_end(current, not_after=datetime.now(UTC))
    con.register("rows_as_stored", current)
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW current_rows AS
            SELECT * REPLACE (date_diff('day', first_purchase_at::DATE, TIMESTAMPTZ '{end.isoformat()}'::DATE)
                              AS "T")
            FROM rows_as_stored"""
    )
    leaders = _table(*(header for header, _ in TOP_COLUMNS))
    query = f"""SELECT {", ".join(f'"{column}"' for _, column in TOP_COLUMNS)} FROM current_rows
                ORDER BY revenue DESC, customer_id LIMIT {top}"""
    rows = con.sql(query).fetchall()
    for row in rows:
        leaders.add_row(*(_fmt(value) for value in row))
    _print(console, f"{top_heading(len(rows), top)} by revenue (current rows)", leaders)

    overview = _table("measure", "customers", "mean", "p25", "median", "p75", "max")
    for label, where in (
        ("frequency", "frequency IS NOT NULL"),
        ("recency", "frequency IS NOT NULL"),
        ("T", "frequency IS NOT NULL"),
        ("monetary_value (repeat buyers)", "frequency > 0"),
        ("engagement_score", "TRUE"),
    ):
        measure = label.split()[0]
        row = con.sql(
            f"""SELECT count(*), avg("{measure}"), quantile_cont("{measure}", 0.25), median("{measure}"),
                       quantile_cont("{measure}", 0.75), max("{measure}")
                FROM current_rows WHERE {where}"""
        ).fetchall()[0]
        overview.add_row(label, *(_fmt(value) for value in row))
    buyers, customers = con.sql(
        "SELECT count(*) FILTER (WHERE frequency IS NOT NULL), count(*) FROM current_rows"
    ).fetchall()[0]
    _print(
        console,
        "Model inputs (UTC days, as `score` counts them: recency is first to last purchase, not days "
        "since the last; T to the newest as_of)",
        overview,
    )
    console.print(
        f"{customers:,} customers, {buyers:,} with at least one purchase, {customers - buyers:,} without (null "
        "frequency / recency / T / monetary_value; monetary_value is 0 for one-time buyers, and its row counts the "
        "repeat buyers)."
    )


def print_freshness(commits: list[CommitRecord], console: Console) -> None:
    """Freshness SLI: p50 / p99 of arrival-to-durable and of the newest event's age, over the commit records."""
    from scoring.freshness import summarize_freshness

    fresh = summarize_freshness(commits)
    if fresh is None:
        console.print("freshness: no committed flush yet")
        return
    table = _table("measure", "p50", "p99", "max")
    table.add_row(
        "arrival to durable",
        f"{fresh.arrival_to_durable_p50:,.1f}",
        f"{fresh.arrival_to_durable_p99:,.1f}",
        f"{fresh.arrival_to_durable_max:,.1f}",
    )
    table.add_row("newest event age", _fmt(fresh.newest_event_age_p50), _fmt(fresh.newest_event_age_p99), "")
    _print(console, f"Freshness (seconds, over {fresh.flushes:,} flushes)", table)
    if (note := fresh.old_events_note()) is not None:
        console.print(note)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
