"""Model runtime: load a SavedModel version, warm it up, predict a batch. No HTTP here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.errors import InferenceError
from maas.signature import Signature

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: str
    version: int
    signature: Signature
    load_seconds: float
    _fn: Any  # the SavedModel's serving_default concrete function: one graph for every batch size
    recent_pass_s: float = 0.0  # moving average of a forward pass's duration (from the warm-up's, which traces:
    #                             an over-estimate that the next passes correct)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are already validated against :attr:`signature`."""
        import tensorflow as tf

        started = time.perf_counter()
        try:
            out = self._fn(**{name: tf.constant(value) for name, value in inputs.items()})
            result = {name: tensor.numpy() for name, tensor in out.items()}
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise InferenceError(f"{self.model} version {self.version} failed: {exc}") from exc
        self.recent_pass_s += 0.2 * (time.perf_counter() - started - self.recent_pass_s)
        return result


def load_saved_model(model: str, version: int, path: str, *, warm_batch_size: int = 1) -> LoadedModel:
    """Load ``path`` and warm it up with one all-zeros batch of ``warm_batch_size`` (the largest a
    batch will be): the first call traces and allocates, so that no request pays for it. The
    signature's batch dimension is unknown (-1), so every batch size runs this one graph, untraced."""
    import tensorflow as tf

    started = time.perf_counter()
    fn = tf.saved_model.load(path).signatures["serving_default"]
    signature = Signature.from_concrete_function(fn)
    loaded = LoadedModel(model=model, version=version, signature=signature, load_seconds=0.0, _fn=fn)
    loaded.predict({s.name: np.zeros((warm_batch_size, *[max(d, 1) for d in s.item_shape]), dtype=s.dtype)
                    for s in signature.inputs})
    loaded.load_seconds = time.perf_counter() - started
    logger.info("loaded %s version %d in %.2fs", model, version, loaded.load_seconds)
    return loaded
