"""Observability: Ray metrics on the nodes' metrics endpoints (what the dashboard's Prometheus scrapes),
and `maas status` showing per-model versions, labels, replicas and the recent error rate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import metric_series, scrape_metrics

from maas.client import Client

pytestmark = pytest.mark.cluster
MAAS = str(Path(sys.executable).parent / "maas")


def test_requests_latencies_and_batch_sizes_reach_the_metrics_endpoint(digits_app) -> None:
    app = digits_app.ensure()
    client = Client(app.cluster.serve_url)
    for _ in range(5):
        client.predict("digits", np.zeros((4, 8, 8)))
    assert client.send(_bad_call()).status == 400
    version = str(app.version)
    deadline = time.monotonic() + 60  # Ray's metrics agent exports every few seconds
    while True:
        text = scrape_metrics()
        ok = metric_series(text, "ray_maas_requests_total", model="digits", version=version, code="200",
                           protocol="tfserving")
        bad = metric_series(text, "ray_maas_requests_total", model="digits", code="400")
        batches = metric_series(text, "ray_maas_batch_size_count", model="digits", version=version)
        latency = metric_series(text, "ray_maas_request_latency_ms_count", model="digits")
        if ok >= 5 and bad >= 1 and batches >= 1 and latency >= 6:
            break
        assert time.monotonic() < deadline, f"metrics not exported: ok={ok} bad={bad} batches={batches}"
        time.sleep(2)
    assert metric_series(text, "ray_maas_batch_size_bucket", model="digits", le="4.0") >= 1


SERVING = ("HEALTHY", "UPSCALING", "DOWNSCALING")  # Serve's deployment states that answer requests


def _bad_call():
    from maas.client import JSON, Call

    return Call("POST", "/v1/models/digits:predict", b'{"instances": [[1, 2]]}', JSON)


def test_maas_status_shows_versions_labels_replicas_and_recent_errors(digits_app) -> None:
    app = digits_app.ensure()
    client = Client(app.cluster.serve_url)
    # `maas status` is answered by one replica, about its own requests: where earlier tests' load
    # scaled the service to two, send rounds until the answering replica has seen enough (bounded).
    for _ in range(10):
        for _ in range(4):
            client.predict("digits", np.zeros((1, 8, 8)), version=app.version)
        client.send(_bad_call())
        proc = subprocess.run([MAAS, "status", "digits", "--json"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(proc.stdout)
        recent = answer["models"]["digits"]["recent"]
        unlabelled = recent["versions"].get(str(app.version), {}).get("labels", {}).get("none", 0)
        if recent["client_errors"] >= 1 and unlabelled >= 4:
            break
    assert answer["deployments"]["ModelServer"]["replicas"] >= 1
    assert answer["deployments"]["ModelServer"]["status"] in SERVING  # earlier tests' load may have scaled it
    model = answer["models"]["digits"]
    assert app.version in model["versions"]
    recent = model["recent"]
    assert recent["requests"] >= 5 and recent["client_errors"] >= 1
    assert recent["versions"][str(app.version)]["labels"].get("none", 0) >= 4  # asked by version
    assert len(recent["versions"][str(app.version)]["replicas"]) >= 1

    text = subprocess.run([MAAS, "status", "digits"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert re.search(rf"ModelServer \d+ replica\(s\) ({'|'.join(SERVING)})", text.stdout), text.stdout
    assert re.search(r"last 60s: \d+ requests, 0 errors \(0\.0%\), \d+ rejected \(4xx\)", text.stdout), text.stdout
    missing = subprocess.run([MAAS, "status", "nope"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no model 'nope'")
