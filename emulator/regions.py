"""A request signed for a region the emulator does not serve is refused as AWS refuses it, not with moto's 500.

moto serves the regions botocore knows (every partition's) and fails any other with a bare 500 (a ``KeyError`` in
its Kinesis and DynamoDB backends), which the SDKs retry and the CLI then reports as a service that is throttling or
unavailable; its S3, one backend per partition, took any region, where AWS refuses the signature. A
mistyped ``AWS_REGION`` (``us-est-1``, ``mars-1``) is a set-up error: the answer here is AWS's own for a credential
scoped to a region that does not exist, a 400 (``InvalidSignatureException``; S3's ``AuthorizationHeaderMalformed``)
naming the region. moto's ``MOTO_ALLOW_NONEXISTENT_REGION=true`` serves any region, and then nothing is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from emulator.faults import aws_error, credential_scope

#: Signing names whose botocore service name differs (CloudWatch signs as ``monitoring``).
_SERVICE_NAMES = {"monitoring": "cloudwatch"}


@functools.cache
def served_regions(signing_name: str) -> frozenset[str]:
    """The regions moto serves for a service: botocore's, in every partition (empty for a service botocore does
    not know, which is then left to moto)."""
    import botocore.session

    session = botocore.session.get_session()
    service = _SERVICE_NAMES.get(signing_name, signing_name)
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions(service, partition_name=partition)
    )


def unknown_region_error(region: str, service: str) -> tuple[int, str, str]:
    """Status, error code and message of AWS's answer to a request signed for ``region``, which does not exist."""
    if service == "s3":
        return (
            400,
            "AuthorizationHeaderMalformed",
            (
                f"The authorization header is malformed; the region '{region}' is wrong: the emulator serves the AWS "
                "regions botocore knows"
            ),
        )
    return (
        400,
        "InvalidSignatureException",
        (
            f"Credential should be scoped to a valid region, not '{region}': the emulator serves the AWS regions "
            "botocore knows"
        ),
    )


class RegionCheckingApp:
    """WSGI middleware: answers a request signed for a region moto does not serve, and passes every other on."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        from moto.settings import allow_unknown_region

        scope = credential_scope(environ)
        if scope is not None and not allow_unknown_region():
            region, service = scope
            known = served_regions(service)
            if known and region not in known:
                status, headers, body = aws_error(service, *unknown_region_error(region, service), environ)
                start_response(status, headers)
                return [body]
        return self.app(environ, start_response)
