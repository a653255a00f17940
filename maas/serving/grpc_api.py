"""gRPC over the data plane: TensorFlow Serving's ``PredictionService`` and ``ModelService`` and the KServe
V2 ``GRPCInferenceService``, one request message and its invocation metadata in, one response message,
a status and trailing metadata out.

The same data plane answers REST: version and label routing, canary split and fallback, validation
against the signature, limits, the request timeout, API keys (``authorization: Bearer …`` or
``x-api-key`` metadata), metrics (``protocol`` ``tfserving-grpc`` / ``v2-grpc``), and the answering
version as a ``model-version`` trailing metadata entry. Every error becomes a status here, in one place
(:mod:`maas.serving.protocol.grpc_status`), with the message REST gives. No Ray and no gRPC server:
the Serve deployment hands requests in (:mod:`maas.serving.app`), and unit tests do the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2
from tritonclient.grpc import service_pb2

import maas
from maas.auth import ApiKey, presented_key
from maas.errors import (
    Forbidden,
    InvalidInput,
    MaasError,
    ModelNotFound,
    PayloadTooLarge,
    StorageUnavailable,
    Unimplemented,
    VersionNotFound,
)
from maas.serving.dataplane import DataPlane
from maas.serving.protocol import grpc_status, tfserving_grpc, v2_grpc
from maas.serving.protocol.grpc_rpcs import BY_NAME, Unreadable, message_class
from maas.serving.protocol.limits import RequestLimits
from maas.serving.stats import RequestInfo
from maas.signature import Signature

logger = logging.getLogger("ray.serve")

@dataclass
class GrpcAnswer:
    """What one RPC answers: the response (an empty one of the right type on error), its status and
    the trailing metadata to add."""

    message: Any
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Call:
    metadata: Mapping[str, str]
    info: RequestInfo
    key: ApiKey | None = None
    trailing: list[tuple[str, str]] = field(default_factory=list)


_HANDLERS = {  # each RPC of grpc_rpcs.RPCS: the GrpcApi method that answers it
    "Predict": "_predict", "GetModelMetadata": "_get_model_metadata", "GetModelStatus": "_get_model_status",
    "Classify": "_unsupported", "Regress": "_unsupported", "MultiInference": "_unsupported",
    "ServerLive": "_server_live", "ServerReady": "_server_ready", "ServerMetadata": "_server_metadata",
    "ModelReady": "_model_ready", "ModelMetadata": "_model_metadata", "ModelInfer": "_model_infer",
}
assert set(_HANDLERS) == set(BY_NAME), "every RPC has its handler"


class GrpcApi:
    def __init__(self, plane: DataPlane, *, limits: RequestLimits,
                 observe: Callable[[RequestInfo, int, float], None] = lambda info, status, ms: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._plane = plane
        self._limits = limits
        self._observe = observe
        self._clock = clock

    async def handle(self, method: str, request: Any, metadata: Mapping[str, str]) -> GrpcAnswer:
        """Answer one RPC (``method`` is the name of one of :data:`grpc_rpcs.RPCS`); never raises."""
        spec = BY_NAME[method]
        call = _Call(metadata, RequestInfo(protocol=spec.protocol))
        started = self._clock()
        try:
            if isinstance(request, Unreadable):
                raise InvalidInput(f"The request of {request.size} bytes is not a valid {request.message}")
            if request.ByteSize() > self._limits.max_request_bytes:
                raise PayloadTooLarge(f"Request of {request.ByteSize()} bytes exceeds the limit of "
                                      f"{self._limits.max_request_bytes} bytes (max_request_bytes)")
            if spec.auth:
                call.key = await self._plane.authenticate(presented_key(metadata))
            answer = GrpcAnswer(await getattr(self, _HANDLERS[method])(request, call), trailing=call.trailing)
            status = 200
        except MaasError as exc:
            status = exc.http_status
            answer = GrpcAnswer(message_class(spec.response)(), grpc_status.code_for(status), grpc_status.details(exc),
                                grpc_status.retry_after(exc))
        except Exception as exc:  # a bug: answered INTERNAL, logged without the client's data
            logger.exception("unhandled %s in gRPC %s", type(exc).__name__, method)
            status = 500
            answer = GrpcAnswer(message_class(spec.response)(), grpc.StatusCode.INTERNAL,
                                f"Internal error: {type(exc).__name__}")
        except asyncio.CancelledError:  # the client's deadline passed, or it cancelled: counted, as REST's 499
            call.info.code = grpc.StatusCode.CANCELLED.name
            self._observe(call.info, 499, (self._clock() - started) * 1000.0)
            raise
        call.info.code = answer.code.name
        self._observe(call.info, status, (self._clock() - started) * 1000.0)
        return answer

    # ---- TensorFlow Serving ----------------------------------------------------------------------

    async def _predict(self, request: predict_pb2.PredictRequest, call: _Call) -> predict_pb2.PredictResponse:
        target = self._allowed(tfserving_grpc.target(request.model_spec), call)
        limits = self._limits

        async def decode(signature: Signature) -> tfserving_grpc.Predict:
            return tfserving_grpc.decode_predict(request, signature, limits)

        answered, decoded, outputs = await self._plane.infer(target.model, target.version, target.label, decode,
                                                             lambda d: d.inputs, call.info)
        call.trailing.append((grpc_status.MODEL_VERSION, str(answered)))
        return tfserving_grpc.encode_predict(target.model, answered, decoded, outputs, limits)

    async def _get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                                  call: _Call) -> get_model_metadata_pb2.GetModelMetadataResponse:
        target = self._allowed(tfserving_grpc.target(request.model_spec), call)
        tfserving_grpc.check_signature_name(request.model_spec)
        tfserving_grpc.metadata_fields(request)
        version = await self._resolved(target.model, target.version, target.label, call)
        return tfserving_grpc.metadata_response(target.model, version,
                                                await self._plane.signature(target.model, version))

    async def _get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest,
                                call: _Call) -> get_model_status_pb2.GetModelStatusResponse:
        target = self._allowed(tfserving_grpc.target(request.model_spec), call)
        if target.version is None and target.label is None:
            versions = await self._plane.versions(target.model)
            call.info.model = target.model
            return tfserving_grpc.status_response(versions)
        return tfserving_grpc.status_response([await self._resolved(target.model, target.version, target.label,
                                                                    call)])

    async def _unsupported(self, request: Any, call: _Call) -> Any:
        """Classify, Regress, MultiInference (which names its models per task): the key was checked."""
        name = type(request).__name__.removesuffix("Request")
        raise Unimplemented(f"{name} is not supported; use Predict")

    # ---- KServe V2 -------------------------------------------------------------------------------

    async def _server_live(self, request: service_pb2.ServerLiveRequest, call: _Call) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def _server_ready(self, request: service_pb2.ServerReadyRequest,
                            call: _Call) -> service_pb2.ServerReadyResponse:
        """``ready: false`` while the registry's storage is unreachable (REST answers 503), as the V2
        protocol's ``ServerReady`` reports readiness in its answer."""
        try:
            await self._plane.ready()
        except StorageUnavailable:
            return service_pb2.ServerReadyResponse(ready=False)
        return service_pb2.ServerReadyResponse(ready=True)

    async def _server_metadata(self, request: service_pb2.ServerMetadataRequest,
                               call: _Call) -> service_pb2.ServerMetadataResponse:
        return v2_grpc.server_metadata(maas.__version__)

    async def _model_ready(self, request: service_pb2.ModelReadyRequest, call: _Call) -> service_pb2.ModelReadyResponse:
        """As Triton answers: ``ready: false`` for a model or version that does not exist (REST's 404)."""
        model, version = self._allowed_v2(request.name, request.version, call)
        try:
            await self._resolved(model, version, None, call)
        except (ModelNotFound, VersionNotFound):
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def _model_metadata(self, request: service_pb2.ModelMetadataRequest,
                              call: _Call) -> service_pb2.ModelMetadataResponse:
        model, version = self._allowed_v2(request.name, request.version, call)
        resolved = await self._resolved(model, version, None, call)
        versions = [resolved] if version is not None else await self._plane.versions(model)
        return v2_grpc.model_metadata(model, versions, await self._plane.signature(model, resolved))

    async def _model_infer(self, request: service_pb2.ModelInferRequest, call: _Call) -> service_pb2.ModelInferResponse:
        model, version = self._allowed_v2(request.model_name, request.model_version, call)
        limits = self._limits

        async def decode(signature: Signature) -> v2_grpc.Infer:
            return v2_grpc.decode_infer(request, signature, limits)

        answered, decoded, outputs = await self._plane.infer(model, version, None, decode, lambda d: d.inputs,
                                                             call.info)
        call.trailing.append((grpc_status.MODEL_VERSION, str(answered)))
        return v2_grpc.encode_infer(model, answered, decoded, outputs, limits)

    # ---- shared ----------------------------------------------------------------------------------

    def _allowed(self, target: tfserving_grpc.Target, call: _Call) -> tfserving_grpc.Target:
        _check_scope(call.key, target.model)
        return target

    def _allowed_v2(self, name: str, version: str, call: _Call) -> tuple[str, int | None]:
        model, parsed = v2_grpc.model_and_version(name, version)
        _check_scope(call.key, model)
        return model, parsed

    async def _resolved(self, model: str, version: int | None, label: str | None, call: _Call) -> int:
        resolved = await self._plane.resolve(model, version, label)
        call.info.model, call.info.version = model, resolved
        return resolved


def _check_scope(key: ApiKey | None, model: str) -> None:
    if key is not None and not key.allows(model):
        raise Forbidden(f"API key {key.id} ({key.name}) may not call model '{model}'")
