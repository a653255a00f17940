"""Ray Serve wiring: one deployment, ``ModelServer``, that speaks the TF Serving REST API and the
KServe V2 (Open Inference) protocol over HTTP and holds the models it answers with:

    HAProxy (Serve's ingress)  -->  ModelServer replica: routing, canary split, validation,
                                    dynamic batching (@serve.batch), loaded versions (LRU)

A request is answered in the replica that received it: no second hop between processes, which cost
more than a small model's forward pass (see the benchmarks in the README). Replicas scale out (Serve
autoscaling, on any node); HAProxy spreads requests over them; each replica loads the versions it is
asked for and keeps the ``max_models_per_replica`` most recently used.

Operational knobs (replicas, autoscaling, CPUs, batch size) live in the Serve config YAML
(``deployments/serve_config.yaml``); the defaults below make ``serve run deployments.app:build_app``
work as is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, TypeVar

import numpy as np
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

import maas
from maas import settings
from maas.auth import ApiKey, authorize, key_id, presented_key
from maas.errors import InvalidInput, MaasError, PayloadTooLarge, RequestTimeout, Unauthorized
from maas.registry import Registry
from maas.serving import jsonbody, openapi, tfserving, v2
from maas.serving.canary import CanaryMonitor, CanaryPolicy, Route, choose
from maas.serving.registry_cache import RegistryCache
from maas.serving.host import BatchConfig, ModelHost
from maas.serving.stats import RecentRequests, RequestInfo, ServingMetrics
from maas.signature import Signature

logger = logging.getLogger("ray.serve")
MODEL_VERSION_HEADER = "Model-Version"  # which version answered a prediction (routed requests included)
STATUS_PATH = "/maas/v1/status"
OPENAPI_PATH = "/openapi.json"
MISSING_KEY = "API key required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' (create one with " \
              "`maas keys create`)"
D = TypeVar("D")


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args:`` block of a Serve config)."""

    registry: str | None = Field(None, description="Registry URI; default $MAAS_HOME/registry.")
    registry_refresh_s: PositiveFloat = Field(2.0, description="How long version and label look-ups are cached.")
    max_request_bytes: PositiveInt = Field(16 * 1024 * 1024, description="Larger bodies get HTTP 413.")
    request_timeout_s: PositiveFloat = Field(10.0, description="A prediction not answered by then gets HTTP 504.")
    max_models_per_replica: PositiveInt = Field(4, description="Model versions each ModelServer replica keeps "
                                                               "loaded (LRU); a change restarts the replicas.")
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)
    auth: bool = Field(True, description="Require an API key (maas keys create) on every route but health, "
                                         "server metadata and /openapi.json.")

    def registry_uri(self) -> str:
        return self.registry or settings.default_registry_uri()


@serve.deployment(
    name="ModelServer",
    max_ongoing_requests=512,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=10,
)
class ModelServer:
    """HTTP entry point and model host: routes, checks requests against the version's signature,
    predicts in dynamic batches, answers JSON."""

    def __init__(self, args: AppArgs) -> None:
        import tensorflow  # noqa: F401  (seconds on a busy node: paid before the replica reports ready,
        #                                 not by the first request within its request_timeout_s)

        self._args = args
        registry = Registry(args.registry_uri())
        self._host = ModelHost(registry, max_models=args.max_models_per_replica)
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._registry = RegistryCache(registry, ttl_s=args.registry_refresh_s)
        self._canary = CanaryMonitor(args.canary)
        self._background: set[asyncio.Task[None]] = set()
        self._metrics = ServingMetrics()
        self._recent = RecentRequests(window_s=args.canary.window_s)
        self._openapi = jsonbody.dumps(openapi.document())
        self._app_name = serve.get_replica_context().replica_id.deployment_id.app_name

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._host.reconfigure(BatchConfig(**user_config))

    async def __call__(self, request: Request) -> Response:
        info = RequestInfo(protocol=_protocol(request.url.path))
        started = time.perf_counter()
        response = await self._answer(request, info)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._metrics.record_request(info, response.status_code, latency_ms)
        self._recent.record(info, response.status_code, latency_ms)
        return response

    async def _answer(self, request: Request, info: RequestInfo) -> Response:
        try:
            return await self._handle(request, info)
        except MaasError as exc:
            return error_response(exc.http_status, str(exc), headers=exc.http_headers)
        except Exception as exc:  # never let one request take the replica down
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(500, f"Internal error: {type(exc).__name__}")

    async def _handle(self, request: Request, info: RequestInfo) -> Response:
        path = request.url.path
        if path in (OPENAPI_PATH, STATUS_PATH):
            if request.method != "GET":
                return error_response(405, f"{request.method} is not allowed on {path}; use GET")
            if path == OPENAPI_PATH:
                return Response(self._openapi, media_type="application/json")
            return json_response(await self._service_status(await self._authorize(request, None)))
        route: tfserving.Route | v2.V2Route | None
        if info.protocol == "v2":
            route = v2.match_route(path)
        else:
            route = tfserving.match_route(path)
        if route is None:
            return error_response(404, f"No route for {request.method} {path}")
        if request.method != route.method:
            return error_response(405, f"{request.method} is not allowed on {path}; use {route.method}")
        if route.model is not None:  # V2 health and server metadata stay open
            await self._authorize(request, route.model)
        if isinstance(route, v2.V2Route):
            return await self._v2(request, route, info)
        return await self._tf_serving(request, route, info)

    async def _authorize(self, request: Request, model: str | None) -> ApiKey | None:
        """The caller's API key record, checked against ``model`` (401/403); ``None`` when auth is off."""
        if not self._args.auth:
            return None
        key = presented_key(request.headers)
        if key is None:
            raise Unauthorized(MISSING_KEY)
        kid = key_id(key)
        record = None if kid is None else await self._registry.api_key(kid)
        return authorize(record, key, model)

    async def _tf_serving(self, request: Request, route: tfserving.Route, info: RequestInfo) -> Response:
        """TensorFlow Serving REST API: ``/v1/models/...``."""
        if route.kind == "status":
            if route.version is None and route.label is None:
                versions = await self._registry.versions(route.model)
            else:
                versions = [await self._registry.resolve(route.model, route.version, route.label)]
            info.model = route.model
            return json_response(tfserving.status_body(versions))
        if route.kind == "metadata":
            version = await self._registry.resolve(route.model, route.version, route.label)
            signature = (await self._registry.get(route.model, version)).signature
            info.model, info.version = route.model, version
            return json_response(tfserving.metadata_body(route.model, version, signature))
        body = await self._read_body(request)
        version, decoded, outputs = await self._infer(
            route.model, route.version, route.label, lambda signature: tfserving.decode_predict(body, signature), info)
        return json_response(tfserving.encode_predict(outputs, decoded.row_format),
                             headers={MODEL_VERSION_HEADER: str(version)})

    async def _v2(self, request: Request, route: v2.V2Route, info: RequestInfo) -> Response:
        """KServe V2 / Open Inference Protocol: ``/v2/...``."""
        if route.kind == "live":
            return json_response({"live": True})
        if route.kind == "ready":
            try:
                await self._registry.check_reachable()
            except OSError:
                logger.warning("model storage unreachable", exc_info=True)
                return error_response(503, "Model storage is unreachable; not ready", retry_after_s=1)
            return json_response({"ready": True})
        if route.kind == "server_metadata":
            return json_response(v2.server_metadata_body(maas.__version__))
        assert route.model is not None
        if route.kind == "infer":
            body = await self._read_body(request)
            header_length = request.headers.get(v2.HEADER_LENGTH)
            version, decoded, outputs = await self._infer(
                route.model, route.version, None, lambda signature: v2.decode_infer(body, signature, header_length),
                info)
            content, headers = v2.encode_infer(route.model, version, decoded, outputs)
            return Response(content, status_code=200, headers={**headers, MODEL_VERSION_HEADER: str(version)})
        version = await self._registry.resolve(route.model, route.version, None)
        info.model, info.version = route.model, version
        if route.kind == "model_ready":
            return json_response({"name": route.model, "ready": True})
        signature = (await self._registry.get(route.model, version)).signature
        versions = [version] if route.version is not None else await self._registry.versions(route.model)
        return json_response(v2.model_metadata_body(route.model, versions, signature))

    async def _infer(self, model: str, version: int | None, label: str | None,
                     decode: Callable[[Signature], D], info: RequestInfo) -> tuple[int, D, dict[str, np.ndarray]]:
        """Route, decode (check against the chosen version's signature) and predict.

        A request naming neither version nor label is routed: the canary's share goes to the canary.
        A routed request that fails on the canary is answered by the default version when both have
        the same signature, and the failure counts against the canary."""
        default = await self._registry.resolve(model, version, label)
        routed = version is None and label is None
        labels = await self._registry.labels(model) if routed else {}
        target = choose(labels, default) if routed else Route(default)
        info.model, info.version = model, target.version
        default_label = "stable" if "stable" in labels else "latest"
        info.label = ("canary" if target.canary else default_label) if routed else (label or "none")
        signature = (await self._registry.get(model, target.version)).signature
        decoded = decode(signature)
        inputs = decoded.inputs  # type: ignore[attr-defined]
        if not target.canary:
            return target.version, decoded, await self._predict(model, target.version, inputs, info)
        started = time.monotonic()
        try:
            outputs = await self._predict(model, target.version, inputs, info)
        except InvalidInput:  # the client's fault, not the canary's
            raise
        except Exception as exc:
            self._judge(model, target.version, ok=False, latency_s=time.monotonic() - started)
            if (await self._registry.get(model, default)).signature != signature:
                raise
            logger.warning("canary %s version %d failed (%s); answered by version %d",
                           model, target.version, exc, default)
            self._metrics.canary_fallbacks.inc(tags={"model": model, "version": str(target.version)})
            info.version, info.label = default, default_label
            return default, decoded, await self._predict(model, default, inputs, info)
        self._judge(model, target.version, ok=True, latency_s=time.monotonic() - started)
        return target.version, decoded, outputs

    async def _predict(self, model: str, version: int, inputs: dict[str, np.ndarray],
                       info: RequestInfo) -> dict[str, np.ndarray]:
        """One prediction, batched with the others that reach this replica meanwhile."""
        timeout = self._args.request_timeout_s
        info.replica = self._replica
        try:
            return await asyncio.wait_for(self._host.predict(model, version, inputs), timeout=timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{model} version {version} did not answer within {timeout:g}s") from None

    async def _service_status(self, key: ApiKey | None) -> dict[str, Any]:
        """``GET /maas/v1/status``: the models the key may call, with their versions, labels, last label
        change (automatic rollbacks say why) and recent requests; the deployments' replica counts."""
        models: dict[str, Any] = {}
        for name in await self._registry.models():
            if key is not None and not key.allows(name):
                continue
            labels = await self._registry.labels(name)
            history = await self._registry.label_history(name)
            models[name] = {
                "versions": await self._registry.versions(name),
                "labels": {k: {"version": v.version, "weight": v.weight} for k, v in labels.items()},
                "last_label_change": history[-1] if history else None,
                "recent": self._recent.summary(name),
            }
        return {"models": models, "deployments": await asyncio.to_thread(_deployments, self._app_name)}

    def _judge(self, model: str, version: int, *, ok: bool, latency_s: float) -> None:
        reason = self._canary.record(model, version, ok=ok, latency_s=latency_s)
        if reason is not None:
            task = asyncio.get_running_loop().create_task(self._retire_canary(model, version, reason))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _retire_canary(self, model: str, version: int, reason: str) -> None:
        try:
            retired = await self._registry.retire_canary(model, version, f"auto-rollback: {reason}")
        except Exception:
            logger.exception("auto-rollback of %s canary version %d failed", model, version)
            return
        if retired:
            logger.warning("auto-rollback: %s canary version %d retired, traffic back to the default version: %s",
                           model, version, reason)

    async def _read_body(self, request: Request) -> bytes:
        limit = self._args.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        jsonbody.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def error_response(status: int, message: str, *, retry_after_s: int | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """The one place errors become HTTP: TF Serving's ``{"error": "..."}`` body."""
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return json_response({"error": message}, status, headers or None)


def _protocol(path: str) -> str:
    if path.startswith("/v1/"):
        return "tfserving"
    return "v2" if path == "/v2" or path.startswith("/v2/") else "other"


def _deployments(app_name: str) -> dict[str, Any]:
    """Each deployment of this application: its status and how many replicas run (from the Serve controller)."""
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: {"status": getattr(d.status, "value", str(d.status)), "replicas": d.replica_states.get("RUNNING", 0)}
            for name, d in app.deployments.items()}


def build_app(args: AppArgs | dict[str, Any] | None = None) -> serve.Application:
    """Builder for ``serve run`` / ``serve deploy`` (``import_path: deployments.app:build_app``).

    Serve hands the config's ``args:`` block over as a dict; it is validated into :class:`AppArgs`.
    """
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    return ModelServer.bind(args)
