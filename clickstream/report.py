"""The human summary of a run: what was written where, what was accepted and rejected, who the top customers are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from clickstream.outputs import (
    OUTPUTS,
    current_customer_rows,
    download_outputs,
    output_glob,
    row_counts,
)
from runtime.aws import aws_client
from runtime.settings import Settings


def print_summary(settings: Settings, download: Path, top: int = 10, console: Console | None = None) -> None:
    console = console or Console(stderr=False)
    s3 = aws_client("s3", settings)
    inventory = download_outputs(s3, settings, download)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    counts = row_counts(con, download, settings, inventory)

    files = Table(title=f"Outputs in s3://{settings.bucket}/{settings.prefix}/ (copied to {download})")
    for column in ("output", "files", "rows", "bytes"):
        files.add_column(column, justify="right" if column != "output" else "left")
    for output in OUTPUTS:
        files.add_row(
            output, f"{inventory.files[output]:,}", f"{counts[output]:,}", f"{inventory.bytes[output]:,}"
        )
    console.print(files)

    totals = {
        key: sum(int(c[key]) for c in inventory.commits)
        for key in ("records_in", "records_skipped", "accepted", "duplicates", "rejected")
    }
    records = Table(title=f"Records ({len(inventory.commits)} committed flushes)")
    for column in ("records in", "accepted", "of which duplicates", "rejected", "redeliveries skipped"):
        records.add_column(column, justify="right")
    records.add_row(
        *(f"{totals[k]:,}" for k in ("records_in", "accepted", "duplicates", "rejected", "records_skipped"))
    )
    console.print(records)
    print_freshness(s3, settings, console)

    if counts["errors"]:
        reasons = Table(title="Rejected records by reason (errors/)")
        reasons.add_column("error_code")
        reasons.add_column("records", justify="right")
        for code, count in con.sql(
            f"SELECT error_code, count(*) FROM read_parquet('{output_glob(download, settings, 'errors')}') "
            "GROUP BY ALL ORDER BY 2 DESC"
        ).fetchall():
            reasons.add_row(str(code), f"{count:,}")
        console.print(reasons)

    if not counts["customer_aggregates"]:
        console.print("[yellow]no customer aggregates written yet[/yellow]")
        return
    current = current_customer_rows(con, output_glob(download, settings, "customer_aggregates"))
    con.register("current_rows", current.to_arrow_table())
    leaders = Table(title=f"Top {top} customers by revenue (current rows of customer_aggregates/)")
    columns = (
        "customer_id",
        "events",
        "sessions",
        "active_days",
        "purchases",
        "revenue",
        "frequency",
        "recency",
        "T",
        "monetary_value",
        "engagement_score",
    )
    for column in columns:
        leaders.add_column(column, justify="left" if column == "customer_id" else "right")
    query = f"""SELECT {", ".join(f'"{c}"' for c in columns)} FROM current_rows
                ORDER BY revenue DESC, customer_id LIMIT {top}"""
    for row in con.sql(query).fetchall():
        leaders.add_row(*(_fmt(value) for value in row))
    console.print(leaders)

    overview = Table(title="RFM overview (BG/NBD / Gamma-Gamma inputs, one UTC day per period)")
    for column in ("measure", "customers", "mean", "p25", "median", "p75", "max"):
        overview.add_column(column, justify="left" if column == "measure" else "right")
    for measure, where in (
        ("frequency", "frequency IS NOT NULL"),
        ("recency", "frequency IS NOT NULL"),
        ("T", "frequency IS NOT NULL"),
        ("monetary_value", "frequency > 0"),
        ("engagement_score", "TRUE"),
    ):
        row = con.sql(
            f"""SELECT count(*), avg("{measure}"), quantile_cont("{measure}", 0.25), median("{measure}"),
                       quantile_cont("{measure}", 0.75), max("{measure}")
                FROM current_rows WHERE {where}"""
        ).fetchall()[0]
        overview.add_row(measure, *(_fmt(value) for value in row))
    buyers, customers = con.sql(
        "SELECT count(*) FILTER (WHERE frequency IS NOT NULL), count(*) FROM current_rows"
    ).fetchall()[0]
    console.print(overview)
    console.print(
        f"{customers:,} customers, {buyers:,} with at least one purchase, "
        f"{customers - buyers:,} without (null frequency / recency / T / monetary_value)."
    )
    glob = output_glob(download, settings, "customer_aggregates")
    query = f"SELECT * FROM read_parquet('{glob}') LIMIT 5"
    console.print(
        f'Query the copies with DuckDB, e.g.:\n  .venv/bin/python -c "import duckdb; duckdb.sql(\\"{query}\\").show()"'
    )


def print_freshness(s3: Any, settings: Settings, console: Console) -> None:
    """Freshness SLI: p50 / p99 of arrival-to-durable and of the newest event's age, from the commit records."""
    from consumer.s3_sink import read_commit_records
    from schemas.control import ControlRecordError
    from schemas.layout import OutputLayout
    from scoring.freshness import summarize_freshness

    try:
        records = read_commit_records(s3, settings.bucket, OutputLayout(settings.prefix))
    except ControlRecordError as error:
        console.print(f"[yellow]freshness: commit records not in the current format ({error})[/yellow]")
        return
    fresh = summarize_freshness(records)
    if fresh is None:
        console.print("[yellow]freshness: no commit record carries freshness fields yet[/yellow]")
        return
    table = Table(title=f"Freshness (seconds, over {fresh.flushes:,} flushes)")
    for column in ("measure", "p50", "p99", "max"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(
        "arrival to durable",
        f"{fresh.arrival_to_durable_p50:,.1f}",
        f"{fresh.arrival_to_durable_p99:,.1f}",
        f"{fresh.arrival_to_durable_max:,.1f}",
    )
    table.add_row("newest event age", _fmt(fresh.newest_event_age_p50), _fmt(fresh.newest_event_age_p99), "")
    console.print(table)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
