"""Ray Serve wiring: one HTTP ingress speaking the TF Serving REST API and the KServe V2 (Open
Inference) protocol, and a batching model server.

    Ingress (HTTP, routing, canary split, validation)  --handle-->  ModelServer (@serve.multiplexed, @serve.batch)

Each ModelServer replica keeps a few versions loaded with Ray Serve's model multiplexing (LRU); the
ingress tags each request with its ``model:version``, so that Serve routes it to a replica that
already holds that version when there is one.

Operational knobs (replicas, autoscaling, CPUs, batch size) live in the Serve config YAML
(``deployments/serve_config.yaml``); the defaults below make ``serve run deployments.app:build_app``
work as is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, TypeVar

import numpy as np
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

import maas
from maas import settings
from maas.auth import ApiKey, authorize, key_id, presented_key
from maas.errors import InferenceError, InvalidInput, MaasError, PayloadTooLarge, RequestTimeout, Unauthorized
from maas.registry import Registry
from maas.serving import openapi, tfserving, v2
from maas.serving.canary import CanaryMonitor, CanaryPolicy, Route, choose
from maas.serving.registry_cache import RegistryCache
from maas.serving.runtime import LoadedModel, load_saved_model
from maas.serving.stats import RecentRequests, RequestInfo, ServingMetrics, batch_size_histogram
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


class BatchConfig(BaseModel):
    """``user_config`` of the ModelServer deployment: changeable without restarting replicas."""

    max_batch_size: PositiveInt = Field(32, description="Most instances-requests combined into one forward pass.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="Longest wait for a batch to fill.")


@serve.deployment(
    name="ModelServer",
    max_ongoing_requests=64,
    max_queued_requests=256,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=10,
)
class ModelServer:
    """Holds loaded model versions (multiplexed, LRU) and runs dynamically batched predictions."""

    def __init__(self, args: AppArgs) -> None:
        import tensorflow  # noqa: F401  (seconds on a busy node: paid before the replica reports ready,
        #                                 not by the first request within its request_timeout_s)

        self._registry = Registry(args.registry_uri())
        self._config = BatchConfig()
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._batch_size = batch_size_histogram()
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}

        async def load(model_id: str) -> LoadedModel:  # a plain function: Serve keeps its cache on it
            # A request that times out (504) is cancelled; the load it started goes on, shielded, and
            # the next request for that version takes its result instead of starting another load.
            task = self._loading.get(model_id)
            if task is None:
                task = self._loading[model_id] = asyncio.ensure_future(self._load_version(model_id))
            try:
                return await asyncio.shield(task)  # cancelled here: the running task stays for the next
            finally:
                if task.done() and self._loading.get(model_id) is task:  # claimed, or failed: a later
                    del self._loading[model_id]  # request that finds the version unloaded loads it anew

        self._load = serve.multiplexed(max_num_models_per_replica=args.max_models_per_replica)(load)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._config = BatchConfig(**user_config)
        self._run_batch.set_max_batch_size(self._config.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self._config.batch_wait_timeout_s)

    async def predict(self, model: str, version: int,
                      inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
        """The outputs, and the id of this replica (which the ingress reports per version)."""
        result = await self._run_batch((model, version), inputs)
        if isinstance(result, Exception):  # the batch hands a failed group's error back as a value
            raise result
        return result, self._replica

    # Up to 4 batches at once: a batch waiting for a version to load does not hold up the others.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=4)
    async def _run_batch(
        self, keys: list[tuple[str, int]], inputs: list[dict[str, np.ndarray]]
    ) -> list[dict[str, np.ndarray] | Exception]:
        results: list[dict[str, np.ndarray] | Exception] = [None] * len(keys)  # type: ignore[list-item]
        groups: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)

        async def run_group(key: tuple[str, int], members: list[int]) -> None:
            try:
                loaded = await self._load(model_id(*key))
                merged = {name: np.concatenate([inputs[i][name] for i in members]) for name in inputs[members[0]]}
                self._batch_size.observe(len(next(iter(merged.values()))),
                                         tags={"model": key[0], "version": str(key[1])})
                outputs = await asyncio.to_thread(loaded.predict, merged)
            except Exception as exc:  # one bad group must not fail the others
                for i in members:
                    results[i] = exc
                return
            start = 0
            for i in members:
                n = next(iter(inputs[i].values())).shape[0]
                results[i] = {name: value[start : start + n] for name, value in outputs.items()}
                start += n

        await asyncio.gather(*(run_group(key, members) for key, members in groups.items()))  # a load blocks no group
        return results

    async def _load_version(self, key: str) -> LoadedModel:
        model, version = parse_model_id(key)
        try:
            return await asyncio.to_thread(load_saved_model, model, version, self._registry.local_path(model, version))
        except MaasError:
            raise
        except Exception as exc:  # a missing or corrupt artifact: say which, keep serving the others
            raise InferenceError(f"{model} version {version} could not be loaded: {type(exc).__name__}: {exc}") from exc


def model_id(model: str, version: int) -> str:
    """The multiplexed model id of a version (``:`` never occurs in model names)."""
    return f"{model}:{version}"


def parse_model_id(key: str) -> tuple[str, int]:
    model, _, version = key.rpartition(":")
    return model, int(version)


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
class Ingress:
    """HTTP entry point: routes, checks requests against the version's signature, answers JSON."""

    def __init__(self, model_server: DeploymentHandle, args: AppArgs) -> None:
        self._model_server = model_server
        self._args = args
        self._registry = RegistryCache(Registry(args.registry_uri()), ttl_s=args.registry_refresh_s)
        self._canary = CanaryMonitor(args.canary)
        self._background: set[asyncio.Task[None]] = set()
        self._metrics = ServingMetrics()
        self._recent = RecentRequests(window_s=args.canary.window_s)
        self._openapi = json.dumps(openapi.document()).encode()
        self._app_name = serve.get_replica_context().replica_id.deployment_id.app_name

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
        except MaasError as exc:  # raised here, or in ModelServer and re-raised through the handle
            return error_response(exc.http_status, _message(exc), headers=exc.http_headers)
        except BackPressureError:
            return error_response(503, "Model server queues are full; retry later", retry_after_s=1)
        except (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError):
            return error_response(503, "Model server is unavailable; retry later", retry_after_s=1)
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
                           model, target.version, _message(exc), default)
            self._metrics.canary_fallbacks.inc(tags={"model": model, "version": str(target.version)})
            info.version, info.label = default, default_label
            return default, decoded, await self._predict(model, default, inputs, info)
        self._judge(model, target.version, ok=True, latency_s=time.monotonic() - started)
        return target.version, decoded, outputs

    async def _predict(self, model: str, version: int, inputs: dict[str, np.ndarray],
                       info: RequestInfo) -> dict[str, np.ndarray]:
        """One prediction on the ModelServer replica that holds the version, if any does (multiplexing)."""
        handle = self._model_server.options(multiplexed_model_id=model_id(model, version))
        response = handle.predict.remote(model, version, inputs)
        timeout = self._args.request_timeout_s
        try:
            outputs, info.replica = await asyncio.wait_for(response, timeout=timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestTimeout(f"{model} version {version} did not answer within {timeout:g}s") from None
        return outputs

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
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json", headers=headers
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


def _message(exc: BaseException) -> str:
    """An error's own message, without the remote traceback Ray adds to errors from other replicas."""
    cause = exc.cause if isinstance(exc, RayTaskError) else None
    return str(cause) if isinstance(cause, BaseException) else str(exc)


def build_app(args: AppArgs | dict[str, Any] | None = None) -> serve.Application:
    """Builder for ``serve run`` / ``serve deploy`` (``import_path: deployments.app:build_app``).

    Serve hands the config's ``args:`` block over as a dict; it is validated into :class:`AppArgs`.
    """
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    return Ingress.bind(ModelServer.bind(args), args)
