"""PutRecords sender: batches within API limits, re-sends only failed records, paces, never drops silently.

Why not `put_record` per event or a fire-and-forget loop: PutRecords succeeds as a call while rejecting single
records (``FailedRecordCount`` > 0, per-record ``ErrorCode``); ignoring that loses events under throttling.

Per batch (at most 500 records and 5 MiB of data plus partition keys; a single record at most 1 MiB):

1. Wait for the rate limit (optional ``max_records_per_second``, virtual-time pacing).
2. Call PutRecords with the pending records.
3. A transient whole-call failure (throttling, 5xx, connection errors) leaves every pending record pending;
   a terminal one (e.g. ResourceNotFoundException, access denied) raises `PutRecordsError` at once.
4. Otherwise the records whose result carries an ``ErrorCode`` stay pending, all others are delivered.
5. If records are pending: back off (exponential, equal jitter) and go to 1 with only those records, up to
   ``max_attempts`` calls per batch; then raise `PutRecordsError` with the undelivered records.

The next batch is read from the input only after the current one is fully delivered, so at most one batch
(≤ 500 records) is in flight and a failure tells exactly which records did not make it.

A batch is sent when full, at the end of the input, or when the input says ``SEND_NOW``: ``lingering`` wraps an
input that arrives slowly (a pipe fed as events happen) so that no record waits more than about a second for the
batch to fill.

Ordering: a record re-sent after a partial failure lands behind records of the same partition key that
succeeded in the same call, so retries can reorder events within a customer. That is acceptable here: the
aggregates are order independent and de-duplicate by ``event_id``.

Duplicates: a call that timed out or lost its connection may have been delivered, and its records are sent again
(at least once, never lost): the worker counts a valid event delivered twice once (within its de-duplication
window); a malformed record lands in ``errors/`` twice.

Give the producer a client without retries of its own (``aws_client(..., total_attempts=1)``, as `produce` does):
then every retry is this loop's, counted in the summary and logged, and ``max_attempts`` is the number of calls,
not that times botocore's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    NoAuthTokenError,
    NoCredentialsError,
    PartialCredentialsError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tqdm import tqdm

from producer.generator import InputFileError
from runtime.aws import TRANSIENT_CODES
from runtime.logs import count_of, verb_for

if TYPE_CHECKING:
    from typing import Unpack

    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import PutRecordsInputTypeDef, PutRecordsOutputTypeDef

logger = logging.getLogger(__name__)

MAX_RECORDS_PER_REQUEST: Final = 500
MAX_BYTES_PER_REQUEST: Final = 5 * 1024 * 1024
MAX_RECORD_BYTES: Final = 1024 * 1024
#: How much of a record that cannot be sent is quoted, so that it can be found in the input (its partition key is
#: an md5 of its bytes where it has no customer id).
_QUOTED_START: Final = 80


#: Credentials that cannot sign a request (SSO or role sessions that expired or failed to refresh).
_CREDENTIAL_ERRORS: Final = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
    NoAuthTokenError,
    SSOError,
)
#: Kinesis's limit on a partition key, in characters.
_MAX_PARTITION_KEY: Final = 256
_CUSTOMER_ID: Final = re.compile(rb'"customer_id"\s*:\s*"([A-Za-z0-9_.:@-]{1,64})"')


class SendNow:
    """In an input of records: send the records held so far now, without waiting for a full batch."""


SEND_NOW: Final = SendNow()
#: How long a record read from a slow input waits, at most, for more records to fill its batch (the KPL's
#: RecordMaxBufferedTime is 0.1 s; a second keeps batches large on a trickle while still looking live).
DEFAULT_LINGER_SECONDS: Final = 1.0
#: Records, and bytes, read ahead of the sender by ``lingering`` (the reader waits beyond either: a sender held up by
#: throttling or --rate keeps two requests' worth in memory, as records of up to 1 MiB, or far more, may come).
_READ_AHEAD: Final = 2 * MAX_RECORDS_PER_REQUEST
_READ_AHEAD_BYTES: Final = 2 * MAX_BYTES_PER_REQUEST


@dataclass(frozen=True, slots=True)
class _ReadFailed:
    error: BaseException


_END: Final = object()


def lingering(records: Iterable[bytes], seconds: float = DEFAULT_LINGER_SECONDS) -> Iterator[bytes | SendNow]:
    """``records``, read by a background thread, with ``SEND_NOW`` once a record has waited ``seconds`` and the
    input has nothing more yet.

    Why: a batch is otherwise sent when 500 records are read or the input ends, so a slow pipe (``tail -F ... |
    clickstream produce --input -``) would hold its records back for minutes. An input that keeps up fills its
    batches before the wait is over and is sent as before. An error reading the input is raised here, after the
    records read before it, as it would be raised by ``records`` itself.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=_READ_AHEAD)
    room = threading.Condition()
    queued_bytes = 0  # of the records read and not yet taken by the sender

    def read() -> None:
        nonlocal queued_bytes
        try:
            for data in records:
                with room:  # one record larger than the budget still goes, alone
                    while queued_bytes and queued_bytes + len(data) > _READ_AHEAD_BYTES:
                        room.wait()
                    queued_bytes += len(data)
                handoff.put(data)
        except BaseException as error:  # noqa: BLE001 - handed to the sender's thread, raised there
            handoff.put(_ReadFailed(error))
        else:
            handoff.put(_END)

    # a daemon: a stopped run does not wait for a pipe that stays open
    threading.Thread(target=read, name="produce-input", daemon=True).start()
    deadline: float | None = None  # when the oldest record not yet sent has waited long enough
    while True:
        try:
            item = handoff.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:  # waited long enough, and nothing more has come: send what is held
            deadline = None
            yield SEND_NOW
            continue
        if item is _END:
            return
        if isinstance(item, _ReadFailed):
            raise item.error
        data = cast(bytes, item)
        with room:
            queued_bytes -= len(data)
            room.notify()
        if deadline is None:
            deadline = time.monotonic() + seconds
        yield data


#: How long `require_stream` waits for a stream being created (AWS: seconds to a minute or two) to become ACTIVE.
STREAM_ACTIVE_WAIT_SECONDS: Final = 120.0


class StreamNotWritableError(RuntimeError):
    """The stream exists but takes no records: being deleted (``lasting``), or still being created after the wait."""

    def __init__(self, message: str, *, lasting: bool) -> None:
        super().__init__(message)
        self.lasting = lasting


def wait_until_writable(
    client: KinesisClient,
    stream_name: str,
    *,
    wait_seconds: float,
    poll_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Mapping[str, Any]:
    """The stream's summary once it takes records: ACTIVE, or UPDATING (a reshard or an encryption change, during
    which it is read and written as usual). A stream being created is waited for, up to ``wait_seconds``; one being
    deleted is refused at once. Both refusals are ``StreamNotWritableError``."""

    def summary_now() -> Mapping[str, Any]:
        return client.describe_stream_summary(StreamName=stream_name)["StreamDescriptionSummary"]

    summary = summary_now()
    deadline = clock() + wait_seconds
    if summary["StreamStatus"] == "CREATING":
        logger.info(
            "stream %s is CREATING: waiting until it is ACTIVE (up to %.0f s)", stream_name, wait_seconds
        )
    while summary["StreamStatus"] == "CREATING":
        if clock() >= deadline:
            raise StreamNotWritableError(
                f"stream {stream_name} is still CREATING after {wait_seconds:.0f} s: run again once it is ACTIVE",
                lasting=False,
            )
        sleep(poll_seconds)
        summary = summary_now()
    if summary["StreamStatus"] == "DELETING":
        raise StreamNotWritableError(
            f"stream {stream_name} is being deleted (DELETING): `clickstream setup` creates it anew once it is gone "
            "(a minute or so)",
            lasting=True,
        )
    return summary


def require_stream(
    client: KinesisClient,
    stream_name: str,
    *,
    wait_seconds: float = STREAM_ACTIVE_WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Ask for the stream before putting: an endpoint that is down, or a stream that does not exist, then fails
    at once with botocore's own error (which the CLI explains in one line), rather than after a put's backed-off
    attempts, where it would read like records lost. A stream being created (by Terraform, CloudFormation, a
    console a moment ago) is waited for, and one being deleted refused (``wait_until_writable``): PutRecords
    answered either with ResourceNotFoundException, which read as "no such stream" right after the stream was
    found."""
    wait_until_writable(
        client, stream_name, wait_seconds=wait_seconds, poll_seconds=2.0, clock=clock, sleep=sleep
    )


class PutRecordsClient(Protocol):
    """The one method of a boto3 Kinesis client that the producer uses (tests pass a fake)."""

    def put_records(self, **kwargs: Unpack[PutRecordsInputTypeDef]) -> PutRecordsOutputTypeDef:
        """Send one PutRecords request."""
        ...


@dataclass(frozen=True)
class PutSummary:
    """What a `KinesisProducer.put` run did.

    ``bytes_sent`` counts the data bytes of delivered records (not partition keys, not re-sends);
    ``retried_records`` counts re-sends (a record re-sent twice counts twice); ``requests`` counts every
    PutRecords call, failed ones included.
    """

    records_sent: int
    requests: int
    retried_records: int
    throttled_calls: int
    bytes_sent: int
    seconds: float
    rejected_too_large: int = 0
    record_errors: Mapping[str, int] = field(default_factory=dict)
    records_per_shard: Mapping[str, int] = field(default_factory=dict)

    @property
    def records_per_second(self) -> float:
        """Delivered records per wall-clock second of the run."""
        return self.records_sent / self.seconds if self.seconds > 0 else 0.0

    def describe(self, stream_name: str) -> str:
        """The run in one line (what `clickstream produce` prints last)."""
        return (
            f"put {count_of(self.records_sent, 'record')} to {stream_name} in {count_of(self.requests, 'request')} "
            f"({self.records_per_second:.0f}/s, {self.retried_records} re-sent, {self.throttled_calls} calls "
            f"throttled or failed as a whole, {self.rejected_too_large} too large)"
        )

    def too_large_note(self) -> str:
        """What an outcome adds when records were skipped as too large (empty when none were)."""
        if not self.rejected_too_large:
            return ""
        return (
            f" ({self.rejected_too_large:,} larger than 1 MiB skipped, each logged with its partition key and first "
            "bytes)"
        )


#: What every unfinished run may do next (said by each of its outcomes).
_SEND_AGAIN: Final = (
    "the same input can be sent again: the worker counts an event id delivered twice once (within "
    "CLICKSTREAM_DEDUPE_WINDOW_DAYS)"
)


class PutRecordsError(RuntimeError):
    """Records could not be delivered; ``undelivered`` holds them (partition key, data) for a re-drive.

    Input after the failing batch was not read from the iterator, so it is neither sent nor counted here.
    """

    def __init__(
        self,
        message: str,
        undelivered: list[tuple[str, bytes]],
        summary: PutSummary,
        *,
        maybe_arrived: bool = False,
        refused_with: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.undelivered = undelivered
        self.summary = summary
        self.maybe_arrived = maybe_arrived  # the call failed in a way that does not say whether they arrived
        self.refused_with = refused_with  # the per-record error codes that stopped the run (KMS key problems)

    @property
    def undelivered_count(self) -> int:
        """How many records of the failing batch were not delivered."""
        return len(self.undelivered)

    def outcome(self) -> str:
        """The whole run in one line: what was delivered, what was not, what was never sent, and what to do."""
        failing = "may or may not have arrived" if self.maybe_arrived else "not"
        return (
            f"{self}: {count_of(self.summary.records_sent, 'record')} delivered{self.summary.too_large_note()}, "
            f"{self.undelivered_count:,} of the failing batch {failing}, and the input after that batch not sent; "
            f"{_SEND_AGAIN}, though a malformed record is rejected again"
        )


class PutInputError(RuntimeError):
    """The input broke off (an unreadable file): what was read before it was sent, ``summary`` says how much."""

    def __init__(self, message: str, summary: PutSummary) -> None:
        super().__init__(message)
        self.summary = summary

    def outcome(self) -> str:
        return (
            f"{self}: the {count_of(self.summary.records_sent, 'record')} read before it "
            f"{verb_for(self.summary.records_sent, 'was', 'were')} delivered"
            f"{self.summary.too_large_note()}, the rest not; fix the input: {_SEND_AGAIN}"
        )


class PutInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``put``: what was delivered before it (``summary``) and how many records were in flight."""

    def __init__(self, summary: PutSummary, in_flight: int) -> None:
        super().__init__()
        self.summary = summary
        self.in_flight = in_flight

    def outcome(self) -> str:
        """The run in one line, as ``PutRecordsError.outcome`` says it for a failure."""
        in_flight = (
            f"; the {count_of(self.in_flight, 'record')} being sent may or may not have arrived"
            if self.in_flight
            else ""
        )
        return (
            f"interrupted: {count_of(self.summary.records_sent, 'record')} delivered{self.summary.too_large_note()}"
            f"{in_flight}, the rest of the input not sent; {_SEND_AGAIN}"
        )


def fits_put_records(data: bytes) -> bool:
    """Whether PutRecords takes this record: at most 1 MiB with its partition key (``put`` skips the others)."""
    return _put_size(data, partition_key_for(data)) <= MAX_RECORD_BYTES


def _put_size(data: bytes, key: str) -> int:
    return len(data) + len(key.encode())


def partition_key_for(data: bytes) -> str:
    """The record's customer id (its top-level ``customer_id``, decoded as the consumer reads it, which requires the
    key to equal it) when it has an ASCII one, so a customer's events share a shard; else md5 of the bytes.

    The usual record names ``customer_id`` once, plainly, and its value is read off the bytes. Any other (a nested
    object with a ``customer_id`` of its own, an escaped character in the id) is parsed: the first match in the
    bytes would key it by the wrong id, and the consumer would reject a valid event as partition_key_mismatch. The
    fallback is deterministic, so a re-sent bad record goes to the same shard as its first copy.
    """
    if data.count(b'"customer_id"') == 1:
        match = _CUSTOMER_ID.search(data)
        if match is not None:
            return match.group(1).decode("ascii")
    try:
        document = json.loads(data)
    # not JSON (UnicodeDecodeError is a ValueError): the consumer rejects it, and md5 keys it
    except (ValueError, RecursionError):
        document = None
    customer = document.get("customer_id") if isinstance(document, dict) else None
    if isinstance(customer, str) and customer.isascii() and 0 < len(customer) <= _MAX_PARTITION_KEY:
        return customer
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class _Stats:
    records_sent: int = 0
    requests: int = 0
    retried_records: int = 0
    throttled_calls: int = 0
    bytes_sent: int = 0
    rejected_too_large: int = 0
    record_errors: Counter[str] = field(default_factory=Counter)
    records_per_shard: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0  # records of the request being sent (unknown outcome if interrupted)
    reported_at: float = 0.0  # when progress was last logged (without a progress bar)


def _is_terminal_record_error(code: str) -> bool:
    """KMS key problems do not heal by retrying; throughput and internal failures do."""
    return code.startswith("KMS") and code != "KMSThrottlingException"


class KinesisProducer:
    """Sends byte records to one stream; one instance may be reused for several `put` calls."""

    def __init__(
        self,
        client: PutRecordsClient,
        stream_name: str,
        *,
        max_attempts: int = 10,
        backoff_base_seconds: float = 0.1,
        backoff_max_seconds: float = 10.0,
        max_records_per_second: float | None = None,
        max_records_per_request: int = MAX_RECORDS_PER_REQUEST,
        max_bytes_per_request: int = MAX_BYTES_PER_REQUEST,
        progress: bool = False,
        progress_log_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not 1 <= max_records_per_request <= MAX_RECORDS_PER_REQUEST:
            raise ValueError(f"max_records_per_request must be within 1..{MAX_RECORDS_PER_REQUEST}")
        if not MAX_RECORD_BYTES <= max_bytes_per_request <= MAX_BYTES_PER_REQUEST:
            raise ValueError(
                f"max_bytes_per_request must be within {MAX_RECORD_BYTES}..{MAX_BYTES_PER_REQUEST}"
            )
        if max_records_per_second is not None and max_records_per_second <= 0:
            raise ValueError("max_records_per_second must be positive")
        self._client = client
        self.stream_name = stream_name
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_records_per_second = max_records_per_second
        self.max_records_per_request = max_records_per_request
        if max_records_per_second is not None:
            # Keep one request within one second's budget so pacing stays smooth at low rates.
            self.max_records_per_request = min(max_records_per_request, max(1, int(max_records_per_second)))
        self.max_bytes_per_request = max_bytes_per_request
        self.progress = progress
        # without a bar (not a terminal): a log line this often
        self.progress_log_seconds = progress_log_seconds
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter or random.Random()  # noqa: S311 - jitter, not security
        self._next_send_at = float("-inf")

    def put(
        self, records: Iterable[bytes | SendNow], *, total: int | None = None, log_summary: bool = True
    ) -> PutSummary:
        """Send every record; returns the summary (logged unless ``log_summary`` is off: the CLI prints it) or
        raises `PutRecordsError` (never drops silently),
        `PutInputError` when the input file breaks off (what was read before is sent first), or `PutInterrupted` on
        Ctrl-C.

        Records larger than 1 MiB (data plus partition key) cannot be put at all: they are logged, counted as
        ``rejected_too_large`` and skipped, because one bad record must not stop the stream.
        """
        stats = _Stats()
        started = self._clock()
        stats.reported_at = started
        batch: list[tuple[str, bytes]] = []
        batch_bytes = 0
        bar = tqdm(
            total=total,
            unit="rec",
            unit_scale=True,
            file=sys.stderr,
            disable=not self.progress,
            desc=f"put {self.stream_name}",
            smoothing=0.1,
        )
        source = iter(records)
        waiting_for_first = True
        try:
            while True:
                try:
                    data = next(source)
                except StopIteration:
                    break
                except InputFileError as error:  # the input broke off: send what was read, then say so
                    if batch:
                        self._send(batch, stats, started, bar)
                        batch = []
                    raise PutInputError(str(error), self._summary(stats, started)) from error
                if waiting_for_first:  # the rate is the sending's: a generator plans its whole world first
                    waiting_for_first = False
                    started = stats.reported_at = self._clock()
                    bar.reset(total=total)
                if isinstance(data, SendNow):
                    if batch:
                        self._send(batch, stats, started, bar)
                        batch, batch_bytes = [], 0
                    continue
                key = partition_key_for(data)
                size = _put_size(data, key)
                if size > MAX_RECORD_BYTES:
                    stats.rejected_too_large += 1
                    logger.error(
                        "record of %d bytes (partition key %s) starting %r exceeds the 1 MiB PutRecords limit: "
                        "not sent",
                        size,
                        key,
                        data[:_QUOTED_START],
                    )
                    bar.update(1)
                    continue
                if (
                    len(batch) >= self.max_records_per_request
                    or batch_bytes + size > self.max_bytes_per_request
                ):
                    self._send(batch, stats, started, bar)
                    batch, batch_bytes = [], 0
                batch.append((key, data))
                batch_bytes += size
            if batch:
                self._send(batch, stats, started, bar)
                batch = []
        except KeyboardInterrupt:
            raise PutInterrupted(self._summary(stats, started), stats.in_flight) from None
        finally:
            bar.close()
        summary = self._summary(stats, started)
        if log_summary:
            logger.info(summary.describe(self.stream_name))
        return summary

    def _report_progress(self, stats: _Stats, started: float, total: float | None) -> None:
        """Off a terminal there is no bar: a line every ``progress_log_seconds`` says the run is alive."""
        now = self._clock()
        if self.progress or now - stats.reported_at < self.progress_log_seconds:
            return
        stats.reported_at = now
        of_total = f" of {int(total):,}" if total else ""
        logger.info(
            "put %s records%s to %s so far (%.0f/s)",
            f"{stats.records_sent:,}",
            of_total,
            self.stream_name,
            stats.records_sent / max(now - started, 1e-9),
        )

    def _summary(self, stats: _Stats, started: float) -> PutSummary:
        return PutSummary(
            records_sent=stats.records_sent,
            requests=stats.requests,
            retried_records=stats.retried_records,
            throttled_calls=stats.throttled_calls,
            bytes_sent=stats.bytes_sent,
            seconds=self._clock() - started,
            rejected_too_large=stats.rejected_too_large,
            record_errors=dict(stats.record_errors),
            records_per_shard=dict(sorted(stats.records_per_shard.items())),
        )

    def _pace(self, count: int) -> None:
        """Virtual-time pacing: each request books count/rate seconds; sleep until its slot starts."""
        if self.max_records_per_second is None:
            return
        now = self._clock()
        if self._next_send_at > now:
            self._sleep(self._next_send_at - now)
            now = self._next_send_at
        self._next_send_at = max(now, self._next_send_at) + count / self.max_records_per_second

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed (throttles need real waiting), half random."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        return float(ceiling / 2 + self._jitter.uniform(0, ceiling / 2))

    def _retry_or_raise(
        self,
        attempt: int,
        pending: list[tuple[str, bytes]],
        reason: str,
        stats: _Stats,
        started: float,
        *,
        maybe_arrived: bool = False,
    ) -> None:
        if attempt >= self.max_attempts:
            message = (
                f"{len(pending)} records not delivered to {self.stream_name} after {attempt} attempts "
                f"(last error: {reason})"
            )
            logger.error("%s; partition keys %s", message, sorted({key for key, _ in pending})[:20])
            raise PutRecordsError(
                message, pending, self._summary(stats, started), maybe_arrived=maybe_arrived
            )
        delay = self._backoff(attempt)
        logger.warning(
            "retrying %d records to %s in %.3fs (attempt %d of %d): %s",
            len(pending),
            self.stream_name,
            delay,
            attempt + 1,
            self.max_attempts,
            reason,
        )
        stats.retried_records += len(pending)
        self._sleep(delay)

    def _send(self, batch: list[tuple[str, bytes]], stats: _Stats, started: float, bar: tqdm[Any]) -> None:
        """Deliver one batch, re-sending only the records that failed, or raise `PutRecordsError`."""
        pending = batch
        attempt = 0
        # a call that timed out or lost its connection after the request went out may have delivered its records
        sent_unanswered = False
        while pending:
            attempt += 1
            self._pace(len(pending))
            stats.requests += 1
            stats.in_flight = len(pending)
            try:
                response = self._client.put_records(
                    StreamName=self.stream_name,
                    Records=[{"Data": data, "PartitionKey": key} for key, data in pending],
                )
            except ClientError as exc:
                # the whole call was refused: nothing of it arrived, unless an earlier call of it went unanswered
                stats.in_flight = len(pending) if sent_unanswered else 0
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code not in TRANSIENT_CODES and status < 500:
                    message = f"PutRecords to {self.stream_name} failed with {code or status}: not retryable"
                    raise PutRecordsError(
                        message, pending, self._summary(stats, started), maybe_arrived=sent_unanswered
                    ) from exc
                stats.throttled_calls += 1
                self._retry_or_raise(
                    attempt,
                    pending,
                    f"{code or status} on the whole call",
                    stats,
                    started,
                    maybe_arrived=sent_unanswered,
                )
                continue
            except (BotoConnectionError, HTTPClientError) as exc:
                stats.throttled_calls += 1
                sent_unanswered |= not isinstance(exc, (EndpointConnectionError, ConnectTimeoutError))
                self._retry_or_raise(
                    attempt,
                    pending,
                    f"{type(exc).__name__}: {exc}",
                    stats,
                    started,
                    maybe_arrived=sent_unanswered,
                )
                continue
            # credentials that expired or failed to refresh mid-run: raised while signing, before the request goes
            # out (other botocore errors may come after it, when what arrived is unknown: they are not caught here)
            except _CREDENTIAL_ERRORS as exc:
                stats.in_flight = 0
                message = f"PutRecords to {self.stream_name} failed: {type(exc).__name__}: {exc}"
                raise PutRecordsError(
                    message, pending, self._summary(stats, started), maybe_arrived=sent_unanswered
                ) from exc
            except Exception as exc:  # any other failure of the call: the run still says what it delivered
                stats.in_flight = 0
                message = f"PutRecords to {self.stream_name} failed: {type(exc).__name__}: {exc}"
                raise PutRecordsError(
                    message, pending, self._summary(stats, started), maybe_arrived=True
                ) from exc
            results = response["Records"]
            if len(results) != len(pending):
                stats.in_flight = 0
                message = f"PutRecords returned {len(results)} results for {len(pending)} records"
                # an answer the call's records cannot be matched to: any of them may have arrived
                raise PutRecordsError(message, pending, self._summary(stats, started), maybe_arrived=True)
            failed: list[tuple[str, bytes]] = []
            codes: Counter[str] = Counter()
            delivered: Counter[str] = Counter()  # by shard
            delivered_bytes = 0
            for record, result in zip(pending, results, strict=True):
                error_code = result.get("ErrorCode")
                if error_code:
                    failed.append(record)
                    codes[error_code] += 1
                else:
                    delivered[result.get("ShardId", "?")] += 1
                    delivered_bytes += len(record[1])
            # counted, then no longer in flight: a stop in between says "may have arrived" of some delivered
            # records, never "not delivered"; those refused this time may still have arrived by an earlier call
            stats.records_sent += len(pending) - len(failed)
            stats.bytes_sent += delivered_bytes
            stats.records_per_shard.update(delivered)
            stats.in_flight = len(failed) if sent_unanswered else 0
            bar.update(len(pending) - len(failed))
            self._report_progress(stats, started, bar.total)
            if not failed:
                return
            stats.record_errors.update(codes)
            if response.get("FailedRecordCount", len(failed)) != len(failed):
                logger.warning(
                    "FailedRecordCount %s disagrees with %d per-record errors; trusting per-record results",
                    response.get("FailedRecordCount"),
                    len(failed),
                )
            terminal = sorted(code for code in codes if _is_terminal_record_error(code))
            if terminal:
                message = f"{len(failed)} records rejected by {self.stream_name} with {', '.join(terminal)}"
                logger.error(message)
                # refused now, but an earlier call of theirs that went unanswered may have delivered them
                raise PutRecordsError(
                    message,
                    failed,
                    self._summary(stats, started),
                    maybe_arrived=sent_unanswered,
                    refused_with=tuple(terminal),
                )
            pending = failed
            reason = ", ".join(f"{code} x{count}" for code, count in sorted(codes.items()))
            self._retry_or_raise(attempt, pending, reason, stats, started, maybe_arrived=sent_unanswered)
