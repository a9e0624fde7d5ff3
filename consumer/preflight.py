"""Before the JVM starts: can this worker reach its stream, its bucket and its lease table; is the prefix its own?

Without this check a missing bucket shows up a minute later as a processor's terminal error buried in the KCL's
logs. Each finding is one sentence naming the setting to fix. Connection failures (endpoint down, TLS) are
raised as they are, for the command line to explain.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from botocore.exceptions import ClientError

from consumer.s3_sink import S3ParquetSink, lost_to_another_writer
from runtime.aws import ACCESS_DENIED_CODES, aws_client
from runtime.settings import Settings
from schemas.control import ControlRecordError, PrefixOwner
from schemas.positions import checkpoint_position

log = logging.getLogger(__name__)


#: Conditional creates of the prefix's claim that may lose to other workers' (409 while theirs is being written)
#: before preflight gives up, and the pause that grows between them.
_CLAIM_ATTEMPTS = 4
_CLAIM_PAUSE_SECONDS = 0.25


class PreflightError(RuntimeError):
    """A resource the worker needs is missing or not allowed: configuration, not a transient failure."""


class PrefixClaimRacedError(PreflightError):
    """The prefix's claim could not be made or read while other workers wrote theirs: no configuration to fix, a
    start to try again."""


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _where(settings: Settings) -> str:
    return f"{settings.aws_region}" + (
        f" at {settings.aws_endpoint_url}" if settings.aws_endpoint_url else ""
    )


def stream_missing(settings: Settings) -> str:
    """What to say when the stream is not there (also by ``produce``): where it was looked for, how to make it."""
    return (
        f"stream {settings.stream_name!r} does not exist in {_where(settings)} "
        "(CLICKSTREAM_STREAM_NAME / --stream; `clickstream setup` creates it)"
    )


def is_missing_stream(error: ClientError) -> bool:
    return _code(error) == "ResourceNotFoundException"


@dataclass(frozen=True, slots=True)
class StreamIdentity:
    """Which stream this is: its ARN, and when it was created (a stream created again under the same name has the
    same ARN, and shard ids that start over)."""

    arn: str
    created_at: datetime


def check_stream(kinesis: Any, settings: Settings) -> StreamIdentity:
    """The stream's identity, once it is known to exist, to be readable and active."""
    try:
        summary = kinesis.describe_stream_summary(StreamName=settings.stream_name)["StreamDescriptionSummary"]
    except ClientError as error:
        if is_missing_stream(error):
            raise PreflightError(stream_missing(settings)) from None
        if _code(error) in ACCESS_DENIED_CODES:
            raise PreflightError(
                f"not allowed to read stream {settings.stream_name!r}: {_code(error)} (check the task role)"
            ) from None
        raise
    if summary["StreamStatus"] not in ("ACTIVE", "UPDATING"):
        raise PreflightError(f"stream {settings.stream_name!r} is {summary['StreamStatus']}, not ACTIVE")
    return StreamIdentity(str(summary["StreamARN"]), summary["StreamCreationTimestamp"].astimezone(UTC))


def check_prefix_owner(s3: Any, settings: Settings, stream: StreamIdentity) -> None:
    """The prefix belongs to this stream: claimed by the first worker that starts on it, refused to any other.

    Shard ids repeat across streams, so a second stream writing the same prefix (a copied configuration) would
    find the first's commits at its chain positions, lose to them, restore the first's state and skip its own
    records as redeliveries, all silently."""
    sink = S3ParquetSink(s3, settings)
    key = sink.layout.prefix_owner_key
    body = sink.get_bytes(key)
    for attempt in range(1, _CLAIM_ATTEMPTS + 1):
        if body is not None:
            break
        claim = PrefixOwner(stream.arn, stream.created_at, datetime.now(UTC))
        try:
            sink.put_bytes(key, claim.to_json(), "json", if_none_match=True)
            log.info("claimed s3://%s/%s for stream %s", settings.bucket, key, stream.arn)
            return
        except ClientError as error:
            # 412: another worker claimed it first; 409: its claim is being written as ours was (workers starting
            # together), and may not be readable yet: read it, and try again while it is not there
            if not lost_to_another_writer(error):
                raise
        if attempt > 1:
            time.sleep(_CLAIM_PAUSE_SECONDS * attempt)
        body = sink.get_bytes(key)
    if body is None:
        raise PrefixClaimRacedError(
            f"could not claim s3://{settings.bucket}/{key} for stream {stream.arn}: {_CLAIM_ATTEMPTS} conditional "
            "creates lost to other writers whose claim was then not there; start the worker again"
        )
    try:
        owner = PrefixOwner.from_json(body)
    except ControlRecordError as error:
        raise PreflightError(
            f"s3://{settings.bucket}/{key} is not a readable claim of the prefix ({error}); if its stream is "
            f"{stream.arn}, delete it and start again"
        ) from None
    if owner.stream_arn != stream.arn:
        raise PreflightError(
            f"s3://{settings.bucket}/{sink.layout.control_prefix} holds the commit chains of stream "
            f"{owner.stream_arn}, not of {stream.arn} (claimed {owner.claimed_at:%Y-%m-%d %H:%M} UTC): shard ids "
            "repeat across streams, so two streams cannot share a prefix. Give this stream its own "
            "CLICKSTREAM_PREFIX / --prefix and its own CLICKSTREAM_APPLICATION_NAME (the KCL's lease table, "
            "which holds the other stream's checkpoints)"
        )
    if owner.stream_created_at != stream.created_at:
        raise PreflightError(
            f"s3://{settings.bucket}/{sink.layout.control_prefix} holds the commit chains of stream "
            f"{stream.arn} as created {owner.stream_created_at:%Y-%m-%d %H:%M:%S} UTC; the stream now was created "
            f"{stream.created_at:%Y-%m-%d %H:%M:%S} UTC, and its shard ids started over, so its chains would collide "
            "with the old ones. Give it a new CLICKSTREAM_PREFIX / --prefix and a new CLICKSTREAM_APPLICATION_NAME "
            "(the KCL's lease table holds the old stream's checkpoints)"
        )


#: An ETag no object has (an MD5 in hex, as S3's are, of no body ever written): ``If-Match`` with it must be refused.
_NO_OBJECTS_ETAG: Final = '"' + "0" * 32 + '"'


def check_conditional_writes(s3: Any, settings: Settings) -> None:
    """The endpoint refuses a create over an existing object (``If-None-Match: *``) and a replace of an object
    whose ETag is not the one named (``If-Match``), answering 412.

    The commit chain's fencing rests on the first: a store that ignores the header (some S3-compatible ones) lets
    two writers of one shard both commit a position, the later silently replacing the earlier. Snapshot pointers
    move forward only by the second: ignored, a paused writer's pointer would replace a newer one and name tables
    already swept away. Checked by writing the prefix's claim (``check_prefix_owner`` made sure it is there) again
    with its own bytes under each condition: refused where the header is honoured, rewritten unchanged where it is
    not."""
    sink = S3ParquetSink(s3, settings)
    key = sink.layout.prefix_owner_key
    body = sink.get_bytes(key)
    if body is None:  # deleted since it was claimed: nothing to create again without claiming it anew
        return
    conditions: dict[str, dict[str, Any]] = {
        "a create over an existing object (PutObject with If-None-Match: *": {"if_none_match": True},
        "a replace of an object whose ETag is not the one named (PutObject with If-Match": {
            "if_match": _NO_OBJECTS_ETAG
        },
    }
    for refusal, condition in conditions.items():
        try:
            sink.put_bytes(key, body, "json", **condition)
        except ClientError as error:
            # 412, or 409 when workers starting together race on the key: either way the condition was evaluated
            if lost_to_another_writer(error):
                continue
            if _code(error) not in ("NotImplemented", "501"):
                raise
        raise PreflightError(
            f"the S3 endpoint ({settings.aws_endpoint_url or 'AWS'}) does not refuse {refusal} on "
            f"s3://{settings.bucket}/{key} was not answered 412 PreconditionFailed): the worker fences a second "
            "writer of a shard with both conditional writes, If-None-Match on its commit chain and If-Match on its "
            "snapshot pointer (AWS S3 and LocalStack honour them); use a store that does"
        )


def check_bucket(s3: Any, settings: Settings) -> None:
    try:
        s3.head_bucket(Bucket=settings.bucket)
    except ClientError as error:
        if _code(error) in ("404", "NoSuchBucket", "NotFound"):
            raise PreflightError(
                f"bucket {settings.bucket!r} does not exist (CLICKSTREAM_BUCKET / --bucket; "
                "`clickstream setup` creates it)"
            ) from None
        if _code(error) in ACCESS_DENIED_CODES:
            raise PreflightError(
                f"not allowed to list bucket {settings.bucket!r}: {_code(error)} (check the task role)"
            ) from None
        raise


def check_lease_table(dynamodb: Any, s3: Any, settings: Settings) -> None:
    """The lease table may not exist yet (the KCL creates it on first start); access must not be denied; and
    checkpoints in it must be this prefix's.

    The lease table is named by the application name alone and keyed by shard id, which repeats across streams: a
    table that served another stream (the default application name with a second stream), or this stream before it
    was created again, holds checkpoints the KCL would start the shards after, skipping their records. The
    checkpoints of a prefix's worker come after its commits (data first, checkpoint last), so checkpoints beside a
    prefix without a single commit were not made for it."""
    table = settings.application_name
    try:
        status = dynamodb.describe_table(TableName=table)["Table"]["TableStatus"]
    except ClientError as error:
        if _code(error) == "ResourceNotFoundException":
            log.info("lease table %s does not exist yet; the KCL will create it", table)
            return
        if _code(error) in ACCESS_DENIED_CODES:
            raise PreflightError(
                f"not allowed to use the lease table {table!r}: {_code(error)} "
                "(check the task role; CLICKSTREAM_APPLICATION_NAME names the table)"
            ) from None
        raise
    # another worker's KCL creating it (a fleet starting together): nothing in it yet, and a scan is refused (an
    # UPDATING table, a capacity change or an index added, is read as an ACTIVE one)
    if status == "CREATING":
        log.info("lease table %s is %s; the KCL waits for it", table, status)
        return
    checkpoints = _sequence_checkpoints(dynamodb, table)
    if not checkpoints:
        return
    layout = settings.layout
    listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=layout.all_commits_prefix, MaxKeys=1)
    if listed.get("KeyCount", 0):
        return
    examples = ", ".join(f"{shard} at {checkpoint}" for shard, checkpoint in sorted(checkpoints.items())[:2])
    commits = f"s3://{settings.bucket}/{layout.all_commits_prefix}"
    where = f"the KCL lease table {table!r} holds checkpoints ({examples}) and {commits} no commit"
    if settings.adopt_lease_checkpoints:
        log.warning(
            "%s: the shards start after those checkpoints (CLICKSTREAM_ADOPT_LEASE_CHECKPOINTS)", where
        )
        return
    raise PreflightError(
        f"{where}: the table served another stream, or this stream before it was created again, and the KCL "
        "would start each shard after those positions, skipping its records. Give this worker a new "
        "CLICKSTREAM_APPLICATION_NAME (a new lease table, which starts at CLICKSTREAM_INITIAL_POSITION), or delete "
        "the table if its stream is gone; for a prefix changed on purpose on this very stream, set "
        "CLICKSTREAM_ADOPT_LEASE_CHECKPOINTS=true to start from them"
    )


def _sequence_checkpoints(dynamodb: Any, table: str) -> dict[str, str]:
    """Lease key -> checkpoint of every lease checkpointed at a record (not at TRIM_HORIZON, LATEST, AT_TIMESTAMP
    or SHARD_END, which a table gets without any record processed)."""
    found: dict[str, str] = {}
    pages = dynamodb.get_paginator("scan").paginate(
        TableName=table,
        ProjectionExpression="leaseKey, #checkpoint",
        ExpressionAttributeNames={"#checkpoint": "checkpoint"},
    )
    try:
        for page in pages:
            for item in page.get("Items", []):
                checkpoint = item.get("checkpoint", {}).get("S", "")
                if checkpoint_position(checkpoint) is not None:  # a record's, not TRIM_HORIZON or SHARD_END
                    found[item["leaseKey"]["S"]] = checkpoint
    except ClientError as error:
        if _code(error) == "ResourceNotFoundException":  # deleted, or not ACTIVE again, since described
            return {}
        raise
    return found


#: Each check's calls: tries in all, and seconds to wait for each answer (small requests: an endpoint that accepts
#: connections but does not answer fails the worker in about half a minute, not the SDK's three minutes).
_CHECK_ATTEMPTS = 3
_CHECK_READ_SECONDS = 10


def preflight(settings: Settings) -> None:
    """Raise ``PreflightError`` (or the connection error) within seconds if the worker cannot run."""

    def client(service: str) -> Any:
        return aws_client(service, settings, total_attempts=_CHECK_ATTEMPTS, read_timeout=_CHECK_READ_SECONDS)

    stream = check_stream(client("kinesis"), settings)
    s3 = client("s3")
    check_bucket(s3, settings)
    # before the prefix is claimed: a start it refuses (a mistyped prefix beside the table's checkpoints) must
    # leave no claim, by which the readers would take the prefix for a worker's
    check_lease_table(client("dynamodb"), s3, settings)
    check_prefix_owner(s3, settings, stream)
    check_conditional_writes(s3, settings)


def lease_owners(dynamodb: Any, table: str) -> dict[str, str | None]:
    """Lease key -> owner of every lease of a shard still to process in the KCL's lease table (small: one item per
    shard). A finished shard's lease (checkpoint SHARD_END, a parent after a reshard) waits, owned by nobody, for
    the KCL's cleanup: it is no work a worker could take, and counting it would call a standby idle."""
    owners: dict[str, str | None] = {}
    for page in dynamodb.get_paginator("scan").paginate(
        TableName=table,
        ProjectionExpression="leaseKey, leaseOwner, #checkpoint",
        ExpressionAttributeNames={"#checkpoint": "checkpoint"},
    ):
        for item in page.get("Items", []):
            if item.get("checkpoint", {}).get("S") == _SHARD_END:
                continue
            owners[item["leaseKey"]["S"]] = item.get("leaseOwner", {}).get("S")
    return owners


#: The KCL's checkpoint of a shard processed to its end.
_SHARD_END = "SHARD_END"
