"""Explanations: integrated gradients (Sundararajan et al., 2017) on a version's serving function.

For an instance ``x``, a baseline ``b`` and one output value ``F`` (the explained class's probability,
or a regression's number), the attribution of input element ``j`` is

    (x_j - b_j) * integral over a in [0, 1] of dF/dx_j (b + a (x - b)) da

computed with the trapezoidal rule over ``steps`` intervals, in TensorFlow, on the very function that
serving calls (its preprocessing inside the model included). The attributions of an instance add up
to ``F(x) - F(b)`` up to the rule's error (*completeness*); ``delta`` reports that error, so a client
sees how far to trust them and may ask for more steps.

The path's points are computed in passes of at most :data:`PASS_VALUES` input values, so that an
explanation's memory does not grow with its steps. The checks that need no TensorFlow
(:func:`check_differentiable`, :func:`baseline_inputs`) are here too, for the data plane.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from maas.errors import InvalidInput
from maas.signature import Signature

Baseline = Literal["zeros", "training_mean"]
BASELINES: tuple[Baseline, ...] = ("zeros", "training_mean")
METHOD = "integrated_gradients"
PASS_VALUES = 1 << 21  # input values per gradient pass (8 MB of float32, before the model's own activations)
PASS_ROWS = 256  # ... and path points per pass at most: the model's activations under the tape stay bounded


@dataclass(frozen=True)
class ExplainArgs:
    """What an explanation request asks, whatever protocol carried it (validated)."""

    inputs: dict[str, np.ndarray]
    baseline: Baseline
    steps: int
    output: str
    target: int | None  # None: each instance's largest output value (its top class)


@dataclass(frozen=True)
class Attributions:
    """What :func:`integrated_gradients` found for ``n`` instances."""

    output: str  # the output explained
    outputs: dict[str, np.ndarray]  # every output at the instances: what :predict answers
    target: np.ndarray  # (n,) the position explained within one instance's (flattened) output
    prediction: np.ndarray  # (n,) that value at the instance
    baseline_prediction: np.ndarray  # (n,) ... and at the baseline
    attributions: dict[str, np.ndarray]  # per input: one value per input element, the instances' shape

    @property
    def delta(self) -> np.ndarray:
        """(n,) how far each instance's attributions are from adding up to its prediction's change."""
        total = sum(a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64) for a in self.attributions.values())
        return np.asarray(total - (self.prediction.astype(np.float64) - self.baseline_prediction), np.float64)


def check_differentiable(model: str, version: int, signature: Signature) -> None:
    """400 for a version with an input that is not floating point (ids, lookups, flags): the serving
    function has no gradient with respect to it."""
    refused = [f"'{s.name}' ({s.dtype})" for s in signature.inputs if not np.issubdtype(np.dtype(s.dtype),
                                                                                         np.floating)]
    if refused:
        raise InvalidInput(f"{model} version {version} cannot be explained: integrated gradients need inputs the "
                           f"model is differentiable with respect to (floating point), and it takes "
                           f"{', '.join(refused)}")


def baseline_inputs(kind: Baseline, inputs: Mapping[str, np.ndarray], training_mean: list[float] | None,
                    what: str) -> dict[str, np.ndarray]:
    """The baseline of each instance: zeros, or the training split's per-feature means (the last axis
    of the version's one input: a table's columns, a sequence's channels) from its metadata."""
    if kind == "zeros":
        return {name: np.zeros_like(value) for name, value in inputs.items()}
    if training_mean is None:
        raise InvalidInput(f"{what} has no training statistics in its metadata (preprocessing."
                           "training_split_stats): use the baseline 'zeros'")
    if len(inputs) != 1:
        raise InvalidInput(f"the baseline 'training_mean' needs a version with one input; {what} takes "
                           f"{len(inputs)}: use the baseline 'zeros'")
    (name, value), = inputs.items()
    mean = np.asarray(training_mean, dtype=value.dtype)
    if value.ndim < 2 or value.shape[-1] != mean.size:
        raise InvalidInput(f"the baseline 'training_mean' of {what} has {mean.size} feature means, and its input "
                           f"'{name}' has instances of shape {list(value.shape[1:])}: use the baseline 'zeros'")
    return {name: np.broadcast_to(mean, value.shape).copy()}


def integrated_gradients(fn: Callable[..., Mapping[str, Any]], inputs: Mapping[str, np.ndarray],
                         baseline: Mapping[str, np.ndarray], *, steps: int, output: str, target: int | None,
                         what: str, pass_values: int = PASS_VALUES) -> Attributions:
    """Attributions of every input element of ``inputs`` (validated, ``n`` instances) to ``output`` at
    ``target`` (default: per instance, the position of its largest value, the top class), against
    ``baseline``, over ``steps`` trapezoidal intervals. ``fn`` is a serving function (keyword inputs,
    a dict of output tensors)."""
    import tensorflow as tf

    n = int(next(iter(inputs.values())).shape[0])
    outputs = {name: tensor.numpy() for name, tensor in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    if output not in outputs:
        raise InvalidInput(f"{what} has no output '{output}'; it has {sorted(outputs)}")
    flat = outputs[output].reshape(n, -1)
    if target is None:
        targets = flat.argmax(axis=1) if flat.shape[1] > 1 else np.zeros(n, np.int64)
    elif target >= flat.shape[1]:
        raise InvalidInput(f"target {target} is past the end of output '{output}', which has {flat.shape[1]} "
                           f"value{'s' if flat.shape[1] != 1 else ''} per instance")
    else:
        targets = np.full(n, target, np.int64)

    points = steps + 1
    alphas = np.linspace(0.0, 1.0, points)
    weights = np.full(points, 1.0 / steps)
    weights[[0, -1]] /= 2  # the trapezoidal rule
    differences = {k: inputs[k] - baseline[k] for k in inputs}
    sums = {k: np.zeros(v.shape, np.float64) for k, v in inputs.items()}
    path = np.empty((n, points), np.float64)  # the explained value along each instance's path
    values_per_point = sum(int(np.prod(v.shape[1:])) for v in inputs.values())
    rows = max(1, min(PASS_ROWS, pass_values // max(values_per_point, 1)))
    for start in range(0, n * points, rows):
        r = np.arange(start, min(start + rows, n * points))
        i, s = r // points, r % points
        tensors = {k: tf.constant(baseline[k][i] + alphas[s].reshape(-1, *[1] * (v.ndim - 1)).astype(v.dtype)
                                  * differences[k][i]) for k, v in inputs.items()}
        with tf.GradientTape() as tape:
            for tensor in tensors.values():
                tape.watch(tensor)
            out = tf.reshape(fn(**tensors)[output], (len(r), -1))
            value = tf.cast(tf.gather(out, targets[i], axis=1, batch_dims=1), tf.float64)
        gradients = tape.gradient(value, tensors)
        for k, gradient in gradients.items():
            if gradient is None:
                raise InvalidInput(f"{what} cannot be explained: output '{output}' has no gradient with respect "
                                   f"to its input '{k}'")
            weighted = gradient.numpy().astype(np.float64) * weights[s].reshape(-1, *[1] * (gradient.shape.rank - 1))
            starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])  # the rows are in instance order
            sums[k][i[starts]] += np.add.reduceat(weighted, starts, axis=0)
        path[i, s] = value.numpy()
    return Attributions(output=output, outputs=outputs, target=targets, prediction=path[:, -1],
                        baseline_prediction=path[:, 0],
                        attributions={k: (differences[k] * sums[k]).astype(np.float32) for k in inputs})
