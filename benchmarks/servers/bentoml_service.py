"""BentoML with its adaptive batching, serving one SavedModel (``BENCH_MODEL_DIR``).

    BENCH_MODEL_DIR=... bentoml serve benchmarks.servers.bentoml_service:Predictor --port 8102

Runs from its own virtual environment (benchmarks/.venvs/bentoml): BentoML pins versions of its own.
``POST /predict {"instances": [...]}`` answers the predictions as a JSON list.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np


@bentoml.service(workers=1, traffic={"timeout": 60})
class Predictor:
    def __init__(self) -> None:
        import tensorflow as tf

        self._tf = tf
        self._fn = tf.saved_model.load(os.environ["BENCH_MODEL_DIR"]).signatures["serving_default"]
        ((self._input, spec),) = self._fn.structured_input_signature[1].items()
        self._dtype = spec.dtype.as_numpy_dtype

    @bentoml.api(batchable=True, max_batch_size=128, max_latency_ms=1000)
    def predict(self, instances: np.ndarray) -> np.ndarray:
        out = self._fn(**{self._input: self._tf.constant(instances.astype(self._dtype, copy=False))})
        return next(iter(out.values())).numpy()
