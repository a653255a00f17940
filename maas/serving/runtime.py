"""Model runtime: load a SavedModel version, check what its graph may do, warm it up, predict a batch.
No HTTP here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.errors import InferenceError, InvalidInput, ModelUnavailable
from maas.serving.attribution import Attributions, integrated_gradients
from maas.serving.graph_policy import refused_ops
from maas.signature import Signature

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: str
    version: int
    signature: Signature
    load_seconds: float
    _fn: Any  # the SavedModel's serving_default concrete function: one graph for every batch size
    _root: Any = None  # the loaded SavedModel, which owns the variables _fn reads (gradients need them alive)
    instance_s: float = 0.0  # moving average of a pass's duration per instance (from the warm-up's, which
    #                          traces: an over-estimate that the next passes correct)
    on_unload: Callable[[], None] | None = None  # told when Serve's LRU cache drops this version

    def __del__(self) -> None:
        """Serve's ``@serve.multiplexed`` cache calls ``__del__`` on the version it evicts."""
        if self.on_unload is not None:
            self.on_unload()

    def expected_pass_s(self, n: int) -> float:
        """How long a pass over ``n`` instances is expected to take."""
        return self.instance_s * n

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are already validated against :attr:`signature`."""
        import tensorflow as tf

        n = len(next(iter(inputs.values())))
        started = time.perf_counter()
        try:
            out = self._fn(**{name: tf.constant(value) for name, value in inputs.items()})
            result = {name: tensor.numpy() for name, tensor in out.items()}
        except tf.errors.InvalidArgumentError as exc:  # the input, as TF Serving maps it: a 400
            raise InvalidInput(f"{self.model} version {self.version} refused the input: "
                               f"{_first_line(exc.message)}") from None
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise InferenceError(f"{self.model} version {self.version} failed: {type(exc).__name__}: "
                                 f"{_first_line(str(exc))}") from exc
        self.instance_s += 0.2 * ((time.perf_counter() - started) / max(n, 1) - self.instance_s)
        return result

    def explain(self, inputs: dict[str, np.ndarray], baseline: dict[str, np.ndarray], *, steps: int, output: str,
                target: int | None) -> Attributions:
        """Integrated-gradients attributions (:mod:`maas.serving.attribution`) on the serving function.
        Inputs are already validated against :attr:`signature`."""
        import tensorflow as tf

        what = f"{self.model} version {self.version}"
        try:
            return integrated_gradients(self._fn, inputs, baseline, steps=steps, output=output, target=target,
                                        what=what)
        except LookupError as exc:  # "No gradient defined for operation ...": not differentiable
            raise InvalidInput(f"{what} cannot be explained: its serving function is not differentiable "
                               f"({_first_line(str(exc))})") from None
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidInput(f"{what} refused the input: {_first_line(exc.message)}") from None
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise InferenceError(f"{what} failed to explain: {type(exc).__name__}: "
                                 f"{_first_line(str(exc))}") from exc


def load_saved_model(model: str, version: int, path: str, *, warm_batch_size: int = 1,
                     allowed_ops: frozenset[str] = frozenset()) -> LoadedModel:
    """Check the graph (:mod:`maas.serving.graph_policy`), load ``path`` and warm it up with one
    all-zeros batch of ``warm_batch_size`` (the largest a batch will be): the first call traces and
    allocates, so that no request pays for it. The signature's batch dimension is unknown (-1), so
    every batch size runs this one graph, untraced."""
    import tensorflow as tf

    refused = refused_ops(path) - allowed_ops
    if refused:
        raise ModelUnavailable(
            f"{model} version {version} is refused: its serving graph uses {', '.join(sorted(refused))}, which "
            "can read or write files or run code on the serving node. If that is intended, list them in the "
            "version's metadata as allowed_ops")
    started = time.perf_counter()
    root = tf.saved_model.load(path)
    fn = root.signatures["serving_default"]
    signature = Signature.from_concrete_function(fn)
    loaded = LoadedModel(model=model, version=version, signature=signature, load_seconds=0.0, _fn=fn, _root=root)
    loaded.predict({s.name: np.zeros((warm_batch_size, *[max(d, 1) for d in s.item_shape]), dtype=s.dtype)
                    for s in signature.inputs})
    loaded.load_seconds = time.perf_counter() - started
    logger.info("loaded %s version %d in %.2fs", model, version, loaded.load_seconds)
    return loaded


def _first_line(message: str) -> str:
    """An error's first line, cut short: TensorFlow's messages carry graph dumps and stack traces."""
    return message.strip().splitlines()[0][:300] if message.strip() else ""
