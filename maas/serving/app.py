"""Ray Serve wiring: one deployment, ``ModelServer``, that hands HTTP requests and gRPC calls to the
protocol layer and data plane and holds the models it answers with:

    HAProxy (Serve's ingress)  -->  ModelServer replica
                                      http.HttpApi        routes, body limits, auth, codecs (protocol/)
                                      grpc_api.GrpcApi    TF Serving and KServe V2 RPCs, one method each
                                      dataplane.DataPlane versions, labels, canary, deadline, status
                                      host.ModelHost      dynamic batching (@serve.batch), loaded versions (LRU)
                                      codec.BodyCodec     large bodies decoded in a process of their own

A request is answered in the replica that received it: no second hop between processes, which cost
more than a small model's forward pass (see the benchmarks in the README). Replicas scale out (Serve
autoscaling, on any node); HAProxy spreads requests over them; each replica loads the versions it is
asked for and keeps the ``max_models_per_replica`` most recently used.

Operational knobs (replicas, autoscaling, CPUs, batch size) and their defaults are declared once, in
:mod:`maas.serving.config`: the decorator below takes them from there, and so does the Serve config
(``deployments/serve_config.yaml``, generated), so ``serve run maas.serving.app:build_app`` runs with
the same settings as ``maas deploy``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from ray import serve
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from maas.auth import KeyStore, service_secret
from maas.drift import DriftMonitor
from maas.errors import ClientClosed
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.serving.canary import CanaryMonitor
from maas.serving.capture import CaptureWriter
from maas.serving.codec import CodecOffload
from maas.serving.config import DEPLOYMENT_NAME, MODEL_SERVER, AppArgs, BatchConfig
from maas.serving.dataplane import DataPlane
from maas.serving.host import ModelHost
from maas.serving.http import HttpApi, HttpRequest
from maas.serving.protocol.grpc_status import metadata_dict
from maas.serving.stats import RecentRequests, RequestInfo, ServingMetrics
from maas.serving.storage_cache import StorageCache


def _rpc(name: str) -> Callable[[Any, Any, Any], Coroutine[Any, Any, Any]]:
    """The ``ModelServer`` method that answers the RPC ``name``: its status, details and trailing
    metadata go on Serve's gRPC context, which sends them to the client."""

    async def rpc(self: ModelServer, request: Any, grpc_context: Any) -> Any:  # RayServegRPCContext
        answer = await self._grpc.handle(name, request, metadata_dict(grpc_context.invocation_metadata()))
        if answer.code != grpc.StatusCode.OK:
            grpc_context.set_code(answer.code)
            grpc_context.set_details(answer.details)
        if answer.trailing:  # Serve puts its request_id before them
            grpc_context.set_trailing_metadata(answer.trailing)
        return answer.message

    rpc.__name__ = rpc.__qualname__ = name
    return rpc


@serve.deployment(name=DEPLOYMENT_NAME, **MODEL_SERVER.model_dump())  # the Serve config repeats these
class ModelServer:
    """HTTP entry point and model host (see the module docstring)."""

    def __init__(self, args: AppArgs) -> None:
        import tensorflow  # noqa: F401  (seconds on a busy node: paid before the replica reports ready,

        #                                 not by the first request within its request_timeout_s)
        from maas.serving.grpc_api import GrpcApi  # its messages import TensorFlow: here, not in `maas deploy`

        context = serve.get_replica_context()
        registry = Registry(args.registry_uri())
        secret = service_secret(args.key_secret_file) if args.auth else None
        self._host = ModelHost(registry, ArtifactCache(registry), max_models=args.max_models_per_replica,
                               explain=args.explain, shadow_threads=args.shadow.max_concurrent)
        metrics = ServingMetrics()
        recent = RecentRequests(window_s=args.canary.window_s)
        app_name = context.replica_id.deployment_id.app_name
        cache = StorageCache(registry, ttl_s=args.registry_refresh_s, stale_s=args.stale_while_unreachable_s,
                             keys=KeyStore(registry.uri, secret))
        plane = DataPlane(
            cache, self._host, canary=CanaryMonitor(args.canary), key_secret=secret, recent=recent,
            request_timeout_s=args.request_timeout_s, replica=context.replica_id.unique_id,
            deployments=lambda: asyncio.to_thread(_deployments, app_name),
            on_canary_fallback=lambda model, version: metrics.canary_fallbacks.inc(
                tags={"model": model, "version": str(version)}),
            drift=DriftMonitor(args.drift, on_export=metrics.record_drift, clock=time.monotonic),
            shadow=args.shadow, on_shadow=metrics.record_shadow,
            capture=(capture := CaptureWriter(
                args.registry_uri(), args.capture, replica=context.replica_id.unique_id,
                on_written=lambda model, rows: metrics.capture_records.inc(rows, tags={"model": model}),
                on_drop=lambda model, n: metrics.capture_dropped.inc(n, tags={"model": model}))))
        self._capture = capture
        codec = CodecOffload()
        codec.wait_ready()  # before the replica reports ready, as TensorFlow's import

        def observe(info: RequestInfo, status: int, latency_ms: float) -> None:
            metrics.record_request(info, status, latency_ms)
            recent.record(info, status, latency_ms)

        self._api = HttpApi(plane, limits=args.limits, max_buffered_bytes=args.max_buffered_bytes,
                            explain_policy=args.explain, offload=codec, observe=observe)
        self._grpc = GrpcApi(plane, limits=args.limits, observe=observe)

    async def __del__(self) -> None:
        """Serve awaits this as the replica shuts down: what capture still holds is written first."""
        capture = getattr(self, "_capture", None)  # absent when __init__ failed
        if capture is not None:
            await capture.close()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._host.reconfigure(BatchConfig(**user_config))

    async def __call__(self, request: Request) -> Response:
        # scope["path"], as ASGI decoded it: request.url.path goes through urlsplit, which silently
        # drops newlines and tabs, so that /labels/stable%0A would read as "stable".
        answer = await self._api.handle(HttpRequest(request.method, request.scope["path"], request.headers,
                                                    lambda: _stream(request)))
        return Response(answer.body, status_code=answer.status, headers=answer.headers,
                        media_type=answer.media_type)


    # gRPC (``grpc_options`` in the Serve config): Serve calls the method named after the RPC.
    Predict = _rpc("Predict")  # tensorflow.serving.PredictionService
    GetModelMetadata = _rpc("GetModelMetadata")
    Classify = _rpc("Classify")
    Regress = _rpc("Regress")
    MultiInference = _rpc("MultiInference")
    GetModelStatus = _rpc("GetModelStatus")  # tensorflow.serving.ModelService
    ServerLive = _rpc("ServerLive")  # inference.GRPCInferenceService (KServe V2)
    ServerReady = _rpc("ServerReady")
    ServerMetadata = _rpc("ServerMetadata")
    ModelReady = _rpc("ModelReady")
    ModelMetadata = _rpc("ModelMetadata")
    ModelInfer = _rpc("ModelInfer")


async def _stream(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientClosed("The client went away before sending its whole request") from None


def _deployments(app_name: str) -> dict[str, Any]:
    """Each deployment of this application: its status and how many replicas run (from the Serve controller)."""
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    # replica_states is keyed by ReplicaState, a str enum: "RUNNING" is ReplicaState.RUNNING.
    return {name: {"status": getattr(d.status, "value", str(d.status)),
                   "replicas": sum(n for state, n in d.replica_states.items() if state == "RUNNING")}
            for name, d in app.deployments.items()}


def build_app(args: AppArgs | dict[str, Any] | None = None) -> serve.Application:
    """Builder for ``serve run`` / ``serve deploy`` (``import_path: maas.serving.app:build_app``).

    Serve hands the config's ``args:`` block over as a dict; it is validated into :class:`AppArgs`.
    """
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    # @serve.deployment turned the class into a Deployment; mypy still sees the class it decorated.
    app: serve.Application = ModelServer.bind(args)  # type: ignore[attr-defined]
    return app
