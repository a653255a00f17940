"""Drift over real HTTP on the session's trained digits: its metadata records the training split's
per-feature bins; two versions of it serve the held-out split as it is and with two features shifted by
a known amount, and `maas status`, `GET /maas/v1/status` and the `maas_feature_drift` metric flag the
shifted features of the second only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import metric_series, scrape_metrics

from maas import settings
from maas.client import Client
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.templates import get_template
from maas.training.data import builtin_held_out

pytestmark = pytest.mark.cluster
MAAS = str(Path(sys.executable).parent / "maas")
SHIFTED = [2, 5]  # the features (pixel columns, the input's last axis) moved by 2 training standard deviations


def _status(model: str) -> dict:
    proc = subprocess.run([MAAS, "status", model, "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["models"][model]


def test_only_the_shifted_features_of_the_shifted_traffic_are_flagged(digits_app) -> None:
    app = digits_app.ensure()
    registry = Registry(app.registry_uri)
    trained = registry.get("digits", app.version).metadata
    stats = trained.preprocessing.training_split_stats
    assert stats is not None and stats.bin_shares is not None
    assert len(stats.bin_shares) == 8 and all(len(row) == 10 and abs(sum(row) - 1) < 1e-6 for row in stats.bin_shares)
    artifact = ArtifactCache(registry).local_path("digits", app.version)
    document = {k: v for k, v in trained.to_json().items() if k not in ("model", "version", "created_at")}
    as_is, moved = (registry.publish("digits-drift", artifact, document).version for _ in range(2))

    x, _ = builtin_held_out(get_template("digits"), settings.default_data_dir())
    shift = np.zeros(8, np.float32)
    shift[SHIFTED] = 2 * np.asarray(stats.std, np.float32)[SHIFTED]
    client = Client(app.cluster.serve_url)
    deadline = time.monotonic() + 120
    # The status is one replica's: send rounds (bounded) until it has seen enough of both versions.
    for _ in range(8):
        for chunk in np.array_split(x, 12):
            client.predict("digits-drift", chunk, version=as_is)
            client.predict("digits-drift", chunk + shift, version=moved)
        drift = _status("digits-drift")["drift"]
        if all(drift.get(str(v), {}).get("instances", 0) >= 400 for v in (as_is, moved)):
            break
        assert time.monotonic() < deadline, drift
    assert drift[str(as_is)]["flagged"] == [], drift[str(as_is)]
    assert drift[str(moved)]["flagged"] == [f"feature {j}" for j in SHIFTED], drift[str(moved)]
    for j in SHIFTED:
        feature = drift[str(moved)]["features"][f"feature {j}"]
        assert feature["mean_shift"] == pytest.approx(2.0, abs=0.3) and feature["psi"] > 0.2
    for name, feature in drift[str(as_is)]["features"].items():
        assert abs(feature["mean_shift"]) < 0.2 and feature["psi"] < 0.1, (name, feature)

    text = subprocess.run([MAAS, "status", "digits-drift"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert f"v{moved} inputs (" in text.stdout and "drift in feature 2 (mean shift +2." in text.stdout, text.stdout
    assert f"v{as_is} inputs (" in text.stdout and "no feature past the drift thresholds" in text.stdout

    while True:  # each replica exports every export_every_s (10 s) while it answers
        client.predict("digits-drift", x[:4] + shift, version=moved)
        value = metric_series(scrape_metrics(), "ray_maas_feature_drift", model="digits-drift", version=str(moved),
                              feature="feature 2", measure="mean_shift")
        if value > 1.0:
            break
        assert time.monotonic() < deadline + 60, "maas_feature_drift not exported"
        time.sleep(2)
