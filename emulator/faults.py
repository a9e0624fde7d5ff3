"""Fault injection for the embedded AWS endpoint: make S3, Kinesis or DynamoDB fail on purpose, for a while.

Use it to reproduce an incident locally (an S3 outage, Kinesis or DynamoDB throttling) against the real KCL worker
and watch what the worker does: retries, checkpoints, health, exit codes. The emulator serves a small control API
on its own port, under a path that no AWS request uses (``_clickstream`` is not a valid S3 bucket name, and the
JSON services only ever POST to ``/``):

``POST /_clickstream/faults`` with a JSON object
    ``{"service": "s3", "status": 503, "seconds": 20}`` and optionally ``"operations": ["PutObject"]`` (only these
    operations fail; default: every operation of the service), ``"code"`` (the AWS error code; default from
    ``service`` and ``status``, e.g. ``ServiceUnavailable`` for S3 503, ``ProvisionedThroughputExceededException``
    for Kinesis or DynamoDB 400), ``"message"``, ``"probability"`` (fail only this fraction of the matching
    requests, default 1), ``"times"`` (fail at most this many requests, then the fault is spent, as if expired:
    a retry count a test can rely on however slow the machine) and, for S3 only, ``"key_prefix"`` (only requests
    for object keys that start with it fail:
    ``"clickstream/_control/commits/"`` stalls a flush after its data files, before its commit). Answers 201 with
    the fault, including its ``id``.
``GET /_clickstream/faults``
    ``{"active": [...], "expired": [...]}``; every fault carries ``hits``, the number of requests it failed, and
    ``expires_in`` (seconds). Expired faults stay listed until cleared, so a test can check that a fault was hit.
``DELETE /_clickstream/faults``
    clears every fault (active and expired): ``{"cleared": N}``.

While a fault is active, a matching request never reaches moto; it gets an AWS-style error with the fault's
status: for S3 ``<Error><Code>ServiceUnavailable</Code><Message>...</Message></Error>`` (no body for HEAD), for
JSON services (``X-Amz-Target``: Kinesis, DynamoDB, ...) ``{"__type": "...", "message": "..."}`` with the
``x-amzn-ErrorType`` header, for other query-protocol services an ``<ErrorResponse>`` document. SDKs therefore
treat it exactly like the real error: retry it, back off, or give up. When several faults match, the newest wins.

The service is read from the SigV4 credential scope of the request (``Authorization: AWS4-HMAC-SHA256
Credential=AKID/20261125/us-east-1/s3/aws4_request, ...``, or ``X-Amz-Credential`` of a presigned URL); unsigned
requests never match. The operation is the ``X-Amz-Target`` suffix for JSON services (``GetRecords``,
``UpdateItem``), the ``Action`` query parameter for query services, and for S3 it is derived from the method, the
path and the sub-resource (``PutObject``, ``GetObject``, ``HeadObject``, ``ListObjectsV2``, ``DeleteObject``,
``CreateMultipartUpload``, ``UploadPart``, ...); names compare case-insensitively. A request whose operation
cannot be told matches only faults without ``operations``. Faults expire by time (monotonic clock) and live in the
emulator process: restarting the emulator clears them. The control API answers loopback clients only (the emulator
binds loopback unless ``--allow-remote``).

By hand, against ``clickstream emulator --port 4566``::

    curl -s -X POST localhost:4566/_clickstream/faults \\
         -d '{"service": "s3", "status": 503, "seconds": 30, "operations": ["PutObject"]}'
    curl -s localhost:4566/_clickstream/faults           # what is active, how often it was hit
    curl -s -X DELETE localhost:4566/_clickstream/faults  # back to normal

From Python (tests)::

    from emulator.faults import clear_faults, set_fault
    set_fault(endpoint, "kinesis", 400, 5, operations=["GetRecords"])  # ProvisionedThroughputExceededException
    ...
    clear_faults(endpoint)
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

CONTROL_PATH = "/_clickstream/faults"
MAX_FAULT_SECONDS = 24 * 3600.0

#: A SigV4 credential scope: access key / date / region / signing name of the service / aws4_request.
_CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_DYNAMODB_ERROR_NAMESPACE = "com.amazonaws.dynamodb.v20120810#"

#: Error codes used when a fault names none: (service, status) first, then status alone.
_SERVICE_CODES: dict[tuple[str, int], str] = {
    ("s3", 400): "InvalidRequest",
    ("s3", 403): "AccessDenied",
    ("s3", 404): "NoSuchKey",
    ("s3", 500): "InternalError",
    ("s3", 503): "ServiceUnavailable",
    ("kinesis", 400): "ProvisionedThroughputExceededException",
    ("dynamodb", 400): "ProvisionedThroughputExceededException",
}
_STATUS_CODES: dict[int, str] = {
    400: "ThrottlingException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "TooManyRequestsException",
    500: "InternalFailure",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

#: S3 sub-resources (query keys) that turn an operation on a bucket into Get/Put/Delete<name>.
_S3_BUCKET_SUBRESOURCES = {
    "accelerate": "BucketAccelerateConfiguration",
    "acl": "BucketAcl",
    "cors": "BucketCors",
    "encryption": "BucketEncryption",
    "lifecycle": "BucketLifecycleConfiguration",
    "location": "BucketLocation",
    "logging": "BucketLogging",
    "notification": "BucketNotificationConfiguration",
    "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "BucketOwnershipControls",
    "policy": "BucketPolicy",
    "publicAccessBlock": "PublicAccessBlock",
    "replication": "BucketReplication",
    "requestPayment": "BucketRequestPayment",
    "tagging": "BucketTagging",
    "versioning": "BucketVersioning",
    "website": "BucketWebsite",
}
_S3_OBJECT_SUBRESOURCES = {
    "acl": "ObjectAcl",
    "attributes": "ObjectAttributes",
    "legal-hold": "ObjectLegalHold",
    "retention": "ObjectRetention",
    "tagging": "ObjectTagging",
}


class FaultSpecError(ValueError):
    """A fault description that cannot be used; the message says which field and why."""


@dataclass(slots=True)
class Fault:
    """One injected failure: requests of ``service`` (and ``operations``) fail until ``expires_at``."""

    id: int
    service: str
    status: int
    code: str
    message: str
    operations: frozenset[str] | None  # lower-cased names; None = every operation
    key_prefix: str | None  # S3 only: object keys starting with it; None = any request
    seconds: float
    created_at: float
    expires_at: float
    probability: float = 1.0
    times: int | None = None  # fail at most this many requests (None: no limit)
    hits: int = 0

    def active(self, now: float) -> bool:
        return now < self.expires_at and (self.times is None or self.hits < self.times)

    def matches(self, service: str, operation: str | None, key: str | None = None) -> bool:
        if service != self.service:
            return False
        if self.key_prefix is not None and (key is None or not key.startswith(self.key_prefix)):
            return False
        if self.operations is None:
            return True
        return operation is not None and operation.lower() in self.operations

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "operations": sorted(self.operations) if self.operations is not None else None,
            "key_prefix": self.key_prefix,
            "seconds": self.seconds,
            "probability": self.probability,
            "times": self.times,
            "expires_in": round(max(0.0, self.expires_at - now), 3),
            "active": self.active(now),
            "hits": self.hits,
        }


def default_code(service: str, status: int) -> str:
    """The AWS error code a fault uses when it names none."""
    if (service, status) in _SERVICE_CODES:
        return _SERVICE_CODES[(service, status)]
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    return "InternalError" if status >= 500 else "BadRequest"


class FaultRegistry:
    """The active and expired faults of one emulator process (thread-safe)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, chance: Callable[[], float] = random.random
    ) -> None:
        self._clock = clock
        self._chance = chance
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(
        self,
        service: str,
        status: int,
        seconds: float,
        operations: Iterable[str] | None = None,
        *,
        code: str | None = None,
        message: str | None = None,
        probability: float = 1.0,
        key_prefix: str | None = None,
        times: int | None = None,
    ) -> Fault:
        """Register a fault; raises FaultSpecError for unusable values."""
        service = _require_str("service", service).strip().lower()
        if not service:
            raise FaultSpecError("service: must not be empty")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise FaultSpecError(f"status: must be an integer HTTP error status 400-599 (got {status!r})")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds <= MAX_FAULT_SECONDS
        ):
            raise FaultSpecError(
                f"seconds: must be a number > 0 and <= {MAX_FAULT_SECONDS:.0f} (got {seconds!r})"
            )
        if (
            isinstance(probability, bool)
            or not isinstance(probability, int | float)
            or not 0 < probability <= 1
        ):
            raise FaultSpecError(f"probability: must be a number > 0 and <= 1 (got {probability!r})")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise FaultSpecError(f"times: must be null or an integer >= 1 (got {times!r})")
        names: frozenset[str] | None = None
        if operations is not None:
            if isinstance(operations, str | bytes):
                raise FaultSpecError("operations: must be a list of operation names, not a string")
            listed = [_require_str("operations[]", name).strip() for name in operations]
            if not listed or not all(listed):
                raise FaultSpecError("operations: must be null or a non-empty list of operation names")
            names = frozenset(name.lower() for name in listed)
        if key_prefix is not None:
            key_prefix = _require_str("key_prefix", key_prefix)
            if not key_prefix:
                raise FaultSpecError("key_prefix: must be null or a non-empty object key prefix")
            if service != "s3":
                raise FaultSpecError(
                    f"key_prefix: only S3 requests name an object key (service is {service!r})"
                )
        code = _require_str("code", code).strip() if code is not None else default_code(service, status)
        if not code:
            raise FaultSpecError("code: must not be empty")
        now = self._clock()
        with self._lock:
            fault_id = next(self._ids)
            text = message if message is not None else f"injected fault {fault_id}: {service} {code}"
            fault = Fault(
                id=fault_id,
                service=service,
                status=status,
                code=code,
                message=_require_str("message", text),
                operations=names,
                key_prefix=key_prefix,
                seconds=float(seconds),
                created_at=now,
                expires_at=now + float(seconds),
                probability=float(probability),
                times=times,
            )
            self._faults.append(fault)
        return fault

    def match(self, service: str | None, operation: str | None, key: str | None = None) -> Fault | None:
        """The newest active fault for this request (its hit count goes up), or None: let it through.

        ``key`` is the S3 object key the request names (None: no object, or not S3)."""
        if service is None:
            return None
        now = self._clock()
        with self._lock:
            for fault in reversed(self._faults):
                if fault.active(now) and fault.matches(service, operation, key):
                    if fault.probability < 1 and self._chance() >= fault.probability:
                        return None
                    fault.hits += 1
                    return fault
        return None

    def clear(self) -> int:
        """Forget every fault; returns how many there were."""
        with self._lock:
            count = len(self._faults)
            self._faults.clear()
        return count

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """``{"active": [...], "expired": [...]}`` in creation order."""
        now = self._clock()
        with self._lock:
            faults = [fault.to_dict(now) for fault in self._faults]
        return {
            "active": [fault for fault in faults if fault["active"]],
            "expired": [fault for fault in faults if not fault["active"]],
        }


def _require_str(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise FaultSpecError(f"{field}: must be a string (got {value!r})")
    return value


# ---------------------------------------------------------------------------------------------- request parsing
def credential_scope(environ: WSGIEnvironment) -> tuple[str, str] | None:
    """The region and the signing name of the service (``s3``, ``kinesis``, ``dynamodb``, ...) a request was
    signed for, or None for an unsigned request."""
    match = _CREDENTIAL_RE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match is None and "X-Amz-Credential=" in environ.get("QUERY_STRING", ""):
        credential = parse_qs(environ["QUERY_STRING"]).get("X-Amz-Credential", [""])[0]
        match = _CREDENTIAL_RE.search(f"Credential={credential}")
    return (match.group(1), match.group(2).lower()) if match else None


def request_service(environ: WSGIEnvironment) -> str | None:
    """The signing name of the service a request is for (``s3``, ``kinesis``, ``dynamodb``, ...), or None."""
    scope = credential_scope(environ)
    return scope[1] if scope else None


def request_operation(environ: WSGIEnvironment, service: str | None) -> str | None:
    """The API operation of a request (``GetRecords``, ``PutObject``, ...), or None if it cannot be told."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return str(target).rsplit(".", 1)[-1] or None
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if service == "s3":
        return s3_operation(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO", "/"),
            query,
            host=environ.get("HTTP_HOST", ""),
            copy_source=bool(environ.get("HTTP_X_AMZ_COPY_SOURCE")),
        )
    if "Action" in query:
        return query["Action"][0] or None
    return None


def request_object_key(environ: WSGIEnvironment) -> str | None:
    """The object key an S3 request names (path or virtual-hosted style), or None for bucket-level requests."""
    _, key = _s3_bucket_and_key(environ.get("PATH_INFO", "/"), environ.get("HTTP_HOST", ""))
    return key or None


def _s3_bucket_and_key(path: str, host: str) -> tuple[str, str]:
    if _virtual_host_bucket(host) is not None:
        return "virtual-host", path.lstrip("/")
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def _virtual_host_bucket(host: str) -> str | None:
    """The bucket of a virtual-hosted-style S3 request (``bucket.localhost:4566``), None for path style."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else ""
    if not name or "." not in name:
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    for suffix in (".s3.localhost", ".localhost"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or None
    match = re.match(r"^(.+?)\.s3[.-]", name)
    return match.group(1) if match else None


def s3_operation(
    method: str, path: str, query: dict[str, list[str]], *, host: str = "", copy_source: bool = False
) -> str | None:
    """The S3 operation of a REST request, from method, path (path or virtual-hosted style) and sub-resource."""
    method = method.upper()
    bucket, key = _s3_bucket_and_key(path, host)
    if not bucket:
        return "ListBuckets" if method == "GET" else None
    if key:
        return _s3_object_operation(method, query, copy_source)
    return _s3_bucket_operation(method, query)


_S3_VERBS = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}
_S3_OBJECT_POSTS = (
    ("uploads", "CreateMultipartUpload"),
    ("uploadId", "CompleteMultipartUpload"),
    ("restore", "RestoreObject"),
    ("select", "SelectObjectContent"),
)


def _s3_bucket_operation(method: str, query: dict[str, list[str]]) -> str | None:
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST":
        return "DeleteObjects" if "delete" in query else None
    verb = _S3_VERBS.get(method)
    for name, suffix in _S3_BUCKET_SUBRESOURCES.items():
        if name in query and verb:
            return "GetBucketLocation" if suffix == "BucketLocation" else verb + suffix
    if method == "GET":
        listing = next((op for name, op in _S3_LISTINGS if name in query), "ListObjects")
        return "ListObjectsV2" if query.get("list-type") == ["2"] else listing
    return {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method)


_S3_LISTINGS = (("versions", "ListObjectVersions"), ("uploads", "ListMultipartUploads"))


def _s3_object_operation(method: str, query: dict[str, list[str]], copy_source: bool) -> str | None:
    if method == "HEAD":
        return "HeadObject"
    if method == "POST":
        return next((op for name, op in _S3_OBJECT_POSTS if name in query), None)
    if "uploadId" in query:
        part = "UploadPartCopy" if copy_source else "UploadPart"
        return {"PUT": part, "GET": "ListParts", "DELETE": "AbortMultipartUpload"}.get(method)
    verb = _S3_VERBS.get(method)
    subresource = next((suffix for name, suffix in _S3_OBJECT_SUBRESOURCES.items() if name in query), None)
    if subresource and verb:
        return verb + subresource
    if method == "PUT":
        return "CopyObject" if copy_source else "PutObject"
    return {"GET": "GetObject", "DELETE": "DeleteObject"}.get(method)


# ---------------------------------------------------------------------------------------------- responses
def error_response(
    fault: Fault, environ: WSGIEnvironment, operation: str | None
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers and body of the AWS-style error a fault answers with."""
    status, headers, body = aws_error(fault.service, fault.status, fault.code, fault.message, environ)
    headers.append(("x-clickstream-fault", f"{fault.id} {operation or '-'}"))
    return status, headers, body


def aws_error(
    service: str, status_code: int, code: str, message: str, environ: WSGIEnvironment
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers and body of an error as ``service`` answers it: an SDK parses it as the real one."""
    request_id = str(uuid.uuid4())
    status = f"{status_code} {_REASONS.get(status_code, 'Error')}"
    headers: list[tuple[str, str]] = []
    if service == "s3":
        resource = environ.get("PATH_INFO", "/")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{_xml(code)}</Code><Message>{_xml(message)}</Message>"
            f"<Resource>{_xml(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        headers += [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
        headers.append(("x-amz-id-2", request_id))
    elif environ.get("HTTP_X_AMZ_TARGET"):
        content_type = environ.get("CONTENT_TYPE", "")
        if not content_type.startswith("application/x-amz-json"):
            content_type = "application/x-amz-json-1.0"
        error_type = code
        if service == "dynamodb" and "#" not in error_type:
            error_type = _DYNAMODB_ERROR_NAMESPACE + error_type
        body = json.dumps({"__type": error_type, "message": message}).encode()
        headers += [("Content-Type", content_type), ("x-amzn-RequestId", request_id)]
        headers.append(("x-amzn-ErrorType", f"{code}:"))
    else:
        kind = "Receiver" if status_code >= 500 else "Sender"
        body = (
            f"<ErrorResponse><Error><Type>{kind}</Type><Code>{_xml(code)}</Code>"
            f"<Message>{_xml(message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers += [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    if environ.get("REQUEST_METHOD") == "HEAD":
        body = b""
    headers.append(("Content-Length", str(len(body))))
    return status, headers, body


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------- WSGI
class FaultInjectingApp:
    """WSGI middleware: serves the control API and answers faulted requests before they reach moto."""

    def __init__(self, app: WSGIApplication, registry: FaultRegistry | None = None) -> None:
        self.app = app
        self.registry = registry if registry is not None else FaultRegistry()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == CONTROL_PATH:
            return self._control(environ, start_response)
        service = request_service(environ)
        if service is not None:
            operation = request_operation(environ, service)
            key = request_object_key(environ) if service == "s3" else None
            fault = self.registry.match(service, operation, key)
            if fault is not None:
                status, headers, body = error_response(fault, environ, operation)
                start_response(status, headers)
                return [body]
        return self.app(environ, start_response)

    def _control(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        remote = environ.get("REMOTE_ADDR")
        if remote and not _is_loopback_address(remote):
            return _json(start_response, 403, {"error": "the fault API answers loopback clients only"})
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method == "GET":
            return _json(start_response, 200, self.registry.snapshot())
        if method == "DELETE":
            return _json(start_response, 200, {"cleared": self.registry.clear()})
        if method != "POST":
            return _json(start_response, 405, {"error": f"{method} not allowed: use GET, POST or DELETE"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            spec = json.loads(environ["wsgi.input"].read(length) or b"null")
            if not isinstance(spec, dict):
                raise FaultSpecError("body: must be a JSON object")
            unknown = set(spec) - {
                "service",
                "status",
                "seconds",
                "operations",
                "code",
                "message",
                "probability",
                "key_prefix",
                "times",
            }
            if unknown:
                raise FaultSpecError(f"unknown fields: {', '.join(sorted(unknown))}")
            for required in ("service", "status", "seconds"):
                if required not in spec:
                    raise FaultSpecError(f"{required}: required")
            fault = self.registry.add(
                spec["service"],
                spec["status"],
                spec["seconds"],
                spec.get("operations"),
                code=spec.get("code"),
                message=spec.get("message"),
                probability=spec.get("probability", 1.0),
                key_prefix=spec.get("key_prefix"),
                times=spec.get("times"),
            )
        except (ValueError, TypeError) as error:  # FaultSpecError, bad JSON, bad Content-Length
            return _json(start_response, 400, {"error": str(error)})
        return _json(start_response, 201, fault.to_dict(time.monotonic()))


def _is_loopback_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _json(start_response: StartResponse, status: int, document: object) -> list[bytes]:
    body = json.dumps(document).encode()
    reason = {200: "OK", 201: "Created", 403: "Forbidden", 405: "Method Not Allowed"}.get(
        status, "Bad Request"
    )
    start_response(
        f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


# ---------------------------------------------------------------------------------------------- client helpers
def _call(endpoint: str, method: str, document: object = None, timeout: float = 5.0) -> Any:
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(  # noqa: S310 - the emulator's own loopback URL
        endpoint.rstrip("/") + CONTROL_PATH,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def set_fault(
    endpoint: str,
    service: str,
    status: int,
    seconds: float,
    operations: Sequence[str] | None = None,
    *,
    code: str | None = None,
    message: str | None = None,
    probability: float | None = None,
    key_prefix: str | None = None,
    times: int | None = None,
) -> dict[str, Any]:
    """Make ``service`` (``operations`` of it) on the emulator at ``endpoint`` fail for ``seconds``.

    Returns the fault as the emulator registered it (``id``, ``code``, ...). An invalid fault raises
    ``urllib.error.HTTPError`` 400 whose body says why.
    """
    spec: dict[str, Any] = {"service": service, "status": status, "seconds": seconds}
    if operations is not None:
        spec["operations"] = list(operations)
    if code is not None:
        spec["code"] = code
    if message is not None:
        spec["message"] = message
    if probability is not None:
        spec["probability"] = probability
    if key_prefix is not None:
        spec["key_prefix"] = key_prefix
    if times is not None:
        spec["times"] = times
    result: dict[str, Any] = _call(endpoint, "POST", spec)
    return result


def list_faults(endpoint: str) -> dict[str, list[dict[str, Any]]]:
    """``{"active": [...], "expired": [...]}`` of the emulator at ``endpoint``."""
    result: dict[str, list[dict[str, Any]]] = _call(endpoint, "GET")
    return result


def fault_hits(endpoint: str, fault_id: int) -> int:
    """How many requests the fault ``fault_id`` (``set_fault(...)["id"]``) has failed so far, active or expired."""
    listed = list_faults(endpoint)
    return sum(f["hits"] for f in (*listed["active"], *listed["expired"]) if f["id"] == fault_id)


def clear_faults(endpoint: str) -> int:
    """Remove every fault from the emulator at ``endpoint``; returns how many there were."""
    return int(_call(endpoint, "DELETE")["cleared"])
