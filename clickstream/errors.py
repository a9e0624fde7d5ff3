"""One sentence instead of a traceback: what failed, and what to do, for every command of the CLI.

Exit codes: 2 for bad usage or configuration (a setting, a missing resource a setting names, credentials,
permissions), 1 for a runtime failure (endpoint down, an AWS call failing, a port taken), 130 for a command
stopped by Ctrl-C that said what it had done. ``--debug`` (or ``--log-level DEBUG``) prints the traceback as
well.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from botocore import exceptions as aws

from runtime.aws import ACCESS_DENIED_CODES, THROTTLING_CODES
from runtime.exit_codes import RUNTIME, USAGE
from runtime.settings import ConfigError, is_aws_host
from schemas.control import ControlRecordError

_NOT_FOUND = {
    "NoSuchBucket": "{bucket} does not exist (CLICKSTREAM_BUCKET / --bucket; `clickstream setup` creates it)",
    "ResourceNotFoundException": "{message} (check the name; `clickstream setup` creates the stream)",
}
#: Kinesis's answers when the stream's server-side encryption key cannot be used: a set-up problem, not an outage
#: (KMSThrottlingException is throttling, retried).
_KMS_KEY_UNUSABLE = frozenset(
    {
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
        "KMSOptInRequired",
    }
)
#: AWS's answers to credentials it does not accept (unknown, mistyped or expired keys, an ended SSO session).
_BAD_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "ExpiredToken",
        "ExpiredTokenException",
        "TokenRefreshRequired",
    }
)


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    exit_code: int


class FrontDoorError(Exception):
    """An error that already carries its one-line message and exit code (raised by commands)."""

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _endpoint(error: Exception) -> str:
    """The endpoint's scheme, host and port (botocore names the whole request URL, query and all)."""
    kwargs: dict[str, Any] = getattr(error, "kwargs", {}) or {}
    url = urlsplit(str(kwargs.get("endpoint_url") or ""))
    return f"{url.scheme}://{url.netloc}" if url.netloc else "the AWS endpoint"


def _unreachable(error: Exception) -> str:
    """AWS itself is reached over a network path; any other endpoint is a local stand-in that may not be up."""
    endpoint = _endpoint(error)
    if is_aws_host(endpoint):
        hint = "check the network path to AWS (VPC endpoints, NAT, proxy) and AWS_REGION"
    else:
        hint = "is it running? (AWS_ENDPOINT_URL; `clickstream emulator` starts a local one)"
    return f"cannot reach {endpoint}: {hint}"


def _bucket(details: Mapping[str, Any]) -> str:
    """'bucket <name>', or 'the bucket' where the answer does not name it (HeadBucket's 404 has no body)."""
    name = details.get("BucketName")
    return f"bucket {name}" if name else "the bucket"


def kms_key_unusable(code: str, message: str, operation: str) -> Failure | None:
    """A set-up error when ``code`` says the stream's KMS key cannot be used (a whole call's, or every record's)."""
    if code not in _KMS_KEY_UNUSABLE:
        return None
    return Failure(
        f"{operation} needs the stream's KMS key, which refused: {f'{code}: {message}' if message else code} "
        "(check that the key exists and is enabled, and that the role may use it: kms:GenerateDataKey to write, "
        "kms:Decrypt to read)",
        USAGE,
    )


#: What an answer whose body is a web page says instead of that page (a web server or proxy at the endpoint).
_NOT_AN_AWS_ANSWER: Final = (
    "a web page, not an AWS error (is AWS_ENDPOINT_URL an AWS endpoint or an emulator? is a proxy answering in its "
    "place?)"
)


def _error_message(details: Mapping[str, Any]) -> str:
    """The answer's message on one line; a web page in its place (HTML from whatever answered) is not quoted."""
    message = " ".join(str(details.get("Message") or "").split())
    return _NOT_AN_AWS_ANSWER if message[:1] == "<" else message


def _client_error(error: aws.ClientError) -> Failure:  # noqa: PLR0911 - one return per kind of failure
    details = error.response.get("Error", {})
    code = str(details.get("Code", "Unknown"))
    message = _error_message(details)
    operation = error.operation_name
    if code == "404" and operation in ("ListObjectsV2", "ListObjects"):
        # S3 names a missing bucket in its answer (NoSuchBucket); a bare 404 to a listing came from something else
        return Failure(
            f"the endpoint answered {operation} with 404 and no S3 error: the bucket does not exist, or "
            "AWS_ENDPOINT_URL is not an S3 endpoint (CLICKSTREAM_BUCKET / --bucket; `clickstream setup` creates it)",
            USAGE,
        )
    if code in ("NoSuchBucket", "404") and operation in ("HeadBucket", "ListObjectsV2", "ListObjects"):
        return Failure(_NOT_FOUND["NoSuchBucket"].format(bucket=_bucket(details)), USAGE)
    if code in _NOT_FOUND:
        return Failure(_NOT_FOUND[code].format(bucket=_bucket(details), message=message), USAGE)
    if (code == "AuthorizationHeaderMalformed" or code in _BAD_CREDENTIALS) and "region" in message.lower():
        # AWS's answer to a request signed for a region it does not take (a mistyped one, another bucket's)
        return Failure(f"AWS refused the region ({code} on {operation}): {message} (check AWS_REGION)", USAGE)
    if code == "400" and operation.startswith("Head"):
        # S3 answers a HEAD without a body, so without a reason: a region it does not take, or temporary
        # credentials it no longer takes, are the usual ones (botocore follows a bucket's region by itself)
        return Failure(
            f"AWS {operation} failed: 400 Bad Request, which S3 answers to a HEAD without a reason: most often a "
            "region it does not take (check AWS_REGION) or temporary credentials that expired (aws sso login, or "
            "renew AWS_SESSION_TOKEN)",
            USAGE,
        )
    if code in _BAD_CREDENTIALS:
        return Failure(
            f"AWS refused the credentials ({code} on {operation}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE, renew expired ones (aws sso login), and that AWS_REGION is the account's",
            USAGE,
        )
    if code in ACCESS_DENIED_CODES:
        return Failure(f"not allowed to call {operation}: {message or code} (check the IAM policy)", USAGE)
    if (unusable := kms_key_unusable(code, message, operation)) is not None:
        return unusable
    failed = f"AWS {operation} failed: {code}: {message}".rstrip(": ")
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if (status >= 500 and status != 501) or code in THROTTLING_CODES:  # 501: not implemented, no outage
        # retried already (the clients retry throttling and 5xx): the service, not the request
        return Failure(
            f"{failed} (still, after retries: the service is throttling or unavailable, on its side; run the "
            "command again once it answers)",
            RUNTIME,
        )
    return Failure(failed, RUNTIME)


def query_interrupted(error: BaseException) -> bool:
    """Whether ``error`` is DuckDB's word for a Ctrl-C or SIGTERM that came while a statement ran: it turns the
    KeyboardInterrupt the signal's handler raised into this RuntimeError."""
    return isinstance(error, RuntimeError) and str(error) == "Query interrupted"


def explain(error: BaseException) -> Failure:  # noqa: PLR0911 - one return per kind of failure
    """The one-line message and exit code for an exception that reached the command line."""
    if isinstance(error, FrontDoorError):
        return Failure(str(error), error.exit_code)
    if isinstance(error, ConfigError):
        return Failure(f"invalid configuration: {error}", USAGE)
    if isinstance(error, ControlRecordError):  # its message names the object
        return Failure(
            f"unreadable control record {error} (written by another version, or changed by hand?)", USAGE
        )
    if isinstance(error, aws.NoCredentialsError | aws.PartialCredentialsError):
        return Failure(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run "
            "with a role (any dummy pair works against the embedded emulator)",
            USAGE,
        )
    if isinstance(error, aws.NoRegionError):
        return Failure("no AWS region: set AWS_REGION", USAGE)
    if isinstance(error, aws.ProfileNotFound):
        return Failure(f"{error} (AWS_PROFILE; the profiles are in ~/.aws/config or AWS_CONFIG_FILE)", USAGE)
    if isinstance(error, aws.InvalidRegionError):
        return Failure(f"{error} (AWS_REGION, e.g. eu-west-1)", USAGE)
    if isinstance(error, aws.SSLError):
        return Failure(
            f"TLS handshake with {_endpoint(error)} failed: if it serves plain HTTP (the emulator, LocalStack), "
            "use an http:// URL in AWS_ENDPOINT_URL",
            RUNTIME,
        )
    if isinstance(error, aws.EndpointConnectionError | aws.ConnectTimeoutError):
        return Failure(_unreachable(error), RUNTIME)
    if isinstance(error, aws.ReadTimeoutError | aws.ConnectionClosedError):
        return Failure(f"{_endpoint(error)} stopped answering: {error}", RUNTIME)
    if isinstance(error, aws.ClientError):
        return _client_error(error)
    if isinstance(error, aws.ParamValidationError):
        return Failure(f"invalid AWS request: {error}", USAGE)
    if isinstance(error, aws.BotoCoreError):
        return Failure(f"AWS client error: {error}", RUNTIME)
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return Failure(f"address already in use: {error.strerror} (pick another --port)", RUNTIME)
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return Failure(f"{error.strerror or error}{where}", RUNTIME)
    return Failure(
        f"unexpected {type(error).__name__}: {error} (run with --debug for the traceback)", RUNTIME
    )
