"""Replay reads the committed archive through the core with the worker's settings: same rows as the live run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from aggregators.customer_state import CustomerState
from clickstream.errors import FrontDoorError
from clickstream.replay import plan_replay, run_replay
from consumer.s3_sink import FlushAttempt, S3ParquetSink
from consumer.state_recovery import state_options
from runtime.settings import Settings
from schemas.control import ReplayClaim
from schemas.layout import FlushName, OutputLayout
from schemas.positions import chain_position
from tests.moto_support import WriteLandsThen412, isolate_environment
from tests.test_customer_state import SHARD, Stream, _arriving, event, row_of

BUCKET = "replay-bucket"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    isolate_environment(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def live_run(s3: Any, settings: Settings, batches: list[pa.Table], shard: str = SHARD) -> CustomerState:
    """The worker's core and sink on ``batches``, one committed flush each (the archive a replay reads)."""
    state = CustomerState(shard, options=state_options(settings))
    sink = S3ParquetSink(s3, settings)
    for number, delivered in enumerate(batches):
        at = delivered.schema.get_field_index("shard_id")
        batch = delivered.set_column(at, "shard_id", pa.array([shard] * delivered.num_rows))
        previous = chain_position(state.position())
        with state.staged(batch) as applied:
            assert applied.first_position is not None and applied.position is not None
            name = FlushName(shard, applied.first_position, applied.position, f"attempt{number}")
            sink.write(FlushAttempt(previous, name), applied)
    return state


def test_replay_deduplicates_with_the_window_the_worker_is_set_to(s3: Any, tmp_path: Path) -> None:
    """With a 1-day window the live run counts a re-send 3 days later again; the replay must too (its default
    window, 7 days, would call it a duplicate and disagree with the live rows)."""
    settings = Settings(bucket=BUCKET, prefix="rfm", dedupe_window_days=1)
    original = event("c-A", "purchase", "2026-03-01T10:00:00Z", revenue="5.00")
    stream = Stream()
    live = live_run(s3, settings, [stream.batch([original]), _arriving(stream.batch([original]), 3)])
    assert row_of(live, "c-A")["purchases"] == 2

    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    result = run_replay(s3, settings, plan, tmp_path, progress=False)
    rows = S3ParquetSink(s3, settings).get_parquet(result.output_key).to_pylist()
    assert [(row["customer_id"], row["purchases"]) for row in rows] == [("c-A", 2)]


def test_a_replay_with_other_windows_than_the_worker_flushed_with_says_so_and_which_to_give(
    s3: Any, tmp_path: Path
) -> None:
    """Each commit record carries the windows of its flush; the replay's rows equal the live rows only with the
    same, which nothing checked ("give it the worker's" was on the operator's honour). The output says which
    windows made it, also after a re-run of its range with the flags the warning gives."""
    import io
    import json

    import pyarrow.parquet as pq

    from clickstream.replay import REPLAY_METADATA_KEY

    worker = Settings(bucket=BUCKET, prefix="rfm", dedupe_window_days=1, distinct_window_days=2)
    live_run(s3, worker, [Stream().batch([event("c-A", "page_view", "2026-03-01T10:00:00Z")])])
    window = ["--from", "2026-03-01", "--to", "2026-03-02", "--state-dir", str(tmp_path)]

    def made_by() -> dict[str, Any]:
        [output] = _replays(s3)
        body = s3.get_object(Bucket=BUCKET, Key=output)["Body"].read()
        metadata = pq.read_schema(io.BytesIO(body)).metadata
        return dict(json.loads(metadata[REPLAY_METADATA_KEY.encode()]))

    other = _replay(*window)
    assert other.exit_code == 0, other.output
    assert (
        "the worker flushed these events with de-duplication window 1 days and distinct-count window 2 days, and "
        "this replay runs with de-duplication window 7 days and distinct-count window 30 days"
    ) in other.output
    assert "give --dedupe-window-days 1 --distinct-window-days 2 to match them" in other.output
    assert (made_by()["dedupe_window_days"], made_by()["distinct_window_days"]) == (7, 30)

    same = _replay(*window, "--dedupe-window-days", "1", "--distinct-window-days", "2")
    assert same.exit_code == 0, same.output
    assert "the worker flushed" not in same.output
    said = made_by()
    assert (said["dedupe_window_days"], said["distinct_window_days"]) == (1, 2), (
        "the re-run's, not the first's"
    )
    assert (said["start"], said["end"]) == ("2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00")


def test_windows_that_changed_within_the_range_are_said_as_such() -> None:
    from clickstream.replay import ReplayPlan
    from schemas.control import StateWindows

    plan = ReplayPlan(_day(1), _day(2), "wk", windows=StateWindows(7, 30))
    assert plan.differing_windows() is None, "no record says: nothing to compare"
    plan.worker_windows = {StateWindows(7, 30)}
    assert plan.differing_windows() is None
    plan.worker_windows = {StateWindows(7, 30), StateWindows(1, 30)}
    said = plan.differing_windows()
    assert said is not None and "the worker's windows changed within this range" in said
    assert "de-duplication window 1 days" in said
    plan.worker_windows, plan.commits_without_windows = {StateWindows(1, 30)}, 3
    said = plan.differing_windows()
    assert said is not None and "(3 commit records of a version before windows say nothing)" in said


def test_replay_counts_sessions_with_the_distinct_window_the_worker_is_set_to(
    s3: Any, tmp_path: Path
) -> None:
    """With a 1-day distinct-count window the live run counts a session again when an event of it arrives 3 days
    later; the replay must too (its default window, 30 days, would count the session once)."""
    settings = Settings(bucket=BUCKET, prefix="rfm", distinct_window_days=1)
    first = event("c-A", "page_view", "2026-03-01T10:00:00Z", session="s-long")
    late = event("c-A", "page_view", "2026-03-01T10:05:00Z", session="s-long")
    stream = Stream()
    live = live_run(s3, settings, [stream.batch([first]), _arriving(stream.batch([late]), 3)])
    assert row_of(live, "c-A")["sessions"] == 2

    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert "distinct-count window 1 days" in plan.describe()
    result = run_replay(s3, settings, plan, tmp_path, progress=False)
    rows = S3ParquetSink(s3, settings).get_parquet(result.output_key).to_pylist()
    assert [(row["customer_id"], row["sessions"]) for row in rows] == [("c-A", 2)]


def test_a_replay_counts_each_shards_sessions_by_that_shards_own_days(s3: Any, tmp_path: Path) -> None:
    """A replay applies shard after shard into one state, and its latest arrival day is then another shard's: a
    session of a shard read after one whose events arrived 40 days later was forgotten as soon as it was counted,
    and counted again by its next event (2 sessions and 2 active days where the worker, one state a shard, had 1)."""
    settings = Settings(bucket=BUCKET, prefix="rfm")  # a 30-day distinct-count window
    late, early = "shardId-000000000000", "shardId-000000000001"
    live_run(
        s3,
        settings,
        [_arriving(Stream().batch([event("c-A", "page_view", "2026-03-01T09:00:00Z")]), 40)],
        late,
    )
    stream = Stream()
    first = event("c-X", "page_view", "2026-03-01T10:00:00Z", session="s-x")
    second = event("c-X", "product_view", "2026-03-01T10:05:00Z", session="s-x")
    live = live_run(s3, settings, [stream.batch([first]), _arriving(stream.batch([second]), 1)], early)
    assert (row_of(live, "c-X")["sessions"], row_of(live, "c-X")["active_days"]) == (1, 1)

    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert late in plan.files[0] and early in plan.files[-1], plan.files  # the later shard is read first
    result = run_replay(s3, settings, plan, tmp_path, progress=False, batch_events=1)
    rows = S3ParquetSink(s3, settings).get_parquet(result.output_key).to_pylist()
    assert {row["customer_id"]: (row["sessions"], row["active_days"]) for row in rows} == {
        "c-A": (1, 1),
        "c-X": (1, 1),
    }


def test_a_replay_takes_its_start_and_leaves_out_its_end(s3: Any, tmp_path: Path) -> None:
    """--from is inclusive and --to exclusive (README, --help): back-to-back daily replays count an event stamped
    exactly at midnight once, in the day it starts."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    at_start = event("c-A", "purchase", "2026-03-01T00:00:00Z", revenue="5.00")
    last_microsecond = event("c-B", "purchase", "2026-03-01T23:59:59.999999Z", revenue="5.00")
    at_end = event("c-C", "purchase", "2026-03-02T00:00:00Z", revenue="5.00")
    live_run(s3, settings, [Stream().batch([at_start, last_microsecond, at_end])])

    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    result = run_replay(s3, settings, plan, tmp_path, progress=False)
    rows = S3ParquetSink(s3, settings).get_parquet(result.output_key).to_pylist()
    assert sorted(row["customer_id"] for row in rows) == ["c-A", "c-B"]


def test_a_replay_orders_events_within_each_shard_not_across_a_reshard(s3: Any, tmp_path: Path) -> None:
    """Sequence numbers order records within one shard only (the embedded endpoint starts a child shard's at 1).
    Live, a customer's re-send on the child 3 days after the original on its parent is counted again (window 1
    day): 2 purchases. A replay that batched both shards' files and sorted them by sequence number put the child's
    copy first and took the parent's for its duplicate: 1 purchase."""
    settings = Settings(bucket=BUCKET, prefix="rfm", dedupe_window_days=1)
    original = event("c-A", "purchase", "2026-03-01T10:00:00Z", revenue="5.00")
    parent, child = "shardId-000000000000", "shardId-000000000002"
    live_run(s3, settings, [Stream(first=1_000).batch([original])], shard=parent)
    live_run(s3, settings, [_arriving(Stream(first=1).batch([original]), 3)], shard=child)

    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    result = run_replay(s3, settings, plan, tmp_path, progress=False)
    rows = S3ParquetSink(s3, settings).get_parquet(result.output_key).to_pylist()
    assert [(row["customer_id"], row["purchases"]) for row in rows] == [("c-A", 2)]


def test_a_replay_without_a_bar_logs_its_progress(
    s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Off a terminal a replay of hours said nothing until it ended."""
    settings = _archive(s3)
    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))
    assert len(plan.files) == 2
    ticks = iter(range(0, 1000, 40))  # 40 s per file read
    with caplog.at_level(logging.INFO, logger="clickstream.replay"):
        run_replay(s3, settings, plan, tmp_path, progress=False, clock=lambda: float(next(ticks)))
    lines = [r.getMessage() for r in caplog.records if "files read" in r.getMessage()]
    assert lines == [
        f"replay {plan.name}: 1 of 2 files read, 1 events in the range so far",
        f"replay {plan.name}: 2 of 2 files read, 2 events in the range so far",
    ], lines


def _archive(s3: Any) -> Settings:
    settings = Settings(bucket=BUCKET, prefix="rfm")
    stream = Stream()
    live_run(
        s3,
        settings,
        [
            stream.batch([event("c-A", "page_view", "2026-03-01T10:00:00Z")]),
            stream.batch([event("c-B", "page_view", "2026-03-02T10:00:00Z")]),
        ],
    )
    return settings


def _replay(*arguments: str) -> Any:
    from click.testing import CliRunner

    from clickstream.cli import main

    return CliRunner().invoke(main, ["replay", "--bucket", BUCKET, "--no-progress", *arguments])


def test_where_logs_are_json_every_line_replay_says_is_a_record(s3: Any, tmp_path: Path) -> None:
    """Its plan, its answer and its failure, each a JSON record on stderr (a log shipper reads one per line)."""
    import json

    _archive(s3)
    window = ["--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path)]
    for arguments, code, said in (
        ([*window, "--name", "wk"], 0, ("replay wk: events from", "replayed 2 events")),
        ([*window, "--name", "wk2", "--dry-run"], 0, ("replay wk2: events from",)),
        ([*window, "--name", ".."], 2, ("a letter or a digit",)),
    ):
        result = _replay("--log-format", "json", *arguments)
        assert result.exit_code == code, result.output
        messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
        for words in said:
            assert any(words in message for message in messages), messages
        text = _replay("--log-format", "text", *arguments)
        assert text.exit_code == code and not any(line.startswith("{") for line in text.stderr.splitlines())


def test_reading_the_commit_records_reports_its_progress(s3: Any) -> None:
    """Every reader lists then fetches each commit record (millions on a long-lived prefix): it says how far it got."""
    from consumer.s3_sink import read_commit_records
    from schemas.layout import OutputLayout

    _archive(s3)
    seen: list[tuple[int, int]] = []
    records = read_commit_records(
        s3, BUCKET, OutputLayout("rfm"), progress=lambda done, total: seen.append((done, total))
    )
    assert len(records) >= 2
    assert seen == [(done, len(records)) for done in range(1, len(records) + 1)]


def _replays(s3: Any) -> list[str]:
    """Every object under replays/ but the claims of names (``_claims``)."""
    return [key for key in _replay_keys(s3) if not key.endswith("/_claim.json")]


def _claims(s3: Any) -> list[str]:
    return [key for key in _replay_keys(s3) if key.endswith("/_claim.json")]


def _replay_keys(s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="rfm/replays/")
    return [item["Key"] for item in listed.get("Contents", [])]


def test_a_replay_name_holds_one_range(s3: Any, tmp_path: Path) -> None:
    """A folder read whole (score --input, Spectrum) must not mix two ranges' rows; dots alone are no name, and a
    folder starting with _ or . or holding = is skipped by readers or taken for a partition."""
    _archive(s3)
    scratch = ["--state-dir", str(tmp_path)]
    first = _replay("--from", "2026-03-01", "--to", "2026-03-02", "--name", "wk", *scratch)
    assert first.exit_code == 0, first.output
    assert "de-duplication window 7 days" in first.output
    again = _replay("--from", "2026-03-01", "--to", "2026-03-02", "--name", "wk", *scratch)
    assert again.exit_code == 0, "the same range overwrites its own object"
    other = _replay("--from", "2026-03-02", "--to", "2026-03-03", "--name", "wk", *scratch)
    assert other.exit_code == 2 and "holds another replay" in other.output
    assert len(_replays(s3)) == 1
    for name in ("..", ".", "_x", ".x", "day=1"):  # no name, or a folder readers skip or take for a partition
        refused = _replay("--from", "2026-03-02", "--to", "2026-03-03", "--name", name, *scratch)
        assert refused.exit_code == 2 and "must start with a letter or a digit" in refused.output
    # it names the lock file too: past the file system's 255 bytes it failed after reading the archive
    long = _replay("--from", "2026-03-02", "--to", "2026-03-03", "--name", "a" * 240, *scratch)
    assert long.exit_code == 2 and "--name is 240 characters long: at most 200" in long.output, long.output
    assert len(_replays(s3)) == 1


def _stopped_at_the_second_read(monkeypatch: pytest.MonkeyPatch, stop: Callable[[], None]) -> list[str]:
    """The archive's files read, recorded as they are; ``stop()`` is called on the second (after a file was read)."""
    reads: list[str] = []
    get_parquet = S3ParquetSink.get_parquet

    def read(self: S3ParquetSink, key: str) -> pa.Table:
        reads.append(key)
        if len(reads) == 2:
            stop()
        return get_parquet(self, key)

    monkeypatch.setattr(S3ParquetSink, "get_parquet", read)
    return reads


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def test_an_interrupted_replay_writes_nothing_and_exits_130(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _archive(s3)
    reads = _stopped_at_the_second_read(monkeypatch, _ctrl_c)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert len(reads) == 2, "interrupted midway, after a file was read"
    assert result.exit_code == 130, result.output
    assert "nothing written" in result.output
    assert _replays(s3) == []
    assert _claims(s3) == [], "nothing written: the name is free for another range"
    assert list((tmp_path / "replay").iterdir()) == [], "nothing is left in its folder"


def test_a_replay_stopped_by_sigterm_says_so_leaves_nothing_in_its_folder_and_exits_143(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ECS task stopped, or `timeout`: the replay used to die without a word, its scratch database left behind."""
    import os
    import signal

    _archive(s3)
    reads = _stopped_at_the_second_read(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert len(reads) == 2, "stopped midway, after a file was read"
    assert result.exit_code == 143, result.output
    assert "replay interrupted (SIGTERM): nothing written" in result.output
    assert _replays(s3) == []
    assert list((tmp_path / "replay").iterdir()) == [], "nothing is left in its folder (its lock is removed)"
    assert signal.getsignal(signal.SIGTERM) == before, "the handler is put back"


def test_a_replay_that_may_not_write_its_output_says_so_before_reading_anything(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role denied PutObject under replays/ read and applied the whole archive first, then failed naming nothing."""

    _archive(s3)
    put_bytes = S3ParquetSink.put_bytes
    reads: list[str] = []

    def denied_under_replays(self: S3ParquetSink, key: str, *args: Any, **kwargs: Any) -> None:
        if key.startswith("rfm/replays/"):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Forbidden"}}, "PutObject")
        put_bytes(self, key, *args, **kwargs)

    def counted(self: S3ParquetSink, key: str) -> pa.Table:
        reads.append(key)
        raise AssertionError("nothing is read")

    monkeypatch.setattr(S3ParquetSink, "put_bytes", denied_under_replays)
    monkeypatch.setattr(S3ParquetSink, "get_parquet", counted)
    result = _replay(
        "--from", "2026-03-01", "--to", "2026-03-03", "--name", "wk", "--state-dir", str(tmp_path)
    )
    assert result.exit_code == 2, result.output
    assert f"cannot write the replay's output under s3://{BUCKET}/rfm/replays/wk/" in result.output
    assert (
        "not allowed to call PutObject" in result.output and "none of the archive was read" in result.output
    )
    assert reads == []


def test_a_replay_leaves_no_write_check_behind(s3: Any, tmp_path: Path) -> None:
    _archive(s3)
    result = _replay(
        "--from", "2026-03-01", "--to", "2026-03-03", "--name", "wk", "--state-dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert [key.rsplit("/", 1)[1] for key in _replays(s3)] == ["replay-20260301T0000-20260303T0000.parquet"]


def test_a_second_stop_while_duckdb_runs_a_statement_stops_it_and_exits_143(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first stop waits for the step; a second one acts at once, inside the statement, which DuckDB ends as
    RuntimeError("Query interrupted"): said as a stop (it was "unexpected RuntimeError", exit 1)."""
    import os
    import signal
    import threading
    import time

    _archive(s3)
    apply_events = CustomerState.apply_events
    ran: list[float] = []

    def stopped_twice_mid_statement(self: CustomerState, *args: Any) -> Any:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        try:
            self.con.sql("SELECT count(*) FROM range(3000000000) t(i) WHERE i % 7 = 3").fetchall()  # seconds
        finally:
            ran.append(time.monotonic() - started)
        return apply_events(self, *args)

    monkeypatch.setattr(CustomerState, "apply_events", stopped_twice_mid_statement)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert result.exit_code == 143, result.output
    assert "replay interrupted (SIGTERM): nothing written" in result.output
    assert len(ran) == 1 and ran[0] < 3, "the statement was stopped, not run to its end"
    assert list((tmp_path / "replay").iterdir()) == [], "nothing is left in its folder (its lock is removed)"


def test_a_second_stop_during_the_final_write_says_the_output_may_be_there(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    _archive(s3)
    put_parquet = S3ParquetSink.put_parquet

    def stopped_twice(self: S3ParquetSink, key: str, *args: Any, **kwargs: Any) -> int:
        os.kill(os.getpid(), signal.SIGINT)  # noted: the write goes on
        os.kill(os.getpid(), signal.SIGTERM)  # the second: at once
        return put_parquet(self, key, *args, **kwargs)

    monkeypatch.setattr(S3ParquetSink, "put_parquet", stopped_twice)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert result.exit_code == 143, result.output
    assert "replay interrupted (SIGTERM) while writing" in result.output
    assert "may or may not be there" in result.output


def test_an_ignored_ctrl_c_stays_ignored(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay started in the background of a script ignores SIGINT: a Ctrl-C meant for the script must not stop
    it (noting every stop did)."""
    import os
    import signal

    settings = _archive(s3)
    reads = _stopped_at_the_second_read(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGINT))
    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = run_replay(s3, settings, plan, tmp_path, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(reads) == 2 and result.events_read == 2
    assert len(_replays(s3)) == 1


def test_a_stop_while_the_state_closes_after_the_output_is_written_says_so(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that came after the output was written said "nothing written" and left its scratch state: the clean-up
    holds stops until it is done, and the replay, whole, says that a stop came as it ended."""
    import os
    import signal

    _archive(s3)
    close = CustomerState.close

    def terminated_while_closing(self: CustomerState, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        close(self, *args, **kwargs)

    monkeypatch.setattr(CustomerState, "close", terminated_while_closing)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "a stop came as it ended; its output is written whole" in result.output
    assert len(_replays(s3)) == 1, "it was written"
    assert list((tmp_path / "replay").iterdir()) == [], "nothing is left in its folder (its lock is removed)"


def test_a_stop_that_a_library_swallows_still_stops_the_replay(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB or a destructor could swallow the KeyboardInterrupt a stop raised where Python happened to be: the
    replay went on and wrote its output (exit 0). A stop is now noted, and acted on between steps."""
    import os
    import signal
    from contextlib import suppress

    _archive(s3)
    apply_events = CustomerState.apply_events

    def swallowing(self: CustomerState, *args: Any) -> Any:
        with suppress(KeyboardInterrupt):  # as a library that catches everything would
            os.kill(os.getpid(), signal.SIGTERM)
        return apply_events(self, *args)

    monkeypatch.setattr(CustomerState, "apply_events", swallowing)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert result.exit_code == 143, result.output
    assert "replay interrupted (SIGTERM): nothing written" in result.output
    assert _replays(s3) == []
    assert list((tmp_path / "replay").iterdir()) == [], "nothing is left in its folder (its lock is removed)"


def test_a_second_replay_of_the_same_name_is_refused_while_the_first_runs(s3: Any, tmp_path: Path) -> None:
    """It could write a second range into the name's folder after the first's check for one."""
    import fcntl

    _archive(s3)
    (tmp_path / "replay").mkdir()
    with (tmp_path / "replay" / "replay-wk.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the first replay holds it
        second = _replay(
            "--from", "2026-03-02", "--to", "2026-03-03", "--name", "wk", "--state-dir", str(tmp_path)
        )
        assert second.exit_code == 1, second.output
        assert "another replay named wk is running from" in second.output
        assert "events from" not in second.output, "refused before its plan (the check for another range)"
        assert _replays(s3) == []
        fcntl.flock(lock, fcntl.LOCK_UN)
    after = _replay(
        "--from", "2026-03-02", "--to", "2026-03-03", "--name", "wk", "--state-dir", str(tmp_path)
    )
    assert after.exit_code == 0, after.output
    assert list((tmp_path / "replay").iterdir()) == []


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_a_committed_file_gone_from_the_archive_is_named_before_anything_is_read(
    s3: Any, tmp_path: Path, dry_run: list[str]
) -> None:
    """It said only the object's URL, after reading the files before it (hours, on a long backfill); a dry run
    planned it as if it could run."""
    _archive(s3)
    (first, *_) = [obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="rfm/events/")["Contents"]]
    s3.delete_object(Bucket=BUCKET, Key=first)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path), *dry_run)
    assert result.exit_code == 1, result.output
    assert "no such object" in result.output and f"s3://{BUCKET}/{first}" in result.output, result.output
    assert "nothing was read or written" in result.output
    assert _replay_keys(s3) == [], "no claim, no output"


def _damaged_pages(body: bytes) -> bytes:
    """The file with its middle (compressed column pages) overwritten: its footer still reads."""
    middle = len(body) // 2
    return body[: middle - 32] + bytes(64) + body[middle + 32 :]


@pytest.mark.parametrize("damage", [lambda _body: b"garbage", _damaged_pages], ids=["not-parquet", "pages"])
def test_a_committed_file_that_is_not_parquet_is_named_and_nothing_is_written(
    s3: Any, tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    """A committed events file written over (ArrowInvalid) or damaged inside (OSError) stopped the replay with an
    'unexpected' error and no key."""
    _archive(s3)
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="rfm/events/")["Contents"]]
    body = s3.get_object(Bucket=BUCKET, Key=keys[-1])["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=keys[-1], Body=damage(body))
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert f"s3://{BUCKET}/{keys[-1]}: a committed file that is not readable Parquet" in result.output
    assert "unexpected" not in result.output
    assert _replay_keys(s3) == [], "no output, and the name's claim released"


def test_a_dry_run_of_a_name_claimed_for_another_range_is_refused_as_the_run_would_be(
    s3: Any, tmp_path: Path
) -> None:
    """A replay stopped before its output (or one still running elsewhere) leaves only its claim: the dry run said
    the plan and exit 0, the run then exit 2."""
    from schemas.control import ReplayClaim
    from schemas.layout import OutputLayout

    _archive(s3)
    claim = ReplayClaim(_day(1), _day(2), _day(5), "another-run")
    s3.put_object(Bucket=BUCKET, Key=OutputLayout("rfm").replay_claim_key("wk"), Body=claim.to_json())
    window = ["--from", "2026-03-02", "--to", "2026-03-03", "--name", "wk", "--state-dir", str(tmp_path)]
    for dry_run in (["--dry-run"], []):
        result = _replay(*window, *dry_run)
        assert result.exit_code == 2, result.output
        assert (
            "replay wk is claimed for another range, 2026-03-01 00:00 to 2026-03-02 00:00 UTC"
            in result.output
        )
    assert _replay("--from", "2026-03-01", "--to", "2026-03-02", "--name", "wk", "--dry-run").exit_code == 0


def test_a_replay_interrupted_while_writing_says_its_output_may_be_there(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _archive(s3)

    def interrupted(*_: Any, **__: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(S3ParquetSink, "put_parquet", interrupted)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert result.exit_code == 130, result.output
    assert "may or may not be there" in result.output and "nothing written" not in result.output


def test_a_replay_interrupted_while_planning_exits_130(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _archive(s3)

    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("clickstream.replay.commit_records", interrupted)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03")
    assert result.exit_code == 130 and "nothing written" in result.output, result.output


def test_a_name_is_claimed_for_one_range_across_machines(s3: Any, tmp_path: Path) -> None:
    """Two replays of one name on two machines (no shared lock file) wrote both ranges into one folder: the first
    to claim the name in S3 (a conditional create) holds it; a run of the same range writes the same object."""
    settings = _archive(s3)
    day = lambda number: datetime(2026, 3, number, tzinfo=UTC)  # noqa: E731
    first = plan_replay(s3, settings, day(1), day(2), name="wk")
    second = plan_replay(s3, settings, day(2), day(3), name="wk")  # planned on another machine meanwhile
    run_replay(s3, settings, first, tmp_path / "a", progress=False)
    with pytest.raises(FrontDoorError) as refused:
        run_replay(s3, settings, second, tmp_path / "b", progress=False)
    assert refused.value.exit_code == 2
    assert "replay wk is claimed for another range, 2026-03-01 00:00 to 2026-03-02 00:00 UTC" in str(
        refused.value
    )
    assert [key.rsplit("/", 1)[1] for key in _replays(s3)] == ["replay-20260301T0000-20260302T0000.parquet"]
    again = plan_replay(s3, settings, day(1), day(2), name="wk")
    assert run_replay(s3, settings, again, tmp_path / "c", progress=False).events_read == first.events
    assert _claims(s3) == ["rfm/replays/wk/_claim.json"]


def test_a_replay_of_a_name_whose_output_came_before_claims_is_refused_and_claims_nothing(
    s3: Any, tmp_path: Path
) -> None:
    """A version before claims wrote its output without one, after this run's plan looked: still another range."""
    settings = _archive(s3)
    day = lambda number: datetime(2026, 3, number, tzinfo=UTC)  # noqa: E731
    plan = plan_replay(s3, settings, day(2), day(3), name="wk")
    old = OutputLayout("rfm").replay_output_key("wk", day(1), day(2))
    s3.put_object(Bucket=BUCKET, Key=old, Body=b"PAR1")
    with pytest.raises(FrontDoorError) as refused:
        run_replay(s3, settings, plan, tmp_path, progress=False)
    assert "holds another replay" in str(refused.value) and refused.value.exit_code == 2
    assert _claims(s3) == [] and _replays(s3) == [old]


def test_a_replay_counts_only_the_events_inside_its_range(s3: Any, tmp_path: Path) -> None:
    """An events file holds whatever one flush held: events of the range beside others, which the replay must
    leave out (the end-to-end replay test covers every event, so it could not tell)."""
    settings = Settings(bucket="replay-bucket", prefix="rfm")
    inside = event("c-A", "purchase", "2026-03-01T10:00:00Z", revenue="5.00")
    outside = event("c-A", "purchase", "2026-03-05T10:00:00Z", revenue="7.00")
    live_run(s3, settings, [Stream().batch([inside, outside])])  # one flush: one events file holding both
    plan = plan_replay(s3, settings, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    result = run_replay(s3, settings, plan, tmp_path, progress=False)
    assert result.output_key is not None
    rows = S3ParquetSink(s3, settings).get_parquet(result.output_key).to_pylist()
    assert [(row["customer_id"], row["purchases"], str(row["revenue"])) for row in rows] == [
        ("c-A", 1, "5.00")
    ]


def test_a_range_between_the_events_of_a_file_writes_nothing_and_keeps_no_claim(
    s3: Any, tmp_path: Path
) -> None:
    """The plan takes a file whose events' span meets the range; when none of its events is in the range, the replay
    wrote a file of no rows and kept the name's claim (a range before the first file said "nothing to replay")."""
    settings = Settings(bucket=BUCKET, prefix="rfm")
    early = event("c-A", "page_view", "2026-03-01T10:00:00Z")
    late = event("c-B", "page_view", "2026-03-01T12:00:00Z")
    live_run(s3, settings, [Stream().batch([early, late])])  # one flush: one events file spanning 10:00-12:00
    result = _replay("--from", "2026-03-01T11", "--to", "2026-03-01T12", "--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "overlapping it: 1 " in result.output, "the plan took the file"
    assert "nothing to replay: no committed event in that range (1 file read" in result.output
    assert _replays(s3) == [] and _claims(s3) == []


def test_a_stop_while_the_claim_is_checked_before_the_write_writes_nothing(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim is checked again before the write, a few S3 round trips: a stop that came then was acted on only
    after the write, which went ahead (exit 0) though --help says a stop before the final write writes nothing."""
    import os
    import signal

    from clickstream import replay

    _archive(s3)
    hold_name = replay._hold_name
    holds: list[bool] = []

    def terminated_on_the_check_before_writing(*args: Any, **kwargs: Any) -> Any:
        holds.append(True)
        held = hold_name(*args, **kwargs)
        if len(holds) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return held

    monkeypatch.setattr(replay, "_hold_name", terminated_on_the_check_before_writing)
    result = _replay("--from", "2026-03-01", "--to", "2026-03-03", "--state-dir", str(tmp_path))
    assert len(holds) == 2, "the claim was made, then checked before the write"
    assert result.exit_code == 143, result.output
    assert "nothing written" in result.output
    assert _replays(s3) == [] and _claims(s3) == []


def test_a_claim_whose_create_landed_unanswered_is_this_runs_and_released_when_it_stops(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry's 412 read as a twin run's claim: the run never released it, and every other range of the name was
    refused until someone deleted the folder."""
    settings = _archive(s3)
    day = lambda number: datetime(2026, 3, number, tzinfo=UTC)  # noqa: E731
    flaky = WriteLandsThen412(s3, OutputLayout("rfm").replay_claim_key("wk"))
    plan = plan_replay(flaky, settings, day(1), day(2), name="wk")

    def stopped(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(S3ParquetSink, "get_parquet", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_replay(flaky, settings, plan, tmp_path, progress=False)
    assert flaky.answered, "the claim's create landed and answered 412"
    assert _claims(s3) == [], "its own claim, released: nothing was written"


def _day(number: int) -> datetime:
    return datetime(2026, 3, number, tzinfo=UTC)


def _a_twin_runs(s3: Any) -> tuple[Settings, Any]:
    """The archive, a twin run of day 1's replay of ``wk`` holding the name (from another machine), and this run's
    plan of the same range."""
    settings = _archive(s3)
    _the_twin_claims(s3)
    return settings, plan_replay(s3, settings, _day(1), _day(2), name="wk")


def _the_twin_claims(s3: Any) -> None:
    twin = ReplayClaim(_day(1), _day(2), datetime.now(UTC), run_id="the-twin")
    s3.put_object(Bucket=BUCKET, Key=OutputLayout("rfm").replay_claim_key("wk"), Body=twin.to_json())


def test_a_range_claimed_while_a_twin_run_read_is_not_written_beside_it(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of a range that found its twin's claim relied on it; the twin stopped and released it, another range
    claimed the name and wrote, and the first run then wrote its range into the same folder."""
    settings = _archive(s3)
    # planned on another machine, before the twin claimed the name
    other = plan_replay(s3, settings, _day(2), _day(3), name="wk")
    _the_twin_claims(s3)
    mine = plan_replay(s3, settings, _day(1), _day(2), name="wk")
    claim_key = OutputLayout("rfm").replay_claim_key("wk")
    read = S3ParquetSink.get_parquet
    meanwhile: list[str] = []

    def while_reading(self: S3ParquetSink, key: str) -> Any:
        if not meanwhile:
            meanwhile.append(key)
            s3.delete_object(Bucket=BUCKET, Key=claim_key)  # the twin stops, nothing written: it releases
            # another range claims and writes
            run_replay(s3, settings, other, tmp_path / "other", progress=False)
        return read(self, key)

    monkeypatch.setattr(S3ParquetSink, "get_parquet", while_reading)
    with pytest.raises(FrontDoorError) as refused:
        run_replay(s3, settings, mine, tmp_path / "mine", progress=False)
    assert refused.value.exit_code == 2 and "claimed for another range" in str(refused.value)
    assert meanwhile, "the other range ran while this one read"
    assert [key.rsplit("/", 1)[1] for key in _replays(s3)] == ["replay-20260302T0000-20260303T0000.parquet"]


def test_a_claim_made_in_place_of_a_twins_is_released_by_a_stop_before_the_write(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run went on under a twin's claim of its range; the twin stopped (released it) while this one read, and
    the check before the write claimed the name for this run, then a stop came: nothing is written, and the claim,
    this run's now, must go too (it stayed, and every other range of the name was refused)."""
    import os
    import signal

    from clickstream import replay

    settings, mine = _a_twin_runs(s3)
    claim_key = OutputLayout("rfm").replay_claim_key("wk")
    read = S3ParquetSink.get_parquet
    hold_name = replay._hold_name
    made: list[bool] = []

    def the_twin_releases_while_reading(self: S3ParquetSink, key: str) -> Any:
        s3.delete_object(Bucket=BUCKET, Key=claim_key)
        return read(self, key)

    def stopped_after_the_check(*args: Any, **kwargs: Any) -> bool:
        made.append(hold_name(*args, **kwargs))
        if len(made) == 2:  # the check before the write
            os.kill(os.getpid(), signal.SIGINT)
        return made[-1]

    monkeypatch.setattr(S3ParquetSink, "get_parquet", the_twin_releases_while_reading)
    monkeypatch.setattr(replay, "_hold_name", stopped_after_the_check)
    with pytest.raises(KeyboardInterrupt):
        run_replay(s3, settings, mine, tmp_path, progress=False)
    assert made == [False, True], "the twin's claim at first; the check before the write made one, this run's"
    assert _replays(s3) == [] and _claims(s3) == []


def test_a_claim_made_again_right_before_writing_is_released_when_the_run_writes_nothing(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The twin's claim went while this run read, and another range's output came without a claim (a version before
    claims, a hand): the run claimed the name again, refused to write, and left that claim behind."""
    settings, mine = _a_twin_runs(s3)
    layout = OutputLayout("rfm")
    claim_key = layout.replay_claim_key("wk")
    read = S3ParquetSink.get_parquet
    meanwhile: list[bool] = []

    def while_reading(self: S3ParquetSink, key: str) -> Any:
        if not meanwhile:
            meanwhile.append(True)
            s3.delete_object(Bucket=BUCKET, Key=claim_key)  # the twin stops, nothing written: released
            s3.put_object(Bucket=BUCKET, Key=layout.replay_output_key("wk", _day(2), _day(3)), Body=b"PAR1")
        return read(self, key)

    monkeypatch.setattr(S3ParquetSink, "get_parquet", while_reading)
    with pytest.raises(FrontDoorError, match="nothing written"):
        run_replay(s3, settings, mine, tmp_path, progress=False)
    assert meanwhile and _claims(s3) == []
