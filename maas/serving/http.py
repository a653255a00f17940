"""HTTP over the data plane: a request's path, headers and body in, a status, headers and body out.

It finds the route (404, or 405 with ``Allow``), reads the body within its limits (413), its deadline
(408) and the replica's memory budget for bodies (503), checks the API key (401), the path's
parameters (400) and the key's scope (403), decodes and encodes through the protocol layer (bodies
past ``offload_bytes`` in the replica's codec process, never on its event loop), and turns every
error into JSON in one place. No Ray and no HTTP server here: the Serve deployment hands requests
in (:mod:`maas.serving.app`), and unit tests do the same with plain objects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

import maas
from maas.auth import ApiKey, presented_key
from maas.errors import BodyBudgetFull, BodyTimeout, ClientClosed, Forbidden, InvalidInput, MaasError, PayloadTooLarge
from maas.serving.attribution import ExplainArgs
from maas.serving.dataplane import DataPlane
from maas.serving.protocol import ROUTES, explain, jsonbody, openapi, service, tfserving, v2
from maas.serving.protocol.limits import RequestLimits
from maas.serving.protocol.routes import Match
from maas.serving.stats import RequestInfo
from maas.signature import Signature

logger = logging.getLogger("ray.serve")
MODEL_VERSION_HEADER = "Model-Version"  # which version answered a prediction (routed requests included)
T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]  # offload(fn, *args): fn(*args), computed off the event loop
_CONTENT_LENGTH = re.compile(r"[0-9]{1,15}", flags=re.ASCII)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", flags=re.ASCII)
_JSON_BYTES_PER_VALUE = 12  # a float in JSON, about: what an answer's size is judged by before encoding


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # percent-decoded, as ASGI gives it
    headers: Mapping[str, str]  # case-insensitive look-up of lower-case names
    body: Callable[[], AsyncIterator[bytes]]  # the body's chunks as they arrive


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    def json(self) -> Any:
        return jsonbody.parse(self.body, max_depth=64)


class BodyBudget:
    """Bytes of request bodies a replica holds at once: beyond it, requests get 503 + Retry-After
    instead of the replica running out of memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.max_bytes:
            raise BodyBudgetFull(f"This replica holds {self.held} bytes of request bodies (max_buffered_bytes "
                             f"{self.max_bytes}); retry later")
        self.held += n

    def give_back(self, n: int) -> None:
        self.held -= n


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """The simplest :data:`Offload`: a worker thread (what unit tests use; the replica uses a process,
    since JSON decoding holds the GIL)."""
    return await asyncio.to_thread(fn, *args)


def printable(text: str, limit: int = 200) -> str:
    """Client text for a log line: escaped (no forged lines, no terminal escapes) and cut short."""
    return repr(text[:limit])[1:-1] + ("…" if len(text) > limit else "")


class HttpApi:
    def __init__(self, plane: DataPlane, *, limits: RequestLimits, max_buffered_bytes: int,
                 explain_policy: explain.ExplainPolicy | None = None, offload: Offload = in_thread,
                 observe: Callable[[RequestInfo, int, float], None] = lambda info, status, ms: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._plane = plane
        self._limits = limits
        self._explain_policy = explain_policy or explain.ExplainPolicy()
        self._budget = BodyBudget(max_buffered_bytes)
        self._offload = offload
        self._observe = observe
        self._clock = clock
        self._openapi = jsonbody.dumps(openapi.document(ROUTES))

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request; never raises."""
        info = RequestInfo(protocol=_protocol(request.path),
                           request_id=_request_id(request.headers.get("x-request-id")))
        started = self._clock()
        held: list[int] = []  # body bytes this request holds of the budget
        try:
            response = await self._route(request, info, held)
        except MaasError as exc:
            response = error_response(exc)
        except Exception as exc:  # a bug: answered 500, logged with the client's text escaped
            logger.exception("unhandled %s on %s %s", type(exc).__name__, request.method[:16],
                             printable(request.path))
            response = _error(500, f"Internal error: {type(exc).__name__}")
        finally:
            self._budget.give_back(sum(held))
        self._observe(info, response.status, (self._clock() - started) * 1000.0)
        return response

    async def _route(self, request: HttpRequest, info: RequestInfo, held: list[int]) -> HttpResponse:
        lookup = ROUTES.lookup(request.method, request.path)
        if lookup.match is None:
            if lookup.allowed:
                allow = ", ".join(lookup.allowed)
                return _error(405, f"{request.method[:16]} is not allowed on this path; use {allow}",
                              {"Allow": allow})
            return _error(404, f"No route for {request.method[:16]} {printable(request.path, 120)}")
        match = lookup.match
        info.protocol = match.route.protocol
        key = await self._plane.authenticate(presented_key(request.headers)) if match.route.auth else None
        params = match.values()
        model = params.get("model")
        if model is not None and key is not None and not key.allows(model):
            raise Forbidden(f"API key {key.id} ({key.name}) may not call model '{model}'")
        body = await self._read_body(request, held) if match.route.method == "POST" else b""
        return await self._answer(match, params, request, body, key, info)

    async def _answer(self, match: Match, params: dict[str, Any], request: HttpRequest, body: bytes,
                      key: ApiKey | None, info: RequestInfo) -> HttpResponse:
        route, model = match.route, params.get("model")
        version, label = params.get("version"), params.get("label")
        kind = (route.protocol, route.kind)  # info.model is set once the model is known to exist: a
        if kind == ("service", "openapi"):   # client's made-up names never become metric series
            return HttpResponse(200, self._openapi)
        if kind == ("service", "status"):
            return _json((await self._plane.service_status(key)).to_json())
        if kind == ("v2", "live"):
            return _json({"live": True})
        if kind == ("v2", "ready"):
            await self._plane.ready()
            return _json({"ready": True})
        if kind == ("v2", "server_metadata"):
            return _json(v2.server_metadata_body(maas.__version__))
        assert model is not None
        if route.kind in ("classify", "regress"):
            raise InvalidInput(f":{route.kind} is not supported; use :predict")
        if kind == ("tfserving", "predict"):
            return await self._predict(model, version, label, body, info)
        if kind == ("explain", "explain"):
            return await self._explain(model, version, label, body, info)
        if kind == ("v2", "infer"):
            return await self._infer(model, version, body, request.headers.get(v2.HEADER_LENGTH), info)
        if kind == ("tfserving", "status"):
            if version is None and label is None:
                versions = await self._plane.versions(model)
                info.model = model
                return _json(tfserving.status_body(versions))
            resolved = await self._plane.resolve(model, version, label)
            info.model, info.version = model, resolved
            return _json(tfserving.status_body([resolved]))
        resolved = await self._plane.resolve(model, version, label)
        info.model, info.version = model, resolved
        if kind == ("v2", "model_ready"):
            return _json({"name": model, "ready": True})
        signature = await self._plane.signature(model, resolved)
        if kind == ("tfserving", "metadata"):
            return _json(tfserving.metadata_body(model, resolved, signature))
        versions = [resolved] if version is not None else await self._plane.versions(model)
        return _json(v2.model_metadata_body(model, versions, signature))

    async def _predict(self, model: str, version: int | None, label: str | None, body: bytes,
                       info: RequestInfo) -> HttpResponse:
        """TensorFlow Serving ``:predict``."""
        limits = self._limits

        async def decode(signature: Signature) -> tfserving.PredictRequest:
            return await self._run(len(body), tfserving.decode_predict, body, signature, limits)

        answered, decoded, outputs = await self._plane.infer(model, version, label, decode,
                                                             lambda d: d.inputs, info)
        content = await self._run(_json_size(outputs.values()), tfserving.encode_predict, outputs,
                                  decoded.row_format, limits)
        return HttpResponse(200, content, {MODEL_VERSION_HEADER: str(answered)})

    async def _explain(self, model: str, version: int | None, label: str | None, body: bytes,
                       info: RequestInfo) -> HttpResponse:
        """KServe V1 ``:explain``."""
        limits, policy = self._limits, self._explain_policy

        async def decode(signature: Signature) -> ExplainArgs:
            return await self._run(len(body), explain.decode_explain, body, signature, limits, policy)

        answered, args, found = await self._plane.explain(model, version, label, decode, info)
        size = _json_size([*found.outputs.values(), *found.attributions.values()])
        content = await self._run(size, explain.encode_explain, found, args, limits)
        return HttpResponse(200, content, {MODEL_VERSION_HEADER: str(answered)})

    async def _infer(self, model: str, version: int | None, body: bytes, header_length: str | None,
                     info: RequestInfo) -> HttpResponse:
        """KServe V2 ``infer``."""
        limits = self._limits
        json_part, binary = v2.split_binary(body, header_length)

        async def decode(signature: Signature) -> v2.InferRequest:
            return await self._run(len(json_part), v2.decode_infer, json_part, binary, signature, limits)

        answered, decoded, outputs = await self._plane.infer(model, version, None, decode, lambda d: d.inputs, info)
        light = dataclasses.replace(decoded, inputs={})  # the encoder needs no inputs: don't ship them
        as_json = [outputs[n] for n in decoded.outputs if n not in decoded.binary_outputs]
        content, headers = await self._run(_json_size(as_json), v2.encode_infer, model, answered, light, outputs,
                                           limits)
        return HttpResponse(200, content, {**headers, MODEL_VERSION_HEADER: str(answered)},
                            media_type=headers["content-type"])

    async def _run(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` inline when its input is small, else off the event loop."""
        if size <= self._limits.offload_bytes:
            return fn(*args)
        result: T = await self._offload(fn, *args)
        return result

    async def _read_body(self, request: HttpRequest, held: list[int]) -> bytes:
        limit = self._limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not _CONTENT_LENGTH.fullmatch(declared):
                raise InvalidInput(f"Content-Length must be a number of bytes. Received: {declared[:40]!r}")
            if int(declared) > limit:
                raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes "
                                      "(max_request_bytes)")
            if int(declared) > self._budget.max_bytes:  # could never be held: no use retrying
                raise PayloadTooLarge(f"Request body of {declared} bytes exceeds what a replica holds at once, "
                                      f"{self._budget.max_bytes} bytes (max_buffered_bytes)")

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.body():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes (max_request_bytes)")
                self._budget.take(len(chunk))
                held.append(len(chunk))
                chunks.append(chunk)
            return b"".join(chunks)

        timeout = self._limits.body_timeout_s
        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise BodyTimeout(f"The request body did not arrive within {timeout:g}s (body_timeout_s)") from None


def error_response(exc: MaasError) -> HttpResponse:
    """The one place errors become HTTP: TF Serving's ``{"error": "..."}`` body, the error's headers,
    and ``Connection: close`` where the body was not read to its end."""
    headers = dict(exc.http_headers)
    if isinstance(exc, (BodyTimeout, PayloadTooLarge, ClientClosed, BodyBudgetFull)):
        headers["Connection"] = "close"
    return _error(exc.http_status, str(exc), headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, jsonbody.dumps({"error": message}), dict(headers or {}))


def _json(document: dict[str, Any]) -> HttpResponse:
    return HttpResponse(200, jsonbody.dumps(document))


def _json_size(arrays: Any) -> int:
    return sum(np.asarray(a).size for a in arrays) * _JSON_BYTES_PER_VALUE


def _request_id(header: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a plain token (it is written into captures), else ""."""
    return header if header is not None and _REQUEST_ID.fullmatch(header) else ""


def _protocol(path: str) -> str:
    if path.startswith("/v1/"):
        return tfserving.PROTOCOL
    if path == "/v2" or path.startswith("/v2/"):
        return v2.PROTOCOL
    return service.PROTOCOL if path in (service.STATUS_PATH, service.OPENAPI_PATH) else "other"
