"""Every gRPC method this service answers, in one table: its service, its name, its request and response
message classes (by import path: importing them imports TensorFlow, which only replicas and clients
pay for), the protocol it counts under and whether it needs an API key.

From it come the servicer functions the Serve config registers (:mod:`maas.serving.grpc_services`),
the data plane's dispatch (:mod:`maas.serving.grpc_api`) and the SDK's calls (:mod:`maas.grpc_client`).
Methods of these services that are not listed (``HandleReloadConfigRequest``, Triton's own RPCs such as
``RepositoryIndex``) are not registered, so gRPC answers them ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.protobuf.message import Message

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
V2_SERVICE = "inference.GRPCInferenceService"
TFSERVING = "tfserving-grpc"
V2 = "v2-grpc"
_TFS = "tensorflow_serving.apis."
_V2 = "tritonclient.grpc.service_pb2."


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: str  # the message class's import path
    response: str
    protocol: str
    auth: bool = True

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


RPCS: tuple[Rpc, ...] = (
    Rpc(PREDICTION_SERVICE, "Predict", _TFS + "predict_pb2.PredictRequest", _TFS + "predict_pb2.PredictResponse",
        TFSERVING),
    Rpc(PREDICTION_SERVICE, "GetModelMetadata", _TFS + "get_model_metadata_pb2.GetModelMetadataRequest",
        _TFS + "get_model_metadata_pb2.GetModelMetadataResponse", TFSERVING),
    Rpc(PREDICTION_SERVICE, "Classify", _TFS + "classification_pb2.ClassificationRequest",
        _TFS + "classification_pb2.ClassificationResponse", TFSERVING),
    Rpc(PREDICTION_SERVICE, "Regress", _TFS + "regression_pb2.RegressionRequest",
        _TFS + "regression_pb2.RegressionResponse", TFSERVING),
    Rpc(PREDICTION_SERVICE, "MultiInference", _TFS + "inference_pb2.MultiInferenceRequest",
        _TFS + "inference_pb2.MultiInferenceResponse", TFSERVING),
    Rpc(MODEL_SERVICE, "GetModelStatus", _TFS + "get_model_status_pb2.GetModelStatusRequest",
        _TFS + "get_model_status_pb2.GetModelStatusResponse", TFSERVING),
    Rpc(V2_SERVICE, "ServerLive", _V2 + "ServerLiveRequest", _V2 + "ServerLiveResponse", V2, auth=False),
    Rpc(V2_SERVICE, "ServerReady", _V2 + "ServerReadyRequest", _V2 + "ServerReadyResponse", V2, auth=False),
    Rpc(V2_SERVICE, "ServerMetadata", _V2 + "ServerMetadataRequest", _V2 + "ServerMetadataResponse", V2, auth=False),
    Rpc(V2_SERVICE, "ModelReady", _V2 + "ModelReadyRequest", _V2 + "ModelReadyResponse", V2),
    Rpc(V2_SERVICE, "ModelMetadata", _V2 + "ModelMetadataRequest", _V2 + "ModelMetadataResponse", V2),
    Rpc(V2_SERVICE, "ModelInfer", _V2 + "ModelInferRequest", _V2 + "ModelInferResponse", V2),
)
BY_NAME = {rpc.name: rpc for rpc in RPCS}


@cache
def message_class(path: str) -> type[Message]:
    module, _, name = path.rpartition(".")
    cls: type[Message] = getattr(importlib.import_module(module), name)
    return cls


@dataclass(frozen=True)
class Unreadable:
    """What a request that does not parse as its message reaches the deployment as (gRPC's own
    deserializer would answer it ``UNKNOWN``): answered ``INVALID_ARGUMENT``."""

    message: str  # the message type it should have been
    size: int

    def ByteSize(self) -> int:  # noqa: N802 (protobuf's name)
        return self.size
