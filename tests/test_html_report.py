"""``clickstream report``: one self-contained HTML file; every plot is an embedded image that a browser draws.

The report is built from worker output in the new commit format (tests/clv_support.py) and a real scoring run, on
moto S3. Headless Chromium from Debian (``chromium-headless-shell``, installed by ``make setup``) renders the file
with the network off; the page's own check marks each plot the browser decoded, and a screenshot is taken.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from clickstream.cli import main
from clickstream.html_report import (
    PLOT_IDS,
    ReportInputs,
    clv_histogram,
    convergence_sentence,
    plot_clv_distribution,
    render_report,
)
from tests.clv_support import WorkerBucket, worker_bucket
from tests.moto_support import isolate_environment, moto_bucket

BUCKET = "clv-report"
CHROMIUM = ("chromium-headless-shell", "chromium", "chromium-browser")


@pytest.fixture(scope="module")
def content() -> WorkerBucket:
    return worker_bucket(customers=300, events=6000, seed=8, malformed_rate=0.02)


@pytest.fixture(scope="module")
def report_file(content: WorkerBucket, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    output = tmp_path_factory.mktemp("report") / "report.html"
    with moto_bucket(BUCKET) as s3:
        content.write_to(s3, BUCKET)
        runner = CliRunner()
        scored = runner.invoke(main, ["score", "--bucket", BUCKET, "--prefix", "rfm", "--no-progress"])
        assert scored.exit_code == 0, scored.output
        result = runner.invoke(
            main, ["report", "--bucket", BUCKET, "--prefix", "rfm", "--output", str(output)]
        )
        assert result.exit_code == 0, result.output
        assert result.output.strip().endswith(str(output))
        yield output


def embedded_images(page: str) -> dict[str, bytes]:
    found = re.findall(r'<figure class="plot" id="([^"]+)"><img src="data:image/png;base64,([^"]+)"', page)
    return {plot_id: base64.b64decode(data) for plot_id, data in found}


def facts(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert match
    loaded: dict[str, Any] = json.loads(match.group(1))
    return loaded


def test_the_report_is_self_contained(report_file: Path) -> None:
    page = report_file.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from elsewhere
    assert "<link" not in page and "@import" not in page
    assert page.count("<img") == len(PLOT_IDS)


def test_every_plot_is_a_decodable_picture_with_content(report_file: Path) -> None:
    images = embedded_images(report_file.read_text(encoding="utf-8"))
    assert list(images) == list(PLOT_IDS)
    for plot_id, png in images.items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), plot_id
        pixels = imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400, plot_id
        assert pixels[..., :3].std() > 0.05, f"{plot_id} is blank"
        colours = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}
        assert len(colours) > 10, f"{plot_id} has too few colours to be a plot"


def test_the_report_shows_the_run_and_the_pipeline_numbers(report_file: Path, content: WorkerBucket) -> None:
    page = report_file.read_text(encoding="utf-8")
    got = facts(page)
    commits = [json.loads(body) for key, body in content.objects.items() if "/commits/" in key]
    assert got["flushes"] == len(commits)
    assert got["records_in"] == sum(commit["records_in"] - commit["records_skipped"] for commit in commits)
    assert got["rejected"] == sum(commit["rejected"] for commit in commits) > 0
    assert got["duplicates"] == sum(commit["duplicates"] for commit in commits)
    events = [key for key in content.objects if "/events/" in key and key.endswith(".parquet")]
    archived = sum(pq.read_metadata(io.BytesIO(content.objects[key])).num_rows for key in events)
    assert got["new_events"] == archived == got["records_in"] - got["rejected"] - got["duplicates"]
    assert f'<div class="value">{got["new_events"]:,}</div><div class="label">new events</div>' in page
    assert got["scored"] == sum(got["segments"].values()) > 100
    assert got["run_id"] and got["run_id"] in page
    for segment, count in got["segments"].items():
        assert f"<td>{segment}</td><td>{count:,}</td>" in page
    assert page.count("<tr><td>c-") >= 20  # the top customers table
    checked = re.search(
        r"Checked at the likelihood's maximum \((.*?)\): .* found (nothing|it at most (\S+)) higher", page
    )
    assert checked and checked.group(1) == "BG/NBD and Gamma-Gamma", checked
    assert checked.group(2) == "nothing" or float(checked.group(3)) < 1e-3, checked


def test_the_convergence_sentence_reads_for_an_exact_fit_and_is_absent_for_a_run_scored_before_it() -> None:
    """A fit where the independent search found nothing higher read "at most 0 higher per buyer"."""
    exact = convergence_sentence(
        {"likelihood_gain_per_customer": 0.0}, {"likelihood_gain_per_customer": None}
    )
    assert (
        exact
        == " Checked at the likelihood's maximum (BG/NBD): an independent search from the fit found nothing higher."
    )
    both = convergence_sentence(
        {"likelihood_gain_per_customer": 0.0}, {"likelihood_gain_per_customer": 4.1e-11}
    )
    assert "(BG/NBD and Gamma-Gamma)" in both and "found it at most 4.1e-11 higher per buyer." in both
    assert convergence_sentence({}, {}) == ""  # an older _model.json has no such key


def test_the_top_customers_heading_counts_the_rows_it_shows(report_file: Path, tmp_path: Path) -> None:
    """`--top 100000` headed a table of a few hundred rows "Top 100000 customers by CLV"."""
    scored = facts(report_file.read_text(encoding="utf-8"))["scored"]
    shown = re.findall(
        r"<h3>(Top|All) ([0-9,]+) customers by CLV</h3>", report_file.read_text(encoding="utf-8")
    )
    assert shown and shown[0][0] == "Top" and int(shown[0][1]) < scored  # the default --top
    output = tmp_path / "all.html"
    result = CliRunner().invoke(
        main, ["report", "--bucket", BUCKET, "--prefix", "rfm", "--top", "100000", "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    page = output.read_text(encoding="utf-8")
    assert f"<h3>All {scored:,} customers by CLV</h3>" in page
    assert page.count("<tr><td>c-") >= scored


def test_a_report_that_cannot_be_written_whole_leaves_the_earlier_one(
    report_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk cut the page off where it stopped, in place: the earlier report was lost with no word of it."""
    output = tmp_path / "report.html"
    shutil.copy(report_file, output)
    earlier = output.read_bytes()
    write_text = Path.write_text

    def disk_fills(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
        write_text(path, text[:8192], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_fills)
    result = CliRunner().invoke(main, ["report", "--bucket", BUCKET, "--prefix", "rfm", "-o", str(output)])
    assert result.exit_code == 1, result.output
    assert f"No space left on device ({output})" in result.output
    assert output.read_bytes() == earlier, "the earlier report is as it was"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.html"], "no part left beside it"


def test_reading_the_errors_files_shows_its_progress(
    report_file: Path, content: WorkerBucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One GET per flush that had rejects, months of them, with nothing on screen: summary showed its reads."""
    reported: dict[str, list[tuple[int, int]]] = {}
    bars: list[bool] = []

    @contextmanager
    def recorded(description: str, unit: str, *, bar: bool) -> Iterator[Any]:
        calls = reported.setdefault(f"{description} ({unit}s)", [])
        bars.append(bar)
        yield lambda done, total: calls.append((done, total))

    monkeypatch.setattr("clickstream.html_report.progress_of", recorded)
    result = CliRunner().invoke(
        main, ["report", "--bucket", BUCKET, "--prefix", "rfm", "-o", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0, result.output
    errors = sum(1 for key in content.objects if "/errors/" in key and key.endswith(".parquet"))
    calls = reported["reading errors/ (files)"]
    assert errors >= 2 and calls[-1] == (errors, errors), calls
    # a bar on a terminal only, unless asked for (or against) as every long-running command takes it
    arguments = [
        "report",
        "--bucket",
        BUCKET,
        "--prefix",
        "rfm",
        "-o",
        str(tmp_path / "p.html"),
        "--progress",
    ]
    assert CliRunner().invoke(main, arguments).exit_code == 0
    assert bars == [False, True], bars


def test_a_note_on_the_fit_is_said_by_score_and_shown_in_the_report(
    content: WorkerBucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BG/NBD fit with no spread of dropout (the demo's) was shown as plain parameters, without a word."""
    note = "BG/NBD found no spread of the dropout probability between buyers (a note of this test)"
    monkeypatch.setattr("scoring.clv.dropout_notes", lambda _params: [note])
    output = tmp_path / "noted.html"
    with moto_bucket("clv-noted") as s3:
        content.write_to(s3, "clv-noted")
        runner = CliRunner()
        scored = runner.invoke(main, ["score", "--bucket", "clv-noted", "--prefix", "rfm", "--no-progress"])
        reported = runner.invoke(
            main, ["report", "--bucket", "clv-noted", "--prefix", "rfm", "-o", str(output)]
        )
    assert scored.exit_code == 0 and reported.exit_code == 0, scored.output + reported.output
    assert f"note: {note}" in scored.output
    assert f"<strong>Note:</strong> {note}" in output.read_text(encoding="utf-8")


def test_a_damaged_commit_record_stops_the_report_naming_it(content: WorkerBucket, tmp_path: Path) -> None:
    """summary, manifest, replay and score exit 2 naming the key; report said it only inside the page, exit 0."""
    from schemas.layout import OutputLayout

    output = tmp_path / "damaged.html"
    with moto_bucket("clv-damaged") as s3:
        content.write_to(s3, "clv-damaged")
        damaged = OutputLayout("rfm").commit_key("shardId-000000000009", None)
        s3.put_object(Bucket="clv-damaged", Key=damaged, Body=b"{not json")
        result = CliRunner().invoke(
            main, ["report", "--bucket", "clv-damaged", "--prefix", "rfm", "-o", str(output)]
        )
    assert result.exit_code == 2, result.output
    assert damaged in result.output
    assert not output.exists()


def test_a_committed_errors_file_gone_from_s3_is_left_out_said_in_the_page_and_exits_1(
    content: WorkerBucket, tmp_path: Path
) -> None:
    """An expiry rule on errors/ ended every later report with "no such object", and no report."""
    output = tmp_path / "expired.html"
    with moto_bucket("clv-expired") as s3:
        content.write_to(s3, "clv-expired")
        errors = sorted(key for key in content.objects if "/errors/" in key and key.endswith(".parquet"))
        assert len(errors) >= 2, "the bucket has rejects in more than one file"
        s3.delete_object(Bucket="clv-expired", Key=errors[0])
        result = CliRunner().invoke(
            main, ["report", "--bucket", "clv-expired", "--prefix", "rfm", "-o", str(output)]
        )
    assert result.exit_code == 1, result.output
    assert (
        f"1 committed errors/ file is missing from s3://clv-expired/ (the first: {errors[0]}" in result.output
    )
    page = output.read_text(encoding="utf-8")
    assert "1 errors/ file the commit records name is gone from S3" in page
    assert '<figure class="plot" id="plot-rejects">' in page, "the other files' rejects are still plotted"


@contextmanager
def scored_bucket(content: WorkerBucket, bucket: str) -> Iterator[tuple[Any, CliRunner]]:
    """A moto bucket of its own holding the worker's output and one committed scoring run."""
    with moto_bucket(bucket) as s3:
        content.write_to(s3, bucket)
        runner = CliRunner()
        scored = runner.invoke(main, ["score", "--bucket", bucket, "--prefix", "rfm", "--no-progress"])
        assert scored.exit_code == 0, scored.output
        yield s3, runner


def clv_keys(s3: Any, bucket: str, suffix: str) -> list[str]:
    """The keys of the scoring run's files ending in ``suffix``."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="rfm/clv/")["Contents"]
    return [item["Key"] for item in listed if item["Key"].endswith(suffix)]


@pytest.mark.parametrize("damage", ["not parquet", "zeroed inside"])
def test_a_damaged_clv_part_stops_the_report_naming_it(
    content: WorkerBucket, tmp_path: Path, damage: str
) -> None:
    """A part that is no Parquet file ended the report with "unexpected ArrowInvalid ... '<Buffer>'", no key named;
    one whose pages inside do not decode (an OSError from pyarrow) too."""
    output = tmp_path / "damaged-part.html"
    with scored_bucket(content, "clv-part") as (s3, runner):
        parts = clv_keys(s3, "clv-part", ".parquet")
        body = bytearray(s3.get_object(Bucket="clv-part", Key=parts[0])["Body"].read())
        if damage == "not parquet":
            body = bytearray(b"not parquet")
        else:  # the magic bytes and the footer kept: what breaks is inside
            middle = len(body) // 2
            body[middle - 200 : middle + 200] = bytes(400)
        s3.put_object(Bucket="clv-part", Key=parts[0], Body=bytes(body))
        result = runner.invoke(main, ["report", "--bucket", "clv-part", "--prefix", "rfm", "-o", str(output)])
    assert result.exit_code == 1, result.output
    assert f"s3://clv-part/{parts[0]} is named by the clv commit but is no Parquet file" in result.output
    assert "unexpected" not in result.output


def test_a_damaged_model_report_stops_the_report_naming_it(content: WorkerBucket, tmp_path: Path) -> None:
    """A _model.json cut short ended the report with "unexpected JSONDecodeError", one holding a list with
    "unexpected AttributeError: 'list' object has no attribute 'get'"; neither named the file."""
    output = tmp_path / "damaged-model.html"
    with scored_bucket(content, "clv-model") as (s3, runner):
        (model,) = clv_keys(s3, "clv-model", "/_model.json")
        for body, problem in ((b'{"bad', "not JSON ("), (b"[1, 2]", "not a JSON object")):
            s3.put_object(Bucket="clv-model", Key=model, Body=body)
            result = runner.invoke(
                main, ["report", "--bucket", "clv-model", "--prefix", "rfm", "-o", str(output)]
            )
            assert result.exit_code == 1, result.output
            assert f"s3://clv-model/{model} is named by the clv commit but is {problem}" in result.output
            assert "score its day again" in result.output and "unexpected" not in result.output


def test_missing_parts_are_explained_not_plotted() -> None:
    page = render_report(ReportInputs(source="s3://nothing/here"))
    assert "<img" not in page
    for plot_id in PLOT_IDS:
        assert f'id="{plot_id}-missing"' in page
    assert "clickstream score" in page


def test_the_report_says_in_days_that_events_carry_old_times(
    content: WorkerBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's report showed a newest-event age of about 18.8 million seconds, unexplained (the summary says it
    in days)."""
    import clickstream.html_report as html_report
    from schemas.control import CommitRecord
    from scoring.freshness import FreshnessSummary

    months = FreshnessSummary(3, 0.2, 0.4, 0.5, 214.7 * 86_400, 215.0 * 86_400)
    seconds = FreshnessSummary(3, 0.2, 0.4, 0.5, 30.0, 90.0)
    commits = [
        CommitRecord.from_json(body)
        for key, body in content.objects.items()
        if key.startswith(content.layout.all_commits_prefix)
    ]
    said = "the newest event of a flush is 214.7 days old at its commit (p50)"
    for summary, expected in ((months, True), (seconds, False)):
        monkeypatch.setattr(html_report, "summarize_freshness", lambda _commits, s=summary: s)
        page = html_report.render_report(ReportInputs(source="s3://b/p", commits=commits))
        assert (said in page) is expected


def test_the_embedded_facts_cannot_end_or_swallow_their_script_block() -> None:
    """A source path is free text: "<!--<script" in it would have swallowed the rest of the page."""
    source = "s3://bucket/</script><!--<script>-->"
    page = render_report(ReportInputs(source=source))
    block = page.split('<script type="application/json" id="report-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in block
    assert json.loads(block)["source"] == source


def test_the_clv_plot_counts_every_customer_on_a_log_axis() -> None:
    """Half the customers lapsed (CLV 1e-4, or 0): on the log axis they used to fall off the chart while the p50
    line, computed over everyone, stood in an empty stretch."""
    clv = np.concatenate([np.full(140, 1e-4), np.zeros(10), np.geomspace(1, 5_000, 150)])
    drawn = clv_histogram(clv)
    assert drawn.log_scale and drawn.below_first_bar == 150
    counts, _ = np.histogram(drawn.values, bins=drawn.bins)
    assert counts.sum() == clv.size and counts[0] >= 150
    page = plot_clv_distribution(pa.table({"clv": clv}))
    assert 'id="plot-clv-distribution"' in page
    spread = np.linspace(10, 500, 300)
    assert not clv_histogram(spread).log_scale and clv_histogram(spread).below_first_bar == 0
    # most customers lapsed: the p50 line stands at the first bar, not in the empty stretch left of it
    mostly_lapsed = np.concatenate([np.full(200, 1e-4), np.geomspace(1, 5_000, 100)])
    drawn = clv_histogram(mostly_lapsed)
    assert drawn.drawn_at(float(np.percentile(mostly_lapsed, 50))) == drawn.first_edge
    # every value under a cent, spread over more than 100x (the bins went downwards and the report failed)
    tiny = np.array([1e-6] * 20 + [5e-3] * 5)
    assert not clv_histogram(tiny).log_scale
    assert 'id="plot-clv-distribution"' in plot_clv_distribution(pa.table({"clv": tiny}))


def chromium() -> str:
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(
        "headless Chromium is missing: `make test` installs Debian's chromium-headless-shell as root (`make browser`)"
    )


def run_chromium(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--no-sandbox",
            "--disable-gpu",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--virtual-time-budget=5000",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_headless_browser_draws_every_plot(report_file: Path, tmp_path: Path) -> None:
    """Rendered with every network request sent to a dead proxy: only a self-contained page draws."""
    dom = run_chromium("--headless", "--dump-dom", report_file.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-plots="{len(PLOT_IDS)}"' in dom.stdout
    assert f'data-plots-drawn="{len(PLOT_IDS)}"' in dom.stdout
    for plot_id in PLOT_IDS:
        assert re.search(rf'<figure class="plot" id="{plot_id}" data-drawn="yes">', dom.stdout), plot_id

    screenshot = tmp_path / "report.png"
    shot = run_chromium(
        "--headless", f"--screenshot={screenshot}", "--window-size=1200,3000", report_file.as_uri()
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    pixels = imread(str(screenshot))
    assert pixels[..., :3].std() > 0.05


def test_mean_p_alive_is_over_repeat_buyers(report_file: Path) -> None:
    """BG/NBD gives every one-time buyer P(alive) 1: averaged in, the card would read healthier the more of them."""
    s3 = boto3.client("s3", region_name="us-east-1")  # the fixture's bucket, still up while its module runs
    parts = [
        obj["Key"]
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="rfm/clv/")["Contents"]
        if obj["Key"].endswith(".parquet")
    ]
    scores = pa.concat_tables(
        pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())) for key in parts
    )
    frequency = scores.column("frequency").to_numpy()
    alive = scores.column("probability_alive").to_numpy()
    assert (alive[frequency == 0] == 1).all() and (frequency == 0).any() and (frequency > 0).any()
    card = f'<div class="value">{alive[frequency > 0].mean():.1%}</div><div class="label">mean P(alive) of repeat'
    assert card in report_file.read_text(encoding="utf-8")


def test_a_download_is_reported_offline_as_s3_is(
    content: WorkerBucket, report_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``report --input`` reads a ``summary --download`` folder and the scoring run a ``score --output-dir`` wrote
    there, asking no endpoint: the same figures and run as the report from S3."""
    isolate_environment(monkeypatch)
    download = tmp_path / "download"
    for key, body in content.objects.items():  # the committed files, in the bucket's key layout
        (download / key).parent.mkdir(parents=True, exist_ok=True)
        (download / key).write_bytes(body)
    runner = CliRunner()
    unscored = tmp_path / "unscored.html"
    before = runner.invoke(
        main, ["report", "--input", str(download), "--prefix", "rfm", "--output", str(unscored)]
    )
    assert before.exit_code == 0, before.output
    # it did not look in S3, so it must not say that no run was committed there
    assert "No committed scoring run yet" not in unscored.read_text(encoding="utf-8")
    assert f"No scoring run in {download}" in unscored.read_text(encoding="utf-8")
    offline = ["--prefix", "rfm", "--no-progress"]
    scored = runner.invoke(main, ["score", "--input", str(download), "--output-dir", str(download), *offline])
    assert scored.exit_code == 0, scored.output
    output = tmp_path / "offline.html"

    def no_client(*_: Any, **__: Any) -> None:
        raise AssertionError("an offline report made an AWS client")

    monkeypatch.setattr("runtime.aws.aws_client", no_client)
    result = runner.invoke(
        main, ["report", "--input", str(download), "--prefix", "rfm", "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    got, from_s3 = facts(output.read_text(encoding="utf-8")), facts(report_file.read_text(encoding="utf-8"))
    assert got["source"] == str(download / "rfm")
    compared = (
        "flushes",
        "records_in",
        "rejected",
        "duplicates",
        "new_events",
        "run_id",
        "scored",
        "segments",
    )
    assert {key: got[key] for key in compared} == {key: from_s3[key] for key in compared}
    assert got["flushes"] > 0 and got["rejected"] > 0 and got["scored"] > 0


def test_a_download_missing_a_committed_file_is_named(
    content: WorkerBucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_environment(monkeypatch)
    for key, body in content.objects.items():
        if "/errors/" not in key:  # a copy that lost the rejects its commit records name
            (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / key).write_bytes(body)
    output = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", "--input", str(tmp_path), "--output", str(output)])
    assert result.exit_code == 1, result.output
    assert "its commit records name" in result.output and "/errors/" in result.output
    not_a_download = CliRunner().invoke(
        main, ["report", "--input", str(tmp_path / "rfm"), "--output", str(output)]
    )
    assert not_a_download.exit_code == 2, not_a_download.output
    assert "holds no commit records" in not_a_download.output and "--prefix" in not_a_download.output
    assert not output.exists()

    record_path = next(tmp_path.rglob("_control/commits/*/*.json"))
    record = json.loads(record_path.read_text())
    record["files"]["errors"] = ["../../../outside.parquet"]  # changed by hand: a key that leaves the folder
    record_path.write_text(json.dumps(record))
    escaped = CliRunner().invoke(main, ["report", "--input", str(tmp_path), "--output", str(output)])
    assert escaped.exit_code == 2, escaped.output
    assert "which is not a key under it" in escaped.output
