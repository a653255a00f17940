"""Load for the cluster tests: client threads sending requests until stopped, bounded in count and
time, each outcome kept (status, or the exception's name), and counted by the test in its main
thread. A request whose connection closed without an answer is sent again as the client SDK does
(:class:`maas.client.RetryPolicy`), and each such try is kept in ``retries``: never retried unseen.
A thread that dies of anything but a request's failure fails the test at exit. Each answer keeps a
digest of its numbers, so that a test can check that the version a ``Model-Version`` header names
is the version that computed the answer."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from maas.client import RetryPolicy

RETRY = RetryPolicy()  # the client SDK's: a request whose connection closed without an answer is sent again


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when answered
    status: int | str  # HTTP status, or the exception's name
    seconds: float
    version: str | None = None  # the Model-Version header
    client: int = -1  # which client thread (each sends its own input)
    answer: str | None = None  # digest of the answer's numbers (the same for both protocols)


def answer_digest(body: bytes) -> str | None:
    """The predicted numbers of a TF Serving or V2 answer, rounded, as a short digest."""
    try:
        doc = json.loads(body)
        values = doc["predictions"] if "predictions" in doc else doc["outputs"][0]["data"]
        flat = np.round(np.ravel(np.asarray(values, dtype=np.float64)), 3)
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return hashlib.sha256(flat.tobytes()).hexdigest()[:12]


def predict_bodies(model: str, seed: int = 0) -> list[tuple[str, bytes]]:
    """A routed TF Serving request and a routed V2 request of one 8x8 instance each."""
    x = np.random.default_rng(seed).random((1, 8, 8)).round(3).tolist()
    return [(f"/v1/models/{model}:predict", json.dumps({"instances": x}).encode()),
            (f"/v2/models/{model}/infer", json.dumps({"inputs": [
                {"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32", "data": np.ravel(x).tolist()}]}).encode())]


class Traffic:
    """``clients`` threads alternating the two protocols' predictions on ``model`` until stopped."""

    def __init__(self, base_url: str, key: str, model: str, *, clients: int = 4, max_requests: int = 50_000,
                 max_s: float = 300.0, timeout_s: float = 30.0,
                 bodies: Callable[[str, int], list[tuple[str, bytes]]] | None = None) -> None:
        """``bodies(model, client)``: the requests a client alternates (default: :func:`predict_bodies`)."""
        self.bodies = bodies or (lambda name, i: predict_bodies(name, seed=i))
        self.host = base_url.removeprefix("http://")
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        self.model, self.max_requests, self.timeout_s = model, max_requests, timeout_s
        self.deadline = time.monotonic() + max_s
        self.outcomes: list[Outcome] = []
        self.retries: list[Outcome] = []  # tries whose connection closed without an answer, sent again
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guarded, args=(i,), daemon=True) for i in range(clients)]
        self._crashes: list[str] = []

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 30)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads still running: {alive}"
        assert not self._crashes, f"load threads died: {self._crashes}"

    def _guarded(self, i: int) -> None:
        try:
            self._run(i)
        except BaseException as exc:  # noqa: BLE001 (reported in the main thread, at exit)
            self._crashes.append(f"client {i}: {type(exc).__name__}: {exc}")

    def _run(self, i: int) -> None:
        bodies = self.bodies(self.model, i)
        conn = http.client.HTTPConnection(self.host, timeout=self.timeout_s)
        n = 0
        while not self._stop.is_set() and len(self.outcomes) < self.max_requests and time.monotonic() < self.deadline:
            path, body = bodies[n % len(bodies)]
            n += 1
            attempt = 0
            started = time.monotonic()  # an outcome's seconds include any tries before it, and their waits
            while True:
                attempt += 1
                try:
                    conn.request("POST", path, body=body, headers=self.headers)
                    reply = conn.getresponse()
                    answer = reply.read()
                    self.outcomes.append(Outcome(time.monotonic(), reply.status, time.monotonic() - started,
                                                 reply.getheader("model-version"), i,
                                                 answer_digest(answer) if reply.status == 200 else None))
                    if reply.will_close:
                        conn.close()
                    break
                except Exception as exc:  # noqa: BLE001 (every failure is an outcome, counted by the test)
                    outcome = Outcome(time.monotonic(), type(exc).__name__, time.monotonic() - started, client=i)
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, timeout=self.timeout_s)
                    if isinstance(exc, ConnectionError) and attempt < RETRY.attempts:
                        # Closed without an answer: sent again as the client SDK does (its policy),
                        # counted in ``retries``, never as an answer.
                        self.retries.append(outcome)
                        time.sleep(RETRY.wait_s(attempt))
                        continue
                    self.outcomes.append(outcome)
                    break

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter:
        return Counter(o.status for o in self.outcomes if since <= o.at < until)

    def failures(self) -> list[Outcome]:
        """Every outcome that is not a 200 with a ``Model-Version`` header."""
        return [o for o in self.outcomes if o.status != 200 or not o.version]

    def slowest_s(self) -> float:
        return max((o.seconds for o in self.outcomes), default=0.0)

    def mismatched_answers(self) -> dict[tuple[int, str], set[str]]:
        """(client, version) pairs answered with more than one set of numbers, and versions whose
        answers to one client's input were those of another version: a header naming the wrong
        version. Empty when every answer was computed by the version its header names."""
        seen: dict[tuple[int, str], set[str]] = defaultdict(set)
        for o in self.outcomes:
            if o.status == 200 and o.version:
                seen[(o.client, o.version)].add(o.answer or "unreadable")
        problems = {k: v for k, v in seen.items() if len(v) > 1}
        for (client, version), answers in seen.items():
            for (other_client, other), theirs in seen.items():
                if other_client == client and other != version and answers & theirs:
                    problems[(client, version)] = answers
        return problems

    def versions_since(self, start: int) -> Counter:
        """The answering versions of the outcomes from index ``start`` on (``None`` for a failure)."""
        return Counter(int(o.version) if o.version else None for o in self.outcomes[start:])

    def wait_until(self, predicate, what: str, timeout_s: float = 60) -> None:
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
