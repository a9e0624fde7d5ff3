"""A reader's result kept between its runs, with the commit-chain positions it covers, so that the next run reads
only the commits made since instead of the prefix's whole history (about 2 M commits a year for 4 shards).

Two readers keep theirs: ``score`` its current customer rows (``clickstream.current_rows``) and the readers of the
commit records (``summary``, ``report``, ``replay``, ``manifest``) the records themselves
(``clickstream.commit_ledger``). Each keeps one file under ``_control/<kind>/`` and a pointer naming it and, for
each shard, the last commit read (``schemas.control.KeptReadPointer``). Chains only grow at their tips, so the
kept result and the commits after the covered positions make what a read of everything makes.

The kept result is a cache: a pointer that does not parse, names a missing or damaged file, was kept by another
rule, or covers a commit that is gone or is another one at the same key (the prefix emptied and written again) is
ignored, and everything is read. Keeping is best effort: a reader that may not write (a role without PutObject)
reads everything, every run, and says so once in a warning.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from consumer.s3_sink import S3ParquetSink, lost_to_another_writer, read_commit
from runtime.aws import ACCESS_DENIED_CODES
from runtime.settings import Settings
from schemas.control import CommitRecord, ControlRecordError, KeptReadPointer, ShardCover
from schemas.layout import KeptKind, OutputLayout
from schemas.positions import Position

log = logging.getLogger(__name__)

#: A kept file no pointer names and older than this was left by a run that died before its pointer update (a
#: younger one may be a concurrent run's, about to be named).
LEFTOVER_SECONDS: Final = 3600


@dataclass(frozen=True, slots=True)
class Found:
    """The pointer as found: its ETag (what a replacement must match; None: there is none yet), the file it names,
    and the pointer when the kept result holds (the finder's ``check`` took the file's bytes)."""

    etag: str | None = None
    data_key: str | None = None
    pointer: KeptReadPointer | None = None

    @property
    def covered(self) -> dict[str, Position]:
        """Each shard's last commit position the kept result covers (none: everything is to be read)."""
        return {shard: cover.last for shard, cover in self.pointer.shards.items()} if self.pointer else {}


class KeptRead:
    """Finds and keeps one reader's result (``kind``) under one prefix. ``rule`` names how the result is made: a
    result kept by another rule (another version's) does not hold."""

    def __init__(self, s3: Any, settings: Settings, kind: KeptKind, rule: str, what: str) -> None:
        self.s3 = s3
        self.settings = settings
        self.layout = OutputLayout(settings.prefix)
        self.kind = kind
        self.rule = rule
        self.what = what  # for the warnings: "the kept current rows"

    def find(self, check: Callable[[bytes], None]) -> Found:
        """The pointer and, if it holds, the kept file's bytes, which ``check`` reads whole (raising on a damaged
        one): not when there is none, or when the pointer does not parse, may not be read, names a file that is
        missing, not this prefix's or damaged, or covers a commit that is gone or is another one."""
        bucket, pointer_key = self.settings.bucket, self.layout.kept_pointer_key(self.kind)
        try:
            answer = self.s3.get_object(Bucket=bucket, Key=pointer_key)
        except self.s3.exceptions.NoSuchKey:
            return Found()  # the first run
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ACCESS_DENIED_CODES:
                raise  # a missing bucket, an endpoint failing: the reader's own error says it, not a warning here
            log.warning("%s may not be read (%s): reading every commit", self.what, error)
            return Found()
        etag = str(answer["ETag"])
        try:
            pointer = KeptReadPointer.from_json(answer["Body"].read())
            self._check_cover(pointer)
            body = self.s3.get_object(Bucket=bucket, Key=pointer.data_key)["Body"].read()
            check(body)  # every byte: a damaged file is the cache's fault, found here, not the new commits'
        except (
            ClientError,
            BotoCoreError,
            ControlRecordError,
            pa.ArrowException,
            OSError,
            ValueError,
        ) as error:
            log.warning("%s do not hold (%s): reading every commit", self.what, error)
            return Found(etag)
        return Found(etag, pointer.data_key, pointer)

    def _check_cover(self, pointer: KeptReadPointer) -> None:
        """The pointer is this prefix's and this rule's, and each covered commit is still the one read: at its key,
        written by the same attempt (raises ``ControlRecordError`` if not)."""
        if pointer.rule != self.rule:
            raise ControlRecordError(f"kept by another rule ({pointer.rule}, this version's is {self.rule})")
        if not pointer.data_key.startswith(self.layout.kept_prefix(self.kind)):
            raise ControlRecordError(f"it names {pointer.data_key}, not a file of this prefix")
        bucket = self.settings.bucket
        for shard, cover in pointer.shards.items():
            if not cover.commit_key.startswith(self.layout.commits_prefix(shard)):
                raise ControlRecordError(f"{cover.commit_key} is not a commit of {shard} in this prefix")
            record = read_commit(self.s3, bucket, cover.commit_key)
            if record.attempt_id != cover.attempt_id or record.last != cover.last:
                raise ControlRecordError(
                    f"{cover.commit_key} is another commit than the one read (attempt {record.attempt_id}, not "
                    f"{cover.attempt_id}): the prefix was written again"
                )

    def covered_after(self, found: Found, records: Iterable[CommitRecord]) -> dict[str, ShardCover]:
        """Each shard's covered commit, moved on along ``records`` (sorted by shard and position, as the readers of
        the chain return them) as far as they continue the chain without a gap: a commit missing from a read (one
        listed late) must be read by the next run, which lists from the covered position on."""
        covers = dict(found.pointer.shards) if found.pointer else {}
        for record in records:
            cover = covers.get(record.shard_id)
            if record.previous != (cover.last if cover else None):
                continue  # a gap before it (or a record covered already): the cover stays
            covers[record.shard_id] = ShardCover(
                self.layout.commit_key(record.shard_id, record.previous), record.attempt_id, record.last
            )
        return covers

    def worth_keeping(self, found: Found, covers: dict[str, ShardCover]) -> bool:
        """Whether a result covering ``covers`` is worth keeping: none is kept yet, or it covers more than the one
        found. Commits past a gap in a chain (a commit record deleted) are read by every run and never covered: a
        result kept for them alone rewrote the whole file every run, with no new commit at all."""
        return found.pointer is None or covers != found.pointer.shards

    def keep(
        self,
        write: Callable[[S3ParquetSink, str], None],
        suffix: str,
        shards: dict[str, ShardCover],
        rows: int,
        found: Found,
    ) -> None:
        """Keep a result for the next run: ``write(sink, key)`` puts its file under a key of its own, then the
        pointer is replaced, only if it is still the one this run found (a concurrent run's is as good: this one's
        is dropped). Best effort: a failure is logged, never the run's. An empty object is put at the key first, so
        that a role that may not write there learns it before the file is made (for a long history, minutes and
        gigabytes)."""
        sink = S3ParquetSink(self.s3, self.settings)
        data_key = self.layout.kept_data_key(self.kind, uuid.uuid4().hex[:16], suffix)
        pointer = KeptReadPointer(data_key, shards, rows, datetime.now(UTC), self.rule)
        try:
            sink.put_bytes(data_key, b"", "bytes")
            write(sink, data_key)
            try:
                sink.put_bytes(
                    self.layout.kept_pointer_key(self.kind),
                    pointer.to_json(),
                    "json",
                    if_none_match=found.etag is None,
                    if_match=found.etag,
                )
            except (ClientError, BotoCoreError) as error:
                lost = lost_to_another_writer(error)
                # unless the write that lost is this run's own: its answer lost, and a retry finding it done
                if not (lost and self._names(data_key)):
                    sink.delete_keys([data_key])
                    if lost:
                        return  # another run kept its result first (or is keeping it now): its is as good
                    raise
        except (ClientError, BotoCoreError) as error:
            log.warning(
                "%s could not be kept for the next run (%s): it will read every commit", self.what, error
            )
            return
        try:
            self._delete_leftovers(sink, data_key, found.data_key, suffix)
        except (ClientError, BotoCoreError) as error:
            log.warning(
                "older %s could not be deleted (%s): left behind, no run reads them", self.what, error
            )

    def _names(self, data_key: str) -> bool:
        """Whether the pointer names ``data_key`` now."""
        try:
            body = self.s3.get_object(
                Bucket=self.settings.bucket, Key=self.layout.kept_pointer_key(self.kind)
            )
            return KeptReadPointer.from_json(body["Body"].read()).data_key == data_key
        except (ClientError, BotoCoreError, ControlRecordError):
            return False

    def _delete_leftovers(self, sink: S3ParquetSink, named: str, replaced: str | None, suffix: str) -> None:
        """The file the new pointer replaced, and files of runs that died between their file and their pointer."""
        now = datetime.now(UTC)
        listing = sink.s3.get_paginator("list_objects_v2").paginate(
            Bucket=sink.bucket, Prefix=self.layout.kept_prefix(self.kind)
        )
        leftovers = [
            obj["Key"]
            for page in listing
            for obj in page.get("Contents", [])
            if obj["Key"].endswith(suffix)
            and obj["Key"] != named
            and (obj["Key"] == replaced or (now - obj["LastModified"]).total_seconds() > LEFTOVER_SECONDS)
        ]
        sink.delete_keys(leftovers)
