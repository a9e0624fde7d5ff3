"""The commit records of a prefix, for the readers that take all of them (``summary``, ``report``, ``replay``, a
``manifest`` of every file), read incrementally: each run keeps the records it read, and the commit-chain
positions they cover, under ``_control/commit_ledger/`` (``clickstream.kept_reads``), and the next run reads the
kept records and only the commits made since. A flush a minute on 4 shards is about 2 M commit records a year:
one GET each, where the kept ones are one file.

The kept file holds the records as their objects do (``CommitRecord.to_json``), one a line, gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Callable
from typing import Any, Final

from clickstream.kept_reads import Found, KeptRead
from consumer.s3_sink import S3ParquetSink, read_commits_since
from runtime.settings import Settings
from schemas.control import CONTROL_FORMAT, CommitRecord, ControlRecordError, ShardCover
from schemas.layout import OutputLayout
from schemas.positions import Position

#: How the kept file is made: a file of another format (or of another version's records) does not hold.
_RULE: Final = f"commit-records-jsonl-gzip-format-{CONTROL_FORMAT}"
_SUFFIX: Final = ".jsonl.gz"
#: Listings of the commits since, while one leaves a gap in a chain (a commit listed late is there the next time).
_LISTINGS: Final = 2

log = logging.getLogger(__name__)


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

    found = kept_read.find(readable)  # ``kept`` is filled only when the kept records hold
    # A commit can be missing from a read: one made while a listing went past its key (keys of a sequence number
    # sort by the text of their sub-sequence number). The commits after it show the gap: listed again, once.
    for _listing in range(_LISTINGS):
        since = read_commits_since(
            s3,
            settings.bucket,
            OutputLayout(settings.prefix),
            found.covered,
            max_workers=max_workers,
            progress=progress,
        )
        records = sorted([*kept, *since], key=CommitRecord.chain_order)
        # each shard's records from its chain's start up to the first gap, as far as the covers move from nothing
        covers = kept_read.covered_after(Found(), records) if since else {}
        beyond = _past_a_gap(records, covers) if since else []
        if not beyond:
            break
    else:
        after = beyond[0].previous
        log.warning(
            "the commit records of %s leave a gap in its chain before the commit that continues from %s, in %d "
            "listings (a commit record deleted?): the %s records past a gap are read as found, and not kept",
            beyond[0].shard_id,
            f"sequence number {after.sequence_number}" if after else "its start",
            _LISTINGS,
            f"{len(beyond):,}",
        )
    if since and kept_read.worth_keeping(found, covers):  # new commits chained (all of them, on a first read)
        # the chained records only: later reads list from the covered position on, so a gap kept is kept for good
        unchained = {id(record) for record in beyond}
        chained = [record for record in records if id(record) not in unchained]

        def write(sink: S3ParquetSink, key: str) -> None:
            sink.put_bytes(key, _dump(chained), "gzip")

        kept_read.keep(write, _SUFFIX, covers, len(chained), found)
    return records


def _past_a_gap(records: list[CommitRecord], covers: dict[str, ShardCover]) -> list[CommitRecord]:
    """The records beyond each shard's cover: after a gap in its chain."""
    return [
        record
        for record in records
        if record.shard_id not in covers or record.last.sort_key() > covers[record.shard_id].last.sort_key()
    ]


def _dump(records: list[CommitRecord]) -> bytes:
    """The records, one JSON a line, gzip-compressed, without the whole text in memory."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as lines:
        for record in records:
            lines.write(record.to_json() + b"\n")
    return buffer.getvalue()


def _load(body: bytes) -> list[CommitRecord]:
    """The kept records, line by line (raises ``ControlRecordError`` on a damaged file: it then does not hold).

    A chain holds one commit per (shard, position continued from): a record kept twice, by an earlier version that
    read a copy of a commit record under another name as one more commit, is taken once."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(body)) as lines:
            records = [CommitRecord.from_json(line) for line in lines if line.strip()]
    except (OSError, EOFError, zlib.error) as error:
        raise ControlRecordError(f"the kept commit records do not decompress ({error})") from None
    links: set[tuple[str, Position | None]] = set()
    unique = []
    for record in records:
        if (link := (record.shard_id, record.previous)) not in links:
            links.add(link)
            unique.append(record)
    return unique
