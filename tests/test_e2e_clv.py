"""End to end: demo data -> real KCL worker -> `clickstream score` -> `clickstream report`, checked independently.

Runs `clickstream demo` (embedded AWS endpoint, generator, PutRecords, the Java MultiLangDaemon, summary, score,
report) on a small stream, then recomputes every buyer's model inputs and R, F, M scores and segment from the
generated JSONL alone (tests/reference.py and the documented rules) and compares them with the committed clv/ run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from clickstream.score import LocalStore, read_commit, read_scores
from producer.generator import ClickstreamGenerator
from schemas.layout import OutputLayout
from tests.reference import load_documents, parse_time, reference_aggregates
from tests.test_scoring_rfm import EXPECTED_GRID

pytestmark = pytest.mark.e2e


def quintile(values: dict[str, float], customer: str, higher_is_better: bool) -> int:
    """The documented rule, written plainly: 1 + floor(5 * worse / (worse + better)), at most 5 (the demo's buyers
    never all share a value)."""
    mine = values[customer]
    worse = sum(1 for v in values.values() if (v < mine if higher_is_better else v > mine))
    better = sum(1 for v in values.values() if (v > mine if higher_is_better else v < mine))
    assert worse + better, "every buyer has the same value: the no-spread rule applies"
    return min(5, 1 + (5 * worse) // (worse + better))


def test_demo_scores_every_buyer_and_writes_the_report(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "clickstream.cli",
            "demo",
            "--customers",
            "150",
            "--events",
            "6000",
            "--seed",
            "21",
            "--shards",
            "2",
            "--output-dir",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from clickstream.demo import replaceable_output

    assert replaceable_output(output), "a demo's folder is marked as one the next demo may empty"
    report = re.search(r"8\. report: (\S+report\.html)", run.stdout)
    assert report and Path(report.group(1)).is_file(), run.stdout[-2000:]
    assert re.search(rf"Done in \d+s\. Open {re.escape(report.group(1))} in a browser", run.stdout), (
        run.stdout[-600:]
    )
    page = Path(report.group(1)).read_text(encoding="utf-8")
    assert "s3://clickstream-rfm/rfm (demo data on the demo&#x27;s embedded emulator, gone with it" in page
    assert page.count('<figure class="plot"') >= 6

    store = LocalStore(output / "s3")
    commit = read_commit(store, OutputLayout("rfm"))
    assert commit is not None
    scores = {row["customer_id"]: row for row in read_scores(store, commit).to_pylist()}

    # The valid events of the demo's input, labelled by the generator itself (the demo's own parameters).
    generator = ClickstreamGenerator(150, 6000, 21, duplicate_rate=0.01, malformed_rate=0.002)
    documents = load_documents([data for label, data in generator.records() if label == "valid"])
    assert len(documents) == 6000
    # the documented default observation end, from the input: T and recency below are measured to it
    assert commit.as_of == max(parse_time(document["event_time"]) for document in documents)
    reference = reference_aggregates(documents, as_of=commit.as_of.date())
    buyers = {customer: row for customer, row in reference.items() if row["frequency"] is not None}
    assert set(scores) == set(buyers)
    days_since = {c: (commit.as_of.date() - r["last_purchase_at"].date()).days for c, r in buyers.items()}
    purchase_days = {c: float(r["purchase_days"]) for c, r in buyers.items()}
    revenue = {c: float(r["revenue"]) for c, r in buyers.items()}
    for customer, expected in buyers.items():
        got = scores[customer]
        assert (got["frequency"], got["recency"], got["T"]) == (
            expected["frequency"],
            expected["recency"],
            expected["T"],
        ), customer
        r = quintile(days_since, customer, higher_is_better=False)
        f = quintile(purchase_days, customer, higher_is_better=True)
        m = quintile(revenue, customer, higher_is_better=True)
        assert (got["r_score"], got["f_score"], got["m_score"]) == (r, f, m), customer
        assert got["segment"] == EXPECTED_GRID[r][(f + m + 1) // 2 - 1], customer
        assert 0 < got["probability_alive"] <= 1 and got["clv"] >= 0
