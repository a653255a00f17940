"""The models a serving replica holds: loaded versions (LRU), dynamic batching and the forward pass.

It lives in the same process as the HTTP ingress: a request goes from HAProxy to a replica and is
answered there, with no second hop between processes (that hop cost more than the model itself for
small models; see the benchmarks in the README).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, PositiveInt
from ray import serve

from maas.errors import InferenceError, MaasError, ServerBusy
from maas.registry import Registry
from maas.serving.runtime import LoadedModel, load_saved_model
from maas.serving.stats import batch_size_histogram

BUSY = "Model server queues are full; retry later"


class BatchConfig(BaseModel):
    """``user_config`` of the ModelServer deployment: changeable without restarting replicas."""

    max_batch_size: PositiveInt = Field(32, description="Most instances-requests combined into one forward pass.")
    batch_wait_timeout_s: float = Field(0.002, ge=0, description="Longest wait for a batch to fill.")
    max_pending_predictions: PositiveInt = Field(
        512, description="Predictions waiting or running in one replica; beyond it requests get 503 + Retry-After.")


DEFAULT_BATCHING = BatchConfig()  # until the deployment's user_config arrives


def model_id(model: str, version: int) -> str:
    """The cache key of a version (``:`` never occurs in model names)."""
    return f"{model}:{version}"


def parse_model_id(key: str) -> tuple[str, int]:
    model, _, version = key.rpartition(":")
    return model, int(version)


class ModelHost:
    """Holds up to ``max_models`` loaded versions (LRU, Serve's ``@serve.multiplexed`` cache) and runs
    dynamically batched predictions on them. Created inside a Serve replica."""

    def __init__(self, registry: Registry, *, max_models: int) -> None:
        self._registry = registry
        self.config = DEFAULT_BATCHING
        self._pending = 0
        self._batch_size = batch_size_histogram()
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}

        async def load(key: str) -> LoadedModel:  # a plain function: Serve keeps its cache on it
            # A request that times out (504) is cancelled; the load it started goes on, shielded, and
            # the next request for that version takes its result instead of starting another load.
            task = self._loading.get(key)
            if task is None:
                task = self._loading[key] = asyncio.ensure_future(self._load_version(key))
            try:
                return await asyncio.shield(task)  # cancelled here: the running task stays for the next
            finally:
                if task.done() and self._loading.get(key) is task:  # claimed, or failed: a later
                    del self._loading[key]  # request that finds the version unloaded loads it anew

        self._load = serve.multiplexed(max_num_models_per_replica=max_models)(load)

    def reconfigure(self, config: BatchConfig) -> None:
        self.config = config
        self._run_batch.set_max_batch_size(config.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    async def predict(self, model: str, version: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request's outputs, computed in a batch with the requests that arrived beside it."""
        if self._pending >= self.config.max_pending_predictions:
            raise ServerBusy(BUSY)
        self._pending += 1
        try:
            result = await self._run_batch((model, version), inputs)
        finally:
            self._pending -= 1
        if isinstance(result, Exception):  # the batch hands a failed group's error back as a value
            raise result
        return result

    # Up to 4 batches at once: a batch waiting for a version to load does not hold up the others.
    @serve.batch(max_batch_size=DEFAULT_BATCHING.max_batch_size,
                 batch_wait_timeout_s=DEFAULT_BATCHING.batch_wait_timeout_s, max_concurrent_batches=4)
    async def _run_batch(
        self, keys: list[tuple[str, int]], inputs: list[dict[str, np.ndarray]]
    ) -> list[dict[str, np.ndarray] | Exception]:
        results: list[dict[str, np.ndarray] | Exception] = [None] * len(keys)  # type: ignore[list-item]
        groups: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)

        async def run_group(key: tuple[str, int], members: list[int]) -> None:
            try:
                loaded = await self._load(model_id(*key))
                merged = {name: np.concatenate([inputs[i][name] for i in members]) for name in inputs[members[0]]}
                self._batch_size.observe(len(next(iter(merged.values()))),
                                         tags={"model": key[0], "version": str(key[1])})
                outputs = await run_forward_pass(loaded, merged)
            except Exception as exc:  # one bad group must not fail the others
                for i in members:
                    results[i] = exc
                return
            start = 0
            for i in members:
                n = next(iter(inputs[i].values())).shape[0]
                results[i] = {name: value[start : start + n] for name, value in outputs.items()}
                start += n

        await asyncio.gather(*(run_group(key, members) for key, members in groups.items()))  # a load blocks no group
        return results

    async def _load_version(self, key: str) -> LoadedModel:
        model, version = parse_model_id(key)
        warm_batch_size = self.config.max_batch_size

        def load() -> LoadedModel:  # in a thread: fetching the artifact (S3, GCS) must not block the loop
            return load_saved_model(model, version, self._registry.local_path(model, version),
                                    warm_batch_size=warm_batch_size)

        try:
            return await asyncio.to_thread(load)
        except MaasError:
            raise
        except Exception as exc:  # a missing or corrupt artifact: say which, keep serving the others
            raise InferenceError(f"{model} version {version} could not be loaded: {type(exc).__name__}: {exc}") from exc


INLINE_PASS_S = 0.002


async def run_forward_pass(loaded: LoadedModel, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Short passes run right on the event loop: handing them to a thread costs more than the pass
    (GIL hand-over and wake-up take milliseconds). Long ones run in a thread, where TensorFlow
    releases the GIL and the loop goes on reading requests meanwhile."""
    if loaded.recent_pass_s < INLINE_PASS_S:
        return loaded.predict(inputs)
    return await asyncio.to_thread(loaded.predict, inputs)
