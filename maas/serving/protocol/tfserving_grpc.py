"""TensorFlow Serving gRPC: ``tensorflow.serving.PredictionService`` and ``ModelService``, to the letter
of ``tensorflow_serving/apis`` (the messages come from the ``tensorflow-serving-api`` package).

``Predict`` takes a ``ModelSpec`` (``name``; ``version`` or ``version_label``; ``signature_name``), the
inputs as ``TensorProto`` (see :mod:`maas.serving.protocol.tensorproto`) and an ``output_filter``;
``GetModelMetadata`` answers the ``signature_def`` as a packed ``SignatureDefMap``; ``GetModelStatus``
lists the versions. Pure functions over messages and numpy: no gRPC server, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from maas.errors import InvalidInput, PayloadTooLarge
from maas.names import parse_version, validate_label, validate_model_name
from maas.serving.protocol import tensorproto
from maas.serving.protocol.limits import RequestLimits
from maas.signature import Signature, TensorSpec

SIGNATURE = "serving_default"
METADATA_FIELD = "signature_def"


@dataclass(frozen=True)
class Target:
    """What a ``ModelSpec`` names: a model, and at most one of a version and a label."""

    model: str
    version: int | None
    label: str | None


@dataclass(frozen=True)
class Predict:
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]  # the names to answer, in order, each once


def target(spec: model_pb2.ModelSpec, *, versioned: bool = True) -> Target:
    """The model, version and label a ``ModelSpec`` names (``versioned=False``: only a name is read)."""
    model = validate_model_name(spec.name)
    version = label = None
    if versioned:
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            version = parse_version(str(spec.version.value))
        elif choice == "version_label":
            label = validate_label(spec.version_label)
    return Target(model, version, label)


def check_signature_name(spec: model_pb2.ModelSpec) -> None:
    if spec.signature_name not in ("", SIGNATURE):
        raise InvalidInput(f"Unknown signature_name {spec.signature_name[:80]!r}; this model has '{SIGNATURE}'")


def decode_predict(request: predict_pb2.PredictRequest, signature: Signature, limits: RequestLimits) -> Predict:
    """Decode and validate a ``PredictRequest`` against ``signature``."""
    check_signature_name(request.model_spec)
    names = {s.name for s in signature.inputs}
    given = set(request.inputs.keys())
    if given != names:
        raise InvalidInput(f"inputs has keys {sorted(k[:64] for k in given)[:8]}; the model takes {sorted(names)}")
    inputs = {s.name: tensorproto.to_numpy(request.inputs[s.name], s, where=f"inputs['{s.name}']",
                                           max_bytes=limits.max_request_bytes, max_instances=limits.max_instances)
              for s in signature.inputs}
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"All inputs must have the same batch size. Received sizes {sorted(sizes)}")
    return Predict(inputs=inputs, outputs=signature.chosen_outputs(list(request.output_filter), "output_filter"))


def encode_predict(model: str, version: int, request: Predict, outputs: dict[str, np.ndarray],
                   limits: RequestLimits) -> predict_pb2.PredictResponse:
    chosen = [outputs[name] for name in request.outputs]
    size = tensorproto.encoded_size(chosen)
    if size > limits.max_response_bytes:
        raise PayloadTooLarge(f"The answer would be {size} bytes; the limit is {limits.max_response_bytes} bytes "
                              "(max_response_bytes): ask for fewer instances or outputs")
    response = predict_pb2.PredictResponse(model_spec=_spec(model, version, SIGNATURE))
    for name, value in zip(request.outputs, chosen, strict=True):
        response.outputs[name].CopyFrom(tensorproto.from_numpy(value))
    return response


def metadata_fields(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    """TF Serving answers only ``signature_def`` and refuses a request that does not ask for it."""
    fields = list(request.metadata_field)
    if fields != [METADATA_FIELD]:
        raise InvalidInput(f"metadata_field must be ['{METADATA_FIELD}']. Received: {[f[:40] for f in fields][:4]}")


def metadata_response(model: str, version: int,
                      signature: Signature) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The ``signature_def`` of ``version``, packed as TF Serving packs it (a ``SignatureDefMap`` in an
    ``Any``)."""

    def info(spec: TensorSpec, graph_name: str) -> meta_graph_pb2.TensorInfo:
        return meta_graph_pb2.TensorInfo(name=graph_name, dtype=tensorproto.tf_dtype(spec),
                                         tensor_shape=tensorproto.tensor_shape(spec.shape))

    definition = meta_graph_pb2.SignatureDef(method_name=signature.method_name)
    for s in signature.inputs:
        definition.inputs[s.name].CopyFrom(info(s, f"serving_default_{s.name}:0"))
    for i, s in enumerate(signature.outputs):
        definition.outputs[s.name].CopyFrom(info(s, f"StatefulPartitionedCall:{i}"))
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def[SIGNATURE].CopyFrom(definition)
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=_spec(model, version, ""))
    response.metadata[METADATA_FIELD].Pack(signatures)
    return response


def status_response(versions: list[int]) -> get_model_status_pb2.GetModelStatusResponse:
    """Every listed version is servable (``AVAILABLE``), newest first, as the REST status answers."""
    state = get_model_status_pb2.ModelVersionStatus
    return get_model_status_pb2.GetModelStatusResponse(model_version_status=[
        state(version=v, state=state.AVAILABLE) for v in sorted(versions, reverse=True)])


def _spec(model: str, version: int, signature_name: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model, signature_name=signature_name)
    spec.version.value = version
    return spec
