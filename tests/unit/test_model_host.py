"""The model host's batching, with Serve's own batcher (no cluster) and a loaded model that records
its passes: a batch holds at most max_batch_size instances, requests of other instance shapes never
share a pass, and one request's bad input fails that request only."""

from __future__ import annotations

import asyncio
import threading
import time
import types

import numpy as np
import pytest

from maas.errors import InvalidInput, ServerBusy
from maas.serving.dataplane import PassTicket

# One event loop for the module, as a replica has one: Serve's batcher binds its queue to the loop
# that first uses it.
LOOP = asyncio.new_event_loop()


@pytest.fixture(scope="module", autouse=True)
def _close_the_loop():
    yield
    for task in asyncio.all_tasks(LOOP):  # the batcher's own task waits for the next request
        task.cancel()
    LOOP.run_until_complete(asyncio.sleep(0))
    LOOP.close()


class Recorder:
    """A loaded version that sums each instance, records every pass's size, and refuses negative input."""

    model, version = "m", 1

    def __init__(self) -> None:
        self.passes: list[int] = []
        self.release = threading.Event()  # explanations block until it is set
        self.explaining = 0
        self.most_explaining = 0

    def explain(self, inputs, baseline, **options):
        self.explaining += 1
        self.most_explaining = max(self.most_explaining, self.explaining)
        try:
            self.release.wait(5.0)
            return options["output"]
        finally:
            self.explaining -= 1

    def expected_pass_s(self, n: int) -> float:
        return 0.0

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.passes.append(len(x))
        if (x < 0).any():
            raise InvalidInput("m version 1 refused the input: negative")
        return {"y": x.reshape(len(x), -1).sum(axis=1)}


@pytest.fixture
def host(monkeypatch):
    import ray.serve.batching as batching

    from maas.serving.config import BatchConfig
    from maas.serving.host import ModelHost
    from maas.serving.protocol.explain import ExplainPolicy

    # The one call of Serve's batcher that needs a replica (a warning about max_ongoing_requests).
    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                        lambda self: None)
    loaded = Recorder()
    made = ModelHost(registry=None, artifacts=None, max_models=2,  # type: ignore[arg-type]
                     explain=ExplainPolicy(max_concurrent=1, max_waiting=1))

    async def load(key: str) -> Recorder:
        return loaded

    made._load = load
    made.config = BatchConfig(max_batch_size=32)
    return made, loaded


def _predict(host, x: np.ndarray):
    return host.predict("m", 1, {"x": x}, PassTicket())


def test_a_batch_holds_at_most_max_batch_size_instances(host) -> None:
    made, loaded = host

    async def scenario():
        small = [_predict(made, np.full((20, 2), i, np.float32)) for i in range(8)]
        return await asyncio.gather(*small, _predict(made, np.ones((100, 2), np.float32)))

    answers = LOOP.run_until_complete(scenario())
    assert max(loaded.passes) <= 32 and sum(loaded.passes) == 8 * 20 + 100
    for i, answer in enumerate(answers[:8]):
        assert answer["y"].tolist() == [2.0 * i] * 20
    assert answers[8]["y"].tolist() == [2.0] * 100


def test_explanations_run_one_at_a_time_and_a_timed_out_one_holds_its_slot_until_its_work_ends(host) -> None:
    made, loaded = host
    x = {"x": np.ones((1, 2), np.float32)}

    def explain(output: str):
        return made.explain("m", 1, x, x, steps=4, output=output, target=None)

    async def scenario():
        timed_out = asyncio.ensure_future(asyncio.wait_for(explain("first"), 0.1))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(explain("second"))
        await asyncio.sleep(0.01)
        with pytest.raises(ServerBusy, match=r"max_concurrent and max_waiting of args\.explain"):
            await explain("third")  # one computing, one waiting: the bound
        with pytest.raises(TimeoutError):
            await timed_out
        await asyncio.sleep(0.2)
        assert not waiting.done() and loaded.explaining == 1  # the first's thread still runs: its slot is held
        loaded.release.set()
        return await waiting

    assert LOOP.run_until_complete(scenario()) == "second"
    assert loaded.most_explaining == 1


def test_requests_of_other_instance_shapes_never_share_a_pass(host) -> None:
    made, _ = host

    async def scenario():
        return await asyncio.gather(_predict(made, np.ones((1, 3), np.float32)),
                                    _predict(made, np.ones((1, 5), np.float32)))

    three, five = LOOP.run_until_complete(scenario())  # 6c14451: both failed, 500 (np.concatenate)
    assert three["y"].tolist() == [3.0] and five["y"].tolist() == [5.0]


def test_one_requests_bad_input_fails_that_request_only(host) -> None:
    made, _ = host

    async def scenario():
        return await asyncio.gather(_predict(made, np.ones((2, 2), np.float32)),
                                    _predict(made, -np.ones((1, 2), np.float32)),
                                    _predict(made, np.ones((3, 2), np.float32)), return_exceptions=True)

    good, bad, other = LOOP.run_until_complete(scenario())
    assert good["y"].tolist() == [2.0, 2.0] and other["y"].tolist() == [2.0] * 3
    assert isinstance(bad, InvalidInput)


# ---- loading ahead of traffic, with Serve's own LRU cache (@serve.multiplexed) ---------------------


class Storage:
    """What the host reads of the registry and its artifact cache; ``down`` makes fetching fail as an
    unreachable store does."""

    down = False

    def get(self, model: str, version: int):
        return types.SimpleNamespace(metadata=types.SimpleNamespace(allowed_ops=None))  # the record's one field read

    def local_path(self, model: str, version: int) -> str:
        if self.down:
            raise OSError("storage unreachable")
        return f"/nowhere/{model}/{version}"


@pytest.fixture
def cached_host(monkeypatch):
    """A ModelHost with Serve's real multiplexed LRU cache of ``max_models=1``; loads take
    ``seconds[version]`` (0.05 by default) and fail for the versions in ``broken``."""
    import ray.serve.multiplex as multiplex

    import maas.serving.host as host_module
    from maas.serving.runtime import LoadedModel

    # The two things Serve's cache takes from a running replica: its identity and its metrics.
    replica = types.SimpleNamespace(app_name="app", deployment="ModelServer", replica_id="r1")
    monkeypatch.setattr(multiplex, "_get_internal_replica_context", lambda: replica)
    monkeypatch.setattr(multiplex, "MetricsPusher", _NoMetrics)
    monkeypatch.setattr(multiplex, "metrics", types.SimpleNamespace(Gauge=_NoMetrics, Counter=_NoMetrics,
                                                                   Histogram=_NoMetrics))
    monkeypatch.setattr(host_module, "batch_size_histogram", _NoMetrics)
    loads: list[int] = []
    seconds: dict[int, float] = {}
    broken: set[int] = set()

    def load_saved_model(model, version, path, *, warm_batch_size=1, allowed_ops=frozenset()):
        loads.append(version)
        time.sleep(seconds.get(version, 0.05))
        if version in broken:
            raise RuntimeError("not a graph")
        return LoadedModel(model=model, version=version, signature=None, load_seconds=0.0, _fn=None)  # type: ignore[arg-type]

    monkeypatch.setattr(host_module, "load_saved_model", load_saved_model)
    storage = Storage()
    made = host_module.ModelHost(storage, storage, max_models=1)  # type: ignore[arg-type]
    return types.SimpleNamespace(host=made, loads=loads, seconds=seconds, broken=broken, storage=storage)


class _NoMetrics:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _run(work):
    return LOOP.run_until_complete(work)


async def _start_load(h, version: int) -> None:
    h.start_load("m", version)  # on the loop, as the data plane calls it


async def _until(done, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


def test_a_load_ahead_of_traffic_evicts_nothing_and_blocks_nothing(cached_host) -> None:
    h = cached_host.host
    _run(h._loaded("m:1"))
    cached_host.seconds[2] = 0.5
    _run(_start_load(h, 2))

    async def meanwhile() -> float:
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await h._loaded("m:1")  # the version still answering: in the cache, not waiting for version 2
        return time.monotonic() - started

    assert _run(meanwhile()) < 0.1
    assert h.load_state("m", 1) == "ready" and h.load_state("m", 2) == "loading"
    _run(_until(lambda: h.load_state("m", 2) != "loading"))
    assert h.load_state("m", 2) == "ready" and h.load_state("m", 1) == "ready"
    assert _run(h._loaded("m:2")).version == 2  # the first request takes it in (and evicts version 1)
    assert cached_host.loads == [1, 2]


def test_a_failed_load_whose_request_gave_up_is_not_left_loading(cached_host) -> None:
    h = cached_host.host
    cached_host.broken.add(2)
    cached_host.seconds[2] = 0.3

    async def give_up() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(h._loaded("m:2"), 0.05)  # a 504: the load goes on, then fails
        await _until(lambda: h.load_state("m", 2) != "loading")

    _run(give_up())
    assert h.load_state("m", 2) == "failed"
    cached_host.broken.clear()  # fixed: tried again once the retry window has passed
    h._retry_at["m:2"] = time.monotonic()
    h._failed.pop("m:2")
    _run(_start_load(h, 2))
    _run(_until(lambda: h.load_state("m", 2) != "loading"))
    assert h.load_state("m", 2) == "ready" and cached_host.loads == [2, 2]


def test_a_version_that_fails_ahead_of_traffic_is_tried_once_per_window_and_evicts_nothing(
        cached_host, caplog) -> None:
    h = cached_host.host
    _run(h._loaded("m:1"))
    cached_host.broken.add(2)
    for _ in range(5):  # each routed request asks for it while it is failing
        _run(_start_load(h, 2))
        _run(asyncio.sleep(0.1))
    assert cached_host.loads == [1, 2] and h.load_state("m", 2) == "failed"
    assert h.load_state("m", 1) == "ready"  # still cached: answering
    with pytest.raises(Exception, match="could not be loaded"):
        _run(h._loaded("m:2"))  # asked by number: its own error, at once
    assert h.load_state("m", 1) == "ready" and cached_host.loads == [1, 2]
    assert sum("ahead of traffic failed" in r.getMessage() for r in caplog.records) == 1


def test_storage_down_while_loading_ahead_backs_off(cached_host) -> None:
    h = cached_host.host
    cached_host.storage.down = True
    for _ in range(5):
        _run(_start_load(h, 2))
        _run(asyncio.sleep(0.05))
    assert h.load_state("m", 2) == "failed" and cached_host.loads == []  # one fetch tried, none loaded
