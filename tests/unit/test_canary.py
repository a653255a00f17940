"""Canary routing and the rollback monitor, without a cluster (the HTTP path is in test_rollouts.py)."""

from __future__ import annotations

from maas.registry import Label
from maas.serving.canary import CanaryMonitor, CanaryPolicy, Destination, choose_destination


def test_the_canary_gets_its_weight_of_routed_requests() -> None:
    labels = {"stable": Label(version=1), "canary": Label(version=2, weight=0.1)}
    assert choose_destination(labels, 1, draw=0.05) == Destination(2, canary=True)
    assert choose_destination(labels, 1, draw=0.1) == Destination(1)
    assert choose_destination(labels, 1, draw=0.99) == Destination(1)
    routed = [choose_destination(labels, 1).version for _ in range(4000)]
    assert 0.07 < routed.count(2) / len(routed) < 0.13


def test_no_canary_share_without_a_weighted_canary_on_another_version() -> None:
    assert choose_destination({"stable": Label(version=1)}, 1, draw=0.0) == Destination(1)
    assert choose_destination({"canary": Label(version=2, weight=0.0)}, 1, draw=0.0) == Destination(1)
    # the canary is the default version
    assert choose_destination({"canary": Label(version=1, weight=0.5)}, 1, draw=0.0) == Destination(1)


def test_an_error_rate_breach_fires_once_after_enough_requests() -> None:
    monitor = CanaryMonitor(CanaryPolicy(window_s=10, min_requests=10, max_error_rate=0.2))
    outcomes = [monitor.record("m", 2, ok=i % 2 == 0, latency_s=0.01, now=float(i) / 10) for i in range(9)]
    assert outcomes == [None] * 9  # 4 of 9 failed, but fewer than min_requests were seen
    reason = monitor.record("m", 2, ok=False, latency_s=0.01, now=1.0)
    assert reason == "error rate 50.0% (5 of 10) over 10s exceeds 20.0%"
    assert monitor.record("m", 2, ok=False, latency_s=0.01, now=1.1) is None  # reported once


def test_old_requests_leave_the_window() -> None:
    monitor = CanaryMonitor(CanaryPolicy(window_s=5, min_requests=4, max_error_rate=0.3))
    for t in (0.0, 0.1):
        monitor.record("m", 3, ok=False, latency_s=0.01, now=t)
    outcomes = [monitor.record("m", 3, ok=True, latency_s=0.01, now=t) for t in (10.0, 10.1, 10.2, 10.3)]
    assert outcomes == [None] * 4  # the two failures are older than the window


def test_a_p99_latency_breach_names_the_latency() -> None:
    monitor = CanaryMonitor(CanaryPolicy(window_s=60, min_requests=5, max_error_rate=1.0, max_p99_latency_ms=100))
    reasons = [monitor.record("m", 2, ok=True, latency_s=s, now=0.0) for s in (0.01, 0.01, 0.01, 0.01, 0.5)]
    assert reasons[:4] == [None] * 4
    assert reasons[4] is not None and reasons[4].startswith("p99 latency ") and reasons[4].endswith("exceeds 100 ms")


def test_auto_rollback_can_be_turned_off() -> None:
    monitor = CanaryMonitor(CanaryPolicy(auto_rollback=False, min_requests=1, max_error_rate=0.0))
    assert monitor.record("m", 2, ok=False, latency_s=0.01) is None
