"""The recent-requests window behind `maas status`."""

from __future__ import annotations

from maas.serving.stats import RecentRequests, RequestInfo


def test_recent_requests_per_version_with_routes_replicas_and_error_rate() -> None:
    recent = RecentRequests(window_s=10)
    for i in range(8):
        recent.record(RequestInfo("v2", "m", 1, "stable", "r1"), 200, 2.0 + i, now=100.0)
    recent.record(RequestInfo("v2", "m", 2, "canary", "r2"), 500, 50.0, now=100.0)
    recent.record(RequestInfo("v2", "m", 2, "canary", "r2"), 400, 1.0, now=100.0)
    recent.record(RequestInfo("other"), 401, 0.1, now=100.0)  # no model: not kept
    summary = recent.summary("m", now=101.0)
    assert (summary.requests, summary.errors, summary.client_errors) == (10, 1, 1)
    assert summary.error_rate == 0.1
    assert summary.versions["1"].labels == {"stable": 8} and summary.versions["1"].replicas == {"r1": 8}
    assert summary.versions["2"].errors == 1
    assert recent.summary("m", now=111.0).requests == 0  # out of the window
