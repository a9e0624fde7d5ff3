"""Each customer's current ``customer_aggregates`` row: what `score` (and any model) takes as its input.

From a local folder, every Parquet file in it. From S3, the files named by the worker's commit records (files of
flushes that never committed are not data), read incrementally: each run keeps the current rows it computed, and
the commit chain positions they cover, under ``_control/current_rows/`` (``clickstream.kept_reads``), and the next
run reads only the commits made since and merges. The current row is a maximum (highest ``version``, then latest
``as_of``), so the merge gives the rows a read of the whole history gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from clickstream.console import progress_of
from clickstream.kept_reads import Found, KeptRead
from clickstream.outputs import MAX_WORKERS, current_rows_sql, download_keys, require_worker_prefix
from consumer.s3_sink import S3ParquetSink, read_commits_since
from runtime.logs import count_of
from runtime.settings import Settings
from schemas.control import CommitRecord
from schemas.layout import OutputLayout
from schemas.positions import Position
from scoring.inputs import REQUIRED_COLUMNS, InputError

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
            customers, files = count_of(self.table.num_rows, "customer"), count_of(self.files, "file")
            return f"{customers} from {files} ({self.bytes:,} bytes)"
        return (
            f"{count_of(self.table.num_rows, 'customer')}: the last run's {count_of(self.kept_rows, 'current row')}, "
            f"and {count_of(self.files - 1, 'file')} of the {count_of(self.commits or 0, 'commit')} since "
            f"({self.bytes:,} bytes)"
        )


_CURRENT_ROWS: Final = current_rows_sql("{files}")
#: Names the rule the kept rows were chosen by: rows kept by another version's rule are read again, not merged.
_RULE: Final = hashlib.sha256(_CURRENT_ROWS.encode()).hexdigest()[:16]
#: What names a run's input: each customer's id, version, as_of and the values the scores are computed from, in one
#: order whatever files they came in, as SHA-256 (a standard function, unlike DuckDB's hash(), whose values change
#: between DuckDB releases). The values are in it, not only the version: a replay after a fix in the core writes
#: rows of the same versions and as_of with other values, and must be scored again, not found "already committed".
#: The lines are hashed as they stream (one string of them all would grow past DuckDB's 4 GiB string limit).
FINGERPRINT_BATCH_ROWS: Final = 100_000
_FINGERPRINT_LINES: Final = """
SELECT customer_id || ' ' || version || ' ' || epoch_us(as_of) || ' ' || {values} AS line
FROM current_rows ORDER BY customer_id
"""


def _fingerprint(con: duckdb.DuckDBPyConnection, schema: pa.Schema) -> str:
    # the scored columns the rows have (rows lacking one are refused by the scoring, with their names), each as
    # text any language writes the same: a time in microseconds since the epoch, a float with 17 digits
    texts = []
    for name in REQUIRED_COLUMNS:
        if name == "customer_id" or name not in schema.names:
            continue
        kind = schema.field(name).type
        if pa.types.is_timestamp(kind):
            text = f"CAST(epoch_us({name}) AS VARCHAR)"
        elif pa.types.is_floating(kind):
            text = f"printf('%.17g', {name})"
        else:
            text = f"CAST({name} AS VARCHAR)"
        texts.append(f"coalesce({text}, 'null')")
    values = " || ' ' || ".join(texts) if texts else "''"
    digest, count = hashlib.sha256(), 0
    for batch in con.sql(_FINGERPRINT_LINES.format(values=values)).to_arrow_reader(FINGERPRINT_BATCH_ROWS):
        lines = batch.column(0).to_pylist()
        if lines:  # one line a customer, a newline between lines
            digest.update(("\n" if count else "").encode() + "\n".join(lines).encode())
            count += len(lines)
    return f"{count}:{digest.hexdigest()[:32]}"


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
    return CurrentRows(table, source, len(paths), total_bytes, _fingerprint(con, table.schema))


def read_local_rows(folder: Path, settings: Settings) -> CurrentRows:
    """Every customer_aggregates Parquet file under ``folder``: its ``<prefix>/customer_aggregates/`` or
    ``customer_aggregates/`` if it has one (a download of the bucket or of the prefix, whose events/ and errors/
    files are not customer rows), else every Parquet file in it (a folder of aggregates files)."""
    output = OutputLayout(settings.prefix).output_prefix("customer_aggregates")
    nested = [
        candidate for candidate in (folder / output, folder / "customer_aggregates") if candidate.is_dir()
    ]
    if not nested:
        _refuse_another_prefix(folder, settings.prefix)
    root = nested[0] if nested else folder
    paths = sorted(str(path) for path in root.rglob("*.parquet"))
    return _current_rows(paths, str(root), sum(Path(path).stat().st_size for path in paths))


def _refuse_another_prefix(folder: Path, prefix: str) -> None:
    """A folder that holds customer_aggregates/ elsewhere than at ``prefix`` is a download of another prefix (or of
    several): read whole, its events/, errors/ and clv/ files, and every prefix's customer rows, would be taken for
    one prefix's customers."""
    found = sorted(path.parent for path in folder.rglob("customer_aggregates") if path.is_dir())
    if found:
        prefixes = ", ".join(repr(path.relative_to(folder).as_posix()) for path in found)
        raise InputError(
            f"{folder} holds customer_aggregates/ under the prefix {prefixes}, not under {prefix!r}: give the "
            f"prefix it was downloaded with (--prefix / CLICKSTREAM_PREFIX), or the customer_aggregates/ folder "
            "itself as --input"
        )


# ------------------------------------------------------------------------------------------------------ from S3
def read_committed_rows(
    s3: Any,
    settings: Settings,
    workdir: Path,
    *,
    progress: bool = True,
    commits: list[CommitRecord] | None = None,
) -> CurrentRows:
    """The current rows of the prefix: the last run's kept rows merged with the customer_aggregates files of the
    commits made since (all of them when none are kept), downloaded in parallel into ``workdir``; then kept for the
    next run. A bucket and prefix no worker started on are refused (a mistyped --prefix), as by every reader.
    ``commits``: every commit record of the prefix, read already by the caller (``summary``): the commits since the
    kept rows are taken from them, not read again."""
    require_worker_prefix(s3, settings)
    kept_read = KeptRead(s3, settings, "current_rows", _RULE, "the kept current rows")
    kept_path = workdir / "kept-current-rows.parquet"

    def readable(body: bytes) -> None:
        kept_path.write_bytes(body)
        pq.read_table(kept_path)

    found = kept_read.find(readable)
    rows, records = _rows_since(s3, settings, workdir, found, kept_path, progress=progress, commits=commits)
    covers = kept_read.covered_after(found, records)
    if kept_read.worth_keeping(found, covers):

        def write(sink: S3ParquetSink, key: str) -> None:
            sink.put_parquet(key, rows.table, kind="customer_aggregates")

        kept_read.keep(write, ".parquet", covers, rows.table.num_rows, found)
    return rows


def _since(commits: list[CommitRecord], covered: dict[str, Position]) -> list[CommitRecord]:
    """The commits that continue from a shard's covered position or later (all of a shard not covered): what
    ``read_commits_since`` lists, taken from records read already."""
    return sorted(
        (
            record
            for record in commits
            if record.shard_id not in covered
            or (record.previous is not None and record.previous >= covered[record.shard_id])
        ),
        key=CommitRecord.chain_order,
    )


def _rows_since(
    s3: Any,
    settings: Settings,
    workdir: Path,
    found: Found,
    kept_path: Path,
    *,
    progress: bool,
    commits: list[CommitRecord] | None,
) -> tuple[CurrentRows, list[CommitRecord]]:
    """The kept rows merged with the files of the commits made since them (every commit without them), and those
    commits."""
    layout = OutputLayout(settings.prefix)
    if commits is not None:
        records = _since(commits, found.covered)
    else:
        with progress_of("reading commit records", "commit", bar=progress) as report:
            records = read_commits_since(
                s3, settings.bucket, layout, found.covered, max_workers=MAX_WORKERS, progress=report
            )
    keys = sorted({key for record in records for key in record.files.get("customer_aggregates", [])})
    with progress_of("reading customer_aggregates", "file", bar=progress) as report:
        download_keys(s3, settings.bucket, keys, workdir, progress=report)
    paths = [str(workdir / key) for key in keys]
    size = sum((workdir / key).stat().st_size for key in keys)
    if found.pointer is not None:
        paths.insert(0, str(kept_path))
        size += kept_path.stat().st_size
    source = f"s3://{settings.bucket}/{layout.output_prefix('customer_aggregates')}"
    try:
        rows = _current_rows(paths, source, size)
    except InputError as error:  # a file that does not read: named by its key, not by its deleted local copy
        local_names = str(error).replace(str(kept_path), "the kept rows")
        raise InputError(local_names.replace(f"{workdir}/", f"s3://{settings.bucket}/")) from None
    kept_rows = found.pointer.rows if found.pointer else None
    return replace(rows, kept_rows=kept_rows, commits=len(records)), records
