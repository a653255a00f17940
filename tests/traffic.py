"""Load for the cluster tests: client threads sending requests until stopped, bounded in count and
time, each outcome kept (status, or the exception's name: a dropped connection is never retried
unseen), and counted by the test in its main thread."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when answered
    status: int | str  # HTTP status, or the exception's name
    seconds: float
    version: str | None = None  # the Model-Version header


def predict_bodies(model: str, seed: int = 0) -> list[tuple[str, bytes]]:
    """A routed TF Serving request and a routed V2 request of one 8x8 instance each."""
    x = np.random.default_rng(seed).random((1, 8, 8)).round(3).tolist()
    return [(f"/v1/models/{model}:predict", json.dumps({"instances": x}).encode()),
            (f"/v2/models/{model}/infer", json.dumps({"inputs": [
                {"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32", "data": np.ravel(x).tolist()}]}).encode())]


class Traffic:
    """``clients`` threads alternating the two protocols' predictions on ``model`` until stopped."""

    def __init__(self, base_url: str, key: str, model: str, *, clients: int = 4, max_requests: int = 50_000,
                 max_s: float = 300.0, timeout_s: float = 30.0) -> None:
        self.host = base_url.removeprefix("http://")
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        self.model, self.max_requests, self.timeout_s = model, max_requests, timeout_s
        self.deadline = time.monotonic() + max_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 30)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads still running: {alive}"

    def _run(self, i: int) -> None:
        bodies = predict_bodies(self.model, seed=i)
        conn = http.client.HTTPConnection(self.host, timeout=self.timeout_s)
        n = 0
        while not self._stop.is_set() and len(self.outcomes) < self.max_requests and time.monotonic() < self.deadline:
            path, body = bodies[n % 2]
            n += 1
            started = time.monotonic()
            try:
                conn.request("POST", path, body=body, headers=self.headers)
                reply = conn.getresponse()
                reply.read()
                self.outcomes.append(Outcome(time.monotonic(), reply.status, time.monotonic() - started,
                                             reply.getheader("model-version")))
                if reply.will_close:
                    conn.close()
            except Exception as exc:  # noqa: BLE001 (every failure is an outcome, counted by the test)
                self.outcomes.append(Outcome(time.monotonic(), type(exc).__name__, time.monotonic() - started))
                conn.close()
                conn = http.client.HTTPConnection(self.host, timeout=self.timeout_s)

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter:
        return Counter(o.status for o in self.outcomes if since <= o.at < until)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def versions_since(self, start: int) -> Counter:
        """The answering versions of the outcomes from index ``start`` on (``None`` for a failure)."""
        return Counter(int(o.version) if o.version else None for o in self.outcomes[start:])

    def wait_until(self, predicate, what: str, timeout_s: float = 60) -> None:  # noqa: ANN001
        """Wait until ``predicate(versions answered since now)`` holds for a fresh run of answers."""
        deadline = time.monotonic() + timeout_s
        start = len(self.outcomes)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            recent = self.versions_since(start)
            if sum(recent.values()) >= 20 and predicate(recent):
                return
            if sum(recent.values()) >= 60:
                start = len(self.outcomes) - 20  # judge only the latest answers
        raise AssertionError(f"not seen within {timeout_s:.0f}s: {what}; recent {self.versions_since(start)}")
