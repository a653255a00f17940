"""What serving reports about itself: Ray metrics (``ray.util.metrics``, scraped from each node's
metrics endpoint and shown by the Ray dashboard's Grafana panels) and a recent-requests window per
model, which ``GET /maas/v1/status`` and ``maas status`` show.

Metrics (Prometheus names carry Ray's ``ray_`` prefix)::

    maas_requests_total{model, version, label, protocol, code}   every answer, errors included
    maas_request_latency_ms{model, version, label, protocol}      time in the replica, per answer
    maas_canary_fallbacks_total{model, version}                   failed canary requests answered by stable
    maas_batch_size{model, version}                               instances per forward pass
    maas_feature_drift{model, version, feature, measure}          served inputs against the training split
    maas_capture_records_total{model}                             captured rows written
    maas_capture_dropped_total{model}                             captured predictions dropped (storage down)
    maas_shadow_requests_total{model, version, outcome}           shadow predictions: compared, error, skipped
    maas_shadow_latency_ms{model, version}                        their latency in the replica
    maas_shadow_agreement{model, version, measure}                agreement (top class) or mean_abs_diff

``label`` says how the request reached its version: ``canary``/``stable``/``latest`` for routed
requests (so the canary/stable split is a ratio of two series), the label's name for
``/labels/{l}`` requests, ``none`` when the request named a version. Requests that never reached a
model (unknown route, no API key) carry ``model=""``: a stranger's paths never become series.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from maas.serving.status import RecentTraffic, VersionTraffic

if TYPE_CHECKING:
    from ray.util.metrics import Histogram

    from maas.drift import VersionDrift
    from maas.serving.shadow import ShadowFigures

LATENCY_BOUNDARIES_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass
class RequestInfo:
    """What one request turned out to be, filled in as it is handled; recorded once it is answered."""

    protocol: str  # "tfserving" | "explain" | "v2" | "tfserving-grpc" | "v2-grpc" | "service" | "other"
    model: str = ""
    version: int | None = None
    label: str = "none"
    replica: str | None = None
    request_id: str = ""  # the client's X-Request-ID (checked), else one made for it
    code: str = ""  # the gRPC status code's name; empty for HTTP, whose status code is the code


class ServingMetrics:
    """The ``ModelServer`` replica's Ray metrics (created inside the replica's process)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.requests = metrics.Counter(
            "maas_requests_total", description="Answered requests by model, version, label, protocol and status code.",
            tag_keys=("model", "version", "label", "protocol", "code"))
        self.latency = metrics.Histogram(
            "maas_request_latency_ms", description="Request latency in the ModelServer replica, in milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "version", "label", "protocol"))
        self.canary_fallbacks = metrics.Counter(
            "maas_canary_fallbacks_total", description="Failed canary requests answered by the default version.",
            tag_keys=("model", "version"))

        self.capture_records = metrics.Counter(
            "maas_capture_records_total", description="Captured prediction rows (instances) written to the registry's "
            "storage.", tag_keys=("model",))
        self.capture_dropped = metrics.Counter(
            "maas_capture_dropped_total", description="Captured predictions dropped, oldest first, while the storage "
            "was slow or unreachable and the replica's capture buffer was full.", tag_keys=("model",))
        self.shadow_requests = metrics.Counter(
            "maas_shadow_requests_total", description="Shadow predictions by model, shadow version and outcome "
            "(compared, error, skipped).", tag_keys=("model", "version", "outcome"))
        self.shadow_latency = metrics.Histogram(
            "maas_shadow_latency_ms", description="Shadow predictions' latency in the replica, in milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "version"))
        self.shadow_agreement = metrics.Gauge(
            "maas_shadow_agreement", description="The shadow version against the answering one: measure agreement "
            "(share of instances with the same top class) or mean_abs_diff.", tag_keys=("model", "version", "measure"))
        self.feature_drift = metrics.Gauge(
            "maas_feature_drift", description="Served inputs against the training split, per feature: measure "
            "mean_shift (training standard deviations) or psi (population stability index).",
            tag_keys=("model", "version", "feature", "measure"))

    def record_shadow(self, model: str, version: int, outcome: str, figures: ShadowFigures) -> None:
        """One shadow prediction: ``compared`` (with its latency and agreement), ``error`` or ``skipped``."""
        tags = {"model": model, "version": str(version)}
        self.shadow_requests.inc(tags={**tags, "outcome": outcome})
        if outcome != "compared":
            return
        self.shadow_latency.observe(figures.shadow_ms[-1], tags=tags)
        agreement = figures.agreement if figures.classification else figures.mean_abs_diff
        if agreement is not None:
            measure = "agreement" if figures.classification else "mean_abs_diff"
            self.shadow_agreement.set(agreement, tags={**tags, "measure": measure})

    def record_drift(self, drift: VersionDrift) -> None:
        for f in drift.features:
            tags = {"model": drift.model, "version": str(drift.version), "feature": f.feature}
            self.feature_drift.set(f.mean_shift, tags={**tags, "measure": "mean_shift"})
            if f.psi is not None:
                self.feature_drift.set(f.psi, tags={**tags, "measure": "psi"})

    def record_request(self, info: RequestInfo, status: int, latency_ms: float) -> None:
        tags = {"model": info.model, "version": "" if info.version is None else str(info.version),
                "label": info.label, "protocol": info.protocol}
        self.requests.inc(tags={**tags, "code": info.code or str(status)})
        self.latency.observe(latency_ms, tags=tags)


def batch_size_histogram() -> Histogram:
    """The model server's metric: instances per forward pass, by model and version."""
    from ray.util import metrics

    return metrics.Histogram("maas_batch_size", description="Instances per forward pass.",
                             boundaries=BATCH_BOUNDARIES, tag_keys=("model", "version"))


@dataclass
class _Answer:
    at: float
    version: int | None
    label: str
    status: int
    latency_ms: float
    replica: str | None


@dataclass
class _ModelWindow:
    answers: deque[_Answer] = field(default_factory=deque)


class RecentRequests:
    """The last ``window_s`` seconds of answers per model (at most ``max_per_model`` of them)."""

    def __init__(self, window_s: float = 60.0, max_per_model: int = 20_000) -> None:
        self.window_s = window_s
        self.max_per_model = max_per_model
        self._models: dict[str, _ModelWindow] = {}

    def record(self, info: RequestInfo, status: int, latency_ms: float, now: float | None = None) -> None:
        if not info.model:
            return
        now = time.monotonic() if now is None else now
        window = self._models.setdefault(info.model, _ModelWindow())
        window.answers.append(_Answer(now, info.version, info.label, status, latency_ms, info.replica))
        self._trim(window, now)

    def summary(self, model: str, now: float | None = None) -> RecentTraffic:
        """Requests, server errors (5xx), client errors (4xx), error rate and latency percentiles, overall
        and per version (with the routes that reached it and the replicas that answered it)."""
        now = time.monotonic() if now is None else now
        window = self._models.get(model, _ModelWindow())
        self._trim(window, now)
        answers = list(window.answers)
        versions: dict[str, VersionTraffic] = {}
        for version in sorted({a.version for a in answers if a.version is not None}):
            mine = [a for a in answers if a.version == version]
            labels: dict[str, int] = {}
            replicas: dict[str, int] = {}
            for a in mine:
                labels[a.label] = labels.get(a.label, 0) + 1
                if a.replica:
                    replicas[a.replica] = replicas.get(a.replica, 0) + 1
            versions[str(version)] = VersionTraffic(**_figures(mine), labels=labels, replicas=replicas)
        return RecentTraffic(window_s=self.window_s, **_figures(answers), versions=versions)

    def _trim(self, window: _ModelWindow, now: float) -> None:
        answers = window.answers
        while answers and (answers[0].at < now - self.window_s or len(answers) > self.max_per_model):
            answers.popleft()


def latency_percentile(latencies_ms: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile of latencies, rounded to 0.01 ms as the status shows them; ``None`` for none."""
    found = list(latencies_ms)
    return round(float(np.percentile(found, q)), 2) if found else None


def _figures(answers: list[_Answer]) -> dict[str, Any]:
    n = len(answers)
    errors = sum(1 for a in answers if a.status >= 500)
    latencies = [a.latency_ms for a in answers]
    return {
        "requests": n,
        "errors": errors,
        "client_errors": sum(1 for a in answers if 400 <= a.status < 500),
        "error_rate": round(errors / n, 4) if n else 0.0,
        "p50_ms": latency_percentile(latencies, 50),
        "p99_ms": latency_percentile(latencies, 99),
    }
