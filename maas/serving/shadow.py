"""Shadow versions: a share of routed requests is also predicted by another version, after the answer
has been computed, and only compared, never returned.

``maas models label m shadow V --weight 0.2`` sends 20% of the routed requests (naming neither a
version nor a label) also to version ``V``. The data plane starts the shadow prediction in the
background once the answer is ready, at most ``max_concurrent`` per replica (beyond, the shadow is
skipped and counted), with the request timeout as its own deadline; it runs outside the shared
batcher (:meth:`maas.serving.host.ModelHost.predict_alone`), so a slow shadow never holds up a
batch of client requests. A :class:`ShadowMonitor` keeps, per model and shadow label, the figures
the status and the metrics show: comparisons, errors, skipped ones, the agreement with the answering
version (classification: the same top class; otherwise the mean absolute difference) and both
versions' latencies. A label set again (a new label id) starts its figures afresh.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field, PositiveInt

SHADOW_LABEL = "shadow"
_LATENCIES = 1000  # latencies kept per shadow, for its percentiles


class ShadowPolicy(BaseModel):
    """Bounds on shadow predictions (``args.shadow`` in the Serve config)."""

    model_config = {"extra": "forbid"}

    max_concurrent: PositiveInt = Field(
        default=4, description="Shadow predictions one replica runs at once; beyond, a shadow is skipped (counted).")


def compare(answer: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> tuple[float, bool] | None:
    """How far ``shadow`` is from ``answer``, over the outputs both have: ``(agreement, True)`` for
    outputs of several values per instance (the share of instances with the same top class), else
    ``(mean absolute difference, False)``; ``None`` when they share no output of the same shape."""
    names = [k for k in answer if k in shadow and shadow[k].shape == answer[k].shape]
    if not names:
        return None
    a, s = answer[names[0]], shadow[names[0]]
    n = a.shape[0]
    flat_a, flat_s = a.reshape(n, -1), s.reshape(n, -1)
    if flat_a.shape[1] > 1:
        return float((flat_a.argmax(axis=1) == flat_s.argmax(axis=1)).mean()), True
    return float(np.abs(flat_a.astype(np.float64) - flat_s).mean()), False


@dataclass
class ShadowFigures:
    """One shadow label's figures on this replica."""

    version: int
    label_id: str
    compared: int = 0  # requests whose shadow answered and was compared (instances weigh in `agreement`)
    errors: int = 0  # the shadow failed (its load, its model, its deadline, a signature it does not share)
    skipped: int = 0  # max_concurrent shadows were running already
    instances: int = 0
    agreeing: float = 0.0  # instances with the same top class (classification)
    abs_diff: float = 0.0  # sum over requests of their mean absolute difference, weighted by instances
    classification: bool | None = None
    shadow_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCIES))
    answer_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCIES))

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.instances if self.classification and self.instances else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff / self.instances if self.classification is False and self.instances else None


class ShadowMonitor:
    def __init__(self) -> None:
        self._figures: dict[str, ShadowFigures] = {}

    def figures(self, model: str, version: int, label_id: str) -> ShadowFigures:
        """The figures of ``model``'s shadow label ``label_id`` (new when the label was set again)."""
        found = self._figures.get(model)
        if found is None or found.label_id != label_id or found.version != version:
            found = self._figures[model] = ShadowFigures(version, label_id)
        return found

    def current(self, model: str) -> ShadowFigures | None:
        return self._figures.get(model)

    def forget(self, model: str) -> None:
        self._figures.pop(model, None)
