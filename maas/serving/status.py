"""The service's status (``GET /maas/v1/status``, ``maas status``) as typed models: what the data plane
answers, what the CLI formats, and the source of the OpenAPI document's ``ServiceStatus`` schema.

Fields are declared in the order the answer has always listed them (the JSON keeps that order).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from maas.records import LabelEvent

LoadState = Literal["absent", "loading", "ready", "failed"]  # a version on one replica


class _Status(BaseModel):
    def to_json(self) -> dict[str, Any]:
        """The JSON answer: the keys set (``null`` included), nothing more."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class RequestFigures(_Status):
    """Answers in the recent window: all, server errors (5xx), client errors (4xx), the error rate
    and latency percentiles (``None`` without requests)."""

    requests: int
    errors: int
    client_errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


class VersionTraffic(RequestFigures):
    """One version's recent answers, with the routes that reached it and the replicas that answered."""

    labels: dict[str, int]  # route ("stable", "canary", a label, "none"): answers
    replicas: dict[str, int]  # replica: answers


class RecentTraffic(RequestFigures):
    """A model's answers in the last ``window_s`` seconds, overall and per version."""

    window_s: float
    versions: dict[str, VersionTraffic]  # by version number, as text

    @model_serializer(mode="wrap")
    def _window_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``window_s`` leads the answer, before the overall figures, as it always has."""
        out: dict[str, Any] = handler(self)
        return {"window_s": out.pop("window_s"), **out} if "window_s" in out else out


class LabelRoute(_Status):
    """Where a label points, and its share of routed traffic."""

    version: int
    weight: float


class FeatureDriftStatus(_Status):
    """One feature of the inputs a version served, against its training split (:mod:`maas.drift`)."""

    mean_shift: float  # in training standard deviations, signed
    psi: float | None  # population stability index; None when the version records no bin shares
    flagged: bool


class VersionDriftStatus(_Status):
    """A version's served inputs against its training split, on the replica that answered."""

    instances: float  # the weight of the served statistics (instances, older ones decayed)
    flagged: list[str]  # the features past a threshold (args.drift)
    features: dict[str, FeatureDriftStatus]


class ShadowStatus(_Status):
    """A model's shadow version on the replica that answered: how often it was compared with the
    answering version, how often it failed or was skipped, how far it agrees, and both latencies."""

    version: int
    weight: float
    # The shadow version on this replica (loading: its share skipped meanwhile), and the shadow
    # predictions running there now, out of args.shadow.max_concurrent; None from a service before them.
    state: LoadState | None = None
    running: int | None = None
    compared: int
    errors: int
    skipped: int
    instances: int
    agreement: float | None  # classification: the share of instances with the same top class
    mean_abs_diff: float | None  # otherwise: the mean absolute difference of the outputs
    shadow_p50_ms: float | None
    shadow_p99_ms: float | None
    answer_p50_ms: float | None  # the answering version's, for the same requests
    answer_p99_ms: float | None


class ModelServiceStatus(_Status):
    """One model: its versions, labels, last label change (automatic rollbacks say why), recent answers,
    the drift of the inputs each version served, and its shadow version's figures."""

    versions: list[int]
    labels: dict[str, LabelRoute]
    last_label_change: LabelEvent | None
    recent: RecentTraffic
    drift: dict[str, VersionDriftStatus] = {}  # by version number, as text
    shadow: ShadowStatus | None = None


class DeploymentStatus(_Status):
    """One Serve deployment: its status and how many replicas run."""

    status: str
    replicas: int


class ServiceStatus(_Status):
    """The models an API key may call, and the deployments' replica counts."""

    models: dict[str, ModelServiceStatus]
    deployments: dict[str, DeploymentStatus]
    replica: str | None = None  # the replica that answered: recent, drift and shadow figures are its own
