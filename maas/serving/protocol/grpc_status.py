"""gRPC's conventions, for both services: how an error becomes a status, the way TensorFlow Serving
and Triton map theirs (the same message as over REST, with the code that stands for its HTTP status),
and how invocation metadata is read."""

from __future__ import annotations

from typing import Any

import grpc

from maas.errors import MaasError

MAX_DETAILS = 1024  # status details travel in HTTP/2 trailers, whose size is bounded: a client's text is cut

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
_HTTP_BY_CODE = {code: status for status, code in _BY_HTTP_STATUS.items() if status not in (408,)}


def code_for(http_status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status (``INTERNAL`` for any other)."""
    return _BY_HTTP_STATUS.get(http_status, grpc.StatusCode.INTERNAL)


def http_status_of(code: grpc.StatusCode) -> int:
    """The HTTP status a gRPC answer stands for, for the metrics and the error-rate windows."""
    return 200 if code == grpc.StatusCode.OK else _HTTP_BY_CODE.get(code, 500)


def details(exc: MaasError) -> str:
    text = str(exc)
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 1] + "…"


def metadata_dict(pairs: Any) -> dict[str, str]:
    """Invocation metadata as a dict of lower-case names (binary ``-bin`` entries are left out)."""
    return {str(k).lower(): v for k, v in pairs if isinstance(v, str)}
