"""``clickstream report``: one self-contained HTML file a person would rather look at than read.

Everything is inside the file (plots as base64 PNG drawn by matplotlib, CSS inline, no fonts or scripts from a
CDN), so it opens offline and can be mailed or attached to a ticket. Sections: the scoring run, segment sizes and
value, the recency x frequency heat map, the CLV distribution, top customers, records in / accepted / rejected (by
reason) over time, freshness over time, files and bytes written.

Sources: the worker's commit records (``commit_records``), the rejected records they name (``errors/``), and
the latest committed ``clickstream score`` run (``_control/clv/latest.json``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa

from clickstream.console import progress_of
from clickstream.errors import FrontDoorError
from clickstream.options import show_progress, top_heading
from clickstream.outputs import (
    commit_records,
    local_commit_records,
    read_local_tables,
    read_tables,
    require_worker_prefix,
)
from runtime.exit_codes import USAGE
from runtime.files import write_whole
from runtime.logs import count_of, verb_for
from runtime.settings import Settings
from schemas.control import CommitRecord, ScoreCommit
from schemas.layout import OutputLayout
from scoring.clv import MIN_BUYERS, MIN_REPEAT_BUYERS, parameters_text
from scoring.freshness import FreshnessSummary, freshness_points, summarize_freshness
from scoring.rfm import SEGMENT_DESCRIPTIONS, SEGMENTS

#: The plots every complete report has, in page order (ids of their <figure> elements).
PLOT_IDS: Final = (
    "plot-segments",
    "plot-rf-heatmap",
    "plot-clv-distribution",
    "plot-records",
    "plot-rejects",
    "plot-freshness",
    "plot-files-bytes",
)
_COLORS: Final = {
    "in": "#4c72b0",
    "accepted": "#55a868",
    "rejected": "#c44e52",
    "p50": "#4c72b0",
    "p99": "#dd8452",
}


@dataclass(slots=True)
class ReportInputs:
    """What a report shows; every part may be missing (the report then says why instead of plotting)."""

    source: str
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    commits: list[CommitRecord] = field(default_factory=list)
    errors: pa.Table | None = None  # error_code, approximate_arrival_at
    # errors/ files the commit records name, gone from S3
    errors_missing: list[str] = field(default_factory=list)
    scores: pa.Table | None = None  # CLV_SCORES_SCHEMA
    score_commit: ScoreCommit | None = None
    model: dict[str, Any] | None = None
    top: int = 20
    # where no scoring run was found, and what to do: said in place of the customer-value plots
    no_scores: str = ""


# ------------------------------------------------------------------------------------------------------- loading
def load_inputs(
    settings: Settings,
    s3: Any,
    *,
    top: int = 20,
    clv_dir: Path | None = None,
    input_dir: Path | None = None,
    progress: bool | None = None,
) -> ReportInputs:
    """Read commit records, the rejected records they name and the latest committed scoring run: from S3, or
    offline from ``input_dir`` (a ``summary --download`` folder; its scoring run, if a ``score --output-dir`` wrote
    one there); the scoring run from ``clv_dir`` if given. ``progress``: a bar for the long reads (None: on a
    terminal only)."""
    from clickstream.score import (
        LocalStore,
        ObjectStore,
        S3Store,
        read_commit,
        read_model_report,
        read_scores,
    )

    layout = OutputLayout(settings.prefix)
    error_columns = ["error_code", "approximate_arrival_at"]
    store: ObjectStore
    # a damaged commit record stops the report as it stops summary, manifest, replay and score (exit 2, its key
    # named): it used to be said only inside the page, after exit 0
    if input_dir is not None:
        inputs = ReportInputs(source=str(input_dir / settings.prefix), top=top)
        inputs.commits = local_commit_records(input_dir, settings)
        inputs.errors = read_local_tables(input_dir, _error_keys(inputs.commits), error_columns)
        store = LocalStore(input_dir)
    else:
        require_worker_prefix(s3, settings)
        inputs = ReportInputs(source=f"s3://{settings.bucket}/{settings.prefix}", top=top)
        inputs.commits = commit_records(s3, settings, progress=progress)
        # an expiry rule on errors/ must not end every later report: their rejects are left out, and said
        with progress_of("reading errors/", "file", bar=show_progress(progress)) as report:
            inputs.errors = read_tables(
                s3,
                settings.bucket,
                _error_keys(inputs.commits),
                columns=error_columns,
                missing=inputs.errors_missing,
                progress=report,
            )
        store = S3Store(s3, settings)
    if clv_dir is not None:
        store = LocalStore(clv_dir)
        inputs.source += f"; customer value from {clv_dir}"
    commit = read_commit(store, layout)
    if commit is None and clv_dir is not None:
        raise FrontDoorError(
            f"--clv-dir {clv_dir}: no committed scoring run in it (a `score --output-dir` folder holds "
            f"{layout.clv_latest_key})",
            USAGE,
        )
    if commit is None and input_dir is not None:
        # a `summary --download` copy holds no clv/: S3 may well have a run, this report only did not look there
        inputs.no_scores = (
            f"No scoring run in {input_dir} (a `summary --download` copy has none): score it offline with "
            f"`clickstream score --input {input_dir} --output-dir {input_dir} --prefix {settings.prefix}`, or name a "
            "`score --output-dir` folder with --clv-dir."
        )
    if commit is not None:
        inputs.score_commit = commit
        inputs.scores = read_scores(store, commit)
        inputs.model = read_model_report(store, commit)
    return inputs


def _error_keys(commits: Sequence[CommitRecord]) -> list[str]:
    return sorted({key for record in commits for key in record.files.get("errors", [])})


def write_report(
    settings: Settings,
    output: Path,
    *,
    top: int = 20,
    clv_dir: Path | None = None,
    input_dir: Path | None = None,
    source_note: str | None = None,
    progress: bool | None = None,
) -> ReportInputs:
    """Write the report to ``output``; returns what it showed (``errors_missing``: files it had to leave out).
    ``source_note`` follows the source in the header (the demo's: its bucket was on an emulator gone since)."""
    from runtime.aws import aws_client

    s3 = aws_client("s3", settings) if input_dir is None else None  # offline: no endpoint is asked anything
    inputs = load_inputs(settings, s3, top=top, clv_dir=clv_dir, input_dir=input_dir, progress=progress)
    if source_note:
        inputs.source = f"{inputs.source} ({source_note})"
    output.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(inputs)
    try:
        # whole or not at all: a failed write (a full disk) leaves the earlier report as it was
        write_whole(output, lambda file: file.write_text(page, encoding="utf-8"))
    except OSError as error:
        # the report's name, not the hidden file's beside it (or none, as a full disk)
        error.filename = str(output)
        raise
    return inputs


# ------------------------------------------------------------------------------------------------------- plotting
def _figure(width: float = 9.0, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure


def _png(figure: Any) -> str:
    """The figure as a base64 PNG. Its legends have a place each: "best" (matplotlib's default) is searched over
    every point drawn, slow and warned about on a long history."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot(plot_id: str, figure: Any, caption: str) -> str:
    alt = html.escape(caption)
    return (
        f'<figure class="plot" id="{plot_id}"><img src="data:image/png;base64,{_png(figure)}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )


def _missing(plot_id: str, why: str) -> str:
    return f'<p class="missing" id="{plot_id}-missing">{html.escape(why)}</p>'


def _bucket(span: timedelta) -> tuple[timedelta, str]:
    """A time bucket that gives tens of bars over ``span``."""
    for size, label in (
        (timedelta(seconds=10), "10 seconds"),
        (timedelta(minutes=1), "minute"),
        (timedelta(minutes=10), "10 minutes"),
        (timedelta(hours=1), "hour"),
        (timedelta(days=1), "day"),
    ):
        if span <= size * 60:
            return size, label
    return timedelta(days=7), "week"


def _floor(moment: datetime, size: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + size * ((moment - epoch) // size)


def plot_segments(scores: pa.Table) -> str:
    con = duckdb.connect()
    con.register("scores", scores)
    rows = {
        name: (count, value)
        for name, count, value in con.sql(
            "SELECT segment, count(*), sum(clv) FROM scores GROUP BY ALL"
        ).fetchall()
    }
    names = [name for name in SEGMENTS if name in rows]
    counts = [rows[name][0] for name in names]
    values = [rows[name][1] for name in names]
    figure = _figure(10, 4.2)
    left, right = figure.subplots(1, 2, sharey=True)
    y = np.arange(len(names))
    left.barh(y, counts, color="#4c72b0")
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.set_xlabel("customers")
    left.set_title("Customers per segment")
    right.barh(y, values, color="#55a868")
    right.set_xlabel("CLV (sum)")
    right.set_title("Value per segment")
    for axis, data in ((left, counts), (right, values)):
        for position, number in zip(y, data, strict=True):
            axis.annotate(
                f"{number:,.0f}",
                (number, position),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        axis.margins(x=0.18)
    return _plot("plot-segments", figure, "Segment sizes (customers) and value (sum of CLV over the horizon)")


def plot_rf_heatmap(scores: pa.Table) -> str:
    r = np.asarray(scores.column("r_score").to_numpy(), dtype=int)
    f = np.asarray(scores.column("f_score").to_numpy(), dtype=int)
    grid = np.zeros((5, 5), dtype=int)
    np.add.at(grid, (5 - r, f - 1), 1)  # rows: R 5 at the top
    figure = _figure(6.2, 4.6)
    axis = figure.subplots()
    image = axis.imshow(grid, cmap="YlGnBu")
    axis.set_xticks(range(5), [str(v) for v in range(1, 6)])
    axis.set_yticks(range(5), [str(v) for v in range(5, 0, -1)])
    axis.set_xlabel("F score (purchase days)")
    axis.set_ylabel("R score (recency)")
    threshold = grid.max() / 2 if grid.max() else 1
    for row in range(5):
        for column in range(5):
            color = "white" if grid[row, column] > threshold else "black"
            axis.text(
                column, row, f"{grid[row, column]:,}", ha="center", va="center", color=color, fontsize=9
            )
    figure.colorbar(image, ax=axis, label="customers")
    return _plot("plot-rf-heatmap", figure, "Recency x frequency: customers in each R and F score cell")


@dataclass(frozen=True)
class ClvHistogram:
    """What the CLV plot draws: every customer's value (on a log axis, clipped up into the first bar, since a log
    axis has no room for 0 or for a lapsed buyer's tiny CLV) and the bins."""

    values: np.ndarray
    bins: np.ndarray | int
    log_scale: bool
    below_first_bar: int

    @property
    def first_edge(self) -> float:
        """The left edge of the first bar on a log axis."""
        return float(np.asarray(self.bins)[0])

    def drawn_at(self, value: float) -> float:
        """Where a value's line stands: on a log axis, a value below the first bar stands at its edge."""
        return max(value, self.first_edge) if self.log_scale else value


def clv_histogram(clv: np.ndarray) -> ClvHistogram:
    positive = clv[clv > 0]
    if positive.size and positive.max() / max(np.percentile(positive, 5), 1e-9) > 100:
        lowest = max(positive.min(), 1e-2)
        if lowest < positive.max():  # (every value under a cent: a plain axis shows them)
            bins = np.geomspace(lowest, positive.max(), 50)
            return ClvHistogram(np.clip(clv, bins[0], None), bins, True, int((clv < bins[0]).sum()))
    return ClvHistogram(clv, 50, False, 0)


def plot_clv_distribution(scores: pa.Table) -> str:
    clv = np.asarray(scores.column("clv").to_numpy(), dtype=float)
    figure = _figure(9, 3.6)
    axis = figure.subplots()
    drawn = clv_histogram(clv)
    label = "CLV over the horizon"
    if drawn.log_scale:
        axis.set_xscale("log")
    if drawn.below_first_bar:
        label += (
            f" (log scale; the first bar also counts {drawn.below_first_bar:,} customers below "
            f"{drawn.first_edge:,.2f})"
        )
    axis.hist(drawn.values, bins=drawn.bins, color="#4c72b0")
    for q, style in ((50, "--"), (90, ":")):
        value = float(np.percentile(clv, q))
        axis.axvline(drawn.drawn_at(value), color="#c44e52", linestyle=style, label=f"p{q} {value:,.2f}")
    axis.set_xlabel(label)
    axis.set_ylabel("customers")
    axis.legend(loc="upper right")
    return _plot("plot-clv-distribution", figure, "Distribution of customer lifetime value (CLV)")


def plot_records(commits: Sequence[CommitRecord]) -> str:
    times = [record.committed_at for record in commits]
    size, label = _bucket(max(times) - min(times))
    sums: dict[datetime, list[int]] = defaultdict(lambda: [0, 0, 0])
    for record in commits:
        bucket = sums[_floor(record.committed_at, size)]
        bucket[0] += record.records_new
        bucket[1] += record.accepted
        bucket[2] += record.rejected
    keys = sorted(sums)
    figure = _figure()
    axis = figure.subplots()
    width = size * 0.28
    for offset, (name, index) in zip((-1, 0, 1), (("in", 0), ("accepted", 1), ("rejected", 2)), strict=True):
        axis.bar(
            [key + width * offset for key in keys],
            [sums[key][index] for key in keys],
            width=width,
            label=f"records {name}",
            color=_COLORS[name],
        )
    axis.set_ylabel(f"records per {label}")
    axis.set_xlabel("commit time (UTC)")
    axis.legend(loc="upper left")
    figure.autofmt_xdate()
    return _plot("plot-records", figure, f"Records in, accepted and rejected per {label} (commit records)")


def plot_rejects(errors: pa.Table) -> str:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("errors", errors)
    first, last = con.sql(
        "SELECT min(approximate_arrival_at), max(approximate_arrival_at) FROM errors"
    ).fetchall()[0]
    size, label = _bucket(last - first)
    rows = con.sql(
        f"SELECT time_bucket(INTERVAL '{int(size.total_seconds())} seconds', approximate_arrival_at) AS t, "
        "error_code, count(*) FROM errors GROUP BY ALL ORDER BY 1, 2"
    ).fetchall()
    codes = sorted({code for _, code, _ in rows})
    keys = sorted({moment for moment, _, _ in rows})
    counts = {(moment, code): n for moment, code, n in rows}
    figure = _figure()
    axis = figure.subplots()
    bottom = np.zeros(len(keys))
    colors = [_tab_color(i) for i in range(len(codes))]
    for code, color in zip(codes, colors, strict=True):
        values = np.array([counts.get((key, code), 0) for key in keys])
        axis.bar(keys, values, bottom=bottom, width=size * 0.8, label=code, color=color)
        bottom += values
    axis.set_ylabel(f"rejected records per {label}")
    axis.set_xlabel("Kinesis arrival time (UTC)")
    axis.legend(fontsize=8, ncols=2, loc="upper left")
    figure.autofmt_xdate()
    return _plot("plot-rejects", figure, f"Rejected records by reason per {label} (errors/)")


def _tab_color(index: int) -> str:
    palette = (
        "#4c72b0",
        "#dd8452",
        "#55a868",
        "#c44e52",
        "#8172b3",
        "#937860",
        "#da8bc3",
        "#8c8c8c",
        "#ccb974",
        "#64b5cd",
        "#1f77b4",
        "#ff7f0e",
    )
    return palette[index % len(palette)]


def plot_freshness(commits: Sequence[CommitRecord]) -> str:
    points = freshness_points(commits)
    figure = _figure()
    left, right = figure.subplots(1, 2)
    times = [point.committed_at for point in points]
    left.plot(
        times, [p.arrival_to_durable_p50 for p in points], "o-", ms=3, label="p50", color=_COLORS["p50"]
    )
    left.plot(
        times, [p.arrival_to_durable_p99 for p in points], "o-", ms=3, label="p99", color=_COLORS["p99"]
    )
    left.set_ylabel("seconds")
    left.set_title("Arrival to durable, per flush")
    left.legend(loc="upper left")
    aged = [(p.committed_at, p.newest_event_age) for p in points if p.newest_event_age is not None]
    right.plot([t for t, _ in aged], [age for _, age in aged], "o-", ms=3, color="#8172b3")
    right.set_ylabel("seconds")
    right.set_title("Age of the newest durable event, per flush")
    for axis in (left, right):
        axis.set_xlabel("commit time (UTC)")
        axis.tick_params(axis="x", labelrotation=30)
    return _plot(
        "plot-freshness", figure, "Freshness: seconds from Kinesis arrival to durable, newest event age"
    )


def plot_files_bytes(commits: Sequence[CommitRecord]) -> str:
    ordered = sorted(commits, key=lambda record: record.committed_at)
    outputs = sorted({output for record in ordered for output in record.files})
    times = [record.committed_at for record in ordered]
    figure = _figure()
    left, right = figure.subplots(1, 2)
    for index, output in enumerate(outputs):
        files = np.cumsum([len(record.files.get(output, [])) for record in ordered])
        left.step(times, files, where="post", label=output, color=_tab_color(index))
    left.set_ylabel("files (cumulative)")
    left.legend(fontsize=8, loc="upper left")
    right.step(
        times, np.cumsum([record.bytes_written for record in ordered]) / 2**20, where="post", color="#4c72b0"
    )
    right.set_ylabel("MiB written (cumulative)")
    for axis in (left, right):
        axis.set_xlabel("commit time (UTC)")
        axis.tick_params(axis="x", labelrotation=30)
    return _plot("plot-files-bytes", figure, "Files and bytes written (commit records)")


# ------------------------------------------------------------------------------------------------------- page
def _number(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cards(items: Sequence[tuple[str, str]]) -> str:
    cells = "".join(
        f'<div class="card"><div class="value">{html.escape(v)}</div><div class="label">{html.escape(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="cards">{cells}</div>'


def _scoring_section(inputs: ReportInputs) -> str:
    scores, commit, model = inputs.scores, inputs.score_commit, inputs.model
    if scores is None or commit is None or scores.num_rows == 0:
        why = inputs.no_scores or (
            "No committed scoring run yet: run `clickstream score` (its models need at least "
            f"{MIN_BUYERS} buyers and {MIN_REPEAT_BUYERS} repeat buyers)."
        )
        return (
            "<section><h2>Customer value</h2>"
            + "".join(_missing(plot_id, why) for plot_id in PLOT_IDS[:3])
            + "</section>"
        )
    clv = np.asarray(scores.column("clv").to_numpy(), dtype=float)
    # BG/NBD gives every one-time buyer P(alive) 1 (dropping out needs a repeat purchase): averaged in, they would
    # make the card read healthier the more one-time buyers there are
    repeat = np.asarray(scores.column("frequency").to_numpy(), dtype=float) > 0
    alive = np.asarray(scores.column("probability_alive").to_numpy(), dtype=float)[repeat]
    valuation = (model or {}).get("valuation", {})
    cards = _cards(
        [
            ("buyers scored", _number(scores.num_rows)),
            ("total CLV", _number(float(clv.sum()), 2)),
            ("median CLV", _number(float(np.median(clv)), 2)),
            ("mean P(alive) of repeat buyers", f"{alive.mean():.1%}" if len(alive) else "–"),
            (
                "expected purchase days, next 90 days",
                _number(float(np.asarray(scores.column("expected_purchases_90d").to_numpy()).sum()), 0),
            ),
        ]
    )
    library = (model or {}).get("library", {})
    bg = (model or {}).get("bg_nbd", {})
    gg = (model or {}).get("gamma_gamma", {})
    params = parameters_text({**bg.get("parameters", {}), **gg.get("parameters", {})})
    about = (
        f"<p>Run <code>{html.escape(commit.run_id)}</code>, observation end {commit.as_of.isoformat()}, "
        f"{_number(commit.inputs.get('customers'))} customers of which {_number(commit.rows)} buyers; "
        f"{html.escape(str(library.get('name')))} {html.escape(str(library.get('version')))} "
        f"({html.escape(str(library.get('method')))}). CLV over {valuation.get('horizon_months', '?')} months, "
        f"annual discount rate {valuation.get('annual_discount_rate', '?')}, margin {valuation.get('margin', '?')}. "
        f"Parameters: {html.escape(params)}. In-sample expected / observed repeat purchase days: "
        f"{_number(bg.get('expected_repeat_purchases_in_sample'))} / {_number(bg.get('observed_repeat_purchases'))}."
        f"{convergence_sentence(bg, gg)}</p>"
        + "".join(
            f"<p><strong>Note:</strong> {html.escape(note)}</p>" for note in (model or {}).get("notes", [])
        )
    )
    legend = _table(
        ["segment", "customers", "meaning"],
        [
            [name, _number(commit.segments.get(name, 0)), SEGMENT_DESCRIPTIONS[name]]
            for name in SEGMENTS
            if commit.segments.get(name)
        ],
        "segment-legend",
    )
    order = np.argsort(-clv, kind="stable")[: inputs.top]
    top = scores.take(pa.array(order))
    columns = (
        "customer_id",
        "segment",
        "rfm_cell",
        "probability_alive",
        "expected_purchases_90d",
        "expected_average_order_value",
        "clv",
        "revenue",
    )
    rows = []
    for row in top.select(list(columns)).to_pylist():
        rows.append(
            [
                str(row["customer_id"]),
                str(row["segment"]),
                str(row["rfm_cell"]),
                f"{row['probability_alive']:.1%}",
                f"{row['expected_purchases_90d']:.2f}",
                f"{row['expected_average_order_value']:,.2f}",
                f"{row['clv']:,.2f}",
                f"{row['revenue']:,.2f}",
            ]
        )
    top_table = _table(
        [
            "customer",
            "segment",
            "R F M",
            "P(alive)",
            "purchase days, next 90 d",
            "expected spend per purchase day",
            "CLV",
            "revenue so far",
        ],
        rows,
        "top-customers",
    )
    return (
        "<section><h2>Customer value</h2>"
        + cards
        + about
        + plot_segments(scores)
        + legend
        + '<div class="row">'
        + plot_rf_heatmap(scores)
        + "</div>"
        + plot_clv_distribution(scores)
        + f"<h3>{top_heading(len(order), inputs.top)} by CLV</h3>"
        + top_table
        + "</section>"
    )


def _pipeline_section(inputs: ReportInputs) -> str:
    commits = inputs.commits
    if not commits:
        why = "No committed flushes yet."
        return "<section><h2>Pipeline</h2>" + "".join(_missing(p, why) for p in PLOT_IDS[3:]) + "</section>"
    totals = {
        key: sum(getattr(record, key) for record in commits)
        for key in ("records_new", "accepted", "duplicates", "rejected", "bytes_written")
    }
    files = sum(record.file_count for record in commits)
    fresh: FreshnessSummary | None = summarize_freshness(commits)
    cards = _cards(
        [
            ("records in", _number(totals["records_new"])),
            ("accepted", _number(totals["accepted"])),
            ("duplicates", _number(totals["duplicates"])),
            ("new events", _number(totals["accepted"] - totals["duplicates"])),
            ("rejected", _number(totals["rejected"])),
            ("flushes", _number(len(commits))),
            ("files written", _number(files)),
            ("MiB written", _number(totals["bytes_written"] / 2**20, 1)),
            (
                "arrival to durable p50 / p99 (s)",
                f"{fresh.arrival_to_durable_p50:.1f} / {fresh.arrival_to_durable_p99:.1f}" if fresh else "–",
            ),
            (
                "newest event age p50 / p99 (s)",
                f"{_number(fresh.newest_event_age_p50, 1)} / {_number(fresh.newest_event_age_p99, 1)}"
                if fresh
                else "–",
            ),
        ]
    )
    parts = [cards, plot_records(commits)]
    if inputs.errors is not None and inputs.errors.num_rows:
        parts.append(plot_rejects(inputs.errors))
    elif not inputs.errors_missing:
        parts.append(_missing("plot-rejects", "No rejected records."))
    if inputs.errors_missing:
        gone = inputs.errors_missing
        parts.append(
            f"<p><strong>Note:</strong> {count_of(len(gone), 'errors/ file')} the commit records name "
            f"{verb_for(len(gone))} gone from S3 (the "
            f"first: {html.escape(gone[0])}; an expiry rule on the prefix?): the rejected records above leave theirs "
            "out, and the commit records' counts still include them.</p>"
        )
    if fresh is not None:
        if (note := fresh.old_events_note()) is not None:
            parts.append(f"<p><strong>Note:</strong> {html.escape(note)}.</p>")
        parts.append(plot_freshness(commits))
    else:
        parts.append(
            _missing("plot-freshness", "The commit records carry no freshness fields (older worker).")
        )
    parts.append(plot_files_bytes(commits))
    return "<section><h2>Pipeline</h2>" + "".join(parts) + "</section>"


_CSS: Final = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
section { margin: 2rem 0; } figure.plot { margin: 1rem 0; } figure.plot img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1rem 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6rem 0.9rem; min-width: 9rem; }
.card .value { font-size: 1.3rem; font-weight: 600; } .card .label { color: #666; font-size: 0.8rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.3rem 0.6rem; text-align: left; }
.missing { color: #a15c00; background: #fff6e5; padding: 0.5rem 0.8rem; border-radius: 4px; }
"""
#: Marks each plot that the browser decoded (lets a headless browser check that every plot drew).
_CHECK_SCRIPT: Final = """
window.addEventListener('load', function () {
  var images = document.querySelectorAll('figure.plot img');
  var drawn = 0;
  images.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.parentElement.setAttribute('data-drawn', ok ? 'yes' : 'no');
    if (ok) { drawn += 1; }
  });
  document.body.setAttribute('data-plots', String(images.length));
  document.body.setAttribute('data-plots-drawn', String(drawn));
});
"""


def render_report(inputs: ReportInputs) -> str:
    """The whole page as one string (no external resources)."""
    title = "clickstream-rfm report"
    # JSON inside <script>: no "<" at all, so neither "</script" nor "<!--" can end or swallow the block
    facts = json.dumps(_facts(inputs)).replace("<", "\\u003c")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1><p class='sub'>{html.escape(inputs.source)} · generated "
        f"{inputs.generated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC</p>"
        + _scoring_section(inputs)
        + _pipeline_section(inputs)
        + f"<script>{_CHECK_SCRIPT}</script>"
        + f'<script type="application/json" id="report-data">{facts}</script>'
        + "</body></html>"
    )


def _facts(inputs: ReportInputs) -> dict[str, Any]:
    """The headline numbers in machine-readable form (tests and scripts read them back)."""
    return {
        "source": inputs.source,
        "flushes": len(inputs.commits),
        "records_in": sum(record.records_new for record in inputs.commits),
        "rejected": sum(record.rejected for record in inputs.commits),
        "duplicates": sum(record.duplicates for record in inputs.commits),
        "new_events": sum(record.accepted - record.duplicates for record in inputs.commits),
        "run_id": inputs.score_commit.run_id if inputs.score_commit else None,
        "scored": inputs.scores.num_rows if inputs.scores is not None else 0,
        "segments": inputs.score_commit.segments if inputs.score_commit else {},
    }


def convergence_sentence(bg: dict[str, Any], gg: dict[str, Any]) -> str:
    """The fits' convergence check in a sentence (none for a run scored before it was made, or not checked)."""
    checked = {
        name: part["likelihood_gain_per_customer"]
        for name, part in (("BG/NBD", bg), ("Gamma-Gamma", gg))
        if isinstance(part.get("likelihood_gain_per_customer"), int | float)
    }
    if not checked:
        return ""
    most = max(checked.values())
    found = f"it at most {most:.2g} higher per buyer" if most > 0 else "nothing higher"
    return (
        f" Checked at the likelihood's maximum ({' and '.join(checked)}): an independent search from the fit found "
        f"{found}."
    )
