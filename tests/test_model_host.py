"""The model host's batching, with Serve's own batcher (no cluster) and a loaded model that records
its passes: a batch holds at most max_batch_size instances, requests of other instance shapes never
share a pass, and one request's bad input fails that request only."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from maas.errors import InvalidInput
from maas.serving.dataplane import PassTicket

# One event loop for the module, as a replica has one: Serve's batcher binds its queue to the loop
# that first uses it.
LOOP = asyncio.new_event_loop()


@pytest.fixture(scope="module", autouse=True)
def _close_the_loop():  # noqa: ANN202
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

    def expected_pass_s(self, n: int) -> float:
        return 0.0

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.passes.append(len(x))
        if (x < 0).any():
            raise InvalidInput("m version 1 refused the input: negative")
        return {"y": x.reshape(len(x), -1).sum(axis=1)}


@pytest.fixture
def host(monkeypatch):  # noqa: ANN001, ANN201
    import ray.serve.batching as batching

    from maas.serving.host import BatchConfig, ModelHost

    # The one call of Serve's batcher that needs a replica (a warning about max_ongoing_requests).
    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                        lambda self: None)
    loaded = Recorder()
    made = ModelHost(registry=None, max_models=2)  # type: ignore[arg-type]

    async def load(key: str) -> Recorder:
        return loaded

    made._load = load
    made.config = BatchConfig(max_batch_size=32)
    return made, loaded


def _predict(host, x: np.ndarray):  # noqa: ANN001, ANN202
    return host.predict("m", 1, {"x": x}, PassTicket())


def test_a_batch_holds_at_most_max_batch_size_instances(host) -> None:
    made, loaded = host

    async def scenario():  # noqa: ANN202
        small = [_predict(made, np.full((20, 2), i, np.float32)) for i in range(8)]
        return await asyncio.gather(*small, _predict(made, np.ones((100, 2), np.float32)))

    answers = LOOP.run_until_complete(scenario())
    assert max(loaded.passes) <= 32 and sum(loaded.passes) == 8 * 20 + 100
    for i, answer in enumerate(answers[:8]):
        assert answer["y"].tolist() == [2.0 * i] * 20
    assert answers[8]["y"].tolist() == [2.0] * 100


def test_requests_of_other_instance_shapes_never_share_a_pass(host) -> None:
    made, _ = host

    async def scenario():  # noqa: ANN202
        return await asyncio.gather(_predict(made, np.ones((1, 3), np.float32)),
                                    _predict(made, np.ones((1, 5), np.float32)))

    three, five = LOOP.run_until_complete(scenario())  # 6c14451: both failed, 500 (np.concatenate)
    assert three["y"].tolist() == [3.0] and five["y"].tolist() == [5.0]


def test_one_requests_bad_input_fails_that_request_only(host) -> None:
    made, _ = host

    async def scenario():  # noqa: ANN202
        return await asyncio.gather(_predict(made, np.ones((2, 2), np.float32)),
                                    _predict(made, -np.ones((1, 2), np.float32)),
                                    _predict(made, np.ones((3, 2), np.float32)), return_exceptions=True)

    good, bad, other = LOOP.run_until_complete(scenario())
    assert good["y"].tolist() == [2.0, 2.0] and other["y"].tolist() == [2.0] * 3
    assert isinstance(bad, InvalidInput)
