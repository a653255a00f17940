"""Drift of served inputs against the training split, per feature (the input's last axis: a table's
columns, a sequence's channels, an image's colour channels).

Training records, beside each feature's mean and standard deviation, the share of the training
split in each of :data:`Z_EDGES`' fixed bins, measured in that feature's own standard deviations
(:func:`bin_counts`). A serving replica keeps the same figures of the inputs it answers
(:class:`DriftMonitor`), with older instances weighing less (a half-life counted in instances), and
compares them: the **standardized mean shift** ``(served mean - training mean) / training std`` and
the **population stability index** ``sum((p - q) * ln(p / q))`` over the bins (``q`` training's shares,
``p`` the served ones). A feature is flagged past ``max_mean_shift`` or ``max_psi`` once enough
instances were seen (:class:`DriftPolicy`). The bins are fixed in standard deviations, so that one
vectorized ``searchsorted`` bins a request's values whatever the feature.

Pure numpy: the training job and the replicas both use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt

Z_EDGES = np.array([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])  # 10 bins, the outer two open-ended
BINS = len(Z_EDGES) + 1
_SHARE_FLOOR = 1e-4  # an empty bin's share, so that the index stays finite
MAX_ROWS_PER_REQUEST = 4096  # values of each feature one request contributes at most (an image: a sample)
MAX_VALUES_PER_REQUEST = 1 << 16  # ... and values in all (a wide table: fewer rows), so the work stays small
Z_CLIP = 10.0  # a served value counts at most this many standard deviations in the mean: one request of
#                huge values cannot hold a feature's mean shift past its threshold for ever


class DriftPolicy(BaseModel):
    """When a replica flags a feature as drifted (``args.drift`` in the Serve config)."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(default=True, description="Keep per-feature statistics of the inputs served, for versions "
                                                    "whose metadata holds the training split's.")
    half_life_instances: PositiveInt = Field(
        default=5000, description="Instances after which an older instance weighs half as much in the served "
                                  "statistics.")
    min_instances: PositiveInt = Field(default=200, description="Instances seen before any feature is flagged.")
    max_mean_shift: PositiveFloat = Field(
        default=0.5, description="Flag a feature whose served mean is this many training standard deviations away "
                                 "from the training mean.")
    max_psi: PositiveFloat = Field(default=0.2, description="Flag a feature whose population stability index over "
                                                            "the fixed bins is past this.")
    export_every_s: PositiveFloat = Field(default=10.0, description="How often a replica exports "
                                                                    "maas_feature_drift per version it serves.")


def bin_counts(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(features, BINS): how many of ``values`` (rows, features) fall in each feature's bins (NaN in none)."""
    return z_bin_counts((values - mean) / std)


def z_bin_counts(z: np.ndarray) -> np.ndarray:
    """:func:`bin_counts` of values already in standard deviations (rows, features)."""
    features = z.shape[1]
    bins = np.searchsorted(Z_EDGES, z, side="right") + np.arange(features) * BINS
    present = ~np.isnan(z)
    return np.bincount(bins[present].ravel(), minlength=features * BINS).reshape(features, BINS).astype(np.float64)


def population_stability(served: np.ndarray, training: np.ndarray) -> np.ndarray:
    """Per feature, the PSI of ``served`` bin counts (features, BINS) against ``training`` shares."""
    p = np.maximum(served / np.maximum(served.sum(axis=1, keepdims=True), 1e-12), _SHARE_FLOOR)
    q = np.maximum(np.asarray(training, np.float64), _SHARE_FLOOR)
    result: np.ndarray = ((p - q) * np.log(p / q)).sum(axis=1)
    return result


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    mean_shift: float  # in training standard deviations, signed
    psi: float | None  # None: the version's metadata records no bin shares (trained before they were)
    flagged: bool


@dataclass(frozen=True)
class VersionDrift:
    model: str
    version: int
    instances: float  # the weight of the served statistics (decayed instances)
    features: tuple[FeatureDrift, ...]

    @property
    def flagged(self) -> list[str]:
        return [f.feature for f in self.features if f.flagged]


@dataclass
class _Served:
    """One version's training figures and the decayed figures of what it served."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    shares: np.ndarray | None  # (features, BINS) of the training split
    instances: float = 0.0
    rows: float = 0.0
    total: np.ndarray | None = None  # (features,) sum of the served values' z-scores (clipped), decayed
    bins: np.ndarray | None = None  # (features, BINS), decayed
    exported_at: float = -math.inf


class DriftMonitor:
    """A replica's per-version statistics of the inputs it answered. :meth:`observe` is on the request
    path: a few vectorized numpy calls over at most :data:`MAX_ROWS_PER_REQUEST` rows per feature."""

    def __init__(self, policy: DriftPolicy, *, on_export: Callable[[VersionDrift], None] = lambda drift: None,
                 clock: Callable[[], float]) -> None:
        self.policy = policy
        self._on_export = on_export
        self._clock = clock
        self._versions: dict[tuple[str, int], _Served | None] = {}  # None: nothing to compare with

    def knows(self, model: str, version: int) -> bool:
        return (model, version) in self._versions

    def watch(self, model: str, version: int, mean: Sequence[float] | None, std: Sequence[float] | None,
              shares: Sequence[Sequence[float]] | None, names: Sequence[str]) -> None:
        """Start watching ``version`` with its training split's figures (``mean`` ``None``: it has none,
        and is not watched)."""
        if mean is None or std is None or not self.policy.enabled:
            self._versions[(model, version)] = None
            return
        features = len(mean)
        if len(std) != features:
            raise ValueError(f"{features} feature means and {len(std)} standard deviations")
        labels = tuple(names) if len(names) == features else tuple(f"feature {j}" for j in range(features))
        table = None if shares is None else np.asarray(shares, np.float64)
        if table is not None and table.shape != (features, BINS):
            table = None  # recorded with other bins: the mean shift alone is compared
        self._versions[(model, version)] = _Served(labels, np.asarray(mean, np.float64),
                                                   np.where(np.asarray(std, np.float64) > 0, std, 1.0), table)

    def observe(self, model: str, version: int, value: np.ndarray) -> None:
        """Take in one request's input (instances first, features on the last axis)."""
        served = self._versions.get((model, version))
        if served is None or value.ndim < 2 or value.shape[-1] != served.mean.size:
            return
        n = value.shape[0]
        rows = value.reshape(-1, value.shape[-1])
        most = max(1, min(MAX_ROWS_PER_REQUEST, MAX_VALUES_PER_REQUEST // rows.shape[1]))
        if rows.shape[0] > most:
            rows = rows[:: -(-rows.shape[0] // most)]
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.clip((rows.astype(np.float64, copy=False) - served.mean) / served.std, -Z_CLIP, Z_CLIP)
        decay = 0.5 ** (n / self.policy.half_life_instances)
        counts = z_bin_counts(z)
        if served.total is None or served.bins is None:
            served.total, served.bins = np.zeros(served.mean.size), np.zeros_like(counts)
        served.total = served.total * decay + z.sum(axis=0)  # in standard deviations
        served.bins = served.bins * decay + counts
        served.rows = served.rows * decay + rows.shape[0]
        served.instances = served.instances * decay + n
        now = self._clock()
        if now - served.exported_at >= self.policy.export_every_s:
            served.exported_at = now
            report = self.report(model, version)
            if report is not None:
                self._on_export(report)

    def report(self, model: str, version: int) -> VersionDrift | None:
        """The version's drift now (``None`` when it is not watched or served nothing yet)."""
        served = self._versions.get((model, version))
        if served is None or served.total is None or served.bins is None or served.rows <= 0:
            return None
        shift = served.total / served.rows  # the mean of the (clipped) z-scores: the standardized mean shift
        psi = None if served.shares is None else population_stability(served.bins, served.shares)
        policy, enough = self.policy, served.instances >= self.policy.min_instances
        features = tuple(FeatureDrift(
            name, float(shift[j]), None if psi is None else float(psi[j]),
            enough and (abs(shift[j]) > policy.max_mean_shift or (psi is not None and psi[j] > policy.max_psi)))
            for j, name in enumerate(served.names))
        return VersionDrift(model, version, served.instances, features)

    def reports(self, model: str) -> list[VersionDrift]:
        found = (self.report(m, v) for m, v in sorted(self._versions) if m == model)
        return [r for r in found if r is not None]
