"""boto3 clients built from the settings (endpoint override for emulators, adaptive retries)."""

from __future__ import annotations

from typing import Any

from runtime.settings import Settings

#: HTTP connections a client keeps: the parallel reads (16 threads in summary, score, report) each get one, where
#: botocore's 10 made urllib3 warn "Connection pool is full" and reconnect.
MAX_POOL_CONNECTIONS = 32
#: The error codes (and HTTP statuses) with which AWS refuses a call the caller's identity may not make.
ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden", "403"}
)
#: The error codes of a service that throttles its callers (Kinesis, DynamoDB, S3, KMS under SSE-KMS): retrying
#: later helps.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "KMSThrottlingException",
    }
)
#: The error codes of a call worth trying again (besides any 5xx): throttling, the service's own failures, and the
#: 409s S3 answers while another conditional write to the same key is in flight (AWS says to retry; the retry then
#: gets 412 if the other write won).
TRANSIENT_CODES = THROTTLING_CODES | frozenset(
    {
        # Kinesis's answer to too many control calls at once (ListShards, DescribeStreamSummary: what the worker
        # calls); its other meaning, a quota, is not the worker's (CreateStream in `setup`), so the command line
        # does not call it throttling
        "LimitExceededException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)


def aws_client(service: str, settings: Settings, total_attempts: int = 6, read_timeout: int = 60) -> Any:
    """A client for ``service`` honouring AWS_ENDPOINT_URL / region from the settings; botocore tries each call up
    to ``total_attempts`` times in all (1: no retries, for a caller that retries, counts and logs them itself), and
    waits ``read_timeout`` seconds for each answer.

    Retries are adaptive (a client-side rate limit after throttling); without retries, standard: the adaptive limit
    would also delay the caller's own retries by seconds it neither chose nor logs."""
    # imported by the first client made: commands that make none (``clickstream health``, every 30 seconds in the
    # container) do not load boto3
    import boto3
    from botocore.config import Config

    config = Config(
        retries={
            "total_max_attempts": total_attempts,
            "mode": "adaptive" if total_attempts > 1 else "standard",
        },
        connect_timeout=5,
        read_timeout=read_timeout,
        max_pool_connections=MAX_POOL_CONNECTIONS,
        s3={"addressing_style": "path"} if settings.aws_endpoint_url else None,
    )
    return boto3.client(  # type: ignore[call-overload]
        service,
        region_name=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        config=config,
    )


def list_all_shards(kinesis: Any, stream_name: str) -> list[dict[str, Any]]:
    """Every shard ListShards returns for the stream, open and closed, over all its pages (AWS answers at most 1,000
    shards a call; closed shards stay listed for the stream's retention period)."""
    response = kinesis.list_shards(StreamName=stream_name)
    shards = list(response["Shards"])
    while response.get("NextToken"):
        response = kinesis.list_shards(NextToken=response["NextToken"])
        shards += response["Shards"]
    return shards
