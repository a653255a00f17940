"""The servicer functions ``deployments/serve_config.yaml`` names in ``grpc_options``: they register the
methods of :data:`maas.serving.protocol.grpc_rpcs.RPCS` on the gRPC server Serve starts in each replica
(Serve replaces their behaviour with a call of the ``ModelServer`` method of the same name).

They stand in for the generated ``add_*Servicer_to_server`` functions for two reasons: a request that
does not parse reaches the deployment as :class:`~maas.serving.protocol.grpc_rpcs.Unreadable` and is
answered ``INVALID_ARGUMENT`` with its type named, and the message classes are imported at the first
request, so the Serve controller and proxies that load this module never import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from maas.serving.protocol.grpc_rpcs import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    RPCS,
    V2_SERVICE,
    Unreadable,
    message_class,
)


def _deserializer(path: str) -> Callable[[bytes], Message | Unreadable]:
    def parse(data: bytes) -> Message | Unreadable:
        try:
            return message_class(path).FromString(data)
        except DecodeError:
            return Unreadable(path.rpartition(".")[2], len(data))

    return parse


def _add(service: str, server: Any) -> None:
    handlers = {rpc.name: grpc.unary_unary_rpc_method_handler(
        lambda request, context: None,  # replaced by Serve
        request_deserializer=_deserializer(rpc.request),
        response_serializer=lambda message: message.SerializeToString())
        for rpc in RPCS if rpc.service == service}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def add_tfserving_prediction_service(servicer: Any, server: Any) -> None:
    """``tensorflow.serving.PredictionService``: Predict, GetModelMetadata, Classify, Regress, MultiInference."""
    _add(PREDICTION_SERVICE, server)


def add_tfserving_model_service(servicer: Any, server: Any) -> None:
    """``tensorflow.serving.ModelService``: GetModelStatus."""
    _add(MODEL_SERVICE, server)


def add_v2_inference_service(servicer: Any, server: Any) -> None:
    """``inference.GRPCInferenceService`` (KServe V2): health, metadata, readiness, ModelInfer."""
    _add(V2_SERVICE, server)
