"""The commit records of a prefix, for the readers that take all of them (``summary``, ``report``, ``replay``, a
``manifest`` of every file), read incrementally: each run keeps the records it read, and the commit-chain
positions they cover, under ``_control/commit_ledger/`` (``clickstream.kept_reads``), and the next run reads the
kept records and only the commits made since. A flush a minute on 4 shards is about 2 M commit records a year:
one GET each, where the kept ones are one file.

The kept file holds the records as their objects do (``CommitRecord.to_json``), one a line, gzip-compressed.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any, Final

from clickstream.kept_reads import KeptRead
from consumer.s3_sink import S3ParquetSink, read_commits_since
from runtime.settings import Settings
from schemas.control import CONTROL_FORMAT, CommitRecord, ControlRecordError
from schemas.layout import OutputLayout

#: How the kept file is made: a file of another format (or of another version's records) does not hold.
_RULE: Final = f"commit-records-jsonl-gzip-format-{CONTROL_FORMAT}"
_SUFFIX: Final = ".jsonl.gz"


def read_all_commits(
    s3: Any, settings: Settings, *, max_workers: int, progress: Callable[[int, int], None] | None = None
) -> list[CommitRecord]:
    """Every commit record of the prefix, sorted by shard and position (as ``read_commit_records`` returns them):
    the kept ones and those made since (all of them when none are kept); then kept for the next run.
    ``progress(done, total)`` counts the commit records read one by one."""
    kept_read = KeptRead(s3, settings, "commit_ledger", _RULE, "the kept commit records")
    kept: list[CommitRecord] = []

    def readable(body: bytes) -> None:
        kept[:] = _load(body)

    found = kept_read.find(readable)
    if found.pointer is None:
        kept.clear()
    since = read_commits_since(
        s3,
        settings.bucket,
        OutputLayout(settings.prefix),
        found.covered,
        max_workers=max_workers,
        progress=progress,
    )
    records = sorted([*kept, *since], key=lambda record: (record.shard_id, record.first.sort_key()))
    if since:  # new commits (all of them, on a first read): worth keeping

        def write(sink: S3ParquetSink, key: str) -> None:
            sink.put_bytes(key, _dump(records), "gzip")

        kept_read.keep(write, _SUFFIX, kept_read.covered_after(found, since), len(records), found)
    return records


def _dump(records: list[CommitRecord]) -> bytes:
    return gzip.compress(b"".join(record.to_json() + b"\n" for record in records), compresslevel=6)


def _load(body: bytes) -> list[CommitRecord]:
    """The kept records (raises ``ControlRecordError`` on a damaged file: it then does not hold)."""
    try:
        text = gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as error:
        raise ControlRecordError(f"the kept commit records do not decompress ({error})") from None
    return [CommitRecord.from_json(line) for line in text.splitlines() if line]
