"""gRPC clients of the service, numpy in and numpy out: :class:`GrpcClient` (blocking) and
:class:`AsyncGrpcClient` (asyncio). Both speak TensorFlow Serving's ``PredictionService`` and
``ModelService`` (``predict``, ``metadata``, ``status``) and KServe V2's ``GRPCInferenceService``
(``infer`` with raw tensors, ``model_metadata``, ``model_ready``, ``live``, ``ready``), send the API
key as ``authorization`` metadata, and raise :class:`GrpcError` with the server's code and message.

    from maas.grpc_client import GrpcClient
    client = GrpcClient("127.0.0.1:9000", api_key="maas_...")      # defaults: MAAS_GRPC_TARGET, MAAS_API_KEY
    probabilities = client.predict("digits", images.astype("float32"))

Inputs by name travel as the arrays given: their dtype must be the signature's (``float32`` for
``FP32``), as TF Serving and Triton require over gRPC. A bare array for a model of one input is cast to
the input's dtype where no value changes (read from the model's metadata once per client). Retries
follow :class:`maas.client.RetryPolicy`, as the HTTP clients do, within one deadline of ``timeout_s``
for all tries: an ``UNAVAILABLE`` that the service answered with ``retry-after`` trailing metadata (a
full replica, a storage outage), or one that no replica answered (the connection lost, no replica
reachable), each counted in ``client.retries``. A passed deadline is never retried, nor is HAProxy's
502 or 504 (a replica that died under the call, or one too slow): the call may have run. The messages
come from tensorflow-serving-api, which imports TensorFlow: the first client costs that import.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from maas import settings
from maas.client import CONNECTION_LOST, NO_RETRY, RetryPolicy, _Retries
from maas.serving.protocol.grpc_status import MODEL_VERSION, RETRY_AFTER, SERVER_ANSWERED

_UNAVAILABLE_STATUS = 503  # what a gRPC UNAVAILABLE stands for in RetryPolicy.statuses
_GATEWAY_FAULTS = ("status: 502", "status: 504")  # gRPC's details for HAProxy's own 502 and 504 answers


class GrpcError(Exception):
    """The service (or the transport) ended a call with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.trailing = dict(trailing or {})


@dataclass(frozen=True)
class Answer:
    """One RPC's response message and its trailing metadata."""

    message: Any
    trailing: dict[str, str]

    @property
    def model_version(self) -> int | None:
        value = self.trailing.get(MODEL_VERSION)
        return int(value) if value else None


def _callable(channel: Any, name: str) -> Any:
    """The channel's callable for RPC ``name`` (messages serialized by their classes)."""
    from maas.serving.protocol.grpc_rpcs import BY_NAME, message_class

    rpc = BY_NAME[name]
    return channel.unary_unary(rpc.path, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=message_class(rpc.response).FromString)


# ---- requests and answers, shared by both clients --------------------------------------------


def _model_spec(model: str, version: int | None, label: str | None) -> Any:
    from tensorflow_serving.apis import model_pb2

    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    spec = model_pb2.ModelSpec(name=model, signature_name="serving_default")
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    return spec


def metadata_request(model: str, version: int | None, label: str | None) -> Any:
    from tensorflow_serving.apis import get_model_metadata_pb2

    return get_model_metadata_pb2.GetModelMetadataRequest(model_spec=_model_spec(model, version, label),
                                                          metadata_field=["signature_def"])


def signature_def(answer: Answer) -> Any:
    """The ``serving_default`` ``SignatureDef`` of a ``GetModelMetadata`` answer."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    signatures = get_model_metadata_pb2.SignatureDefMap()
    answer.message.metadata["signature_def"].Unpack(signatures)
    return signatures.signature_def["serving_default"]


def cast_inputs(inputs: Mapping[str, Any], definition: Any) -> dict[str, np.ndarray]:
    """Each input in its signature's dtype where no value changes: integers that fit it, any number to
    a float; anything else is sent as it is, for the service to refuse with its own message."""
    from maas.serving.protocol.tensorproto import dtype_of

    cast = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        info = definition.inputs.get(name)
        if info is not None and array.dtype.kind in "biuf":
            dtype = dtype_of(info.dtype)
            if dtype.kind == "f" and array.dtype.kind in "iuf":  # noqa: SIM114 (two cases: widening, fitting)
                array = array.astype(dtype)
            elif dtype.kind in "iu" and array.dtype.kind in "iu" and (array.size == 0 or (
                    np.iinfo(dtype).min <= array.min() and array.max() <= np.iinfo(dtype).max)):
                array = array.astype(dtype)
        cast[name] = array
    return cast


def as_inputs(inputs: Any, definition: Any) -> dict[str, np.ndarray]:
    """A bare array as the model's one input (cast as :func:`cast_inputs` does)."""
    if len(definition.inputs) != 1:
        raise ValueError(f"the model takes {len(definition.inputs)} inputs: give them by name")
    return cast_inputs({next(iter(definition.inputs)): inputs}, definition)


def predict_request(model: str, inputs: Mapping[str, Any], version: int | None, label: str | None,
                    outputs: list[str] | None) -> Any:
    """A ``PredictRequest`` of arrays by input name, each sent in its own dtype (``tensor_content``)."""
    from tensorflow_serving.apis import predict_pb2

    from maas.serving.protocol import tensorproto

    request = predict_pb2.PredictRequest(model_spec=_model_spec(model, version, label), output_filter=outputs or [])
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tensorproto.from_numpy(np.asarray(value), content=True))
    return request


def status_request(model: str, version: int | None, label: str | None) -> Any:
    from tensorflow_serving.apis import get_model_status_pb2

    return get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(model, version, label))


def status_versions(answer: Answer) -> list[int]:
    return [s.version for s in answer.message.model_version_status]


def v2_model_request(kind: str, model: str, version: int | None) -> Any:
    """A V2 ``ModelMetadataRequest`` or ``ModelReadyRequest``."""
    from tritonclient.grpc import service_pb2

    return getattr(service_pb2, kind)(name=model, version="" if version is None else str(version))


def v2_server_request(kind: str) -> Any:
    from tritonclient.grpc import service_pb2

    return getattr(service_pb2, kind)()


def predict_outputs(answer: Answer) -> dict[str, np.ndarray]:
    from maas.serving.protocol import tensorproto

    return {name: tensorproto.to_array(proto) for name, proto in answer.message.outputs.items()}


def infer_request(model: str, inputs: Mapping[str, np.ndarray], version: int | None, outputs: list[str] | None,
                  request_id: str | None) -> Any:
    """A V2 ``ModelInferRequest`` with every input in ``raw_input_contents``."""
    from tritonclient.grpc import service_pb2

    from maas.signature import v2_tensor

    request = service_pb2.ModelInferRequest(model_name=model, model_version="" if version is None else str(version),
                                            id=request_id or "")
    for name, value in inputs.items():
        tensor, raw = v2_tensor(name, np.asarray(value), True)
        request.inputs.add(name=name, datatype=tensor["datatype"], shape=tensor["shape"])
        request.raw_input_contents.append(raw or b"")
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def infer_outputs(answer: Answer) -> dict[str, np.ndarray]:
    """The outputs of a ``ModelInferResponse``: numbers, or ``BYTES`` as an object array of bytes."""
    from maas.signature import numpy_dtype

    outputs = {}
    for tensor, raw in zip(answer.message.outputs, answer.message.raw_output_contents, strict=False):
        if tensor.datatype == "BYTES":
            items, offset = [], 0
            while offset < len(raw):
                n = int.from_bytes(raw[offset:offset + 4], "little")
                items.append(raw[offset + 4:offset + 4 + n])
                offset += 4 + n
            array = np.asarray(items, dtype=object)
        else:
            array = np.frombuffer(raw, dtype=numpy_dtype(tensor.datatype).newbyteorder("<"))
        outputs[tensor.name] = array.reshape(list(tensor.shape))
    return outputs


def _one_or_all(outputs: dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def _trailing(pairs: Any) -> dict[str, str]:
    return {k: v for k, v in pairs or () if isinstance(v, str)}


def no_replica_answered(error: grpc.RpcError | GrpcError) -> bool:
    """An ``UNAVAILABLE`` that no replica sent (Serve's replicas mark each answer with ``request_id``):
    the connection was lost, or HAProxy had no replica to send the call to."""
    code, trailing = (error.code, error.trailing) if isinstance(error, GrpcError) else \
        (error.code(), _trailing(error.trailing_metadata()))
    return code == grpc.StatusCode.UNAVAILABLE and SERVER_ANSWERED not in trailing


def _retry_reason(error: grpc.RpcError, policy: RetryPolicy) -> tuple[str, str | None] | None:
    """Why a failed call may be tried again (the reason counted, the server's retry-after), or None."""
    if error.code() != grpc.StatusCode.UNAVAILABLE or _UNAVAILABLE_STATUS not in policy.statuses:
        return None
    trailing = _trailing(error.trailing_metadata())
    if RETRY_AFTER in trailing:
        return "UNAVAILABLE", trailing[RETRY_AFTER]
    if no_replica_answered(error) and not any(f in (error.details() or "") for f in _GATEWAY_FAULTS):
        return CONNECTION_LOST, None
    return None  # the service's own that waiting does not clear (a version that cannot load), or a 502/504


def _error(error: grpc.RpcError) -> GrpcError:
    return GrpcError(error.code(), error.details() or "", _trailing(error.trailing_metadata()))


class _Base:
    def __init__(self, target: str | None, *, api_key: str | None, timeout_s: float, retry: RetryPolicy) -> None:
        self.target = target or settings.grpc_target()
        self.timeout_s = timeout_s
        self.retry = retry
        key = api_key if api_key is not None else settings.api_key()
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._retries = _Retries()
        self._signatures: dict[tuple[str, int | None, str | None], Any] = {}  # one-input models' dtypes

    @property
    def retries(self) -> Counter[str]:
        """Retries so far, by reason: ``"connection"`` (no replica answered) or ``"UNAVAILABLE"``."""
        return Counter(self._retries.counts)

    def _wait(self, policy: RetryPolicy, attempt: int, error: grpc.RpcError, deadline: float) -> float | None:
        """Seconds to wait before the next try, counted; None when there is none (within ``deadline``)."""
        reason = _retry_reason(error, policy)
        if reason is None or attempt >= policy.attempts:
            return None
        wait = policy.wait_s(attempt, reason[1])
        if time.monotonic() + wait >= deadline:
            return None
        self._retries.add(reason[0])
        return wait

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.target!r})"


class GrpcClient(_Base):
    """Blocking client over one gRPC channel (HTTP/2 multiplexes calls from any number of threads)."""

    def __init__(self, target: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        super().__init__(target, api_key=api_key, timeout_s=timeout_s, retry=retry)
        self._channel = grpc.insecure_channel(self.target)

    # TF Serving
    def predict(self, model: str, inputs: Any, *, version: int | None = None, label: str | None = None,
                outputs: list[str] | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """``Predict``: ``inputs`` by name, or a bare array for a model of one input (its name and dtype
        are read from the model's metadata first); the one output as an array, or all by name."""
        if not isinstance(inputs, Mapping):
            key = (model, version, label)
            if key not in self._signatures:
                self._signatures[key] = self.metadata(model, version=version, label=label)
            inputs = as_inputs(inputs, self._signatures[key])
        return _one_or_all(predict_outputs(self.call("Predict", predict_request(model, inputs, version, label,
                                                                                outputs))))

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> Any:
        """``GetModelMetadata``: the version's ``serving_default`` ``SignatureDef``."""
        return signature_def(self.call("GetModelMetadata", metadata_request(model, version, label)))

    def status(self, model: str, *, version: int | None = None, label: str | None = None) -> list[int]:
        """``GetModelStatus``: the versions available, newest first."""
        return status_versions(self.call("GetModelStatus", status_request(model, version, label)))

    # KServe V2
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: int | None = None,
              outputs: list[str] | None = None, request_id: str | None = None) -> dict[str, np.ndarray]:
        """``ModelInfer``: every input in ``raw_input_contents``; the outputs by name."""
        return infer_outputs(self.call("ModelInfer", infer_request(model, inputs, version, outputs, request_id)))

    def model_metadata(self, model: str, *, version: int | None = None) -> Any:
        return self.call("ModelMetadata", v2_model_request("ModelMetadataRequest", model, version)).message

    def model_ready(self, model: str, *, version: int | None = None) -> bool:
        request = v2_model_request("ModelReadyRequest", model, version)
        return bool(self.call("ModelReady", request, retry=NO_RETRY).message.ready)

    def live(self) -> bool:
        return bool(self.call("ServerLive", v2_server_request("ServerLiveRequest"), retry=NO_RETRY).message.live)

    def ready(self) -> bool:
        return bool(self.call("ServerReady", v2_server_request("ServerReadyRequest"), retry=NO_RETRY).message.ready)

    def call(self, name: str, request: Any, *, retry: RetryPolicy | None = None) -> Answer:
        """One RPC by name (``Predict``, ``ModelInfer``...), retried as ``retry`` (default :attr:`retry`) says."""
        policy = retry or self.retry
        stub = _callable(self._channel, name)
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                message, call = stub.with_call(request, metadata=self._metadata, timeout=deadline - time.monotonic())
            except grpc.RpcError as error:
                wait = self._wait(policy, attempt, error, deadline)
                if wait is None:
                    raise _error(error) from None
                time.sleep(wait)
                continue
            return Answer(message, _trailing(call.trailing_metadata()))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGrpcClient(_Base):
    """asyncio client over one ``grpc.aio`` channel; use ``async with AsyncGrpcClient(...) as client``."""

    def __init__(self, target: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        super().__init__(target, api_key=api_key, timeout_s=timeout_s, retry=retry)
        self._channel: Any = None

    async def predict(self, model: str, inputs: Any, *, version: int | None = None, label: str | None = None,
                      outputs: list[str] | None = None) -> np.ndarray | dict[str, np.ndarray]:
        if not isinstance(inputs, Mapping):
            key = (model, version, label)
            if key not in self._signatures:
                self._signatures[key] = await self.metadata(model, version=version, label=label)
            inputs = as_inputs(inputs, self._signatures[key])
        return _one_or_all(predict_outputs(await self.call("Predict", predict_request(model, inputs, version, label,
                                                                                      outputs))))

    async def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> Any:
        return signature_def(await self.call("GetModelMetadata", metadata_request(model, version, label)))

    async def status(self, model: str, *, version: int | None = None, label: str | None = None) -> list[int]:
        return status_versions(await self.call("GetModelStatus", status_request(model, version, label)))

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: int | None = None,
                    outputs: list[str] | None = None, request_id: str | None = None) -> dict[str, np.ndarray]:
        return infer_outputs(await self.call("ModelInfer", infer_request(model, inputs, version, outputs,
                                                                         request_id)))

    async def model_metadata(self, model: str, *, version: int | None = None) -> Any:
        return (await self.call("ModelMetadata", v2_model_request("ModelMetadataRequest", model, version))).message

    async def model_ready(self, model: str, *, version: int | None = None) -> bool:
        request = v2_model_request("ModelReadyRequest", model, version)
        return bool((await self.call("ModelReady", request, retry=NO_RETRY)).message.ready)

    async def live(self) -> bool:
        live = await self.call("ServerLive", v2_server_request("ServerLiveRequest"), retry=NO_RETRY)
        return bool(live.message.live)

    async def ready(self) -> bool:
        request = v2_server_request("ServerReadyRequest")
        return bool((await self.call("ServerReady", request, retry=NO_RETRY)).message.ready)

    async def call(self, name: str, request: Any, *, retry: RetryPolicy | None = None) -> Answer:
        policy = retry or self.retry
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        stub = _callable(self._channel, name)
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            call = stub(request, metadata=self._metadata, timeout=deadline - time.monotonic())
            try:
                message = await call
            except grpc.RpcError as error:
                wait = self._wait(policy, attempt, error, deadline)
                if wait is None:
                    raise _error(error) from None
                await asyncio.sleep(wait)
                continue
            return Answer(message, _trailing(await call.trailing_metadata()))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncGrpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
