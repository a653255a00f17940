"""The serving stack without a cluster: the real HTTP layer, data plane, storage cache and key store
over a registry on local disk, with only the model host replaced by a small fake (no TensorFlow; its
explanations are a linear model's, exact: integrated gradients on real models are in test_attribution.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas.auth import KeyStore
from maas.drift import DriftMonitor, DriftPolicy
from maas.errors import ModelUnavailable
from maas.registry import Registry
from maas.serving.attribution import Attributions
from maas.serving.canary import CanaryMonitor, CanaryPolicy
from maas.serving.capture import CapturePolicy, CaptureWriter
from maas.serving.dataplane import DataPlane, PassTicket
from maas.serving.http import HttpApi, HttpRequest, HttpResponse, in_thread
from maas.serving.protocol.explain import ExplainPolicy
from maas.serving.protocol.limits import RequestLimits
from maas.serving.shadow import ShadowPolicy
from maas.serving.stats import RecentRequests
from maas.serving.status import LoadState
from maas.serving.storage_cache import StorageCache
from maas.signature import Signature, TensorSpec

SECRET = b"unit-test-secret-" * 2
DIGITS = Signature(inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
                   outputs=(TensorSpec("probabilities", "float32", (-1, 10)),))


class FakeHost:
    """A model host whose version ``v`` answers ``v`` for every output value; ``fail[v]`` makes
    version ``v`` raise, ``delay_s`` makes every pass last that long."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []  # (model, version, instances)
        self.fail: dict[int, Exception] = {}
        self.delay_s = 0.0
        self.slow: dict[int, float] = {}  # version: its own delay_s
        self.top: dict[int, int] = {}  # version: a class it answers higher than the others
        self.queued_s = 0.0  # time spent "waiting for a batch" before the pass starts
        self.load_s = 0.0  # how long a load started ahead of traffic takes
        self.loaded: set[int] = set()  # a version is loaded by its first prediction, or by start_load
        self.tried: set[int] = set()
        self.warming: dict[int, asyncio.Task[None]] = {}
        self.alone: list[tuple[str, int]] = []  # predictions outside the batcher (shadows')
        # (model, version, steps, output, target, baseline) of each explanation
        self.explained: list[tuple[str, int, int, str, int | None, np.ndarray]] = []

    def load_state(self, model: str, version: int) -> LoadState:
        if version in self.loaded:
            return "ready"
        if version in self.warming:
            return "loading"
        if isinstance(self.fail.get(version), ModelUnavailable) and version in self.tried:
            return "failed"
        return "absent"

    def start_load(self, model: str, version: int) -> None:
        if self.load_state(model, version) in ("ready", "loading"):
            return

        async def load() -> None:
            await asyncio.sleep(self.load_s)
            self.tried.add(version)
            if not isinstance(self.fail.get(version), ModelUnavailable):  # other faults are the passes'
                self.loaded.add(version)
            del self.warming[version]

        self.warming[version] = asyncio.get_running_loop().create_task(load())

    async def predict(self, model: str, version: int, inputs: dict[str, np.ndarray],
                      ticket: PassTicket) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        self.calls.append((model, version, n))
        if self.queued_s:
            await asyncio.sleep(self.queued_s)
        self.tried.add(version)
        if not isinstance(self.fail.get(version), ModelUnavailable):
            self.loaded.add(version)
        if version in self.fail:
            raise self.fail[version]
        ticket.pass_started = time.monotonic()
        delay_s = self.slow.get(version, self.delay_s)
        if delay_s:
            await asyncio.sleep(delay_s)
        answer = np.full((n, 10), float(version), np.float32)
        if version in self.top:
            answer[:, self.top[version]] += 1.0
        return {"probabilities": answer}

    async def predict_alone(self, model: str, version: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.alone.append((model, version))
        return await self.predict(model, version, inputs, PassTicket())

    async def explain(self, model: str, version: int, inputs: dict[str, np.ndarray], baseline: dict[str, np.ndarray],
                      *, steps: int, output: str, target: int | None) -> Attributions:
        """A linear model, F(x) = version * sum(x): its exact attributions are version * (x - baseline)."""
        (name, x), = inputs.items()
        self.explained.append((model, version, steps, output, target, baseline[name]))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        n, total = len(x), lambda a: a.reshape(len(a), -1).sum(axis=1)
        return Attributions(output=output, outputs={output: np.full((n, 10), float(version), np.float32)},
                            target=np.full(n, target or 0), prediction=version * total(x),
                            baseline_prediction=version * total(baseline[name]),
                            attributions={name: (version * (x - baseline[name])).astype(np.float32)})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stack:
    api: HttpApi
    plane: DataPlane
    cache: StorageCache
    host: FakeHost
    registry: Registry
    keys: KeyStore
    key: str
    clock: Clock
    root: Path
    offloaded: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)  # one, as in a replica

    def run(self, work: Any) -> Any:
        """Run a coroutine on the stack's event loop, then let background work (rollbacks) finish."""
        result = self.loop.run_until_complete(work)
        while self.plane._background:
            self.loop.run_until_complete(asyncio.gather(*self.plane._background))
        return result

    def publish(self, model: str = "digits", signature: Signature = DIGITS, **metadata: Any) -> int:
        return publish(self.registry, self.root.parent, model, signature, **metadata)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             *, chunks: Iterable[bytes] | None = None, delay_s: float = 0.0,
             key: str | None = "default") -> HttpResponse:
        """One request through the HTTP layer (the body sent as ``chunks``, ``delay_s`` apart)."""
        return self.run(self.acall(method, path, body, headers, chunks=chunks, delay_s=delay_s, key=key))

    async def acall(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                    *, chunks: Iterable[bytes] | None = None, delay_s: float = 0.0,
                    key: str | None = "default") -> HttpResponse:
        all_headers = {k.lower(): v for k, v in (headers or {}).items()}
        if key == "default":
            all_headers.setdefault("authorization", f"Bearer {self.key}")
        elif key is not None:
            all_headers.setdefault("authorization", f"Bearer {key}")
        parts = list(chunks) if chunks is not None else ([body] if body else [])

        async def stream():
            for part in parts:
                if delay_s:
                    await asyncio.sleep(delay_s)
                yield part

        return await self.api.handle(HttpRequest(method, path, all_headers, stream))


def publish(registry: Registry, root: Path, model: str = "digits", signature: Signature = DIGITS,
            **metadata: Any) -> int:
    """A version with a placeholder artifact: the fake host never loads it."""
    artifact = root / f"artifact-{model}"
    artifact.mkdir(exist_ok=True)
    (artifact / "saved_model.pb").write_bytes(b"placeholder")
    return registry.publish(model, str(artifact), {"signature": signature.to_dict(), **metadata}).version


@pytest.fixture
def make_stack(tmp_path: Path) -> Callable[..., Stack]:
    stacks: list[Stack] = []

    def make(*, limits: RequestLimits | None = None, canary: CanaryPolicy | None = None,
             request_timeout_s: float = 2.0, ttl_s: float = 2.0, stale_s: float = 30.0, auth: bool = True,
             max_buffered_bytes: int = 64 << 20, offload: Callable | None = None,
             explain: ExplainPolicy | None = None, shadow: ShadowPolicy | None = None,
             draw: Callable[[], float] = lambda: 0.0, capture: CapturePolicy | None = None) -> Stack:
        root = tmp_path / "registry"
        registry = Registry(str(root))
        publish(registry, tmp_path)
        keys = KeyStore(registry.uri, SECRET)
        key = keys.create("unit", ["*"])[0]
        clock = Clock()
        cache = StorageCache(registry, ttl_s=ttl_s, stale_s=stale_s, keys=keys, clock=clock)
        host = FakeHost()
        plane = DataPlane(cache, host, canary=CanaryMonitor(canary or CanaryPolicy()),
                          key_secret=SECRET if auth else None, recent=RecentRequests(),
                          request_timeout_s=request_timeout_s, replica="unit-replica",
                          drift=DriftMonitor(DriftPolicy(), clock=clock), shadow=shadow, draw=draw,
                          capture=None if capture is None else CaptureWriter(str(root), capture, replica="unit"))
        offloaded: list[str] = []

        async def recording(fn, *args):
            offloaded.append(fn.__name__)
            return await in_thread(fn, *args)

        api = HttpApi(plane, limits=limits or RequestLimits(), max_buffered_bytes=max_buffered_bytes,
                      explain_policy=explain, offload=offload or recording)
        stacks.append(Stack(api, plane, cache, host, registry, keys, key, clock, root, offloaded))
        return stacks[-1]

    yield make
    for made in stacks:
        if made.plane._capture is not None:
            made.loop.run_until_complete(made.plane._capture.close())
        made.loop.close()


@pytest.fixture
def stack(make_stack) -> Stack:
    return make_stack()
