"""The models a serving replica holds: loaded versions (LRU), dynamic batching and the forward pass.

It lives in the same process as the HTTP and gRPC APIs: a request goes from HAProxy to a replica and is
answered there, with no second hop between processes (that hop cost more than the model itself for
small models; see the benchmarks in the README).

Batches count instances, not requests (``max_batch_size``): ``@serve.batch`` sums the instances of
the requests it gathers, so one pass never holds more than ``max_batch_size`` instances. A request
larger than that runs in passes of its own, ``max_batch_size`` instances each, in a thread. A pass
runs on the event loop only when it is known to be short *for its batch size* (the version's measured
time per instance, times the instances); any other runs in a thread, where TensorFlow releases the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from ray import serve

from maas.errors import InferenceError, MaasError, ModelUnavailable, ServerBusy, StorageUnavailable
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.serving.attribution import Attributions
from maas.serving.config import BatchConfig
from maas.serving.dataplane import PassTicket
from maas.serving.protocol.explain import ExplainPolicy
from maas.serving.runtime import LoadedModel, load_saved_model
from maas.serving.stats import batch_size_histogram
from maas.serving.status import LoadState

logger = logging.getLogger("ray.serve")

BUSY = "Model server queues are full; retry later"
INLINE_PASS_S = 0.002  # a pass expected to be shorter runs on the event loop: a thread hand-off costs more
FAILED_LOAD_RETRY_S = 5.0  # a version that failed to load is not tried again for this long


DEFAULT_BATCHING = BatchConfig()  # until the deployment's user_config arrives


def model_id(model: str, version: int) -> str:
    """The cache key of a version (``:`` never occurs in model names)."""
    return f"{model}:{version}"


def parse_model_id(key: str) -> tuple[str, int]:
    model, _, version = key.rpartition(":")
    return model, int(version)


_Shapes = tuple[tuple[str, tuple[int, ...]], ...]  # each input's name and instance shape


@dataclass
class _Item:
    """One request's share of a batch."""

    model: str
    version: int
    inputs: dict[str, np.ndarray]
    ticket: PassTicket

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def shapes(self) -> _Shapes:
        """The instance shape of each input: only requests alike in it can share a pass."""
        return tuple((name, value.shape[1:]) for name, value in sorted(self.inputs.items()))


def _instances(items: list[_Item]) -> int:
    return sum(item.size for item in items)


class ModelHost:
    """Holds up to ``max_models`` loaded versions (LRU, Serve's ``@serve.multiplexed`` cache) and runs
    dynamically batched predictions on them. Created inside a Serve replica."""

    def __init__(self, registry: Registry, artifacts: ArtifactCache, *, max_models: int,
                 explain: ExplainPolicy | None = None, shadow_threads: int = 4) -> None:
        self._registry = registry
        self._artifacts = artifacts
        self.config = DEFAULT_BATCHING
        self._explain = explain or ExplainPolicy()
        self._explain_slots = asyncio.Semaphore(self._explain.max_concurrent)
        self._explain_waiting = 0
        # Threads of their own: explanations and shadows that run long (or never end: a shadow version
        # blocked in its graph) must not take the default executor's threads, which loads use.
        self._explain_threads = ThreadPoolExecutor(self._explain.max_concurrent, thread_name_prefix="maas-explain")
        self._shadow_threads = ThreadPoolExecutor(shadow_threads, thread_name_prefix="maas-shadow")
        self._pending = 0
        self._batch_size = batch_size_histogram()
        # Loads under way, and finished ones not yet taken into Serve's cache by a request.
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._failed: dict[str, tuple[float, MaasError]] = {}  # the version's own faults, answered as they are
        self._retry_at: dict[str, float] = {}  # any failed load (storage too): not tried ahead of traffic before
        self._ready: dict[str, object] = {}  # loaded and warmed (in Serve's cache, or in _loading): key -> token
        self._warming: set[str] = set()  # loads started ahead of traffic (start_load), to report their failure

        async def load(key: str) -> LoadedModel:  # a plain function: Serve keeps its cache on it
            # A request that times out (504) is cancelled; the load it started goes on, shielded, and
            # the next request for that version takes its result instead of starting another load.
            # (A recent failure of the version's own was raised before Serve's cache: _loaded.)
            task = self._start(key)
            try:
                return await asyncio.shield(task)  # cancelled here: the running task stays for the next
            finally:
                if task.done() and self._loading.get(key) is task:  # claimed into Serve's cache
                    del self._loading[key]

        self._load: Callable[[str], Awaitable[LoadedModel]] = serve.multiplexed(
            max_num_models_per_replica=max_models)(load)

    def _start(self, key: str) -> asyncio.Task[LoadedModel]:
        """The load of ``key`` under way (or finished and unclaimed), else a new one."""
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.ensure_future(self._load_version(key))
            task.add_done_callback(lambda finished: self._load_done(key, finished))
        return task

    def _load_done(self, key: str, task: asyncio.Task[LoadedModel]) -> None:
        """A failed load leaves nothing behind to be waited for; its error is read here (so asyncio never
        reports it unretrieved), logged once if it was started ahead of traffic, and not tried ahead of
        traffic again for ``FAILED_LOAD_RETRY_S``."""
        warmed = key in self._warming
        self._warming.discard(key)
        if not task.cancelled() and task.exception() is None:
            self._retry_at.pop(key, None)
            return
        if self._loading.get(key) is task:
            del self._loading[key]
        if task.cancelled():  # the replica shutting down: no failure of the version's
            return
        error = task.exception()
        self._retry_at[key] = time.monotonic() + FAILED_LOAD_RETRY_S
        if warmed:
            model, version = parse_model_id(key)
            logger.warning("loading %s version %d ahead of traffic failed (%s); still answering with the version "
                           "loaded before, trying again in %.0fs", model, version, type(error).__name__,
                           FAILED_LOAD_RETRY_S)

    def _raise_recent_failure(self, key: str) -> None:
        """A version that failed by its own fault lately fails again at once, before Serve's cache is
        entered (which would evict another version to make room for it)."""
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < FAILED_LOAD_RETRY_S:
            raise failed[1]

    async def _loaded(self, key: str) -> LoadedModel:
        self._raise_recent_failure(key)
        return await self._load(key)

    def load_state(self, model: str, version: int) -> LoadState:
        """Whether ``version`` is loaded and warmed here, loading, failed to load lately, or neither."""
        key = model_id(model, version)
        if key in self._ready:
            return "ready"
        task = self._loading.get(key)
        if task is not None and not task.done():
            return "loading"
        if time.monotonic() < self._retry_at.get(key, 0.0):
            return "failed"
        return "absent"

    def start_load(self, model: str, version: int) -> None:
        """Load and warm ``version`` in the background: the data plane calls this when a label moves to
        a version this replica has not loaded, and goes on answering with the version it had until
        this one is ready (as TF Serving does). The load runs outside Serve's cache, so it evicts
        nothing and holds no lock while it runs; the first request for the version takes it in."""
        key = model_id(model, version)
        if self.load_state(model, version) != "absent":
            return
        self._warming.add(key)
        self._start(key)

    def reconfigure(self, config: BatchConfig) -> None:
        self.config = config
        # Ray's typing of @serve.batch omits the setters it adds to the method it wraps.
        self._run_batch.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def predict(self, model: str, version: int, inputs: dict[str, np.ndarray],
                      ticket: PassTicket) -> dict[str, np.ndarray]:
        """One request's outputs, computed in a batch with the requests that arrived beside it."""
        if self._pending >= self.config.max_pending_predictions:
            raise ServerBusy(BUSY)
        self._pending += 1
        try:
            item = _Item(model, version, inputs, ticket)
            if item.size > self.config.max_batch_size:
                return await self._run_alone(item)
            result = await self._run_batch(item)
        finally:
            self._pending -= 1
        if isinstance(result, Exception):  # the batch hands a failed group's error back as a value
            raise result
        return result

    async def explain(self, model: str, version: int, inputs: dict[str, np.ndarray],
                      baseline: dict[str, np.ndarray], *, steps: int, output: str,
                      target: int | None) -> Attributions:
        """Integrated gradients on the loaded ``version``, in a thread, ``max_concurrent`` at once per
        replica (``max_waiting`` more wait; beyond, 503). A slot is held until its thread ends, even
        when the request has timed out meanwhile: the work it bounds is still running."""
        policy = self._explain
        if self._explain_slots.locked() and self._explain_waiting >= policy.max_waiting:
            raise ServerBusy(f"This replica is computing {policy.max_concurrent} explanation(s) and "
                             f"{self._explain_waiting} more wait (max_concurrent and max_waiting of args.explain); "
                             "retry later")
        self._explain_waiting += 1
        try:
            loaded = await self._loaded(model_id(model, version))
            await self._explain_slots.acquire()
        finally:
            self._explain_waiting -= 1
        work = asyncio.get_running_loop().run_in_executor(
            self._explain_threads, partial(loaded.explain, inputs, baseline, steps=steps, output=output, target=target))
        work.add_done_callback(self._explained)
        return await asyncio.shield(work)

    def _explained(self, work: asyncio.Future[Attributions]) -> None:
        self._explain_slots.release()
        if not work.cancelled():
            work.exception()  # read here when its request went away: asyncio never reports it unretrieved

    async def predict_alone(self, model: str, version: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One prediction outside the shared batcher, in a shadow thread: a slow shadow version holds up
        no batch of client requests (and is not counted in their pending bound)."""
        loaded = await self._loaded(model_id(model, version))
        try:  # passes of max_batch_size instances, as a client request's
            return await asyncio.get_running_loop().run_in_executor(
                self._shadow_threads, predict_in_passes, loaded, inputs, self.config.max_batch_size)
        except MaasError:
            raise
        except Exception as exc:
            raise pass_failed(model, version, exc) from exc

    async def _run_alone(self, item: _Item) -> dict[str, np.ndarray]:
        """A request larger than a batch: passes of ``max_batch_size`` instances, in a thread."""
        loaded = await self._loaded(model_id(item.model, item.version))
        item.ticket.pass_started = time.monotonic()
        self._batch_size.observe(item.size, tags={"model": item.model, "version": str(item.version)})
        try:
            return await asyncio.to_thread(predict_in_passes, loaded, item.inputs, self.config.max_batch_size)
        except MaasError:
            raise
        except Exception as exc:
            raise pass_failed(item.model, item.version, exc) from exc

    # Up to 4 batches at once: a batch waiting for a version to load does not hold up the others.
    @serve.batch(max_batch_size=DEFAULT_BATCHING.max_batch_size,
                 batch_wait_timeout_s=DEFAULT_BATCHING.batch_wait_timeout_s, max_concurrent_batches=4,
                 batch_size_fn=_instances)
    async def _run_batch(self, items: list[_Item]) -> list[dict[str, np.ndarray] | Exception]:
        results: list[dict[str, np.ndarray] | Exception] = [None] * len(items)  # type: ignore[list-item]
        groups: dict[tuple[str, int, _Shapes], list[int]] = {}
        for i, item in enumerate(items):  # one pass per version and per instance shape (-1 dims vary)
            groups.setdefault((item.model, item.version, item.shapes), []).append(i)

        async def run_group(key: tuple[str, int, _Shapes], members: list[int]) -> None:
            try:
                loaded = await self._loaded(model_id(key[0], key[1]))
            except Exception as exc:  # noqa: BLE001 (the version's fault, whatever it is: every member gets it)
                for i in members:
                    results[i] = exc
                return
            for i, outcome in zip(members, await self._passes(loaded, [items[i] for i in members]), strict=True):
                results[i] = outcome

        await asyncio.gather(*(run_group(key, members) for key, members in groups.items()))  # a load blocks no group
        return results

    async def _passes(self, loaded: LoadedModel, items: list[_Item]) -> list[dict[str, np.ndarray] | Exception]:
        """One forward pass over ``items``; if it fails and holds more than one request, each runs
        alone, so that one request's input fails that request only."""
        merged = {name: np.concatenate([item.inputs[name] for item in items]) for name in items[0].inputs}
        n = sum(item.size for item in items)
        self._batch_size.observe(n, tags={"model": loaded.model, "version": str(loaded.version)})
        started = time.monotonic()
        for item in items:
            item.ticket.pass_started = started
        try:
            outputs = await run_forward_pass(loaded, merged, n)
        except Exception as exc:  # noqa: BLE001 (TensorFlow raises many kinds: each is a request's answer)
            if len(items) == 1:
                return [exc if isinstance(exc, MaasError) else pass_failed(loaded.model, loaded.version, exc)]
            return [outcome for item in items for outcome in await self._passes(loaded, [item])]
        answers: list[dict[str, np.ndarray] | Exception] = []
        start = 0
        for item in items:
            answers.append({name: value[start: start + item.size] for name, value in outputs.items()})
            start += item.size
        return answers

    async def _load_version(self, key: str) -> LoadedModel:
        model, version = parse_model_id(key)
        warm_batch_size = self.config.max_batch_size
        try:
            # In a thread: fetching the artifact (S3, GCS) and loading it must not block the loop.
            metadata = (await asyncio.to_thread(self._registry.get, model, version)).metadata
            path = await asyncio.to_thread(self._artifacts.local_path, model, version)
        except OSError as exc:  # the storage, not the version: a retry may succeed
            raise StorageUnavailable(f"{model} version {version} could not be fetched from the registry's "
                                     f"storage ({type(exc).__name__}); retry later") from None
        try:
            loaded = await asyncio.to_thread(load_saved_model, model, version, path,
                                             warm_batch_size=warm_batch_size,
                                             allowed_ops=frozenset(metadata.allowed_ops or ()))
        except MaasError as exc:
            self._failed[key] = (time.monotonic(), exc)
            raise
        except Exception as exc:  # a missing or corrupt artifact: say which, keep serving the others
            error = ModelUnavailable(f"{model} version {version} could not be loaded: {type(exc).__name__}: "
                                     f"{str(exc)[:300]}")
            self._failed[key] = (time.monotonic(), error)
            raise error from exc
        self._failed.pop(key, None)
        token = self._ready[key] = object()
        loop = asyncio.get_running_loop()

        def drop() -> None:  # a later load of the same key has a token of its own
            if self._ready.get(key) is token:
                del self._ready[key]

        def unloaded() -> None:  # Serve's LRU evicted it; Serve calls this in a thread
            with contextlib.suppress(RuntimeError):  # the replica's loop is gone: so is this host
                loop.call_soon_threadsafe(drop)

        loaded.on_unload = unloaded
        return loaded


def pass_failed(model: str, version: int, exc: Exception) -> InferenceError:
    """What a client is told of a forward pass that raised ``exc``, not one of ours: the version and the
    exception's type (the runtime's own errors are MaasErrors and are answered as they are)."""
    return InferenceError(f"{model} version {version} failed: {type(exc).__name__}")


def predict_in_passes(loaded: LoadedModel, inputs: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    """``inputs`` predicted in passes of at most ``step`` instances (in the caller's thread)."""
    n = int(next(iter(inputs.values())).shape[0])
    parts = [loaded.predict({k: v[i: i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


async def run_forward_pass(loaded: LoadedModel, inputs: dict[str, Any], n: int) -> dict[str, np.ndarray]:
    """A pass expected to be short for ``n`` instances runs right on the event loop: handing it to a
    thread costs more than the pass (GIL hand-over and wake-up take milliseconds). Any other runs in a
    thread, where TensorFlow releases the GIL and the loop goes on reading requests meanwhile."""
    if loaded.expected_pass_s(n) < INLINE_PASS_S:
        return loaded.predict(inputs)
    return await asyncio.to_thread(loaded.predict, inputs)
