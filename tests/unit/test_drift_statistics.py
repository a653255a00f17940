"""Drift of served inputs against the training split (no Ray): the fixed bins, the population
stability index, a replica's decayed statistics, and the status that the data plane answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maas.drift import BINS, DriftMonitor, DriftPolicy, bin_counts, population_stability
from maas.signature import Signature, TensorSpec

MEAN, STD = np.array([10.0, -5.0, 0.0]), np.array([2.0, 1.0, 0.5])
TABLE = Signature(inputs=(TensorSpec("features", "float32", (-1, 3)),),
                  outputs=(TensorSpec("failure", "float32", (-1, 2)),))


def _training(n: int = 50_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(MEAN, STD, (n, 3))


def _shares(x: np.ndarray) -> np.ndarray:
    counts = bin_counts(x, MEAN, STD)
    return counts / counts.sum(axis=1, keepdims=True)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _monitor(**policy) -> tuple[DriftMonitor, list, Clock]:
    exported: list = []
    clock = Clock()
    monitor = DriftMonitor(DriftPolicy(**policy), on_export=exported.append, clock=clock)
    monitor.watch("m", 1, MEAN.tolist(), STD.tolist(), _shares(_training()).tolist(), ["speed", "torque", "wear"])
    return monitor, exported, clock


def test_values_fall_in_bins_fixed_in_each_features_standard_deviations() -> None:
    values = np.array([[10.0, -5.0], [14.5, -5.6], [np.nan, -9.0]])  # z: (0, 0), (2.25, -0.6), (nan, -4)
    counts = bin_counts(values, np.array([10.0, -5.0]), np.array([2.0, 1.0]))
    assert counts.shape == (2, BINS)
    assert counts[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]  # z 0 is the bin right of 0; NaN nowhere
    assert counts[1].tolist() == [1, 0, 0, 1, 0, 1, 0, 0, 0, 0]


def test_the_stability_index_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    training = _shares(_training())
    same = population_stability(bin_counts(_training(2000, seed=1), MEAN, STD), training)
    moved = population_stability(bin_counts(_training(2000, seed=1) + STD * [0, 1, 0], MEAN, STD), training)
    assert same.max() < 0.02
    assert moved[1] > 0.5 and moved[0] < 0.02 and moved[2] < 0.02


def test_a_shifted_feature_is_flagged_and_the_others_not_once_enough_instances_were_seen() -> None:
    monitor, _, _ = _monitor(min_instances=200)
    held_out = _training(1000, seed=2).astype(np.float32)
    monitor.observe("m", 1, held_out[:100])
    early = monitor.report("m", 1)
    assert early is not None and early.flagged == []  # 100 instances: too few to judge
    monitor.observe("m", 1, held_out[100:])
    report = monitor.report("m", 1)
    assert report is not None and report.flagged == [] and report.instances == pytest.approx(1000, rel=0.15)
    assert all(abs(f.mean_shift) < 0.1 and f.psi is not None and f.psi < 0.05 for f in report.features)

    shifted, _, _ = _monitor()
    for chunk in np.split(held_out + STD.astype(np.float32) * [0, 0, 1.5], 10):
        shifted.observe("m", 1, chunk)
    report = shifted.report("m", 1)
    assert report is not None and report.flagged == ["wear"]
    wear = report.features[2]
    assert wear.mean_shift == pytest.approx(1.5, abs=0.15) and wear.psi is not None and wear.psi > 0.5


def test_older_instances_fade_with_the_half_life_so_a_drift_that_ends_is_cleared() -> None:
    monitor, _, _ = _monitor(half_life_instances=500)
    monitor.observe("m", 1, _training(1000, seed=3) + STD * [3, 0, 0])
    assert monitor.report("m", 1).flagged == ["speed"]
    for seed in range(10):  # 10,000 instances like training's: 20 half-lives
        monitor.observe("m", 1, _training(1000, seed=10 + seed))
    report = monitor.report("m", 1)
    # Requests of 1,000 instances, each decaying what came before by 0.5 ** (1000 / 500): 1000 / (1 - 0.25).
    assert report.flagged == [] and report.instances == pytest.approx(1000 / 0.75, rel=0.01)


def test_drift_is_exported_at_most_every_export_every_s_and_only_versions_with_statistics_are_watched() -> None:
    monitor, exported, clock = _monitor(export_every_s=10.0)
    for _ in range(5):
        monitor.observe("m", 1, _training(10))
    assert len(exported) == 1
    clock.now = 10.0
    monitor.observe("m", 1, _training(10))
    assert len(exported) == 2 and exported[-1].version == 1
    monitor.watch("m", 2, None, None, None, [])
    monitor.observe("m", 2, _training(10))
    assert monitor.knows("m", 2) and monitor.report("m", 2) is None
    monitor.watch("m", 3, MEAN.tolist(), STD.tolist(), None, ["a", "b"])  # older metadata: no bin shares
    monitor.observe("m", 3, _training(300))
    report = monitor.report("m", 3)
    assert [f.feature for f in report.features] == ["feature 0", "feature 1", "feature 2"]  # 2 names for 3
    assert all(f.psi is None for f in report.features)
    monitor.observe("m", 3, np.ones((2, 4)))  # not this version's shape: ignored
    assert monitor.report("m", 3).instances == pytest.approx(300, rel=0.05)


def test_the_status_shows_each_versions_drift_and_its_flagged_features(make_stack) -> None:
    stack = make_stack()
    training = _training()
    stats = {"mean": MEAN.tolist(), "std": STD.tolist(), "count": len(training),
             "bin_shares": _shares(training).tolist()}
    version = stack.publish("table", TABLE, preprocessing={
        "feature_columns": ["speed", "torque", "wear"], "item_shape": [3], "training_split_stats": stats})
    served = _training(400, seed=5) + STD * [0, 2, 0]
    for chunk in np.split(served, 4):
        reply = stack.call("POST", "/v1/models/table:predict", json.dumps({"instances": chunk.tolist()}).encode())
        assert reply.status == 200
    status = stack.call("GET", "/maas/v1/status").json()
    drift = status["models"]["table"]["drift"][str(version)]
    assert drift["flagged"] == ["torque"] and drift["instances"] == pytest.approx(400, rel=0.1)
    assert drift["features"]["torque"]["mean_shift"] == pytest.approx(2.0, abs=0.2)
    assert drift["features"]["torque"]["psi"] > 1.0 and not drift["features"]["speed"]["flagged"]
    assert status["models"]["digits"]["drift"] == {}  # no training statistics: not watched


def test_one_request_of_huge_values_moves_the_mean_shift_by_a_bounded_amount() -> None:
    monitor, _, _ = _monitor(half_life_instances=500)
    monitor.observe("m", 1, np.full((1, 3), 3.4e38, np.float32))
    monitor.observe("m", 1, _training(2000, seed=7))
    report = monitor.report("m", 1)
    assert all(np.isfinite(f.mean_shift) and abs(f.mean_shift) < 0.1 for f in report.features), report
