"""Read the worker's outputs back from S3: what is committed, the tables themselves, and copies on disk.

The commit records are the manifest: a data file counts once a commit record names it (``read_commit_records``),
and files no commit names (a flush that crashed before committing) are reported, never counted.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

from clickstream.commit_ledger import read_all_commits
from clickstream.console import progress_of
from clickstream.errors import FrontDoorError
from clickstream.options import show_progress
from consumer.s3_sink import (
    commit_record_at,
    map_in_parallel,
    named_if_missing,
    not_a_commit,
    prefix_in_use,
    skip_foreign,
)
from runtime.exit_codes import RUNTIME, USAGE
from runtime.logs import count_of
from runtime.settings import Settings
from schemas.control import CommitRecord
from schemas.layout import DATA_OUTPUTS, OutputLayout

#: Parallel S3 requests for listing-sized work (thousands of small Parquet files).
MAX_WORKERS = 16


def require_worker_prefix(s3: Any, settings: Settings) -> None:
    """Refuse (exit 2) a bucket and prefix no worker ever started on: a mistyped --prefix would otherwise read as
    "nothing committed" and exit 0, and a manifest uploaded there would load nothing."""
    if not prefix_in_use(s3, settings.bucket, OutputLayout(settings.prefix)):
        raise FrontDoorError(
            f"no worker has written under s3://{settings.bucket}/{settings.prefix}/ (no stream claim, no commit "
            "record): check CLICKSTREAM_BUCKET / --bucket and CLICKSTREAM_PREFIX / --prefix, or run "
            "`clickstream worker` there first",
            USAGE,
        )


def list_keys(
    s3: Any,
    bucket: str,
    prefix: str,
    progress: Callable[[int, int], None] | None = None,
    expected: int = 0,
) -> list[dict[str, Any]]:
    """Every object under ``prefix``. A listing returns 1,000 keys a request (a year of flushes is millions of data
    files): ``progress(listed, total)`` after each page, ``total`` being ``expected`` (the files the commit records
    name) or what is listed already, if more."""
    objects: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
        if progress is not None:
            progress(len(objects), max(expected, len(objects)))
    return objects


def list_output(s3: Any, settings: Settings, output: str, expected: int) -> list[dict[str, Any]]:
    """Every object under an output's prefix, the listing's progress shown toward the ``expected`` files (those
    the commit records name)."""
    with progress_of(f"listing {output}/", "file", bar=show_progress(None)) as report:
        return list_keys(s3, settings.bucket, settings.layout.output_prefix(output), report, expected)


def download_keys(
    s3: Any,
    bucket: str,
    keys: list[str],
    destination: Path,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy ``keys`` under ``destination`` keeping the key layout, in parallel (``progress(done, total)`` as they
    arrive). Returns the number copied."""

    def copy(key: str) -> None:
        target = destination / key
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, COPY_ATTEMPTS + 1):
            with named_if_missing(bucket, key):
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                write_copy(body, target)
                return
            except BROKEN_DOWNLOAD:
                # botocore retries a request until its answer begins, not a body cut off midway (boto3's
                # download_file retried those too)
                if attempt == COPY_ATTEMPTS:
                    raise
            except OSError as error:
                if error.filename is None:  # a full disk names no file
                    error.filename = str(target)
                raise
            finally:
                body.close()

    map_in_parallel(copy, keys, MAX_WORKERS, progress)
    return len(keys)


#: A body cut off while it streams (a connection reset, a read timeout, fewer bytes than announced): copied again.
BROKEN_DOWNLOAD: Final = (ResponseStreamingError, ReadTimeoutError, IncompleteReadError)
#: Tries of one file's copy, as boto3's ``download_file`` makes.
COPY_ATTEMPTS: Final = 5
#: A copy being written (``write_copy``): no query's ``*.parquet`` reads it, and a stop may leave it behind.
PARTIAL_COPY: Final = ".part"


def write_copy(body: Any, target: Path) -> None:
    """Stream an S3 object's ``body`` into ``target``, whole or not at all (through ``<target>.part``). A GET rather
    than boto3's ``download_file``, whose transfer threads a stop has to wait for at exit (see
    ``map_in_parallel``); these files are far below where ranged parallel GETs pay."""
    partial = target.with_name(target.name + PARTIAL_COPY)
    try:
        with partial.open("wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def stale_copies(destination: Path, settings: Settings, committed: set[str]) -> list[str]:
    """Files of a download folder's outputs and commit records that are not among ``committed`` keys: a copy of
    another run (a prefix emptied and written again), which a query of the folder would read with this one's. A
    partial copy a stop left behind is not one: no query reads it, and the next download writes it again."""
    layout = settings.layout
    stale = []
    for prefix in [*(layout.output_prefix(output) for output in DATA_OUTPUTS), layout.all_commits_prefix]:
        folder = destination / prefix
        if folder.is_dir():
            for path in folder.rglob("*"):
                key = path.relative_to(destination).as_posix()
                if path.is_file() and key not in committed and path.suffix != PARTIAL_COPY:
                    stale.append(key)
    return sorted(stale)


def enclosing_copy(destination: Path, settings: Settings) -> Path | None:
    """The folder above ``destination`` that holds a copy of this prefix's outputs, if one does: a download inside
    it (``--download dl/rfm`` after ``--download dl``) would be read with that copy by any query of its folder,
    every row twice."""
    layout = settings.layout
    held = [layout.all_commits_prefix, *(layout.output_prefix(output) for output in DATA_OUTPUTS)]
    for folder in destination.absolute().parents:
        if any((folder / prefix).is_dir() for prefix in held):
            return folder
    return None


@dataclass(slots=True)
class CommittedOutputs:
    """What is in S3 now: the commit records, the data files they name, and data files no commit names."""

    commits: list[CommitRecord]
    files: dict[str, list[str]]  # output -> committed data keys
    bytes: Counter[str]  # output -> bytes of the committed files
    uncommitted: dict[str, list[str]]  # output -> data keys on S3 that no commit names
    commit_keys: list[str]
    # output -> committed data keys S3 does not have (deleted after their commit)
    missing: dict[str, list[str]]

    def present(self, output: str) -> list[str]:
        """The committed files of ``output`` that S3 has."""
        gone = set(self.missing[output])
        return [key for key in self.files[output] if key not in gone]

    def rows(self, output: str) -> int:
        """Rows of one output, as the commit records count them."""
        if output == "events":
            return sum(c.accepted - c.duplicates for c in self.commits)
        if output == "customer_aggregates":
            return sum(c.customers_changed for c in self.commits)
        return sum(c.rejected for c in self.commits)

    def all_committed_keys(self) -> list[str]:
        """The committed files S3 has, and the commit records."""
        return [key for output in DATA_OUTPUTS for key in self.present(output)] + self.commit_keys


def commit_records(s3: Any, settings: Settings, *, progress: bool | None = None) -> list[CommitRecord]:
    """Every commit record of the prefix (the manifest of committed data): those kept by the last reader and the
    ones made since (``clickstream.commit_ledger``), with progress shown: a bar on a terminal (or as ``progress``
    says), else a log line every 30 s."""
    with progress_of("reading commit records", "commit", bar=show_progress(progress)) as report:
        return read_all_commits(s3, settings, max_workers=MAX_WORKERS, progress=report)


def committed_outputs(s3: Any, settings: Settings) -> CommittedOutputs:
    """Read the commit chain and list the data prefixes: the committed state of the outputs, now."""
    layout = OutputLayout(settings.prefix)
    commits = commit_records(s3, settings)
    named = {output: [key for c in commits for key in c.files.get(output, [])] for output in DATA_OUTPUTS}
    listed = {
        output: {
            obj["Key"]: int(obj["Size"]) for obj in list_output(s3, settings, output, len(named[output]))
        }
        for output in DATA_OUTPUTS
    }
    # the keys of the records read above, not a fresh listing: a flush that commits meanwhile would add a commit
    # record whose data files were listed before they existed (a download would copy it without them)
    commit_keys = [layout.commit_key(c.shard_id, c.previous) for c in commits]
    sizes: Counter[str] = Counter()
    for output in DATA_OUTPUTS:
        sizes[output] = sum(listed[output].get(key, 0) for key in named[output])
    return CommittedOutputs(
        commits=commits,
        files=named,
        bytes=sizes,
        uncommitted={output: sorted(set(listed[output]) - set(named[output])) for output in DATA_OUTPUTS},
        commit_keys=commit_keys,
        missing={
            output: [key for key in named[output] if key not in listed[output]] for output in DATA_OUTPUTS
        },
    )


def read_committed_parquet(bucket: str, key: str, body: bytes, columns: list[str] | None = None) -> pa.Table:
    """A committed data file's bytes as a table. One written over, or damaged, is named (``unreadable_committed``):
    bad magic bytes or footer raise ``ArrowInvalid``, a page that does not decode ``OSError`` (no I/O happens in a
    read of bytes in memory); a shortage of memory is no damage and is raised as it is."""
    try:
        return pq.read_table(io.BytesIO(body), columns=columns)
    except (pa.ArrowInvalid, OSError) as error:
        raise unreadable_committed(bucket, key, error) from None


def unreadable_committed(bucket: str, key: str, error: Exception) -> FrontDoorError:
    """The error for a committed data file that is not readable Parquet: named, as a control record is (exit 2)."""
    return FrontDoorError(
        f"s3://{bucket}/{key}: a committed file that is not readable Parquet ({error})", USAGE
    )


def read_tables(
    s3: Any,
    bucket: str,
    keys: list[str],
    columns: list[str] | None = None,
    *,
    missing: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pa.Table | None:
    """The Parquet objects ``keys`` as one Arrow table (fetched in parallel, ``progress(done, total)`` as they
    arrive; None when there are none). An object S3 does not have raises ``FileNotFoundError`` naming it, or, given
    a ``missing`` list, is added to it and left out."""

    def fetch(key: str) -> pa.Table | None:
        try:
            with named_if_missing(bucket, key):
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except FileNotFoundError:
            if missing is None:
                raise
            missing.append(key)
            return None
        return read_committed_parquet(bucket, key, body, columns)

    if not keys:
        return None
    tables = [table for table in map_in_parallel(fetch, keys, MAX_WORKERS, progress) if table is not None]
    if missing is not None:
        missing.sort()
    return pa.concat_tables(tables, promote_options="default") if tables else None


def local_commit_records(root: Path, settings: Settings) -> list[CommitRecord]:
    """Every commit record of a ``summary --download`` copy (``<root>/<prefix>/_control/commits/``), in chain
    order: the manifest of the files it holds, read offline."""
    folder = root / settings.layout.all_commits_prefix
    if not folder.is_dir():
        raise FrontDoorError(
            f"{root} holds no commit records (no {folder}): give the folder `summary --download` wrote and the "
            "--prefix it was downloaded with",
            USAGE,
        )
    layout, records = settings.layout, []
    for path in sorted(folder.rglob("*.json")):
        key = path.relative_to(root).as_posix()
        if (why := not_a_commit(layout, key)) is None:
            record = commit_record_at(str(path), path.read_bytes())
            if (why := not_a_commit(layout, key, record)) is None:
                records.append(record)
                continue
        skip_foreign(str(path), why, layout)  # as on S3: a copy put beside the commit records is no commit
    return sorted(records, key=CommitRecord.chain_order)


def read_local_tables(root: Path, keys: list[str], columns: list[str] | None = None) -> pa.Table | None:
    """The Parquet files ``<root>/<key>`` as one Arrow table (None when there are none); a missing one is named, and
    a key that would leave ``root`` (a commit record changed by hand) is refused."""
    inside = root.resolve()
    for key in keys:
        if not (root / key).resolve().is_relative_to(inside):
            raise FrontDoorError(f"{root}: a commit record names {key!r}, which is not a key under it", USAGE)
    missing = [key for key in keys if not (root / key).is_file()]
    if missing:
        raise FrontDoorError(
            f"{root} lacks {count_of(len(missing), 'file')} its commit records name, e.g. {root / missing[0]}: copy "
            "the outputs again with `summary --download` (which names any that S3 itself has lost)",
            RUNTIME,
        )
    tables = [pq.read_table(root / key, columns=columns) for key in keys]
    return pa.concat_tables(tables, promote_options="default") if tables else None


#: Each customer's current row among customer_aggregates rows: the highest ``version`` (= events applied), the
#: latest ``as_of`` among equal versions. The one statement of the rule (summary, score, report, the printed hint).
CURRENT_ROW: Final = (
    "QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY version DESC, as_of DESC) = 1"
)


def current_rows_sql(files: str) -> str:
    """The statement reading each customer's current row from ``files`` (DuckDB's text of a file, a glob or a
    list of them)."""
    return (
        f"SELECT * FROM read_parquet({files}, hive_partitioning = false, union_by_name = true) {CURRENT_ROW}"
    )


def current_customer_rows(con: duckdb.DuckDBPyConnection, glob: str) -> duckdb.DuckDBPyRelation:
    """Each customer's current row: the highest ``version`` (= events applied) wins."""
    return con.sql(current_rows_sql(f"'{glob}'"))


def current_rows_of_table(con: duckdb.DuckDBPyConnection, table: pa.Table) -> duckdb.DuckDBPyRelation:
    """``current_customer_rows`` over an Arrow table of customer_aggregates rows already in memory."""
    con.register("customer_aggregates_rows", table)
    return con.sql(f"SELECT * FROM customer_aggregates_rows {CURRENT_ROW}")
