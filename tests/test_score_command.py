"""``clickstream score``: reads committed aggregates, commits its run last, is idempotent per as-of, survives crashes.

Input: worker output in the new commit-record format made by the real core (tests/clv_support.py), on moto S3 or in
a local folder. The model fits are real (pymc-marketing, a few hundred buyers), each made once per distinct input in
this module (``fit_once_per_input``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from rich.console import Console

from clickstream.cli import main
from clickstream.current_rows import CurrentRows, read_committed_rows, read_local_rows
from clickstream.score import (
    ABANDONED_RUN_SECONDS,
    ChangedMeanwhile,
    ConcurrentRunError,
    LocalStore,
    S3Store,
    read_commit,
    read_model_report,
    read_scores,
    score_customers,
)
from runtime.settings import Settings
from schemas.contract import CLV_SCORES_SCHEMA
from schemas.layout import OutputLayout
from scoring.clv import MIN_BUYERS, MIN_REPEAT_BUYERS, ClvConfig, ClvResult, UnusableFit
from scoring.inputs import InputError, ModelInputs, model_inputs, shards_behind
from tests.clv_support import WorkerBucket, worker_bucket
from tests.moto_support import isolate_environment, moto_bucket

BUCKET = "clv-scores"
LAYOUT = OutputLayout("rfm")


@pytest.fixture(scope="module", autouse=True)
def fit_once_per_input() -> Iterator[None]:
    """The tests here are about the run around the fit: its reads, files, commit order, crashes and idempotence.
    The same rows, as-of and valuation are fitted again and again (3-10 s a fit), so each distinct fit is made once
    and later runs get a copy of its predictions, their steps announced as the fit announced them. A fit that
    raises is not kept, and a test that changes how parameters are read (``_parameters``) gets its own fit."""
    import clickstream.score
    import scoring.clv

    real = clickstream.score.fit_and_predict
    fits: dict[tuple[object, ...], tuple[ClvResult, list[str]]] = {}

    def fit_once(
        inputs: ModelInputs, config: ClvConfig, *, step: Callable[[str], None] | None = None
    ) -> ClvResult:
        scoring.clv.require_model_library()  # as the fit does first: a test hides the library
        announce = step or quiet
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, inputs.buyers.schema) as writer:
            writer.write_table(inputs.buyers)
        key = (
            hashlib.sha256(sink.getvalue()).hexdigest(),
            inputs.as_of,
            inputs.customers,
            config,
            scoring.clv._parameters,
        )
        if key not in fits:
            said: list[str] = []

            def say_and_keep(message: str) -> None:
                said.append(message)
                announce(message)

            fits[key] = (real(inputs, config, step=say_and_keep), said)
        else:
            for message in fits[key][1]:
                announce(message)
        return copy.deepcopy(fits[key][0])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clickstream.score, "fit_and_predict", fit_once)
        yield


@pytest.fixture(scope="module")
def bucket_content() -> WorkerBucket:
    return worker_bucket(customers=400, events=8000, seed=3)


@pytest.fixture(scope="module")
def s3(bucket_content: WorkerBucket) -> Iterator[Any]:
    with moto_bucket(BUCKET) as client:
        bucket_content.write_to(client, BUCKET)
        yield client


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    isolate_environment(monkeypatch)
    return Settings(bucket=BUCKET, prefix="rfm")


@pytest.fixture(scope="module")
def local_copy(bucket_content: WorkerBucket, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bucket")
    for key, body in bucket_content.objects.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(body)
    return root


class RecordingStore(LocalStore):
    """A local store that logs every PUT and DELETE and can fail on a chosen key (a crash at that step)."""

    def __init__(self, root: Path, fail_on: str | None = None) -> None:
        super().__init__(root)
        self.fail_on = fail_on
        self.log: list[tuple[str, str]] = []

    def put(self, key: str, body: bytes, content_type: str) -> None:
        if self.fail_on and key.endswith(self.fail_on):
            raise ConnectionError(f"crash before PUT {key}")
        self.log.append(("put", key))
        super().put(key, body, content_type)

    def delete(self, key: str) -> None:
        self.log.append(("delete", key))
        super().delete(key)


def quiet(_: str) -> None:
    pass


def local_rows(local_copy: Path, settings: Settings, drop: int = 0) -> CurrentRows:
    """The current rows of ``local_copy``; ``drop`` > 0 leaves out that many buyers (the customers a run scores).

    The buyers dropped are the first by customer id: the rows come in no particular order, and dropping a customer
    who never bought would leave the scored rows unchanged.
    """
    rows = read_local_rows(local_copy, settings)
    if not drop:
        return rows
    buyers = rows.table.filter(pc.is_valid(rows.table.column("frequency"))).column("customer_id").to_pylist()
    dropped = pa.array(sorted(buyers)[:drop])
    table = rows.table.filter(pc.invert(pc.is_in(rows.table.column("customer_id"), value_set=dropped)))
    return CurrentRows(table, rows.source, rows.files, rows.bytes, f"{rows.fingerprint}-without-{drop}")


# ------------------------------------------------------------------------------------------------ reading
def test_s3_input_is_the_files_the_commit_records_name(s3: Any, settings: Settings, tmp_path: Path) -> None:
    stray = "rfm/customer_aggregates/arrival_yyyymmdd=20260301/uncommitted-flush.parquet"
    rows_of_stray = pa.table({"customer_id": ["c-stray"], "version": [10**6]})
    s3.put_object(Bucket=BUCKET, Key=stray, Body=pq_bytes(rows_of_stray))
    try:
        rows = read_committed_rows(s3, settings, tmp_path, progress=False)
    finally:
        s3.delete_object(Bucket=BUCKET, Key=stray)
    assert "c-stray" not in rows.table.column("customer_id").to_pylist()
    local = read_local_rows(tmp_path, settings)  # the same files, downloaded
    assert rows.fingerprint == local.fingerprint
    assert rows.table.num_rows == len(set(rows.table.column("customer_id").to_pylist()))


def pq_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_current_rows_are_the_highest_version(local_copy: Path, settings: Settings) -> None:
    import duckdb

    rows = read_local_rows(local_copy, settings)
    glob = str(local_copy / "rfm/customer_aggregates") + "/**/*.parquet"
    expected = duckdb.sql(
        f"SELECT customer_id, max(version) FROM read_parquet('{glob}') GROUP BY 1"
    ).fetchall()
    got = dict(
        zip(
            rows.table.column("customer_id").to_pylist(),
            rows.table.column("version").to_pylist(),
            strict=True,
        )
    )
    assert got == dict(expected)


# ------------------------------------------------------------------------------------------------ the run
def test_a_run_writes_data_then_model_then_commit_then_latest(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    store = RecordingStore(tmp_path)
    outcome = score_customers(lambda: local_rows(local_copy, settings), store, settings, say=quiet)
    commit = outcome.commit
    day = commit.as_of.date()
    puts = [key for action, key in store.log if action == "put"]
    assert puts == [*commit.files, commit.model_key, LAYOUT.clv_commit_key(day), LAYOUT.clv_latest_key]
    assert all(key.startswith(LAYOUT.clv_run_prefix(day, commit.run_id)) for key in commit.files)
    assert commit.model_key == LAYOUT.clv_model_key(day, commit.run_id)

    scores = read_scores(store, commit)
    assert scores.schema == CLV_SCORES_SCHEMA
    inputs = model_inputs(local_rows(local_copy, settings).table)
    assert scores.num_rows == commit.rows == inputs.buyers.num_rows
    assert scores.column("customer_id").to_pylist() == inputs.buyers.column("customer_id").to_pylist()
    assert set(scores.column("run_id").to_pylist()) == {commit.run_id}
    assert commit.as_of == inputs.as_of  # default: the latest event time seen
    assert sum(commit.segments.values()) == commit.rows
    model = read_model_report(store, commit)
    assert model["run_id"] == commit.run_id and model["buyers"] == commit.rows
    assert set(model["bg_nbd"]["parameters"]) == {"r", "alpha", "a", "b"}
    assert read_commit(store, LAYOUT) == commit  # latest.json
    assert read_commit(store, LAYOUT, day) == commit


def test_a_retry_whose_end_is_held_at_the_clock_is_the_same_run(
    local_copy: Path, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event stamped ahead of the run's clock (a client clock ahead) holds the default end at the clock: every
    retry of a scheduled job then had its own end to the microsecond, so its own run id, and refitted and replaced
    the day's run with the same scores."""
    rows = local_rows(local_copy, settings)
    clock = datetime(2026, 5, 10, 10, 0, tzinfo=UTC)  # after every event of the rows
    ahead = rows.table.column("last_event_at").to_pylist()
    ahead[0] = clock + timedelta(minutes=30)
    column = rows.table.schema.get_field_index("last_event_at")
    stamped = replace(
        rows, table=rows.table.set_column(column, "last_event_at", pa.array(ahead, pa.timestamp("us", "UTC")))
    )
    moments = [clock, clock + timedelta(minutes=7)]  # the run's clock, as each run reads it

    def at_clock(table: pa.Table, as_of: datetime | None, *, not_after: datetime) -> ModelInputs:
        return model_inputs(table, as_of, not_after=moments.pop(0))

    monkeypatch.setattr("clickstream.score.model_inputs", at_clock)
    store = RecordingStore(tmp_path)
    said: list[str] = []
    first = score_customers(lambda: stamped, store, settings, say=quiet)
    again = score_customers(lambda: stamped, store, settings, say=said.append)
    assert first.commit.as_of == clock and not moments, "each run's end held at its own clock"
    assert again.already_committed and again.commit == first.commit
    assert any(f"already committed (observed to {clock.isoformat()}" in line for line in said), said


def test_the_same_inputs_and_as_of_are_a_no_op(local_copy: Path, settings: Settings, tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    first = score_customers(lambda: local_rows(local_copy, settings), store, settings, say=quiet)
    store.log.clear()
    again = score_customers(lambda: local_rows(local_copy, settings), store, settings, say=quiet)
    assert again.already_committed and not first.already_committed
    assert again.commit == first.commit
    assert [action for action, key in store.log if key != LAYOUT.clv_latest_key] == []


def test_a_crash_before_the_commit_leaves_the_previous_run_and_the_rerun_tidies(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    as_of = datetime(2026, 5, 5, tzinfo=UTC)
    day = as_of.date()
    committed = score_customers(
        lambda: local_rows(local_copy, settings), RecordingStore(tmp_path), settings, as_of=as_of, say=quiet
    ).commit
    # New inputs for the same day (one customer fewer): a new run id. It dies just before its commit record.
    crashing = RecordingStore(tmp_path, fail_on=LAYOUT.clv_commit_key(day))
    with pytest.raises(ConnectionError):
        score_customers(
            lambda: local_rows(local_copy, settings, drop=1), crashing, settings, as_of=as_of, say=quiet
        )
    written = [key for action, key in crashing.log if action == "put"]
    assert written and all(committed.run_id not in key for key in written)  # its own folder
    assert read_commit(crashing, LAYOUT, day) == committed  # readers still see the committed run, whole
    assert read_scores(crashing, committed).num_rows == committed.rows

    store = RecordingStore(tmp_path)
    rerun = score_customers(
        lambda: local_rows(local_copy, settings, drop=1), store, settings, as_of=as_of, say=quiet
    ).commit
    assert rerun.run_id != committed.run_id and rerun.rows == committed.rows - 1
    left = store.keys(LAYOUT.clv_partition_prefix(day))
    assert left and all(key.startswith(LAYOUT.clv_run_prefix(day, rerun.run_id)) for key in left)
    assert {key for action, key in store.log if action == "delete"} >= {*committed.files, committed.model_key}


def test_a_crash_between_commit_and_latest_is_finished_by_the_rerun(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    crashing = RecordingStore(tmp_path, fail_on=LAYOUT.clv_latest_key)
    with pytest.raises(ConnectionError):
        score_customers(lambda: local_rows(local_copy, settings), crashing, settings, say=quiet)
    assert read_commit(crashing, LAYOUT) is None
    outcome = score_customers(
        lambda: local_rows(local_copy, settings), RecordingStore(tmp_path), settings, say=quiet
    )
    assert outcome.already_committed
    assert read_commit(crashing, LAYOUT) == outcome.commit


def test_latest_stays_on_the_newest_as_of(local_copy: Path, settings: Settings, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    newest = datetime(2026, 5, 10, tzinfo=UTC)
    later = score_customers(
        lambda: local_rows(local_copy, settings), store, settings, as_of=newest, say=quiet
    )
    older = score_customers(
        lambda: local_rows(local_copy, settings), store, settings, as_of=newest - timedelta(days=3), say=quiet
    )
    assert read_commit(store, LAYOUT) == later.commit
    assert read_commit(store, LAYOUT, older.commit.as_of.date()) == older.commit
    assert older.commit.run_id != later.commit.run_id


def test_an_earlier_as_of_of_the_latest_day_replaces_that_day_and_latest_follows(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    """A day holds one run: scoring the latest day again at an earlier hour deletes the first run's files, so
    latest.json must name the new run, whose files are the ones left."""
    store = LocalStore(tmp_path)
    evening = datetime(2026, 5, 10, 23, 30, tzinfo=UTC)
    score_customers(lambda: local_rows(local_copy, settings), store, settings, as_of=evening, say=quiet)
    noon = score_customers(
        lambda: local_rows(local_copy, settings), store, settings, as_of=evening.replace(hour=12), say=quiet
    )
    latest = read_commit(store, LAYOUT)
    assert latest == noon.commit == read_commit(store, LAYOUT, evening.date())
    assert read_scores(store, latest).num_rows == noon.commit.rows


def test_valuation_settings_change_the_run_and_scale_clv(
    local_copy: Path, tmp_path: Path, settings: Settings
) -> None:
    full = score_customers(
        lambda: local_rows(local_copy, settings), LocalStore(tmp_path / "a"), settings, say=quiet
    )
    half_margin = settings.model_copy(update={"clv_margin": 0.5})
    half = score_customers(
        lambda: local_rows(local_copy, settings), LocalStore(tmp_path / "b"), half_margin, say=quiet
    )
    assert half.commit.run_id != full.commit.run_id
    a = read_scores(LocalStore(tmp_path / "a"), full.commit).column("clv").to_pylist()
    b = read_scores(LocalStore(tmp_path / "b"), half.commit).column("clv").to_pylist()
    assert b == pytest.approx([value * 0.5 for value in a], rel=1e-9)


# ------------------------------------------------------------------------------------------------ the command
def test_cli_scores_from_s3_into_s3_and_says_what_it_did(s3: Any, settings: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["score", "--bucket", BUCKET, "--prefix", "rfm", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "[1/6] reading current customer rows" in result.output
    assert "committed" in result.output and "scored" in result.output
    store = S3Store(s3, settings)
    commit = read_commit(store, LAYOUT)
    assert commit is not None
    assert commit.inputs["source"] == f"s3://{BUCKET}/rfm/customer_aggregates/"
    head = s3.head_object(Bucket=BUCKET, Key=commit.files[0])
    assert head["ServerSideEncryption"] == "AES256"
    again = runner.invoke(main, ["score", "--bucket", BUCKET, "--prefix", "rfm", "--no-progress"])
    assert again.exit_code == 0 and "already committed" in again.output
    # the second run read the first one's current rows and no commit: the same input, so the same run
    assert "the last run's" in again.output and "of the 0 commits since" in again.output, again.output


def test_cli_names_a_missing_bucket_in_one_line_without_a_warning_first(s3: Any, settings: Settings) -> None:
    """The kept rows' read took the missing bucket for a refused read and warned "may not be read" first."""
    result = CliRunner().invoke(
        main, ["score", "--bucket", "no-such-bucket", "--prefix", "rfm", "--no-progress"]
    )
    assert result.exit_code == 2, result.output
    assert "bucket no-such-bucket does not exist" in result.output
    assert "may not be read" not in result.output and "WARNING" not in result.output, result.output


def test_rows_of_the_same_versions_with_other_values_are_scored_again(
    local_copy: Path, tmp_path: Path, settings: Settings
) -> None:
    """A replay after a fix in the core writes rows of the same version and as_of with other values: they name
    another run, which is fitted and committed, not found "already committed" with the old scores kept."""
    rows = read_local_rows(local_copy, settings).table
    first = tmp_path / "first"
    first.mkdir()
    pq.write_table(rows, first / "rows.parquet")
    repeat = pc.greater_equal(pc.fill_null(rows.column("purchase_days"), 0), 2)
    repeat_buyer = sorted(rows.filter(repeat).column("customer_id").to_pylist())[0]
    at = rows.column("customer_id").to_pylist().index(repeat_buyer)
    revenue = rows.column("revenue").to_pylist()
    monetary = rows.column("monetary_value").to_pylist()
    revenue[at], monetary[at] = revenue[at] * 3, monetary[at] * 3
    changed = rows.set_column(
        rows.schema.get_field_index("revenue"),
        "revenue",
        pa.array(revenue, rows.schema.field("revenue").type),
    )
    changed = changed.set_column(
        rows.schema.get_field_index("monetary_value"),
        "monetary_value",
        pa.array(monetary, rows.schema.field("monetary_value").type),
    )
    second = tmp_path / "second"
    second.mkdir()
    pq.write_table(changed, second / "rows.parquet")
    out = tmp_path / "out"
    arguments = ["score", "--output-dir", str(out), "--no-progress"]
    assert CliRunner().invoke(main, [*arguments, "--input", str(first)]).exit_code == 0
    before = read_commit(LocalStore(out), LAYOUT)
    again = CliRunner().invoke(main, [*arguments, "--input", str(second)])
    assert again.exit_code == 0, again.output
    assert "already committed" not in again.output
    after = read_commit(LocalStore(out), LAYOUT)
    assert before is not None and after is not None and after.run_id != before.run_id
    scores = read_scores(LocalStore(out), after)
    row = scores.filter(pc.equal(scores.column("customer_id"), repeat_buyer))
    assert row.column("revenue").to_pylist() == [revenue[at]]


def test_cli_where_logs_are_json_says_each_step_as_a_record(local_copy: Path, tmp_path: Path) -> None:
    """A scheduled run (an ECS task: logs are JSON) keeps stderr one JSON object per line, steps and answer too."""
    import json

    arguments = ["score", "--input", str(local_copy), "--output-dir", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(main, ["--log-format", "json", *arguments])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines()]
    messages = [record["message"] for record in records]
    assert messages[0].startswith("[1/6] reading current customer rows"), messages
    assert messages[-1].startswith("scored ") and {record["level"] for record in records} == {"INFO"}
    text = CliRunner().invoke(main, ["--log-format", "text", *arguments])
    assert text.stderr.startswith("[1/6] reading current customer rows"), text.stderr


def test_cli_as_of_is_validated(local_copy: Path, tmp_path: Path, settings: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["score", "--input", str(local_copy), "--output-dir", str(tmp_path), "--as-of", "x"]
    )
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output
    result = runner.invoke(
        main, ["score", "--input", str(local_copy), "--output-dir", str(tmp_path), "--as-of", "2026-03-02"]
    )
    assert result.exit_code == 2 and "bought after the observation end" in result.output


def test_cli_names_a_damaged_commit_record_of_a_day_and_exits_2(
    local_copy: Path, tmp_path: Path, settings: Settings
) -> None:
    arguments = ["score", "--input", str(local_copy), "--output-dir", str(tmp_path)]
    assert CliRunner().invoke(main, arguments).exit_code == 0
    (day_commit,) = (tmp_path / LAYOUT.clv_commits_prefix).glob("as_of_yyyymmdd=*.json")
    day_commit.write_text('{"format": 1, "as_of": "not a time"}')
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert "unreadable control record" in result.output and str(day_commit) in result.output
    assert "score its day again" in result.output


def test_cli_scores_a_local_copy_into_s3_only_when_asked_to(local_copy: Path, settings: Settings) -> None:
    """A stale download or a replay scored with --input must not replace the day's production run by default."""
    result = CliRunner().invoke(main, ["score", "--input", str(local_copy), "--bucket", "never-touched"])
    assert result.exit_code == 2, result.output
    assert "--output-dir" in result.output and "--publish" in result.output
    assert "s3://never-touched/rfm/clv/" in result.output
    for pointless in (
        ["--publish"],
        ["--input", str(local_copy), "--output-dir", "/nonexistent", "--publish"],
    ):
        refused = CliRunner().invoke(main, ["score", *pointless])
        assert refused.exit_code == 2 and "--publish goes with --input" in refused.output, refused.output
    with moto_bucket("publish-bucket") as client:
        arguments = ["score", "--input", str(local_copy), "--bucket", "publish-bucket", "--no-progress"]
        published = CliRunner().invoke(main, [*arguments, "--publish"])
        assert published.exit_code == 0, published.output
        assert read_commit(S3Store(client, settings.model_copy(update={"bucket": "publish-bucket"})), LAYOUT)


def test_cli_as_of_without_offset_is_utc(local_copy: Path, tmp_path: Path, settings: Settings) -> None:
    """As replay reads its range: a time with no offset is UTC, not refused."""
    rows = local_rows(local_copy, settings).table
    last = max(rows.column("last_purchase_at").drop_null().to_pylist())
    naive = (last + timedelta(hours=1)).replace(tzinfo=None, microsecond=0)
    arguments = ["score", "--input", str(local_copy), "--output-dir", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(main, [*arguments, "--as-of", naive.isoformat()])
    assert result.exit_code == 0, result.output
    commit = read_commit(LocalStore(tmp_path), LAYOUT)
    assert commit is not None
    assert commit.as_of == naive.replace(tzinfo=UTC)


def test_cli_says_how_to_install_the_model_library(
    local_copy: Path, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pymc_marketing.clv", None)  # import fails as if not installed
    result = CliRunner().invoke(main, ["score", "--input", str(local_copy), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2  # the set-up: the optional extra is not installed
    assert "pip install 'clickstream-rfm[clv]'" in result.output
    assert not list(tmp_path.iterdir())


def test_a_missing_model_library_is_named_before_the_input_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The install hint comes first, not an input problem found after reading."""
    from importlib import metadata

    installed = metadata.version

    def version(name: str) -> str:
        if name == "pymc-marketing":
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(metadata, "version", version)
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main, ["score", "--input", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "pip install 'clickstream-rfm[clv]'" in result.output
    assert "customer_aggregates" not in result.output


def test_a_wrong_input_is_named_without_importing_the_model_library(tmp_path: Path) -> None:
    """The import takes seconds: a folder with nothing to score is named without waiting for it (in a process of
    its own, as other tests import the library into this one)."""
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    program = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from clickstream.cli import main\n"
        f"result = CliRunner().invoke(main, ['score', '--input', {str(tmp_path / 'empty')!r}, "
        f"'--output-dir', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
        "print(result.exit_code, 'pymc_marketing' in sys.modules)\n"
        "print(result.output)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    first, _, output = done.stdout.partition("\n")
    assert first == "2 False", done.stdout + done.stderr
    assert "no customer_aggregates files" in output


def test_cli_exits_1_when_the_data_has_too_few_buyers_to_fit(
    local_copy: Path, tmp_path: Path, settings: Settings
) -> None:
    """Too few buyers is the data as it is (exit 1), not a mistake in the request (exit 2)."""
    table = local_rows(local_copy, settings).table
    few = table.filter(pc.is_valid(table.column("frequency"))).slice(0, 5)
    (tmp_path / "in").mkdir()
    pq.write_table(few, tmp_path / "in" / "few.parquet")
    result = CliRunner().invoke(
        main,
        ["score", "--input", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--no-progress"],
    )
    assert result.exit_code == 1, result.output
    assert "buyers" in result.output and "Traceback" not in result.output
    assert "nothing is scored until then" in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


def test_the_models_minimums_are_said_where_users_read_them() -> None:
    """score --help and the README say the counts scoring.clv refuses below (the report reads its constants)."""
    said = f"at least {MIN_BUYERS} buyers and {MIN_REPEAT_BUYERS} repeat buyers"
    assert said in " ".join(CliRunner().invoke(main, ["score", "--help"]).output.split())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert said in " ".join(readme.split())


def test_local_input_at_the_prefix_folder_reads_only_customer_aggregates(
    local_copy: Path, settings: Settings
) -> None:
    """A download of the prefix (not of the bucket) also holds events/ and errors/ Parquet: not customer rows."""
    prefix = local_copy / settings.prefix
    assert list((prefix / "events").rglob("*.parquet"))  # the trap is there
    from_prefix = read_local_rows(prefix, settings)
    from_bucket = read_local_rows(local_copy, settings)
    assert from_prefix.files == from_bucket.files
    assert from_prefix.fingerprint == from_bucket.fingerprint


def test_local_input_of_another_prefix_is_refused_not_read_whole(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    """A download made with --prefix prod, scored without it: its events/ and errors/ files are not customer rows."""
    shutil.copytree(local_copy / settings.prefix, tmp_path / "prod")
    assert list((tmp_path / "prod" / "errors").rglob("*.parquet"))  # the trap is there
    with pytest.raises(InputError, match=r"under the prefix 'prod', not under 'rfm'.*--prefix"):
        read_local_rows(tmp_path, settings)
    downloaded_with_it = read_local_rows(tmp_path, Settings(bucket=BUCKET, prefix="prod"))
    assert downloaded_with_it.fingerprint == read_local_rows(local_copy, settings).fingerprint


# ------------------------------------------------------------------------------------------------ summary
def test_summary_shows_freshness_percentiles(
    s3: Any, settings: Settings, bucket_content: WorkerBucket, tmp_path: Path
) -> None:
    from clickstream.summary import print_summary
    from schemas.control import CommitRecord
    from scoring.freshness import summarize_freshness

    console = Console(record=True, width=160)
    print_summary(settings, tmp_path, console=console)
    text = console.export_text()
    records = [
        CommitRecord.from_json(body) for key, body in bucket_content.objects.items() if "/commits/" in key
    ]
    fresh = summarize_freshness(records)
    assert fresh is not None and fresh.flushes == len(records)
    assert "Freshness" in text
    assert f"{fresh.arrival_to_durable_p50:,.1f}" in text and f"{fresh.arrival_to_durable_p99:,.1f}" in text
    assert json.dumps(fresh.newest_event_age_p99)  # a number
    assert "days old at its commit" not in text, "events seconds old are no backfill"


def test_summary_shows_progress_of_its_long_reads_and_of_a_download(
    s3: Any, settings: Settings, bucket_content: WorkerBucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long history's summary read every customer_aggregates file, and downloaded every committed file, for a
    minute with nothing shown: each now reports its progress (a bar on a terminal, else a line every 30 s)."""
    import clickstream.current_rows as current_rows
    import clickstream.outputs as outputs
    import clickstream.summary as summary

    reported: dict[str, list[tuple[int, int]]] = {}

    @contextlib.contextmanager
    def recording(description: str, _unit: str, *, bar: bool) -> Iterator[Any]:
        calls = reported.setdefault(description, [])
        yield lambda done, total: calls.append((done, total))

    monkeypatch.setattr(summary, "progress_of", recording)
    monkeypatch.setattr(outputs, "progress_of", recording)
    # the customers' rows are read as score reads them; what an earlier test's run kept is dropped: every file is
    # read again
    monkeypatch.setattr(current_rows, "progress_of", recording)
    kept = s3.list_objects_v2(Bucket=settings.bucket, Prefix=settings.layout.kept_prefix("current_rows"))
    for obj in kept.get("Contents", []):
        s3.delete_object(Bucket=settings.bucket, Key=obj["Key"])
    summary.print_summary(settings, tmp_path, console=Console(record=True, width=160))
    copied = [path for path in tmp_path.rglob("*") if path.is_file()]
    aggregates = [path for path in copied if "/customer_aggregates/" in str(path)]
    assert aggregates and len(copied) > len(aggregates)
    assert reported["reading customer_aggregates"][-1] == (len(aggregates), len(aggregates))
    assert reported["downloading committed files"][-1] == (len(copied), len(copied))
    # the data prefixes are listed too (1,000 keys a request), toward the files the commit records name
    assert reported["listing customer_aggregates/"][-1] == (len(aggregates), len(aggregates))


def test_summary_says_in_days_that_events_carry_old_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's summary showed a newest-event age of 18,553,353.95 s, unexplained, beside an alarm advice."""
    from clickstream.summary import print_freshness
    from scoring.freshness import FreshnessSummary

    months = FreshnessSummary(3, 0.2, 0.4, 0.5, 214.7 * 86_400, 215.0 * 86_400)
    monkeypatch.setattr("scoring.freshness.summarize_freshness", lambda _commits: months)
    console = Console(record=True, width=160)
    print_freshness([], console)
    text = console.export_text()
    assert "the newest event of a flush is 214.7 days old at its commit (p50)" in text
    assert "backfill" in text and "clocks" in text


def test_shards_behind_are_those_whose_newest_row_is_a_day_or_more_before_the_end() -> None:
    end = datetime(2026, 4, 30, 12, tzinfo=UTC)
    rows = pa.table(
        {
            "shard_id": ["a", "a", "b", "c"],
            "as_of": pa.array(
                [end - timedelta(days=5), end - timedelta(days=3), end - timedelta(hours=2), end],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    assert shards_behind(rows, end) == {"a": end - timedelta(days=3)}
    assert shards_behind(rows.drop_columns(["shard_id"]), end) == {}


def test_a_run_notes_a_shard_far_behind_the_observation_end(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    current = local_rows(local_copy, settings)
    shard = current.table.column("shard_id")[0].as_py()
    of_shard = pc.equal(current.table.column("shard_id"), shard)
    as_of = current.table.column("as_of")
    earlier = pc.if_else(of_shard, pc.subtract(as_of, pa.scalar(timedelta(days=4))), as_of)
    lagging = replace(
        current,
        table=current.table.set_column(current.table.schema.get_field_index("as_of"), "as_of", earlier),
    )
    lines: list[str] = []
    store = RecordingStore(tmp_path)
    score_customers(lambda: lagging, store, settings, say=lines.append)
    notes = [line for line in lines if line.startswith("note: ")]
    assert len(notes) == 1 and f"{shard}'s newest row" in notes[0], lines
    assert "P(alive) reads low" in notes[0]
    # the way it names to an unbiased run is one score takes: a replay ending at the mark's day, scored the day
    # before (an --as-of at the mark on these rows is refused: the other shards' later purchases are in them)
    mark_day = pc.max(pc.filter(earlier, of_shard)).as_py().astimezone(UTC).date()
    assert f"--to {mark_day.isoformat()}`" in notes[0], notes[0]
    assert f"--as-of {(mark_day - timedelta(days=1)).isoformat()}`" in notes[0], notes[0]
    # kept with the run as well (a scheduled job's stderr is read by nobody), so the report shows it
    (model_key,) = [key for action, key in store.log if action == "put" and key.endswith("_model.json")]
    assert notes[0].removeprefix("note: ") in json.loads((tmp_path / model_key).read_bytes())["notes"]
    quiet_lines: list[str] = []
    score_customers(lambda: current, RecordingStore(tmp_path / "b"), settings, say=quiet_lines.append)
    assert not [line for line in quiet_lines if line.startswith("note: ")], (
        "the worker's own rows: no shard behind"
    )


def test_an_as_of_time_before_purchases_of_its_day_is_refused_and_a_day_is_observed_whole(
    local_copy: Path, tmp_path: Path, settings: Settings
) -> None:
    """Aggregates cannot be cut back to a time: an as-of at noon with afternoon purchases in them would store an
    observation end the data goes past. A plain day is observed to its last microsecond."""
    rows = local_rows(local_copy, settings).table
    last = max(rows.column("last_purchase_at").drop_null().to_pylist())
    assert last.time() > datetime.min.time(), "the newest purchase is after midnight"
    runner = CliRunner()
    arguments = ["score", "--input", str(local_copy), "--output-dir", str(tmp_path), "--no-progress"]

    refused = runner.invoke(main, [*arguments, "--as-of", (last - timedelta(microseconds=1)).isoformat()])
    assert refused.exit_code == 2 and "1 customer bought after the observation end" in refused.output

    whole_day = runner.invoke(main, [*arguments, "--as-of", last.date().isoformat()])
    assert whole_day.exit_code == 0, whole_day.output
    commit = read_commit(LocalStore(tmp_path), LAYOUT)
    assert commit is not None
    assert commit.as_of == datetime.combine(last.date(), datetime.max.time(), tzinfo=UTC)


def test_midnight_ends_the_day_before(local_copy: Path, tmp_path: Path, settings: Settings) -> None:
    """An as-of at 00:00 UTC (in any offset) is the same run as the day before it: counted whole, its own day would
    add a day without purchases to every customer's T."""
    rows = local_rows(local_copy, settings).table
    day = max(rows.column("last_purchase_at").drop_null().to_pylist()).date() + timedelta(days=1)
    runner = CliRunner()
    runs = []
    for as_of in (
        (day - timedelta(days=1)).isoformat(),
        f"{day.isoformat()}T00:00:00Z",
        f"{day}T02:00:00+02:00",
    ):
        out = tmp_path / str(len(runs))
        arguments = ["score", "--input", str(local_copy), "--output-dir", str(out), "--no-progress"]
        result = runner.invoke(main, [*arguments, "--as-of", as_of])
        assert result.exit_code == 0, result.output
        commit = read_commit(LocalStore(out), LAYOUT)
        assert commit is not None
        runs.append((commit.run_id, commit.as_of))
    end_of_day_before = datetime.combine(day - timedelta(days=1), datetime.max.time(), tzinfo=UTC)
    assert runs == [(runs[0][0], end_of_day_before)] * 3


# ------------------------------------------------------------------------------------------------ overlapping runs
class RunsAnotherFirst(RecordingStore):
    """A store whose first commit of ``day`` lets ``other`` run whole first, as a second scoring job of the same
    day that started later and finished sooner would."""

    def __init__(self, root: Path, day_commit: str, other: Any) -> None:
        super().__init__(root)
        self.day_commit, self.other, self.other_outcome = day_commit, other, None

    def put_if(self, key: str, body: bytes, content_type: str, *, tag: str | None) -> None:
        if key == self.day_commit and self.other is not None:
            other, self.other = self.other, None
            self.other_outcome = other()
        super().put_if(key, body, content_type, tag=tag)


def test_two_overlapping_runs_of_a_day_cannot_both_commit(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    as_of = datetime(2026, 5, 5, tzinfo=UTC)
    day = as_of.date()

    def second_job() -> Any:
        rows = lambda: local_rows(local_copy, settings, drop=1)  # noqa: E731 - newer inputs of the same day
        return score_customers(rows, LocalStore(tmp_path), settings, as_of=as_of, say=quiet)

    first = RunsAnotherFirst(tmp_path, LAYOUT.clv_commit_key(day), second_job)
    with pytest.raises(ConcurrentRunError, match="committed 2026-05-05 while this one ran"):
        score_customers(lambda: local_rows(local_copy, settings), first, settings, as_of=as_of, say=quiet)

    winner = first.other_outcome.commit
    assert read_commit(first, LAYOUT, day) == winner == read_commit(first, LAYOUT)
    assert read_scores(first, winner).num_rows == winner.rows  # the winner's files were not tidied away
    left = first.keys(LAYOUT.clv_partition_prefix(day))
    assert left and all(LAYOUT.clv_run_of(key) == winner.run_id for key in left), (
        "the loser removed its files"
    )


def test_tidy_deletes_a_dead_run_of_the_day_but_not_a_young_one(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    """A young folder no commit names may be a run still writing; one untouched for hours died."""
    import os

    as_of = datetime(2026, 5, 5, tzinfo=UTC)
    day = as_of.date()
    dead_runs = []
    for drop in (1, 2):
        crashing = RecordingStore(tmp_path, fail_on=LAYOUT.clv_commit_key(day))
        with pytest.raises(ConnectionError):
            score_customers(
                lambda d=drop: local_rows(local_copy, settings, drop=d),
                crashing,
                settings,
                as_of=as_of,
                say=quiet,
            )
        dead_runs.append({LAYOUT.clv_run_of(key) for action, key in crashing.log if action == "put"}.pop())
    long_ago = (datetime.now(UTC) - timedelta(seconds=ABANDONED_RUN_SECONDS + 60)).timestamp()
    for key in LocalStore(tmp_path).keys(LAYOUT.clv_run_prefix(day, dead_runs[0])):
        os.utime(tmp_path / key, (long_ago, long_ago))

    score_customers(
        lambda: local_rows(local_copy, settings), LocalStore(tmp_path), settings, as_of=as_of, say=quiet
    )

    runs = {LAYOUT.clv_run_of(key) for key in LocalStore(tmp_path).keys(LAYOUT.clv_partition_prefix(day))}
    assert dead_runs[0] not in runs, "a run untouched for hours is gone"
    assert dead_runs[1] in runs, "a young one is left (it may still be writing)"


def test_latest_follows_the_newest_committed_day_whatever_ran_last(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    newer, older = datetime(2026, 5, 10, tzinfo=UTC), datetime(2026, 5, 7, tzinfo=UTC)
    crashing = RecordingStore(tmp_path, fail_on=LAYOUT.clv_latest_key)  # the newer day commits, then dies
    with pytest.raises(ConnectionError):
        score_customers(lambda: local_rows(local_copy, settings), crashing, settings, as_of=newer, say=quiet)
    score_customers(
        lambda: local_rows(local_copy, settings), LocalStore(tmp_path), settings, as_of=older, say=quiet
    )

    latest = read_commit(LocalStore(tmp_path), LAYOUT)
    assert latest is not None and latest.as_of.date() == newer.date()


def test_a_committed_run_whose_files_are_gone_is_scored_again(
    local_copy: Path, settings: Settings, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path)
    first = score_customers(lambda: local_rows(local_copy, settings), store, settings, say=quiet)
    store.delete(first.commit.files[0])

    again = score_customers(lambda: local_rows(local_copy, settings), store, settings, say=quiet)

    assert not again.already_committed and again.commit.run_id == first.commit.run_id
    assert read_scores(store, again.commit).num_rows == first.commit.rows


def test_a_gamma_gamma_fit_with_q_at_most_1_writes_nothing(
    local_copy: Path, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """p*v/(q-1) is the population's mean spend: negative or infinite for q <= 1, so every one-time buyer's CLV."""
    import scoring.clv

    fitted = scoring.clv._parameters

    def heavy_tailed(model: Any, names: tuple[str, ...]) -> dict[str, float]:
        parameters = fitted(model, names)
        return {**parameters, "q": 0.67} if "q" in parameters else parameters

    monkeypatch.setattr(scoring.clv, "_parameters", heavy_tailed)
    with pytest.raises(UnusableFit, match=r"q = 0\.670 <= 1"):
        score_customers(lambda: local_rows(local_copy, settings), LocalStore(tmp_path), settings, say=quiet)
    assert LocalStore(tmp_path).keys(LAYOUT.clv_prefix) == []


@pytest.mark.parametrize("batch_rows", [100_000, 7])
def test_the_input_fingerprint_is_sha256_of_the_rows_in_customer_order(
    local_copy: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    """Not DuckDB's hash(), whose values change between DuckDB releases (and with them every run id); the same
    however many rows are hashed at a time."""
    import hashlib

    import clickstream.current_rows

    monkeypatch.setattr(clickstream.current_rows, "FINGERPRINT_BATCH_ROWS", batch_rows)

    from scoring.inputs import REQUIRED_COLUMNS

    def text(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, datetime):
            return str((value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))
        return f"{value:.17g}" if isinstance(value, float) else str(value)

    rows = local_rows(local_copy, settings)
    table = rows.table.sort_by("customer_id")
    scored = [name for name in REQUIRED_COLUMNS if name != "customer_id"]
    assert any(table.column(name).null_count for name in scored)  # 'null' is written too
    lines = (
        " ".join(text(row[name]) for name in ("customer_id", "version", "as_of", *scored))
        for row in table.to_pylist()
    )
    assert (
        rows.fingerprint
        == f"{table.num_rows}:{hashlib.sha256(chr(10).join(lines).encode()).hexdigest()[:32]}"
    )


def test_an_s3_conditional_put_refuses_a_changed_or_created_object(s3: Any, settings: Settings) -> None:
    """S3's 412 (and 409, a racing conditional write) become ChangedMeanwhile, as the local store's check does."""
    store = S3Store(s3, settings)
    key = "rfm/_control/clv/put-if-test.json"
    store.put_if(key, b"first", "application/json", tag=None)
    with pytest.raises(ChangedMeanwhile):
        store.put_if(key, b"again", "application/json", tag=None)  # exists already
    body, tag = store.get_tagged(key)
    assert body == b"first" and tag is not None
    store.put_if(key, b"second", "application/json", tag=tag)
    with pytest.raises(ChangedMeanwhile):
        store.put_if(key, b"third", "application/json", tag=tag)  # the tag read before the second write
    assert store.get(key) == b"second"
    store.delete(key)
