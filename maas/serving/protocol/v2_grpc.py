"""KServe V2 / Open Inference Protocol gRPC: ``inference.GRPCInferenceService``.

The messages are the V2 protocol's ``grpc_predict_v2.proto`` as Triton publishes it (``tritonclient``'s
``service_pb2``, a superset whose V2 RPCs are wire-identical to KServe's). ``ModelInfer`` takes each
input either in its typed ``contents`` (``fp32_contents``, ``int_contents``...) or, for all inputs at
once, in ``raw_input_contents`` (raw little-endian bytes, one entry per input, in order); outputs come
back in ``raw_output_contents``, as Triton answers. Pure functions over messages and numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2

from maas.errors import InvalidInput, PayloadTooLarge
from maas.names import parse_version, validate_model_name
from maas.serving.protocol.limits import RequestLimits
from maas.serving.protocol.v2 import EXTENSIONS, PLATFORM
from maas.signature import Signature, TensorSpec, check_finite, check_in_range, check_shape, v2_tensor

# V2 datatype -> the InferTensorContents field its values travel in (FP16 travels only as raw bytes)
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


@dataclass(frozen=True)
class Infer:
    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]  # the names to answer, in order, each once


def model_and_version(name: str, version: str) -> tuple[str, int | None]:
    """The model a request names, and its version (``""``: the one routing chooses)."""
    return validate_model_name(name), parse_version(version) if version else None


def decode_infer(request: service_pb2.ModelInferRequest, signature: Signature, limits: RequestLimits) -> Infer:
    """Decode and validate a ``ModelInferRequest`` against ``signature``."""
    if not request.inputs:
        raise InvalidInput("The request has no inputs")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
                           "give one per input, in order, or none")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        spec = signature.input(tensor.name)
        if spec.dtype == "string":
            raise InvalidInput(f"{where}: string inputs are not supported")
        if tensor.name in inputs:
            raise InvalidInput(f"{where}: input '{tensor.name}' is given twice")
        if tensor.datatype != spec.v2_datatype:
            raise InvalidInput(f"{where}: input '{spec.name}' expects datatype {spec.v2_datatype}, "
                               f"received {tensor.datatype[:32]}")
        shape = list(tensor.shape)
        check_shape(shape, spec, where=where, max_instances=limits.max_instances)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where}: input '{spec.name}' has contents as well as raw_input_contents")
            array = _from_raw(raw[i], shape, spec, where)
        else:
            array = _from_contents(tensor, shape, spec, where)
        check_finite(array, spec, where=where)
        inputs[spec.name] = array
    missing = [s.name for s in signature.inputs if s.name not in inputs]
    if missing:
        raise InvalidInput(f"Missing inputs {missing}; the model takes {[s.name for s in signature.inputs]}")
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"All inputs must have the same batch size. Received sizes {sorted(sizes)}")
    names = signature.chosen_outputs([o.name for o in request.outputs], "outputs")
    return Infer(id=request.id, inputs=inputs, outputs=names)


def encode_infer(model: str, version: int, request: Infer, outputs: dict[str, np.ndarray],
                 limits: RequestLimits) -> service_pb2.ModelInferResponse:
    """The answer, each output's values in ``raw_output_contents``: little-endian numbers, or for
    ``BYTES`` each element's 4-byte little-endian length and its bytes, as Triton answers."""
    response = service_pb2.ModelInferResponse(model_name=model, model_version=str(version), id=request.id)
    size = 0
    for name in request.outputs:
        tensor, raw = v2_tensor(name, outputs[name], True)
        size += len(raw or b"")
        if size > limits.max_response_bytes:
            raise PayloadTooLarge(f"The answer would be over {limits.max_response_bytes} bytes "
                                  "(max_response_bytes): ask for fewer instances or outputs")
        response.outputs.add(name=name, datatype=tensor["datatype"], shape=tensor["shape"])
        response.raw_output_contents.append(raw or b"")
    return response


def server_metadata(version: str) -> service_pb2.ServerMetadataResponse:
    return service_pb2.ServerMetadataResponse(name="maas", version=version, extensions=list(EXTENSIONS))


def model_metadata(model: str, versions: list[int], signature: Signature) -> service_pb2.ModelMetadataResponse:
    def tensor(spec: TensorSpec) -> service_pb2.ModelMetadataResponse.TensorMetadata:
        return service_pb2.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.v2_datatype,
                                                                shape=list(spec.shape))

    return service_pb2.ModelMetadataResponse(name=model, versions=[str(v) for v in versions], platform=PLATFORM,
                                             inputs=[tensor(s) for s in signature.inputs],
                                             outputs=[tensor(s) for s in signature.outputs])


# ---- internals -------------------------------------------------------------------------------


def _from_raw(raw: bytes, shape: list[int], spec: TensorSpec, where: str) -> np.ndarray:
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"{where}: raw_input_contents has {len(raw)} bytes; shape {shape} of "
                           f"{spec.v2_datatype} needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor, shape: list[int], spec: TensorSpec,
                   where: str) -> np.ndarray:
    field = _CONTENTS.get(spec.v2_datatype)
    if field is None:
        raise InvalidInput(f"{where}: {spec.v2_datatype} values travel only in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"{where}: shape {shape} needs {count} values, {field} has {len(values)}")
    array = np.asarray(values)
    check_in_range(array, spec, where=where)
    return array.astype(spec.dtype, copy=False).reshape(shape)
