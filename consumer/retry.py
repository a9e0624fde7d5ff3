"""Classify failures as transient (the world is down: retry) or terminal (a bug or bad config: stop)."""

from __future__ import annotations

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from runtime.aws import TRANSIENT_CODES


def is_transient(error: BaseException) -> bool:
    """True for network failures, throttling and 5xx answers; False for everything else.

    Network failures include a connection dropped while an answer's body is read (botocore retries the request,
    not the read of its body); a TLS failure is not one (a certificate that does not verify stays so)."""
    if isinstance(
        error,
        EndpointConnectionError
        | ConnectionClosedError
        | ConnectTimeoutError
        | ReadTimeoutError
        | ResponseStreamingError
        | IncompleteReadError
        | ProxyConnectionError,
    ):
        return True
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_CODES or status >= 500
    from amazon_kclpy.checkpoint_error import CheckpointError

    if isinstance(error, CheckpointError):
        return error.value in ("ThrottlingException", "KinesisClientLibDependencyException")
    return isinstance(error, ConnectionError | TimeoutError)
