"""``clickstream score``: CLV, RFM scores and segments for every buyer, committed to ``<prefix>/clv/`` like a flush.

The run, step by step (each only after the previous one succeeded; ``score_customers`` below):

1. **Read**: the current row of every customer (``clickstream.current_rows``). From S3, the ``customer_aggregates/``
   files named by the worker's commit records (files of flushes that never committed are not data), read since the
   last run (its current rows are kept under ``_control/current_rows/``); from a local folder, every Parquet file
   in it. Each customer's highest ``version`` wins.
2. **Name**: the observation end (``--as-of``, default the latest event time seen) and the run id, a hash of
   the as-of, a fingerprint of the input rows, the valuation settings and the model library version.
3. **Already done?** If ``_control/clv/as_of_yyyymmdd=<day>.json`` names this run id and its files are there, the
   run is committed: only steps 8 and 9 are repeated (they may not have happened) and nothing is refitted. Same
   inputs, same as-of: same result, no second copy. The commit's version (ETag) is kept for step 7.
4. **Fit and predict**: BG/NBD and Gamma-Gamma (``scoring.clv``), RFM scores and segments (``scoring.rfm``).
5. **Data**: PUT the Parquet parts under ``clv/as_of_yyyymmdd=<day>/run=<run id>/``.
6. **Model**: PUT ``_model.json`` (parameters, diagnostics) beside them.
7. **Commit**: PUT ``_control/clv/as_of_yyyymmdd=<day>.json`` naming every file of the run, only if every file is
   there and the day's commit is still the one step 3 read (a conditional PUT): of two overlapping runs of a day
   one commits, the other removes its files and fails. The run is now the scores of that day; before this,
   readers that go through the commit record see the previous run or nothing.
8. **Latest**: ``_control/clv/latest.json`` becomes a copy of the newest committed day's commit (found by listing
   the days' commits; a conditional PUT), so a run of an older day or a crash before this step cannot move it back.
9. **Tidy**: delete the files of the run this one replaced, and of runs of the day nothing wrote to for
   ``ABANDONED_RUN_SECONDS`` (they died before 7); a younger folder may be a run still writing and is left.

A crash anywhere leaves the previous commit valid; re-running finishes the job.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from clickstream.current_rows import CurrentRows, read_committed_rows, read_local_rows
from clickstream.errors import FrontDoorError
from consumer.s3_sink import encryption_arguments, lost_to_another_writer
from runtime.logs import count_of
from runtime.settings import Settings
from schemas.control import ControlRecordError, ScoreCommit, json_object
from schemas.layout import OutputLayout
from scoring.clv import ClvConfig, fit_and_predict, library_version, require_model_library_installed
from scoring.inputs import ModelInputs, model_inputs, shards_behind
from scoring.run import rfm_of, run_id_for, score_table

#: A run folder of the day that no commit names and that nothing wrote to for this long is a run that died: tidy
#: deletes it. A younger one may be a run still writing (it would fail its commit, finding its files gone).
ABANDONED_RUN_SECONDS: Final = 6 * 3600

#: Rows per Parquet part: parts of ~20-40 MB at a million customers, read in parallel by Spectrum and DuckDB.
ROWS_PER_PART: Final = 250_000

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- object stores
class ChangedMeanwhile(Exception):  # noqa: N818 - named for what happened
    """A conditional PUT found the object changed (or created) since it was read: another run wrote it."""


class ObjectStore(Protocol):
    """Where a run is written: an S3 bucket, or a local folder with the same key layout.

    ``get_tagged`` returns a version tag with the body; ``put_if`` writes only if the object still has that tag
    (``None``: only if it does not exist) and raises ``ChangedMeanwhile`` otherwise: the commit and latest.json are
    written so, as two runs may overlap (a retried job, a second schedule)."""

    def put(self, key: str, body: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def get_tagged(self, key: str) -> tuple[bytes | None, str | None]: ...
    def put_if(self, key: str, body: bytes, content_type: str, *, tag: str | None) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...
    def ages(self, prefix: str) -> dict[str, float]: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...


class S3Store:
    """S3 with the bucket's server-side encryption settings on every PUT."""

    def __init__(self, s3: Any, settings: Settings) -> None:
        self.s3 = s3
        self.bucket = settings.bucket
        self._encryption = encryption_arguments(settings)

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **self._encryption
        )

    def get(self, key: str) -> bytes | None:
        return self.get_tagged(key)[0]

    def get_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.NoSuchKey:
            return None, None
        return response["Body"].read(), str(response["ETag"])

    def put_if(self, key: str, body: bytes, content_type: str, *, tag: str | None) -> None:
        condition = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                **condition,
                **self._encryption,
            )
        except ClientError as error:
            if lost_to_another_writer(error):  # the other run's write, as a scoring run takes it
                raise ChangedMeanwhile(self.url(key)) from None
            raise

    def keys(self, prefix: str) -> list[str]:
        return list(self.ages(prefix))

    def ages(self, prefix: str) -> dict[str, float]:
        """Each key under ``prefix`` and seconds since it was last written."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        now = datetime.now(UTC)
        return {
            obj["Key"]: (now - obj["LastModified"]).total_seconds()
            for page in pages
            for obj in page.get("Contents", [])
        }

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


class LocalStore:
    """A folder laid out like the bucket (``<root>/<key>``); a PUT is atomic (write, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, body: bytes, content_type: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(body)
        partial.replace(target)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def get_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        body = self.get(key)
        return body, None if body is None else hashlib.sha256(body).hexdigest()

    def put_if(self, key: str, body: bytes, content_type: str, *, tag: str | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".clv-commit.lock").open("a") as lock:  # compare and swap, one process at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.get_tagged(key)[1] != tag:
                raise ChangedMeanwhile(self.url(key))
            self.put(key, body, content_type)

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.ages(prefix))

    def ages(self, prefix: str) -> dict[str, float]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return {}
        now = time.time()
        found = {p.relative_to(self.root).as_posix(): p for p in base.rglob("*") if p.is_file()}
        return {
            key: now - path.stat().st_mtime
            for key, path in found.items()
            if key.startswith(prefix) and not key.endswith(".partial")
        }

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def url(self, key: str) -> str:
        return str(self.root / key)


# --------------------------------------------------------------------------------------------------- committed runs
def read_commit(
    store: ObjectStore, layout: OutputLayout, as_of_day: date | None = None
) -> ScoreCommit | None:
    """The committed run of one as-of day, or of the newest (None: nothing committed)."""
    return _read_commit_tagged(store, layout, as_of_day)[0]


def _read_commit_tagged(
    store: ObjectStore, layout: OutputLayout, as_of_day: date | None
) -> tuple[ScoreCommit | None, str | None]:
    key = layout.clv_latest_key if as_of_day is None else layout.clv_commit_key(as_of_day)
    body, tag = store.get_tagged(key)
    if body is None:
        return None, None
    try:
        return ScoreCommit.from_json(body), tag
    except ControlRecordError as error:
        raise ControlRecordError(f"{store.url(key)}: {error} (delete it, or score its day again)") from None


def read_scores(store: ObjectStore, commit: ScoreCommit) -> pa.Table:
    """The clv/ rows of a committed run (only the files its commit names)."""
    parts = []
    for key in commit.files:
        body = store.get(key)
        if body is None:
            raise FileNotFoundError(f"{store.url(key)} is named by the clv commit but missing")
        # refused: bad magic bytes (ArrowInvalid), or a page inside that does not decode (OSError)
        try:
            parts.append(pq.read_table(io.BytesIO(body)))
        except (pa.ArrowException, OSError) as error:
            raise FrontDoorError(
                f"{store.url(key)} is named by the clv commit but is no Parquet file ({error}): score its day again"
            ) from None
    return pa.concat_tables(parts)


def read_model_report(store: ObjectStore, commit: ScoreCommit) -> dict[str, Any]:
    body = store.get(commit.model_key)
    if body is None:
        raise FileNotFoundError(f"{store.url(commit.model_key)} is named by the clv commit but missing")
    try:
        return json_object(body)
    except ValueError as problem:
        raise FrontDoorError(
            f"{store.url(commit.model_key)} is named by the clv commit but is {problem}: score its day again"
        ) from None


# --------------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    commit: ScoreCommit
    already_committed: bool
    deleted: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class _Steps:
    """Numbered progress lines on stderr with the time each step took."""

    def __init__(self, say: Say, total: int) -> None:
        self.say, self.total, self.number = say, total, 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, text: str) -> Iterator[Callable[[str], None]]:
        self.number += 1
        started = time.perf_counter()
        prefix = f"[{self.number}/{self.total}]"
        self.say(f"{prefix} {text}")
        yield lambda detail: self.say(f"{' ' * len(prefix)} {detail}")
        self.seconds[name] = time.perf_counter() - started
        self.say(f"{' ' * len(prefix)} done in {self.seconds[name]:.1f}s")


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", coerce_timestamps="us", use_dictionary=True)
    return buffer.getvalue()


class ConcurrentRunError(RuntimeError):
    """Another scoring run of the same day committed (or removed this run's files) while this one ran."""


def _point_latest(store: ObjectStore, layout: OutputLayout, attempts: int = 5) -> None:
    """Step 8: latest.json becomes a copy of the newest committed day's commit, whichever run wrote which (found by
    listing the days' commits, so a run of an older day, or a crash before this step, cannot move it back)."""
    for _ in range(attempts):
        current, tag = store.get_tagged(layout.clv_latest_key)
        days = [day for key in store.keys(layout.clv_commits_prefix) if (day := layout.clv_commit_day(key))]
        newest = store.get(layout.clv_commit_key(max(days))) if days else None
        if newest is None or newest == current:
            return
        try:
            store.put_if(layout.clv_latest_key, newest, "application/json", tag=tag)
            return
        except ChangedMeanwhile:
            continue  # another run moved it meanwhile: look again
    raise ConcurrentRunError(
        f"{store.url(layout.clv_latest_key)} kept changing under {attempts} attempts to update it"
    )


def _finish(
    store: ObjectStore, layout: OutputLayout, commit: ScoreCommit, superseded: str | None
) -> list[str]:
    """Steps 8 and 9: point latest.json at the newest committed day; delete the files of the run this one
    replaced (``superseded``) and of runs of this day that died (nothing written for ``ABANDONED_RUN_SECONDS``),
    only while the day's commit still names this run. A younger folder may be a run still writing: it is left."""
    _point_latest(store, layout)
    day = commit.as_of.date()
    named = read_commit(store, layout, day)
    if named is None or named.run_id != commit.run_id:
        return []  # another run committed the day since: its own tidy decides
    ages = store.ages(layout.clv_partition_prefix(day))
    runs: dict[str, list[str]] = {}
    for key in ages:
        run = layout.clv_run_of(key)
        if run is not None and run != commit.run_id:
            runs.setdefault(run, []).append(key)
    stale = [
        key
        for run, keys in runs.items()
        if run == superseded or min(ages[key] for key in keys) >= ABANDONED_RUN_SECONDS
        for key in keys
    ]
    for key in stale:
        store.delete(key)
    return sorted(stale)


def _behind_note(shard: str, mark: datetime, end: datetime) -> str:
    """What a shard behind the observation end means, and the two ways to a run it does not bias. An --as-of at
    its mark alone is no way: the aggregates hold the other shards' later purchases, and score refuses it."""
    mark_day = mark.astimezone(UTC).date()
    return (
        f"{shard}'s newest row is as of {mark.isoformat()}, {(end - mark).days} days before the observation end "
        "(the shard is behind, quiet, or closed by a reshard): if it is behind, its customers' latest purchases "
        "are missing and their P(alive) reads low; wait for it to catch up, or score the days before its mark from "
        f"the events/ archive: `clickstream replay --from <your first day> --to {mark_day.isoformat()}`, then "
        "`clickstream score --input <that replay's customer_aggregates/, downloaded> --as-of "
        f"{(mark_day - timedelta(days=1)).isoformat()}`"
    )


def score_customers(
    rows: Callable[[], CurrentRows],
    store: ObjectStore,
    settings: Settings,
    *,
    as_of: datetime | None = None,
    say: Say = _stderr,
) -> ScoreOutcome:
    """Run steps 1-9 (module docstring): read with ``rows``, write to ``store`` under ``settings.prefix``."""
    require_model_library_installed()  # fail before reading anything if the model library is missing
    layout = OutputLayout(settings.prefix)
    config = ClvConfig(
        horizon_months=settings.clv_horizon_months,
        annual_discount_rate=settings.clv_annual_discount_rate,
        margin=settings.clv_margin,
    )
    steps = _Steps(say, total=6)
    with steps.step("read", "reading current customer rows") as detail:
        current = rows()
        detail(current.describe())
    inputs: ModelInputs = model_inputs(current.table, as_of, not_after=datetime.now(UTC))
    # said now, and kept with the fit's own notes in _model.json (and so in the report): a scheduled job's
    # stderr is read by nobody
    behind_notes = [
        _behind_note(shard, mark, inputs.as_of)
        for shard, mark in shards_behind(current.table, inputs.as_of).items()
    ]
    for note in behind_notes:
        say(f"note: {note}")
    day = inputs.as_of_day
    run_id = run_id_for(day, current.fingerprint, config, library_version())
    existing, existing_tag = _read_commit_tagged(store, layout, day)
    if existing is not None and existing.run_id == run_id:
        if not _missing_files(store, layout, existing):
            say(
                f"run {run_id} for as-of {day.isoformat()} is already committed (observed to "
                f"{existing.as_of.isoformat()}, the same whole days): nothing to refit"
            )
            deleted = _finish(store, layout, existing, superseded=None)
            return ScoreOutcome(existing, already_committed=True, deleted=deleted, seconds=steps.seconds)
        say(f"run {run_id} is committed but files it names are gone: scoring it again")

    with steps.step(
        "fit",
        f"BG/NBD + Gamma-Gamma for {inputs.buyers.num_rows:,} buyers, observation end {inputs.as_of.isoformat()}",
    ) as detail:
        result = fit_and_predict(inputs, config, step=detail)
    for note in result.report["notes"]:
        say(f"note: {note}")
    with steps.step("segment", "RFM scores and segments") as detail:
        rfm = rfm_of(inputs)
        table = score_table(inputs, result, rfm, run_id)
        segments = Counter(str(name) for name in rfm.segment)
        detail(", ".join(f"{name} {count:,}" for name, count in segments.most_common()))
    with steps.step("write", f"writing {layout.clv_run_prefix(day, run_id)}") as detail:
        files, written = [], 0
        for part, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_PART)):
            key = layout.clv_data_key(day, run_id, part)
            body = _parquet(table.slice(start, ROWS_PER_PART))
            store.put(key, body, "application/vnd.apache.parquet")
            files.append(key)
            written += len(body)
        model_key = layout.clv_model_key(day, run_id)
        report = {
            **result.report,
            "notes": [*result.report["notes"], *behind_notes],
            "run_id": run_id,
            "rfm_segments": dict(segments),
        }
        # strict JSON (no NaN / Infinity): readers in other languages refuse the extensions
        store.put(
            model_key,
            json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode(),
            "application/json",
        )
        detail(
            f"{count_of(len(files), 'Parquet part')}, {written:,} bytes, and {model_key.rsplit('/', 1)[-1]}"
        )
    commit = ScoreCommit(
        as_of=inputs.as_of,
        run_id=run_id,
        files=files,
        model_key=model_key,
        rows=table.num_rows,
        bytes_written=written,
        inputs={
            "source": current.source,
            "files": current.files,
            "customers": inputs.customers,
            "buyers": inputs.buyers.num_rows,
            "fingerprint": current.fingerprint,
        },
        committed_at=datetime.now(UTC),
        segments=dict(segments),
    )
    with steps.step("commit", f"committing {layout.clv_commit_key(day)}"):
        _commit(store, layout, commit, existing_tag)
    superseded = existing.run_id if existing is not None and existing.run_id != run_id else None
    with steps.step("tidy", "latest pointer and superseded runs") as detail:
        deleted = _finish(store, layout, commit, superseded)
        detail(f"{count_of(len(deleted), 'file')} of other runs deleted")
    return ScoreOutcome(commit, already_committed=False, deleted=deleted, seconds=steps.seconds)


def _missing_files(store: ObjectStore, layout: OutputLayout, commit: ScoreCommit) -> set[str]:
    """The files a run's commit names (its parts and _model.json) that its folder does not hold."""
    present = set(store.keys(layout.clv_run_prefix(commit.as_of.date(), commit.run_id)))
    return {*commit.files, commit.model_key} - present


def _commit(store: ObjectStore, layout: OutputLayout, commit: ScoreCommit, tag: str | None) -> None:
    """Step 7, only if the day's commit is still the one read at step 3 (``tag``) and every file of this run is
    there: two overlapping runs of a day cannot both commit, nor one commit files the other's tidy removed."""
    day = commit.as_of.date()
    missing = _missing_files(store, layout, commit)
    if missing:
        raise ConcurrentRunError(
            f"another scoring run removed {count_of(len(missing), 'file')} of run {commit.run_id} while it ran; "
            "nothing of it was committed: score again"
        )
    try:
        store.put_if(layout.clv_commit_key(day), commit.to_json(), "application/json", tag=tag)
    except ChangedMeanwhile:
        winner = read_commit(store, layout, day)
        if winner is not None and winner.run_id == commit.run_id:
            return  # a twin of this run (same inputs, same id) committed the same files
        for key in {*commit.files, commit.model_key}:
            store.delete(key)
        raise ConcurrentRunError(
            f"another scoring run ({winner.run_id if winner else 'unknown'}) committed {day} while this one ran; "
            f"this run ({commit.run_id}) was removed and nothing of it is visible: score again to replace that run"
        ) from None


def run_score(
    settings: Settings,
    *,
    input_dir: Path | None = None,
    output_dir: Path | None = None,
    as_of: datetime | None = None,
    progress: bool = True,
    say: Say = _stderr,
) -> ScoreOutcome:
    """The CLI's entry: inputs from S3 (commit records) or ``input_dir``; outputs to S3 or ``output_dir``."""
    s3 = None
    if input_dir is None or output_dir is None:
        from runtime.aws import aws_client

        s3 = aws_client("s3", settings)
    store: ObjectStore = LocalStore(output_dir) if output_dir is not None else S3Store(s3, settings)
    with tempfile.TemporaryDirectory(prefix="clickstream-score-") as workdir:

        def rows() -> CurrentRows:
            if input_dir is not None:
                return read_local_rows(input_dir, settings)
            return read_committed_rows(s3, settings, Path(workdir), progress=progress)

        return score_customers(rows, store, settings, as_of=as_of, say=say)
