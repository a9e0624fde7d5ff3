"""Each customer's current ``customer_aggregates`` row: what `score` (and any model) takes as its input.

From a local folder, every Parquet file in it. From S3, the files named by the worker's commit records (files of
flushes that never committed are not data), read incrementally: each run keeps the current rows it computed, and
the commit chain positions they cover, under ``_control/current_rows/`` (``schemas.control.CurrentRowsPointer``),
and the next run reads only the commits made since and merges. Chains only grow at their tips, and the current row
is a maximum (highest ``version``, then latest ``as_of``), so the merge gives the rows a read of the whole history
gives, at the cost of the commits since instead of the prefix's history (about 2 M commits a year for 4 shards).

The kept rows are a cache: a pointer that does not parse, names a missing file, or covers a commit that no longer
exists (the prefix was emptied and written again) is ignored, and everything is read; a run that may not write
(a role without PutObject) reads and scores as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from clickstream.console import progress_of
from clickstream.outputs import CURRENT_ROW, MAX_WORKERS, download_keys
from consumer.s3_sink import S3ParquetSink, commit_record_at, lost_to_another_writer, read_commits_since
from runtime.settings import Settings
from schemas.control import CommitRecord, ControlRecordError, CurrentRowsPointer, ShardCover
from schemas.layout import OutputLayout
from scoring.inputs import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CurrentRows:
    """Each customer's current customer_aggregates row, where it came from and a fingerprint of its content."""

    table: pa.Table
    source: str
    files: int
    bytes: int
    fingerprint: str
    kept_rows: int | None = None  # rows taken from the last run's current rows (None: everything was read)
    commits: int | None = None  # commit records read (S3 only)

    def describe(self) -> str:
        """What was read, in one line (score's step 1)."""
        if self.kept_rows is None:
            return f"{self.table.num_rows:,} customers from {self.files:,} files ({self.bytes:,} bytes)"
        return (
            f"{self.table.num_rows:,} customers: the last run's {self.kept_rows:,} current rows, and "
            f"{self.files - 1:,} files of the {self.commits or 0:,} commits since ({self.bytes:,} bytes)"
        )


_CURRENT_ROWS: Final = (
    "SELECT * FROM read_parquet({files}, hive_partitioning = false, union_by_name = true) " + CURRENT_ROW
)
#: Names the rule the kept rows were chosen by: rows kept by another version's rule are read again, not merged.
_RULE: Final = hashlib.sha256(_CURRENT_ROWS.encode()).hexdigest()[:16]
#: What names a run's input: each customer's (id, version, as_of) in one order whatever files they came in, as
#: SHA-256 (a standard function, unlike DuckDB's hash(), whose values change between DuckDB releases).
_FINGERPRINT: Final = """
SELECT count(*), sha256(string_agg(customer_id || ' ' || version || ' ' || epoch_us(as_of), chr(10)
                                   ORDER BY customer_id))
FROM current_rows
"""


def _fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    count, digest = con.sql(_FINGERPRINT).fetchall()[0]
    return f"{count}:{str(digest)[:32]}"


def _current_rows(paths: list[str], source: str, total_bytes: int) -> CurrentRows:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if not paths:
        raise InputError(f"no customer_aggregates files in {source}")
    try:
        table = con.sql(_CURRENT_ROWS.format(files=json.dumps(paths))).to_arrow_table()
    except duckdb.BinderException as error:  # read, but not customer rows (e.g. events/ or errors/ files)
        raise InputError(
            f"the Parquet files in {source} are not customer_aggregates files ({str(error).splitlines()[0]})"
        ) from None
    except duckdb.OutOfMemoryException:
        raise  # the machine, not the input
    except duckdb.Error as error:  # a file that is not Parquet, or a damaged one
        raise InputError(f"{source}: {str(error).splitlines()[0]}") from None
    con.register("current_rows", table)
    return CurrentRows(table, source, len(paths), total_bytes, _fingerprint(con))


def read_local_rows(folder: Path, settings: Settings) -> CurrentRows:
    """Every customer_aggregates Parquet file under ``folder``: its ``<prefix>/customer_aggregates/`` or
    ``customer_aggregates/`` if it has one (a download of the bucket or of the prefix, whose events/ and errors/
    files are not customer rows), else every Parquet file in it (a folder of aggregates files)."""
    output = OutputLayout(settings.prefix).output_prefix("customer_aggregates")
    nested = [
        candidate for candidate in (folder / output, folder / "customer_aggregates") if candidate.is_dir()
    ]
    root = nested[0] if nested else folder
    paths = sorted(str(path) for path in root.rglob("*.parquet"))
    return _current_rows(paths, str(root), sum(Path(path).stat().st_size for path in paths))


# ------------------------------------------------------------------------------------------------------ from S3
@dataclass(frozen=True, slots=True)
class _Kept:
    """The last run's current rows, verified, and where they are on disk."""

    pointer: CurrentRowsPointer
    path: Path


@dataclass(frozen=True, slots=True)
class _Found:
    """The pointer object as found: its ETag (what a replacement must match; None: there is none yet), the file it
    names, and the kept rows when they hold."""

    etag: str | None = None
    data_key: str | None = None
    kept: _Kept | None = None


def read_committed_rows(s3: Any, settings: Settings, workdir: Path, *, progress: bool = True) -> CurrentRows:
    """The current rows of the prefix: the last run's kept rows merged with the customer_aggregates files of the
    commits made since (all of them when none are kept), downloaded in parallel into ``workdir``; then kept for the
    next run."""
    layout = OutputLayout(settings.prefix)
    found = _read_kept(s3, settings, layout, workdir)
    kept = found.kept
    rows, records = _rows_since(s3, settings, workdir, kept, progress=progress)
    if records or kept is None:
        _keep(S3ParquetSink(s3, settings), layout, rows.table, _covered_after(layout, kept, records), found)
    return rows


def _rows_since(
    s3: Any, settings: Settings, workdir: Path, kept: _Kept | None, *, progress: bool
) -> tuple[CurrentRows, list[CommitRecord]]:
    """``kept`` merged with the files of the commits made since it (every commit without it), and those commits."""
    layout = OutputLayout(settings.prefix)
    covered = {shard: cover.last for shard, cover in kept.pointer.shards.items()} if kept else {}
    with progress_of("reading commit records", "commit", bar=progress) as report:
        records = read_commits_since(
            s3, settings.bucket, layout, covered, max_workers=MAX_WORKERS, progress=report
        )
    keys = sorted({key for record in records for key in record.files.get("customer_aggregates", [])})
    with progress_of("reading customer_aggregates", "file", bar=progress) as report:
        download_keys(s3, settings.bucket, keys, workdir, progress=report)
    paths = [str(workdir / key) for key in keys]
    size = sum((workdir / key).stat().st_size for key in keys)
    if kept is not None:
        paths.insert(0, str(kept.path))
        size += kept.path.stat().st_size
    rows = _current_rows(paths, f"s3://{settings.bucket}/{layout.output_prefix('customer_aggregates')}", size)
    kept_rows = kept.pointer.rows if kept else None
    return replace(rows, kept_rows=kept_rows, commits=len(records)), records


def _covered_after(
    layout: OutputLayout, kept: _Kept | None, records: list[CommitRecord]
) -> dict[str, ShardCover]:
    """Each shard's newest commit read: the kept ones, moved on by the records read since."""
    covers = dict(kept.pointer.shards) if kept else {}
    for record in records:  # sorted by shard and position: the last of a shard is its newest
        covers[record.shard_id] = ShardCover(
            layout.commit_key(record.shard_id, record.previous), record.attempt_id, record.last
        )
    return covers


def _read_kept(s3: Any, settings: Settings, layout: OutputLayout, workdir: Path) -> _Found:
    """The pointer and, if they still hold, the last run's current rows: not when there are none, or when the
    pointer does not parse, may not be read, names a file that is missing, not this prefix's or not Parquet, or
    covers a commit that is gone or is another one at the same key (the prefix emptied and written again)."""
    try:
        answer = s3.get_object(Bucket=settings.bucket, Key=layout.current_rows_pointer_key)
    except s3.exceptions.NoSuchKey:
        return _Found()  # the first run
    except (ClientError, BotoCoreError) as error:
        log.warning("the kept current rows may not be read (%s): reading every commit", error)
        return _Found()
    etag = str(answer["ETag"])
    try:
        pointer = CurrentRowsPointer.from_json(answer["Body"].read())
        _check_cover(s3, settings.bucket, layout, pointer)
        body = s3.get_object(Bucket=settings.bucket, Key=pointer.data_key)["Body"].read()
        path = workdir / "kept-current-rows.parquet"
        path.write_bytes(body)
        pq.read_table(path)  # every page: a damaged file is the cache's fault, found here, not the new files'
    except (ClientError, BotoCoreError, ControlRecordError, pa.ArrowException, OSError) as error:
        log.warning("the kept current rows do not hold (%s): reading every commit", error)
        return _Found(etag)
    return _Found(etag, pointer.data_key, _Kept(pointer, path))


def _check_cover(s3: Any, bucket: str, layout: OutputLayout, pointer: CurrentRowsPointer) -> None:
    """The pointer is this prefix's, and each covered commit is still the one read: at its key, written by the same
    attempt (raises ``ControlRecordError`` if not)."""
    if pointer.rule != _RULE:
        raise ControlRecordError(f"chosen by another rule ({pointer.rule}, this version's is {_RULE})")
    if not pointer.data_key.startswith(layout.current_rows_prefix):
        raise ControlRecordError(f"it names {pointer.data_key}, not a file of this prefix")
    for shard, cover in pointer.shards.items():
        if not cover.commit_key.startswith(layout.commits_prefix(shard)):
            raise ControlRecordError(f"{cover.commit_key} is not a commit of {shard} in this prefix")
        body = s3.get_object(Bucket=bucket, Key=cover.commit_key)["Body"].read()
        record = commit_record_at(f"s3://{bucket}/{cover.commit_key}", body)
        if record.attempt_id != cover.attempt_id or record.last != cover.last:
            raise ControlRecordError(
                f"{cover.commit_key} is another commit than the one read (attempt {record.attempt_id}, not "
                f"{cover.attempt_id}): the prefix was written again"
            )


def _keep(
    sink: S3ParquetSink, layout: OutputLayout, table: pa.Table, shards: dict[str, ShardCover], found: _Found
) -> None:
    """Keep ``table`` for the next run: its Parquet under a key of its own, then the pointer, replaced only if it is
    still the one this run found (a concurrent run's is as good: this one's is dropped). Best effort: a failure is
    logged, never the run's."""
    data_key = layout.current_rows_data_key(uuid.uuid4().hex[:16])
    pointer = CurrentRowsPointer(data_key, shards, table.num_rows, datetime.now(UTC), _RULE)
    try:
        sink.put_parquet(data_key, table, kind="customer_aggregates")
        try:
            sink.put_bytes(
                layout.current_rows_pointer_key,
                pointer.to_json(),
                "json",
                if_none_match=found.etag is None,
                if_match=found.etag,
            )
        except (ClientError, BotoCoreError) as error:
            sink.delete_keys([data_key])
            if lost_to_another_writer(error):
                return  # another run kept its rows first (or is keeping them now): its are as good
            raise
    except (ClientError, BotoCoreError) as error:
        log.warning(
            "the current rows could not be kept for the next run (%s): it will read every commit", error
        )
        return
    try:
        _delete_leftovers(sink, layout, data_key, found.data_key)
    except (ClientError, BotoCoreError) as error:
        log.warning(
            "older kept current rows could not be deleted (%s): left behind, no run reads them", error
        )


#: A kept-rows file no pointer names and older than this was left by a run that died before its pointer update
#: (a younger one may be a concurrent run's, about to be named).
LEFTOVER_SECONDS: Final = 3600


def _delete_leftovers(sink: S3ParquetSink, layout: OutputLayout, named: str, replaced: str | None) -> None:
    """The file the new pointer replaced, and files of runs that died between their file and their pointer."""
    now = datetime.now(UTC)
    listing = sink.s3.get_paginator("list_objects_v2").paginate(
        Bucket=sink.bucket, Prefix=layout.current_rows_prefix
    )
    leftovers = [
        obj["Key"]
        for page in listing
        for obj in page.get("Contents", [])
        if obj["Key"].endswith(".parquet")
        and obj["Key"] != named
        and (obj["Key"] == replaced or (now - obj["LastModified"]).total_seconds() > LEFTOVER_SECONDS)
    ]
    sink.delete_keys(leftovers)
