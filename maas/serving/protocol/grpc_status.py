"""gRPC's conventions, for both services: how an error becomes a status, the way TensorFlow Serving
and Triton map theirs (the same message as over REST, with the code that stands for its HTTP status),
and how invocation metadata is read."""

from __future__ import annotations

from typing import Any

import grpc

from maas.errors import MaasError

RETRY_AFTER = "retry-after"  # trailing metadata: as REST's header, when to come back (seconds)
MODEL_VERSION = "model-version"  # trailing metadata: the version that answered a prediction
SERVER_ANSWERED = "request_id"  # trailing metadata Serve's replica puts on every answer it sends
MAX_DETAILS = 1024  # bytes: status details travel in HTTP/2 trailers, whose size is bounded: a client's text is cut

_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for(http_status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status (``INTERNAL`` for any other)."""
    return _BY_HTTP_STATUS.get(http_status, grpc.StatusCode.INTERNAL)


def details(exc: MaasError) -> str:
    """The error's message, cut to ``MAX_DETAILS`` bytes of UTF-8 (gRPC percent-encodes each non-ASCII
    byte in three: a cut by characters could still overflow the trailers)."""
    raw = str(exc).encode()
    if len(raw) <= MAX_DETAILS:
        return raw.decode()
    return raw[: MAX_DETAILS - 3].decode(errors="ignore") + "…"


def retry_after(exc: MaasError) -> list[tuple[str, str]]:
    """The trailing metadata of an error that clears by itself (a full replica, a storage outage): its
    ``Retry-After``, which clients may retry by, as they do over REST."""
    seconds = exc.http_headers.get("Retry-After")
    return [] if seconds is None else [(RETRY_AFTER, seconds)]


def metadata_dict(pairs: Any) -> dict[str, str]:
    """Invocation metadata as a dict of lower-case names (binary ``-bin`` entries are left out)."""
    return {str(k).lower(): v for k, v in pairs if isinstance(v, str)}
