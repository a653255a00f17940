"""TensorFlow Serving REST API codec: routes, predict request decoding, response bodies.

Follows https://www.tensorflow.org/tfx/serving/api_rest to the letter: row (``instances``) and
columnar (``inputs``) requests, ``predictions`` / ``outputs`` answers, model status and metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from maas.errors import InvalidInput
from maas.registry import parse_version
from maas.serving import jsonbody
from maas.signature import Signature, TensorSpec, to_batch

_ROUTE = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|/(?P<metadata>metadata))?$"
)

RouteKind = Literal["status", "metadata", "predict"]


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    model: str
    version: int | None = None
    label: str | None = None

    @property
    def method(self) -> str:
        return "POST" if self.kind == "predict" else "GET"


def match_route(path: str) -> Route | None:
    """Parse a ``/v1/models/...`` path; ``None`` if it is not a TF Serving route.

    Raises :class:`InvalidInput` for a route of the right form with an invalid version.
    """
    m = _ROUTE.match(path)
    if m is None:
        return None
    version = parse_version(m["version"])
    if m["verb"] in ("classify", "regress"):
        raise InvalidInput(f":{m['verb']} is not supported; use :predict")
    kind: RouteKind = "predict" if m["verb"] else ("metadata" if m["metadata"] else "status")
    return Route(kind=kind, model=m["model"], version=version, label=m["label"])


@dataclass(frozen=True)
class PredictRequest:
    inputs: dict[str, np.ndarray]
    row_format: bool  # "instances" (answer "predictions") vs "inputs" (answer "outputs")

    @property
    def batch_size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


def decode_predict(body: bytes, signature: Signature) -> PredictRequest:
    """Decode and validate a ``:predict`` body against ``signature``."""
    request = jsonbody.parse(body)
    if not isinstance(request, dict):
        raise InvalidInput("Request body must be a JSON object with 'instances' or 'inputs'")
    name = request.get("signature_name", "serving_default")
    if name != "serving_default":
        raise InvalidInput(f"Unknown signature_name {name!r}; this model has 'serving_default'")
    has_rows, has_cols = "instances" in request, "inputs" in request
    if has_rows == has_cols:
        raise InvalidInput("Request must contain exactly one of 'instances' (row format) or 'inputs' (columnar)")
    if has_rows:
        inputs = _decode_rows(request["instances"], signature)
    else:
        inputs = _decode_columns(request["inputs"], signature)
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"All inputs must have the same batch size. Received sizes {sorted(sizes)}")
    if sizes == {0}:
        raise InvalidInput("Request has no instances")
    return PredictRequest(inputs=inputs, row_format=has_rows)


def _decode_rows(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidInput("'instances' must be a list")
    if not instances:
        raise InvalidInput("Request has no instances")
    specs = signature.inputs
    if all(isinstance(i, dict) for i in instances):
        names = {s.name for s in specs}
        for i, inst in enumerate(instances):
            if set(inst) != names:
                raise InvalidInput(
                    f"instances[{i}] has keys {sorted(inst)}; the model takes {sorted(names)}"
                )
        return {s.name: to_batch([inst[s.name] for inst in instances], s, where="instances") for s in specs}
    if len(specs) != 1:
        raise InvalidInput(f"The model takes {len(specs)} inputs: each instance must be an object naming them")
    return {specs[0].name: to_batch(instances, specs[0], where="instances")}


def _decode_columns(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if isinstance(inputs, dict):
        names = {s.name for s in specs}
        if set(inputs) != names:
            raise InvalidInput(f"'inputs' has keys {sorted(inputs)}; the model takes {sorted(names)}")
        return {s.name: to_batch(inputs[s.name], s, where=f"inputs.{s.name}") for s in specs}
    if len(specs) != 1:
        raise InvalidInput(f"The model takes {len(specs)} inputs: 'inputs' must be an object naming them")
    return {specs[0].name: to_batch(inputs, specs[0], where="inputs")}


def encode_predict(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """The ``:predict`` answer: one output is returned bare, several as objects keyed by name."""
    if row_format:
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        n = next(iter(outputs.values())).shape[0]
        return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]}
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


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
