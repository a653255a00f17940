"""KServe V2 / Open Inference Protocol REST codec: routes, ``infer`` decoding, response bodies.

Follows https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ (the REST half of
the Open Inference Protocol) and its binary tensor data extension: a request whose
``Inference-Header-Content-Length`` header says how long its JSON part is may carry input tensors as
raw little-endian bytes after the JSON (``parameters.binary_data_size`` on each such input), and
outputs asked for with ``binary_data`` (or ``binary_data_output`` for all) come back the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.errors import InvalidInput
from maas.serving.protocol import jsonbody
from maas.serving.protocol.limits import RequestLimits
from maas.serving.protocol.routes import Route, RouteTable
from maas.signature import Signature, TensorSpec, check_shape, to_batch, v2_tensor

PROTOCOL = "v2"
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "tensorflow_savedmodel"
_TAG = "KServe V2"
_READ_ERRORS = (400, 401, 403, 404, 503)
_INFER_ERRORS = (400, 401, 403, 404, 408, 413, 503, 504)
_LENGTH = re.compile(r"[0-9]{1,12}", flags=re.ASCII)


def _routes() -> list[Route]:
    routes = [
        Route(PROTOCOL, "server_metadata", "GET", "/v2", "Server metadata", _TAG, auth=False,
              ok={"schema": "ServerMetadata"}),
        Route(PROTOCOL, "live", "GET", "/v2/health/live", "Liveness", _TAG, auth=False, ok={"schema": "Live"}),
        Route(PROTOCOL, "ready", "GET", "/v2/health/ready", "Readiness (model storage reachable)", _TAG, auth=False,
              ok={"schema": "Ready"}, errors=(503,)),
    ]
    for suffix in ("", "/versions/{version}"):
        base = "/v2/models/{model}" + suffix
        routes += [
            Route(PROTOCOL, "model_metadata", "GET", base, "Model metadata", _TAG, ok={"schema": "V2ModelMetadata"},
                  errors=_READ_ERRORS),
            Route(PROTOCOL, "model_ready", "GET", base + "/ready", "Model readiness", _TAG,
                  ok={"schema": "ModelReady"}, errors=_READ_ERRORS),
            Route(PROTOCOL, "infer", "POST", base + "/infer", "Inference (JSON, or JSON plus binary tensors)", _TAG,
                  request_body={"schema": "InferRequest", "binary": True},
                  ok={"schema": "InferResponse", "binary": True, "headers": ["Model-Version"]},
                  errors=_INFER_ERRORS),
        ]
    return routes


ROUTES = RouteTable(_routes())


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]  # the names asked for, in order, each once
    binary_outputs: frozenset[str]  # those to return as raw bytes

    @property
    def batch_size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes | None]:
    """``(JSON part, binary part)`` of an ``infer`` body; the header is the JSON part's length."""
    if header_length is None:
        return body, None
    if not _LENGTH.fullmatch(header_length) or int(header_length) > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length must be the length of the JSON part, at most {len(body)}. "
            f"Received: {header_length[:40]!r}"
        )
    n = int(header_length)
    return body[:n], body[n:]


def decode_infer(json_part: bytes, binary: bytes | None, signature: Signature,
                 limits: RequestLimits) -> InferRequest:
    """Decode and validate an ``infer`` request (its JSON part, and its binary tensors if any) against
    ``signature``."""
    request = jsonbody.parse(json_part, max_depth=limits.max_json_depth)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InvalidInput("Request must be a JSON object with a non-empty 'inputs' list")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string. Received: {_short(request_id)}")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(request["inputs"]):
        where = f"inputs[{i}]"
        name, shape, datatype = _tensor_header(tensor, where)
        spec = signature.input(name)
        if spec.dtype == "string":
            raise InvalidInput(f"{where}: string inputs are not supported")
        if name in inputs:
            raise InvalidInput(f"{where}: input '{name}' is given twice")
        if datatype != spec.v2_datatype:
            raise InvalidInput(f"{where}: input '{name}' expects datatype {spec.v2_datatype}, "
                               f"received {datatype[:32]}")
        check_shape(shape, spec, where=where, max_instances=limits.max_instances)
        size = _parameters(tensor, where).get("binary_data_size")
        if size is not None:
            if binary is None:
                raise InvalidInput(f"{where}: binary_data_size is set but the request has no "
                                   "Inference-Header-Content-Length header")
            array = _from_bytes(binary, offset, size, shape, spec, where)
            offset += size
        else:
            if "data" not in tensor:
                raise InvalidInput(f"{where}: input '{name}' has no 'data'")
            array = _from_json(tensor["data"], shape, where)
        inputs[name] = to_batch(array, spec, where=where)
    missing = [s.name for s in signature.inputs if s.name not in inputs]
    if missing:
        raise InvalidInput(f"Missing inputs {missing}; the model takes {[s.name for s in signature.inputs]}")
    if binary is not None and offset != len(binary):
        raise InvalidInput(f"The request carries {len(binary) - offset} binary bytes that no input claims")
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"All inputs must have the same batch size. Received sizes {sorted(sizes)}")

    all_binary = _flag(_parameters(request, "request"), "binary_data_output", False, "request")
    wanted = request.get("outputs")
    if wanted is None:
        names = tuple(s.name for s in signature.outputs)
        binary_outputs = frozenset(names if all_binary else ())
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                   for o in wanted):
            raise InvalidInput("'outputs' must be a list of objects with a 'name'")
        names = tuple(signature.output(o["name"]).name for o in wanted)
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise InvalidInput(f"'outputs' asks for '{twice}' more than once; name each output at most once")
        binary_outputs = frozenset(o["name"] for o in wanted
                                   if _flag(_parameters(o, f"output '{o['name']}'"), "binary_data", all_binary,
                                            f"output '{o['name']}'"))
    return InferRequest(id=request_id, inputs=inputs, outputs=names, binary_outputs=binary_outputs)


def encode_infer(model: str, version: int, request: InferRequest, outputs: dict[str, np.ndarray],
                 limits: RequestLimits) -> tuple[bytes, dict[str, str]]:
    """The ``infer`` answer as ``(body, headers)``: JSON, or JSON plus binary outputs."""
    jsonbody.check_answer_size([outputs[n] for n in request.outputs if n not in request.binary_outputs],
                               limits.max_response_bytes,
                               binary=[outputs[n] for n in request.outputs if n in request.binary_outputs])
    tensors, blobs = [], []
    for name in request.outputs:
        tensor, raw = v2_tensor(name, outputs[name], name in request.binary_outputs)
        tensors.append(tensor)
        if raw is not None:
            blobs.append(raw)
    body: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    head = jsonbody.dumps(body)
    size = len(head) + sum(len(b) for b in blobs)
    if size > limits.max_response_bytes:
        raise jsonbody.answer_too_large(size, limits.max_response_bytes)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def server_metadata_body(version: str) -> dict[str, Any]:
    return {"name": "maas", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata_body(model: str, versions: list[int], signature: Signature) -> dict[str, Any]:
    return {
        "name": model,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [s.v2_metadata() for s in signature.inputs],
        "outputs": [s.v2_metadata() for s in signature.outputs],
    }


# ---- internals -------------------------------------------------------------------------------


def _tensor_header(tensor: Any, where: str) -> tuple[str, list[int], str]:
    if not isinstance(tensor, dict):
        raise InvalidInput(f"{where}: each input must be an object with name, shape, datatype and data")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str):
        raise InvalidInput(f"{where}: 'name' must be a string. Received: {_short(name)}")
    if not isinstance(shape, list) or len(shape) > 32 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of at most 32 non-negative integers. "
                           f"Received: {_short(shape)}")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where}: 'datatype' must be a string such as FP32. Received: {_short(datatype)}")
    return name, shape, datatype


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    return params


def _flag(params: dict[str, Any], name: str, default: bool, where: str) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameter '{name}' must be true or false. Received: {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _from_json(data: Any, shape: list[int], where: str) -> np.ndarray:
    """Tensor data may be flat or nested; it is read in row-major order and given ``shape``."""
    try:
        array = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{where}: 'data' is ragged (nested lists of different lengths)") from None
    if array.dtype == object:
        raise InvalidInput(f"{where}: 'data' is ragged or mixes types")
    if array.size != math.prod(shape):
        raise InvalidInput(f"{where}: shape {shape} needs {math.prod(shape)} values, 'data' has {array.size}")
    return array.reshape(shape)


def _from_bytes(binary: bytes, offset: int, size: Any, shape: list[int], spec: TensorSpec, where: str) -> np.ndarray:
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(size, int) or isinstance(size, bool) or size != expected:
        raise InvalidInput(f"{where}: binary_data_size must be {expected} bytes for shape {shape} of "
                           f"{spec.v2_datatype}. Received: {_short(size)}")
    if offset + size > len(binary):
        raise InvalidInput(f"{where}: the request ends before this input's {size} binary bytes")
    return np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
