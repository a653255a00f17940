"""TensorFlow Serving REST API: its routes, predict request decoding, response bodies.

Follows https://www.tensorflow.org/tfx/serving/api_rest to the letter: row (``instances``) and
columnar (``inputs``) requests, ``predictions`` / ``outputs`` answers, model status and metadata.
Pure functions over bytes and numpy: no HTTP server, no Ray, no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.errors import InvalidInput, PayloadTooLarge
from maas.serving.protocol import jsonbody
from maas.serving.protocol.limits import RequestLimits
from maas.serving.protocol.routes import Route, RouteTable
from maas.signature import Signature, TensorSpec, to_batch

PROTOCOL = "tfserving"
_TAG = "TensorFlow Serving"
_READ_ERRORS = (400, 401, 403, 404, 503)
_PREDICT_ERRORS = (400, 401, 403, 404, 408, 413, 503, 504)


def _routes() -> list[Route]:
    routes = []
    for suffix in ("", "/versions/{version}", "/labels/{label}"):
        base = "/v1/models/{model}" + suffix
        routes += [
            Route(PROTOCOL, "status", "GET", base, "Model version status", _TAG, ok={"schema": "ModelStatus"},
                  errors=_READ_ERRORS),
            Route(PROTOCOL, "metadata", "GET", base + "/metadata", "Model metadata (signature_def)", _TAG,
                  ok={"schema": "ModelMetadata"}, errors=_READ_ERRORS),
            Route(PROTOCOL, "predict", "POST", base + ":predict", "Predict (row or columnar format)", _TAG,
                  request_body={"schema": "PredictRequest"},
                  ok={"schema": "PredictResponse", "headers": ["Model-Version"]}, errors=_PREDICT_ERRORS),
            Route(PROTOCOL, "classify", "POST", base + ":classify", "Classify: not supported (use :predict)",
                  _TAG, request_body={"schema": "AnyJson"}, errors=(400, 401, 403, 404)),
            Route(PROTOCOL, "regress", "POST", base + ":regress", "Regress: not supported (use :predict)",
                  _TAG, request_body={"schema": "AnyJson"}, errors=(400, 401, 403, 404)),
        ]
    return routes


ROUTES = RouteTable(_routes())


@dataclass(frozen=True)
class PredictRequest:
    inputs: dict[str, np.ndarray]
    row_format: bool  # "instances" (answer "predictions") vs "inputs" (answer "outputs")


def decode_predict(body: bytes, signature: Signature, limits: RequestLimits) -> PredictRequest:
    """Decode and validate a ``:predict`` body against ``signature``."""
    request = jsonbody.parse(body, max_depth=limits.max_json_depth)
    if not isinstance(request, dict):
        raise InvalidInput("Request body must be a JSON object with 'instances' or 'inputs'")
    return predict_request(request, signature, limits)


def predict_request(request: dict[str, Any], signature: Signature, limits: RequestLimits) -> PredictRequest:
    """The inputs of a decoded ``:predict`` document (``:explain`` takes the same, and more)."""
    name = request.get("signature_name", "serving_default")
    if name != "serving_default":
        raise InvalidInput(f"Unknown signature_name {_short(name)}; this model has 'serving_default'")
    has_rows, has_cols = "instances" in request, "inputs" in request
    if has_rows == has_cols:
        raise InvalidInput("Request must contain exactly one of 'instances' (row format) or 'inputs' (columnar)")
    if has_rows:
        inputs = _decode_rows(request["instances"], signature, limits)
    else:
        inputs = _decode_columns(request["inputs"], signature, limits)
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"All inputs must have the same batch size. Received sizes {sorted(sizes)}")
    if sizes == {0}:
        raise InvalidInput("Request has no instances")
    return PredictRequest(inputs=inputs, row_format=has_rows)


def _check_count(values: Any, where: str, limits: RequestLimits) -> None:
    """Bound the instances before any of them is converted."""
    if isinstance(values, list) and len(values) > limits.max_instances:
        raise PayloadTooLarge(f"'{where}' has {len(values)} instances; the limit is {limits.max_instances} "
                              "(max_instances)")


def _decode_rows(instances: Any, signature: Signature, limits: RequestLimits) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidInput("'instances' must be a list")
    if not instances:
        raise InvalidInput("Request has no instances")
    _check_count(instances, "instances", limits)
    specs = signature.inputs
    if all(isinstance(i, dict) for i in instances):
        names = {s.name for s in specs}
        for i, inst in enumerate(instances):
            if set(inst) != names:
                raise InvalidInput(f"instances[{i}] has keys {_names(inst)}; the model takes {sorted(names)}")
        return {s.name: to_batch([inst[s.name] for inst in instances], s, where="instances") for s in specs}
    if len(specs) != 1:
        raise InvalidInput(f"The model takes {len(specs)} inputs: each instance must be an object naming them")
    return {specs[0].name: to_batch(instances, specs[0], where="instances")}


def _decode_columns(inputs: Any, signature: Signature, limits: RequestLimits) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if isinstance(inputs, dict):
        names = {s.name for s in specs}
        if set(inputs) != names:
            raise InvalidInput(f"'inputs' has keys {_names(inputs)}; the model takes {sorted(names)}")
        for s in specs:
            _check_count(inputs[s.name], f"inputs.{s.name}", limits)
        return {s.name: to_batch(inputs[s.name], s, where=f"inputs.{s.name}") for s in specs}
    if len(specs) != 1:
        raise InvalidInput(f"The model takes {len(specs)} inputs: 'inputs' must be an object naming them")
    _check_count(inputs, "inputs", limits)
    return {specs[0].name: to_batch(inputs, specs[0], where="inputs")}


def encode_predict(outputs: dict[str, np.ndarray], row_format: bool, limits: RequestLimits) -> bytes:
    """The ``:predict`` answer: one output is returned bare, several as objects keyed by name."""
    jsonbody.check_answer_size(outputs.values(), limits.max_response_bytes)
    if row_format:
        if len(outputs) == 1:
            doc: dict[str, Any] = {"predictions": next(iter(outputs.values()))}
        else:
            n = next(iter(outputs.values())).shape[0]
            doc = {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}
    elif len(outputs) == 1:
        doc = {"outputs": next(iter(outputs.values()))}
    else:
        doc = {"outputs": outputs}
    return jsonbody.dumps_bounded(doc, limits.max_response_bytes)


def status_body(versions: list[int]) -> dict[str, Any]:
    """``GET /v1/models/{name}[/versions/{v}]``: every listed version is servable."""
    return {
        "model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in sorted(versions, reverse=True)
        ]
    }


def metadata_body(model: str, version: int, signature: Signature) -> dict[str, Any]:
    """``GET /v1/models/{name}[/versions/{v}]/metadata`` in TF Serving's SignatureDefMap JSON form."""

    def tensor_info(spec: TensorSpec, graph_name: str) -> dict[str, Any]:
        return {
            "dtype": spec.tf_serving_dtype,
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknown_rank": False},
            "name": graph_name,
        }

    return {
        "model_spec": {"name": model, "signature_name": "", "version": str(version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {s.name: tensor_info(s, f"serving_default_{s.name}:0") for s in signature.inputs},
                        "outputs": {
                            s.name: tensor_info(s, f"StatefulPartitionedCall:{i}")
                            for i, s in enumerate(signature.outputs)
                        },
                        "method_name": signature.method_name,
                    }
                }
            }
        },
    }


def _names(obj: dict[str, Any]) -> list[str]:
    """An object's keys for a message: at most 8, each cut short (a client chooses them)."""
    keys = sorted(str(k)[:64] for k in obj)
    return keys[:8] + (["…"] if len(keys) > 8 else [])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
