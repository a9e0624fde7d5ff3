"""Make one flush durable on S3: intent, Parquet data files, then a *conditional* commit record. Thin adapter.

A flush attempt writes one file per output (events/, customer_aggregates/, errors/), named by the shard, the
records it applied and the attempt's id (``schemas.layout.FlushName``): a retry of the same attempt overwrites its
own files, and two writers never write the same key. Before any data file, an *intent* names the files; after the
commit record exists it is deleted. The commit record is created with ``If-None-Match: *`` at the key of the chain
position the flush continues from, so of two writers of one shard continuing from the same position exactly one
succeeds; the other gets ``CommitConflict`` (see the commit order in consumer/shard_processor.py).
"""

from __future__ import annotations

import bisect
import errno
import io
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from aggregators.customer_state import AppliedBatch
from consumer.retry import is_transient
from runtime.settings import Settings
from schemas.control import CommitRecord, ControlRecordError, FlushIntent, Freshness
from schemas.layout import DATA_OUTPUTS, FlushName, Output, OutputLayout
from schemas.positions import Position, chain_order

log = logging.getLogger(__name__)
_Result = TypeVar("_Result")

#: Columns written without a dictionary: values (nearly) all distinct, or repeated only a few times and next to each
#: other (a session's events), so a dictionary page costs write time and bytes and saves nothing; zstd finds the
#: repeats. Measured on 50k-event files: the ids about a quarter of the write time and an eighth of the size; the
#: microsecond times and order ids a further tenth of the time and 7% of the size of an events file; session ids and
#: money 6% of the time and 3% of the size; in a snapshot the random event-id halves half their write time.
_PLAIN_ENCODED: Final = frozenset(
    {
        "event_id",
        "id_high",
        "id_low",
        "session_id",
        "sequence_number",
        "raw_data",
        "order_id",
        "event_time",
        "first_event_at",
        "last_event_at",
        "first_purchase_at",
        "last_purchase_at",
        "revenue",
        "revenue_cents",
        "first_day_revenue_cents",
        "repeat_revenue",
        "monetary_value",
    }
)
#: Columns written without min/max statistics: random ids and free text, whose range in any file spans nearly all
#: values, so no reader (DuckDB, Spectrum, COPY) skips a row group by them; computing them took a tenth of an events
#: file's write time (measured on 50k-event files).
_NO_STATISTICS: Final = frozenset(
    {
        "event_id",
        "session_id",
        "page_url",
        "product_id",
        "search_query",
        "order_id",
        "error_detail",
        "raw_data",
    }
)
#: By the kind of table written (a data output, or a snapshot table), the columns whose values are all distinct in
#: each of its files: one row per customer.
_UNIQUE_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "customer_aggregates": ("customer_id",),
    "customers": ("customer_id",),
}


class CommitConflict(Exception):  # noqa: N818 - a outcome of the protocol, not a failure of the code
    """Another attempt already continued the shard's commit chain from this position: this attempt lost."""

    def __init__(
        self, shard_id: str, previous: Position | None, winner: CommitRecord, lost_files: Sequence[str] = ()
    ) -> None:
        super().__init__(
            f"shard {shard_id}: the commit after {previous.sequence_number if previous else 'the start'} was made "
            f"by attempt {winner.attempt_id} of worker {winner.worker_id} (records up to "
            f"{winner.last.sequence_number})"
        )
        self.shard_id = shard_id
        self.previous = previous
        #: The data files the losing attempt wrote (its intent may be gone already: the winner settled it).
        self.lost_files = list(lost_files)
        self.winner = winner


@dataclass(frozen=True, slots=True)
class FlushAttempt:
    """One try at committing a flush: where it continues the chain from and what names its files."""

    previous: Position | None
    name: FlushName

    @property
    def shard_id(self) -> str:
        return self.name.shard_id


#: S3's answer to a conditional PUT that raced another conditional PUT of the same key (409).
_CONDITION_RACED: Final = frozenset({"ConditionalRequestConflict", "409"})


def lost_to_another_writer(error: BaseException) -> bool:
    """A conditional write that another writer's write of the same key beat: its condition failed (412), or it
    raced a concurrent conditional write (409 ConditionalRequestConflict)."""
    if not isinstance(error, ClientError):
        return False
    return is_precondition_failed(error) or error.response.get("Error", {}).get("Code") in _CONDITION_RACED


def is_precondition_failed(error: BaseException) -> bool:
    """S3's answer to a conditional write whose condition does not hold (HTTP 412)."""
    if not isinstance(error, ClientError):
        return False
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code == "PreconditionFailed" or status == 412


class S3ParquetSink:
    """Writes the outputs of an applied batch and the control records, under ``settings.prefix``."""

    def __init__(self, s3_client: Any, settings: Settings) -> None:
        self.s3 = s3_client
        self.settings = settings
        self.bucket = settings.bucket
        self.layout = OutputLayout(settings.prefix)
        self.worker_id = settings.worker_id
        # intents that do not parse, said once each: settling reads every intent after every flush
        self._unreadable_intents: set[str] = set()
        self._encryption = encryption_arguments(settings)

    # ------------------------------------------------------------------ the commit order (steps 2-4)
    def planned_files(
        self, attempt: FlushAttempt, applied: AppliedBatch
    ) -> dict[Output, tuple[str, pa.Table]]:
        """The data objects this attempt writes: one per non-empty output, in the partition of its arrival day."""
        day = _arrival_day(applied)
        tables: dict[Output, pa.Table] = {
            "events": applied.events,
            "customer_aggregates": applied.customer_rows,
            "errors": applied.rejects,
        }
        return {
            output: (self.layout.data_key(output, day, attempt.name), table)
            for output, table in tables.items()
            if table.num_rows
        }

    def write(self, attempt: FlushAttempt, applied: AppliedBatch) -> CommitRecord:
        """Intent, data files, then the conditional commit record. Raises ``CommitConflict`` when another attempt
        holds the chain position, any other error when nothing was committed (the caller retries or stops)."""
        files = self.planned_files(attempt, applied)
        keys: dict[str, list[str]] = {output: [key] for output, (key, _) in files.items()}
        intent = FlushIntent(attempt.shard_id, attempt.name.attempt_id, attempt.previous, dict(keys), _now())
        self.put_bytes(self.layout.intent_key(attempt.shard_id, intent.attempt_id), intent.to_json(), "json")
        sizes = {key: self.put_parquet(key, table, kind=output) for output, (key, table) in files.items()}
        committed_at = _now()
        record = CommitRecord(
            shard_id=attempt.shard_id,
            attempt_id=attempt.name.attempt_id,
            worker_id=self.worker_id,
            previous=attempt.previous,
            first=attempt.name.first,
            last=attempt.name.last,
            records_in=applied.records_in,
            records_skipped=applied.records_skipped,
            accepted=applied.accepted,
            duplicates=applied.duplicates,
            rejected=applied.rejects.num_rows,
            customers_changed=applied.customer_rows.num_rows,
            files=dict(keys),
            file_bytes=sizes,
            bytes_written=sum(sizes.values()),
            committed_at=committed_at,
            oldest_event_at=_event_time(applied.events, pc.min),
            newest_event_at=_event_time(applied.events, pc.max),
            freshness=freshness_of(applied, committed_at),
            windows=self.settings.state_windows,
        )
        return self._commit(attempt, record)

    def _commit(self, attempt: FlushAttempt, record: CommitRecord) -> CommitRecord:
        key = self.layout.commit_key(attempt.shard_id, attempt.previous)
        try:
            self.put_bytes(key, record.to_json(), "json", if_none_match=True)
        except ClientError as error:
            if not is_precondition_failed(error):
                raise
            existing = self.get_commit(key)
            if existing is None:  # there, then gone: deleted by hand, or a store that is not read-after-write
                raise RuntimeError(
                    f"the commit record s3://{self.bucket}/{key} exists (the conditional create answered 412) and "
                    "then could not be read: the shard stops rather than guess; it restarts from its checkpoint and "
                    "restores from the chain on S3"
                ) from error
            if (foreign := not_a_commit(self.layout, key, existing)) is not None:
                # another commit's record put at this one's key by hand: no writer won it, and none can commit
                # past it until it is moved (said, not read as a rival's commit, which restarts the shard forever)
                raise ControlRecordError(
                    f"s3://{self.bucket}/{key}: {foreign} (a copy, or put there by hand): the shard cannot commit "
                    f"here; move it out of {self.layout.all_commits_prefix}"
                ) from None
            if existing.attempt_id == record.attempt_id:
                return existing  # our own earlier PUT succeeded although its answer was lost
            raise CommitConflict(attempt.shard_id, attempt.previous, existing, record.all_files) from None
        return record

    # ------------------------------------------------------------------ after the commit (step 7) and after losing
    def forget_intent(self, shard_id: str, attempt_id: str) -> None:
        """Step 7: the attempt committed; its intent has done its job."""
        self.s3.delete_object(Bucket=self.bucket, Key=self.layout.intent_key(shard_id, attempt_id))

    def discard_attempt(self, shard_id: str, attempt_id: str, written: Sequence[str] = ()) -> int:
        """Delete the files a losing (or abandoned) attempt wrote, then its intent. Returns files deleted.

        ``written``: the files the loser knows it wrote. The winner may have settled the intent (and deleted the
        files it named) while the loser was paused between its intent and its data, so data written after that is
        named only here."""
        key = self.layout.intent_key(shard_id, attempt_id)
        intent = self.get_intent(key)
        files = sorted({*(intent.all_files if intent is not None else []), *written})
        if not self.delete_files_kept_on_refusal(files, f"attempt {attempt_id}", shard_id):
            return 0
        if intent is not None:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        return len(files)

    def settle_intents(self, shard_id: str) -> int:
        """Delete the files of every attempt of ``shard_id`` that can no longer commit; returns files deleted.

        An attempt can no longer commit once the chain position it continues from holds another attempt's commit.
        An intent whose position holds no commit yet may belong to a live writer (a zombie still retrying) and is
        left alone: deleting its files could make its commit name missing data. The next commit settles it.
        """
        deleted = 0
        commits: dict[str, CommitRecord | None] = {}
        for key in self.list_keys(self.layout.intents_prefix(shard_id)):
            intent = self.get_intent(key)
            if intent is None:
                continue
            commit_key = self.layout.commit_key(shard_id, intent.previous)
            if commit_key not in commits:
                commits[commit_key] = self.get_commit(commit_key)
            winner = commits[commit_key]
            if winner is None:
                continue
            if winner.attempt_id != intent.attempt_id:
                files = intent.all_files
                if not self.delete_files_kept_on_refusal(files, f"attempt {intent.attempt_id}", shard_id):
                    continue  # the intent stays, naming them
                deleted += len(files)
                log.warning(
                    "deleted %d files of attempt %s, which lost the commit after %s to attempt %s",
                    len(files),
                    intent.attempt_id,
                    intent.previous.sequence_number if intent.previous else "the start",
                    winner.attempt_id,
                    extra={"shard_id": shard_id},
                )
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        return deleted

    # ------------------------------------------------------------------ S3 I/O (the one reader and writer)
    def put_parquet(self, key: str, table: pa.Table, *, kind: str) -> int:
        """Write ``table`` as one Parquet object; ``kind``: what it is (a data output or a snapshot table's name),
        whose ``_UNIQUE_COLUMNS`` are written without a dictionary as ``_PLAIN_ENCODED`` columns are. Required, so
        that no writer of a table with one row per customer leaves its customer ids on a dictionary."""
        buffer = io.BytesIO()
        plain = _PLAIN_ENCODED.union(_UNIQUE_COLUMNS.get(kind, ()))
        dictionary = [name for name in table.column_names if name not in plain]
        statistics = [name for name in table.column_names if name not in _NO_STATISTICS]
        pq.write_table(
            table,
            buffer,
            compression="zstd",
            coerce_timestamps="us",
            use_dictionary=dictionary,
            write_statistics=statistics,
        )
        body = buffer.getvalue()
        self.put_bytes(key, body, "parquet")
        return len(body)

    def put_bytes(
        self, key: str, body: bytes, kind: str, *, if_none_match: bool = False, if_match: str | None = None
    ) -> None:
        """PUT with server-side encryption; ``if_none_match`` creates only, ``if_match`` replaces only that ETag
        (S3 answers 412 PreconditionFailed otherwise)."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, **self._encryption}
        if kind == "json":
            arguments["ContentType"] = "application/json"
        if if_none_match:
            arguments["IfNoneMatch"] = "*"
        if if_match is not None:
            arguments["IfMatch"] = if_match
        self.s3.put_object(**arguments)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.NoSuchKey:
            return None
        body: bytes = response["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        """Whether S3 holds ``key`` (a HEAD: nothing is downloaded)."""
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                return False
            raise
        return True

    def get_parquet(self, key: str) -> pa.Table:
        body = self.get_bytes(key)
        if body is None:
            raise missing_object(self.bucket, key)
        return pq.read_table(io.BytesIO(body))

    def get_commit(self, key: str) -> CommitRecord | None:
        body = self.get_bytes(key)
        return None if body is None else commit_record_at(f"s3://{self.bucket}/{key}", body)

    def get_intent(self, key: str) -> FlushIntent | None:
        body = self.get_bytes(key)
        if body is None:
            return None
        try:
            return FlushIntent.from_json(body)
        except ControlRecordError as error:
            if key not in self._unreadable_intents:
                self._unreadable_intents.add(key)
                log.warning(
                    "ignoring s3://%s/%s, an intent that does not parse (%s): the files it names, if any, are never "
                    "deleted. A worker never writes one (an S3 PUT lands whole): delete it by hand once you know "
                    "how it got there",
                    self.bucket,
                    key,
                    error,
                )
            return None

    def list_keys(self, prefix: str, start_after: str | None = None) -> list[str]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after is not None:
            arguments["StartAfter"] = start_after
        return [
            obj["Key"]
            for page in self.s3.get_paginator("list_objects_v2").paginate(**arguments)
            for obj in page.get("Contents", [])
        ]

    def delete_files_kept_on_refusal(self, keys: Sequence[str], whose: str, shard_id: str) -> bool:
        """``delete_keys``, except that a refusal S3 will repeat (AccessDenied, say) is a warning and False instead
        of an error: leftovers are no reason to stop a shard (every later tidy would stop it again), and the caller
        keeps the record that names them. A transient failure is raised, to be retried."""
        try:
            self.delete_keys(keys)
        except ClientError as error:
            if is_transient(error):
                raise
            log.warning(
                "could not delete the %d files of %s (%s): kept, with the record naming them; they are not data "
                "(no commit names them), delete them once the cause is fixed",
                len(keys),
                whose,
                error,
                extra={"shard_id": shard_id},
            )
            return False
        return True

    def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete ``keys`` (1,000 a request); raises ``ClientError`` with the code S3 gave for a key it could not
        delete: DeleteObjects answers 200 and lists such keys in ``Errors``, and a caller that went on (deleting the
        intent that names them) would leave them for good."""
        batch = list(keys)
        for start in range(0, len(batch), 1000):
            chunk = batch[start : start + 1000]
            answer = self.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
            )
            failed = answer.get("Errors") or []
            if failed:
                first = failed[0]
                message = (
                    f"DeleteObjects could not delete {len(failed)} of {len(chunk)} keys, e.g. "
                    f"{first.get('Key')}: {first.get('Message', '')}"
                )
                code = str(first.get("Code", "InternalError"))
                raise ClientError({"Error": {"Code": code, "Message": message}}, "DeleteObjects")


def encryption_arguments(settings: Settings) -> dict[str, str]:
    """The server-side encryption arguments of every PutObject (the bucket policy refuses a put without them)."""
    arguments: dict[str, str] = {"ServerSideEncryption": settings.sse}
    if settings.sse == "aws:kms" and settings.sse_kms_key_id:
        arguments["SSEKMSKeyId"] = settings.sse_kms_key_id
    return arguments


def missing_object(bucket: str, key: str) -> FileNotFoundError:
    """The error for an object a record names that S3 does not have (the CLI shows it as one line naming it)."""
    return FileNotFoundError(
        errno.ENOENT, "no such object (deleted or moved after it was written?)", f"s3://{bucket}/{key}"
    )


def _is_missing(error: ClientError) -> bool:
    """Whether S3 answered that the object does not exist (GetObject's NoSuchKey, HeadObject's bare 404)."""
    return error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


@contextmanager
def named_if_missing(bucket: str, key: str) -> Iterator[None]:
    """S3's answer that ``key`` does not exist, raised as ``missing_object`` (any other error as it came)."""
    try:
        yield
    except ClientError as error:
        if _is_missing(error):
            raise missing_object(bucket, key) from None
        raise


def prefix_in_use(s3: Any, bucket: str, layout: OutputLayout) -> bool:
    """Whether a worker ever started on this prefix: its stream claim exists, or (written before claims were) a
    commit record. Readers use it to tell "nothing committed yet" from a mistyped bucket or prefix.

    A role may read only its own prefix: S3 answers 403 for the claim of another (a mistyped) one, whether or not
    it exists. That is no answer: the commit listing decides, and its own refusal is raised as S3 gave it."""
    try:
        s3.head_object(Bucket=bucket, Key=layout.prefix_owner_key)
        return True
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound", "403"):
            raise
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=layout.all_commits_prefix, MaxKeys=1)
    return bool(listing.get("KeyCount", 0))


def read_commit_records(
    s3: Any,
    bucket: str,
    layout: OutputLayout,
    shard_id: str | None = None,
    *,
    continuing_from: Position | None = None,
    max_workers: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[CommitRecord]:
    """Commit records (of one shard, or of all), sorted by shard and stream position: the manifest of committed
    data. With ``shard_id`` and ``continuing_from``, only the commits that continue from that position or later.

    Objects are fetched in parallel; a record that does not parse raises ``ControlRecordError`` (never skipped).
    ``progress(done, total)`` is called as records arrive (a long-lived prefix holds millions: the readers say they
    are alive).
    """
    if shard_id is None:
        keys = _commit_keys(s3, bucket, layout, layout.all_commits_prefix)
    else:
        keys = _shard_commit_keys(s3, bucket, layout, shard_id, continuing_from)
    return _fetch_commits(s3, bucket, layout, keys, max_workers=max_workers, progress=progress)


def read_commits_since(
    s3: Any,
    bucket: str,
    layout: OutputLayout,
    covered: Mapping[str, Position],
    *,
    max_workers: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[CommitRecord]:
    """The commit records of every shard made after ``covered`` (a shard's last position already read; a shard
    not in it, from its chain's start), sorted as ``read_commit_records`` sorts them. Each shard is listed from its
    position on, so the cost follows the commits since, not the prefix's history (chains only grow at their tip)."""
    listing = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=layout.all_commits_prefix, Delimiter="/"
    )
    shards = [
        common["Prefix"].removeprefix(layout.all_commits_prefix).rstrip("/")
        for page in listing
        for common in page.get("CommonPrefixes", [])
    ]
    keys = [
        key for shard in shards for key in _shard_commit_keys(s3, bucket, layout, shard, covered.get(shard))
    ]
    return _fetch_commits(s3, bucket, layout, keys, max_workers=max_workers, progress=progress)


@dataclass(frozen=True, slots=True)
class DayCommits:
    """The commit records of one arrival day, the data keys its partitions held when listed, and the shards with
    files of the day and no commit after its run (or none before their files): idle since, or behind (a flush begun
    on the day that has not committed yet writes into the day's partitions too). A shard behind since before the
    day, with no file of it yet, is not among them: nothing of the day names it."""

    records: list[CommitRecord]
    listed: dict[str, int]  # the day's data keys, with their sizes
    newest_of_the_day: frozenset[str] = frozenset()


def read_partition_commits(
    s3: Any,
    bucket: str,
    layout: OutputLayout,
    arrival_day: int,
    *,
    max_workers: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> DayCommits:
    """The commit records of one arrival day (sorted as ``read_commit_records`` sorts them), read without reading
    the prefix's history: ``committed_files`` of these, kept to the day, is that of every commit record, and a
    committed file of the day S3 no longer has is among them (a caller checks them against ``listed``) unless every
    file of its shard's day is gone, or its flush lies beyond a flush of another day (arrival times of a shard's
    records are not documented to rise with their positions).

    The day's partitions of every output are listed, then each of their shards' commit names (a listing of the
    shard's whole chain, 1,000 names a request; no reads). The commit each listed file's flush continued from is the
    greatest chain position below the file's first record (each flush continues from the end of the one before, so
    no other commit lies between). Every commit from the shard's first such commit to its last is read, and beyond
    them, one by one, each neighbour up to one that names files of another day only: a shard's flushes of one day
    are one run of its chain, so a flush of the day whose files are all gone is found too. A file of a writer that
    lost its commit leads to a commit that names another attempt's file: no data, as in a full read. Where a commit
    read names a file of the day the listing did not hold (a live flush wrote it after the listing), the day is
    listed again: a file is then missing only if S3 no longer has it.
    """
    listed = _day_files(s3, bucket, layout, arrival_day)
    firsts: dict[str, list[Position]] = {}
    for key in listed:
        if (name := layout.flush_name_of(key)) is not None:
            firsts.setdefault(name.shard_id, []).append(name.first)

    def another_day(record: CommitRecord) -> bool:
        """Whether a commit names files of other days only (one that names none, a flush of duplicates only, is
        passed over: it ends no run)."""
        days = {layout.arrival_day_of(key) for key in record.file_bytes}
        return bool(days) and arrival_day not in days

    # each shard's chain (commit keys in order) and the day's run in it
    runs: list[tuple[str, list[str], int, int]] = []
    newest_of_the_day: set[str] = set()
    for shard_id, positions in firsts.items():
        links = sorted(
            (chain_order(layout.commit_previous(key)), key)
            for key in _shard_commit_keys(s3, bucket, layout, shard_id, None)
        )
        orders = [order for order, _ in links]
        found = {bisect.bisect_left(orders, chain_order(first)) - 1 for first in positions} - {-1}
        if found:
            runs.append((shard_id, [key for _, key in links], min(found), max(found)))
        else:  # no commit of the shard comes before any of its files, so none names them: its first flush is
            newest_of_the_day.add(shard_id)  # under way (or lost its commit); either way, the day may grow
    keys = [key for _, chain, low, high in runs for key in chain[low : high + 1]]
    records = _fetch_commits(s3, bucket, layout, keys, max_workers=max_workers, progress=progress)
    for shard_id, chain, low, high in runs:
        for step, beyond in ((-1, low - 1), (1, high + 1)):
            at = beyond
            while 0 <= at < len(chain):
                neighbour = _read_commit_at(s3, bucket, layout, chain[at])
                if neighbour is not None:  # (a copy under another commit's name is passed over)
                    if another_day(neighbour):
                        break
                    records.append(neighbour)
                at += step
            if step == 1 and at >= len(chain):  # no commit after the day's run
                newest_of_the_day.add(shard_id)
    committed = {
        key for record in records for key in record.file_bytes if layout.arrival_day_of(key) == arrival_day
    }
    if not committed <= listed.keys():
        # a live flush of the day wrote its files after the listing and committed before its commit was read:
        # listed again now, a file is absent only if S3 no longer has it (not merely younger than the listing)
        listed |= _day_files(s3, bucket, layout, arrival_day)
    return DayCommits(sorted(records, key=CommitRecord.chain_order), listed, frozenset(newest_of_the_day))


def _day_files(s3: Any, bucket: str, layout: OutputLayout, arrival_day: int) -> dict[str, int]:
    """The keys of every output's partition of ``arrival_day``, with their sizes (every output's: a flush whose file
    of one output is gone still leads to its commit)."""
    listed: dict[str, int] = {}
    for output in DATA_OUTPUTS:
        listing = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=layout.partition_prefix(output, arrival_day)
        )
        for page in listing:
            listed.update((obj["Key"], int(obj["Size"])) for obj in page.get("Contents", []))
    return listed


def _commit_keys(
    s3: Any, bucket: str, layout: OutputLayout, prefix: str, start_after: str | None = None
) -> list[str]:
    """The commit keys listed under ``prefix``: ``.json`` objects named as a commit is (the position it continues
    from); another object there (a copy put by hand, ``start-backup.json``) is skipped, with a warning."""
    arguments: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if start_after is not None:
        arguments["StartAfter"] = start_after
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(**arguments):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".json"):
                continue
            if (why := not_a_commit(layout, obj["Key"])) is not None:
                skip_foreign(f"s3://{bucket}/{obj['Key']}", why, layout)
                continue
            keys.append(obj["Key"])
    return keys


def not_a_commit(layout: OutputLayout, key: str, record: CommitRecord | None = None) -> str | None:
    """Why the object at ``key`` under the commit records is no commit record: a name no commit has, or (given the
    record it holds) the record of another key, a copy or moved; None when it is one. No worker writes such an
    object: every reader of a chain skips it (``skip_foreign``), never reading it as one more commit (its files
    would count twice)."""
    try:
        layout.commit_previous(key)
    except ValueError:
        return "not a commit record's name"
    if record is not None and (own := layout.commit_key(record.shard_id, record.previous)) != key:
        return f"holds the commit record whose key is {own}"
    return None


def skip_foreign(where: str, why: str, layout: OutputLayout) -> None:
    """Says that an object ``not_a_commit`` is skipped, and what to do about it."""
    log.warning(
        "%s: %s (a copy, or put there by hand): skipped; move it out of %s",
        where,
        why,
        layout.all_commits_prefix,
    )


def _shard_commit_keys(
    s3: Any, bucket: str, layout: OutputLayout, shard_id: str, continuing_from: Position | None
) -> list[str]:
    """The shard's commit keys, or with ``continuing_from`` those continuing from that position or later."""
    if continuing_from is None:
        return _commit_keys(s3, bucket, layout, layout.commits_prefix(shard_id))
    keys = _commit_keys(
        s3,
        bucket,
        layout,
        layout.commits_prefix(shard_id),
        layout.commits_listing_start(shard_id, continuing_from),
    )
    return [
        key
        for key in keys
        if (previous := layout.commit_previous(key)) is not None and previous >= continuing_from
    ]


def _fetch_commits(
    s3: Any,
    bucket: str,
    layout: OutputLayout,
    keys: list[str],
    *,
    max_workers: int,
    progress: Callable[[int, int], None] | None,
) -> list[CommitRecord]:
    def fetch(key: str) -> CommitRecord | None:
        return _read_commit_at(s3, bucket, layout, key)

    fetched = map_in_parallel(fetch, keys, max_workers, progress)
    return sorted((record for record in fetched if record is not None), key=CommitRecord.chain_order)


def _read_commit_at(s3: Any, bucket: str, layout: OutputLayout, key: str) -> CommitRecord | None:
    """The commit record at ``key`` of a listing, or None (skipped, with a warning) where it is not its own key: a
    copy of a record under another commit's name was read as one more commit, its files counted twice."""
    record = read_commit(s3, bucket, key)
    if (why := not_a_commit(layout, key, record)) is not None:
        skip_foreign(f"s3://{bucket}/{key}", why, layout)
        return None
    return record


def map_in_parallel(
    work: Callable[[str], _Result],
    keys: list[str],
    max_workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[_Result]:
    """``work`` on each of ``keys`` in threads (S3 requests wait on the network), results in the keys' order;
    ``progress(done, total)`` as they arrive. The first error raised by ``work`` is raised here at once.

    The threads are daemons, left behind when the caller stops: a stop (Ctrl-C, SIGTERM) of a command reading over
    an endpoint that does not answer ends it at once, where a ``ThreadPoolExecutor``'s threads are joined at exit,
    each request in flight first running out its retries (minutes). Every ``work`` here reads, or copies to a local
    file through a temporary name, so what is left behind writes nothing."""
    if not keys:
        return []
    todo: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
    for item in enumerate(keys):
        todo.put(item)
    finished: queue.SimpleQueue[tuple[int, _Result | None, BaseException | None]] = queue.SimpleQueue()
    given_up = threading.Event()  # the caller raised or was stopped: take no more keys

    def take() -> None:
        while not given_up.is_set():
            try:
                index, key = todo.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put((index, work(key), None))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, which raises it
                finished.put((index, None, error))

    for number in range(min(max_workers, len(keys))):
        threading.Thread(target=take, name=f"s3-read-{number}", daemon=True).start()
    results: list[Any] = [None] * len(keys)
    try:
        for done in range(1, len(keys) + 1):
            index, result, error = finished.get()
            if error is not None:
                raise error
            results[index] = result
            if progress is not None:
                progress(done, len(keys))
    finally:
        given_up.set()
    return results


def read_commit(s3: Any, bucket: str, key: str) -> CommitRecord:
    """The commit record at ``key`` (a damaged one raises naming where it is)."""
    return commit_record_at(f"s3://{bucket}/{key}", s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def commit_record_at(where: str, body: bytes) -> CommitRecord:
    """The commit record ``body`` read from ``where``; a damaged one raises naming where it is."""
    try:
        return CommitRecord.from_json(body)
    except ControlRecordError as error:
        raise ControlRecordError(f"{where}: {error}") from None


def committed_files(records: Iterable[CommitRecord], output: str) -> list[str]:
    """The data files of ``output`` that commits name: what a strict reader loads (see README, reading outputs)."""
    if output not in DATA_OUTPUTS:
        raise ValueError(f"unknown output {output!r}; one of {', '.join(DATA_OUTPUTS)}")
    return [key for record in records for key in record.files.get(output, [])]


# ---------------------------------------------------------------------- freshness and partitions
def _now() -> datetime:
    return datetime.now(UTC)


def _arrivals(applied: AppliedBatch) -> pa.ChunkedArray:
    return pa.chunked_array(
        [
            *applied.events.column("approximate_arrival_at").chunks,
            *applied.rejects.column("approximate_arrival_at").chunks,
        ],
        type=applied.events.schema.field("approximate_arrival_at").type,
    )


def _arrival_day(applied: AppliedBatch) -> date:
    """The partition of a flush: the UTC day its earliest applied record arrived (one partition per flush)."""
    arrivals = _arrivals(applied)
    earliest = pc.min(arrivals).as_py() if len(arrivals) else None
    return (earliest or _now()).astimezone(UTC).date()


def _event_time(events: pa.Table, pick: Callable[[Any], Any]) -> datetime | None:
    if not events.num_rows:
        return None
    value: datetime = pick(events.column("event_time")).as_py()
    return value


def freshness_of(applied: AppliedBatch, committed_at: datetime) -> Freshness | None:
    """Seconds from each applied record's Kinesis arrival to this commit (p50/p99/max) and the newest event's age."""
    arrivals = _arrivals(applied)
    if not len(arrivals):
        return None
    committed_micros = int(committed_at.timestamp() * 1_000_000)
    delays = pc.divide(
        pc.subtract(pa.scalar(committed_micros, pa.int64()), arrivals.cast(pa.int64())), 1_000_000.0
    )
    p50, p99 = pc.quantile(delays, q=[0.5, 0.99], interpolation="higher").to_pylist()
    newest = _event_time(applied.events, pc.max)
    return Freshness(
        arrival_to_durable_p50=round(float(p50), 3),
        arrival_to_durable_p99=round(float(p99), 3),
        arrival_to_durable_max=round(float(pc.max(delays).as_py()), 3),
        newest_event_age=None if newest is None else round((committed_at - newest).total_seconds(), 3),
    )
