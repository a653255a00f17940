"""Canary traffic: weighted routing between a model's ``stable`` and ``canary`` labels, and the
automatic rollback that retires a canary when it misbehaves.

Requests that name neither a version nor a label are *routed*: with a ``canary`` label of weight
``w`` (``maas models label m canary V --weight 0.1``) a share ``w`` of them goes to the canary, the
rest to the default version (``stable``, else the latest). Requests that name a version or a label
always get exactly that.

The data plane records every routed canary request in a :class:`CanaryMonitor`, but only the
outcomes that are the canary's own: its load or its model failing, or its own forward pass too slow.
Overload answers (503), storage outages and client errors never count. When, over the last
``window_s`` seconds and at least ``min_requests`` requests, the canary's error rate exceeds
``max_error_rate`` or its p99 latency exceeds ``max_p99_latency_ms``, the monitor reports a breach
once per canary label (a version labelled canary again is judged afresh); the data plane then
removes the canary label in the registry (with the reason in the label history, where ``maas models
show`` and ``maas status`` find it) and logs a warning. A routed request
that fails on the canary is answered by the default version, so a bad canary costs no failed requests.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt

from maas.registry import Label


class CanaryPolicy(BaseModel):
    """When a canary is rolled back automatically (``args.canary`` in the Serve config)."""

    auto_rollback: bool = Field(default=True, description="Retire a canary that breaches a bound.")
    window_s: PositiveFloat = Field(default=60.0, description="Sliding window the bounds are judged over.")
    min_requests: PositiveInt = Field(default=20, description="Fewest canary requests in the window before judging.")
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0, description="Largest share of failed canary requests.")
    max_p99_latency_ms: PositiveFloat | None = Field(default=None, description="Largest p99 latency; null: not judged.")


@dataclass(frozen=True)
class Destination:
    """Where one routed request goes: a version, and whether it went there as the canary share (not a
    URL route: those are :class:`maas.serving.protocol.routes.Route`)."""

    version: int
    canary: bool = False


def choose_destination(labels: dict[str, Label], default_version: int, draw: float | None = None) -> Destination:
    """The version a routed request goes to (``draw`` in [0, 1) decides the canary share)."""
    canary = labels.get("canary")
    if canary is None or canary.weight <= 0.0 or canary.version == default_version:
        return Destination(default_version)
    if (random.random() if draw is None else draw) < canary.weight:
        return Destination(canary.version, canary=True)
    return Destination(default_version)


@dataclass
class _Window:
    generation: str  # the canary label's id: labelled canary anew, a version is judged afresh
    events: deque[tuple[float, bool, float]] = field(default_factory=deque)  # (when, ok, latency_ms)
    tripped: bool = False


class CanaryMonitor:
    """Sliding-window error rate and p99 latency of each model's canary version."""

    def __init__(self, policy: CanaryPolicy) -> None:
        self.policy = policy
        self._windows: dict[tuple[str, int], _Window] = {}

    def record(self, model: str, version: int, *, ok: bool, latency_s: float, generation: str = "",
               now: float | None = None) -> str | None:
        """Record one routed canary request; the breach (a one-line reason) the first time a bound is
        exceeded. ``generation`` identifies the canary label: a new one starts a new window."""
        now = time.monotonic() if now is None else now
        window = self._windows.get((model, version))
        if window is None or window.generation != generation:
            window = self._windows[(model, version)] = _Window(generation)
        window.events.append((now, ok, latency_s * 1000.0))
        while window.events and window.events[0][0] < now - self.policy.window_s:
            window.events.popleft()
        if window.tripped or not self.policy.auto_rollback or len(window.events) < self.policy.min_requests:
            return None
        reason = self._breach(window)
        window.tripped = reason is not None
        return reason

    def reopen(self, model: str, version: int, generation: str) -> None:
        """Judge again after a breach whose rollback could not be written (the storage was down)."""
        window = self._windows.get((model, version))
        if window is not None and window.generation == generation:
            window.tripped = False

    def _breach(self, window: _Window) -> str | None:
        n = len(window.events)
        errors = sum(1 for _, ok, _ in window.events if not ok)
        if errors / n > self.policy.max_error_rate:
            return (f"error rate {errors / n:.1%} ({errors} of {n}) over {self.policy.window_s:g}s "
                    f"exceeds {self.policy.max_error_rate:.1%}")
        bound = self.policy.max_p99_latency_ms
        if bound is not None:
            p99 = float(np.percentile([ms for _, _, ms in window.events], 99))
            if p99 > bound:
                return f"p99 latency {p99:.0f} ms over {n} requests in {self.policy.window_s:g}s exceeds {bound:g} ms"
        return None
