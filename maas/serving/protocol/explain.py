"""KServe V1 ``:explain``: its routes, request decoding and answer, and the bounds on its work.

``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:explain`` takes a ``:predict`` body (``instances``
or ``inputs``) and, optionally, how to explain it::

    {"instances": [...], "baseline": "zeros" | "training_mean", "steps": 50, "output": "probabilities",
     "target": 3}

and answers as KServe's V1 protocol does, ``{"predictions": [...], "explanations": [...]}``: the
predictions of ``:predict`` in row format, and for each instance the integrated-gradients attributions
of every input element (:mod:`maas.serving.attribution`) with what they explain. An explanation costs
``steps + 1`` forward and backward passes per instance, so its steps and instances are bounded
(:class:`ExplainPolicy`, ``args.explain`` in the Serve config). Pure functions over bytes and numpy.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt, model_validator

from maas.errors import InvalidInput, PayloadTooLarge
from maas.serving.attribution import BASELINES, METHOD, Attributions, ExplainArgs
from maas.serving.protocol import jsonbody
from maas.serving.protocol.limits import RequestLimits
from maas.serving.protocol.routes import Route, RouteTable
from maas.serving.protocol.tfserving import predict_request
from maas.signature import Signature

PROTOCOL = "explain"  # the metrics' protocol tag: explanations' latencies are not predictions'
_FIELDS = ("instances", "inputs", "signature_name", "baseline", "steps", "output", "target")


class ExplainPolicy(BaseModel):
    """Bounds on ``:explain`` (``args.explain`` in the Serve config)."""

    model_config = {"extra": "forbid"}

    steps: PositiveInt = Field(default=50, description="Integration steps of a request that names none.")
    max_steps: PositiveInt = Field(default=256, description="Most steps a request may ask for; more get HTTP 400.")
    max_instances: PositiveInt = Field(
        default=16, description="Instances one explanation request may carry (each costs steps + 1 gradient "
                                "passes); more get HTTP 413.")
    max_path_values: PositiveInt = Field(
        default=64 * 1024 * 1024, description="Input values along all the paths of one request (instances x "
                                              "(steps + 1) x values per instance); more get HTTP 413.")
    max_concurrent: PositiveInt = Field(
        default=1, description="Explanations one replica computes at once, in a thread beside its predictions.")
    max_waiting: NonNegativeInt = Field(
        default=8, description="Explanations waiting for one of those per replica; beyond, HTTP 503 + Retry-After.")

    @model_validator(mode="after")
    def _steps_within_bound(self) -> Self:
        if self.steps > self.max_steps:
            raise ValueError(f"steps ({self.steps}) must be at most max_steps ({self.max_steps})")
        return self


def _routes() -> list[Route]:
    return [Route(PROTOCOL, "explain", "POST", "/v1/models/{model}" + suffix + ":explain",
                  "Explain predictions: integrated-gradients attributions per input element (KServe V1)",
                  "Explanations", request_body={"schema": "ExplainRequest"},
                  ok={"schema": "ExplainResponse", "headers": ["Model-Version"]},
                  errors=(400, 401, 403, 404, 408, 413, 503, 504))
            for suffix in ("", "/versions/{version}", "/labels/{label}")]


ROUTES = RouteTable(_routes())


def decode_explain(body: bytes, signature: Signature, limits: RequestLimits, policy: ExplainPolicy) -> ExplainArgs:
    """Decode and validate an ``:explain`` body against ``signature`` and ``policy``. Unknown fields
    are refused: a misspelt ``step`` must not silently explain with the default."""
    request = jsonbody.parse(body, max_depth=limits.max_json_depth)
    if not isinstance(request, dict):
        raise InvalidInput("Request body must be a JSON object with 'instances' or 'inputs'")
    unknown = sorted(str(k)[:64] for k in request if k not in _FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown field{'s' if len(unknown) > 1 else ''} {unknown[:8]}; :explain takes "
                           f"{list(_FIELDS)}")
    baseline = request.get("baseline", "zeros")
    if baseline not in BASELINES:
        raise InvalidInput(f"'baseline' must be one of {list(BASELINES)}. Received: {_short(baseline)}")
    steps = request.get("steps", policy.steps)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= policy.max_steps:
        raise InvalidInput(f"'steps' must be an integer from 1 to {policy.max_steps} (max_steps). "
                           f"Received: {_short(steps)}")
    outputs = [s.name for s in signature.outputs]
    output = request.get("output", outputs[0] if len(outputs) == 1 else None)
    if output is None:
        raise InvalidInput(f"This model has {len(outputs)} outputs: name the one to explain in 'output', one of "
                           f"{outputs}")
    if output not in outputs:
        raise InvalidInput(f"'output' must be one of {outputs}. Received: {_short(output)}")
    target = request.get("target")
    if target is not None and (not isinstance(target, int) or isinstance(target, bool) or target < 0):
        raise InvalidInput(f"'target' must be a position in the output (an integer from 0). Received: "
                           f"{_short(target)}")
    inputs = predict_request(request, signature, limits).inputs
    n = int(next(iter(inputs.values())).shape[0])
    if n > policy.max_instances:
        raise PayloadTooLarge(f"An explanation request may carry {policy.max_instances} instances "
                              f"(max_instances of args.explain); this one has {n}")
    values = n * (steps + 1) * sum(int(np.prod(v.shape[1:])) for v in inputs.values())
    if values > policy.max_path_values:
        raise PayloadTooLarge(f"This explanation would evaluate {values} input values ({n} instances x {steps + 1} "
                              f"points); the limit is {policy.max_path_values} (max_path_values of args.explain): "
                              "ask for fewer instances or steps")
    return ExplainArgs(inputs=inputs, baseline=baseline, steps=steps, output=output, target=target)


def encode_explain(found: Attributions, request: ExplainArgs, limits: RequestLimits) -> bytes:
    """``{"predictions": [...], "explanations": [...]}``: one explanation per instance, whose
    ``attributions`` have the instance's shape (an object of them by input name when the model takes
    several inputs)."""
    jsonbody.check_answer_size([*found.outputs.values(), *found.attributions.values()], limits.max_response_bytes)
    n = found.target.shape[0]
    if len(found.outputs) == 1:
        predictions: Any = next(iter(found.outputs.values()))
    else:
        predictions = [{k: v[i] for k, v in found.outputs.items()} for i in range(n)]
    single = len(found.attributions) == 1
    delta = found.delta
    explanations = [{
        "method": METHOD, "baseline": request.baseline, "steps": request.steps, "output": found.output,
        "target": int(found.target[i]), "prediction": float(found.prediction[i]),
        "baseline_prediction": float(found.baseline_prediction[i]), "delta": float(delta[i]),
        "attributions": (next(iter(found.attributions.values()))[i] if single
                         else {k: v[i] for k, v in found.attributions.items()}),
    } for i in range(n)]
    return jsonbody.dumps_bounded({"predictions": predictions, "explanations": explanations},
                                  limits.max_response_bytes)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
