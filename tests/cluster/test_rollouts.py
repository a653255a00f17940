"""Versions and rollouts over real HTTP under load: canary weights, promote, rollback and set-weight
from the CLI without a failed request, and the automatic rollback of a failing canary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from traffic import Traffic

from maas import deploy
from maas.client import JSON, Call, Client, HTTPError
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.signature import Signature

pytestmark = pytest.mark.cluster
MAAS = str(Path(sys.executable).parent / "maas")
MODEL = "rollout"
REQUEST_TIMEOUT_S = 6.0  # well above any answer under the tests' load on 2 cores


@pytest.fixture(scope="module")
def rollout(ray_cluster, tiny_saved_model, other_tiny_saved_model, tmp_path_factory, new_api_key):
    """Versions 1 and 2 of one model (with different weights: each answer shows which computed it),
    ``stable`` on 1, served by an app that re-reads labels every 0.5 s and judges canaries quickly."""
    root = str(tmp_path_factory.mktemp("rollout_registry"))
    registry = Registry(root)
    import tensorflow as tf

    serving_default = tf.saved_model.load(str(tiny_saved_model)).signatures["serving_default"]
    signature = Signature.from_concrete_function(serving_default)
    for artifact in (tiny_saved_model, other_tiny_saved_model):
        registry.publish(MODEL, str(artifact), {"signature": signature.to_dict()})
    registry.promote(MODEL, 1)
    config = deploy.load_serve_config(registry=root, port=ray_cluster.serve_port, grpc_port=ray_cluster.grpc_port)
    args = config["applications"][0]["args"]
    args["registry_refresh_s"] = 0.5
    args["canary"] = {"window_s": 30, "min_requests": 10, "max_error_rate": 0.2}
    args["request_timeout_s"] = REQUEST_TIMEOUT_S
    # One replica: these tests follow one replica's loads and canary judgement (two replicas load and
    # judge on their own, and HAProxy spreads requests without regard to what each has loaded; the
    # switch across two replicas is tests/test_replica_faults.py's).
    server = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer")
    server["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
    deploy.deploy(config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
    key = new_api_key(root)
    client = Client(ray_cluster.serve_url, api_key=key, timeout_s=120)
    # The service's first version loads before the load starts (a cold start has nothing to fall back
    # on); version 2 is left cold: a label moving to it must load it before routing to it.
    _warm_up(client, MODEL, np.zeros((1, 8, 8)).tolist(), 1)
    return client, registry, key, config


def _warm_up(client: Client, model: str, instances: list, version: int | None = None,
             timeout_s: float = 120) -> None:
    """Predict until the version answers. On a busy 2-core machine its first load can outlast the 6 s
    request timeout: that request gets 504, the load goes on, and a later request finds it done."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.predict(model, np.asarray(instances, np.float32), version=version)
            return
        except HTTPError as exc:
            if exc.status != 504 or time.monotonic() > deadline:
                raise


def _cli(registry: Registry, *args: str) -> str:
    proc = subprocess.run([MAAS, "models", "--registry", registry.uri, *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _load(client: Client, key: str) -> Traffic:
    """3 clients of both protocols sending routed requests (no version, no label)."""
    return Traffic(client.base_url, key, MODEL, clients=3, max_requests=20_000, max_s=240)


def test_canary_split_promote_rollback_and_set_weight_under_load_fail_no_request(rollout) -> None:
    client, registry, key, _ = rollout
    with _load(client, key) as load:
        load.wait_until(lambda seen: set(seen) == {1}, "only the stable version 1")
        _cli(registry, "label", MODEL, "canary", "2", "--weight", "0.5")
        load.wait_until(lambda seen: 0.25 < seen[2] / sum(seen.values()) < 0.75, "about half on canary 2")
        _cli(registry, "set-weight", MODEL, "0")
        load.wait_until(lambda seen: set(seen) == {1}, "no canary share at weight 0")
        _cli(registry, "promote", MODEL, "2")
        load.wait_until(lambda seen: set(seen) == {2}, "everything on the promoted version 2")
        _cli(registry, "rollback", MODEL)
        load.wait_until(lambda seen: set(seen) == {1}, "everything back on version 1")
    assert len(load.outcomes) >= 200
    assert load.failures() == [] and load.retries == []
    assert load.slowest_s() < REQUEST_TIMEOUT_S
    assert load.mismatched_answers() == {}


def test_a_saturated_healthy_canary_is_not_retired(rollout, ray_cluster) -> None:
    """Overload answers (503 from a full replica) are no fault of the canary's: with every routed
    request on the canary and the replicas' queues overflowing, it keeps its label."""
    client, registry, key, config = rollout
    registry.set_label(MODEL, "canary", 2, weight=1.0)
    server = config["applications"][0]["deployments"][0]
    server["user_config"]["max_pending_predictions"] = 1  # changed in place, no replica restarts
    deploy.deploy(config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
    try:
        with Traffic(client.base_url, key, MODEL, clients=48, max_s=8) as load:
            time.sleep(8)
        statuses = load.statuses()
        assert statuses[503] >= 20 and statuses[200] >= 20, statuses  # saturated, and answering
        assert set(statuses) == {200, 503}, statuses
        assert registry.labels(MODEL)["canary"].version == 2
        assert not [e for e in registry.label_history(MODEL) if "auto-rollback" in (e.reason or "")]
    finally:
        server["user_config"]["max_pending_predictions"] = 512
        deploy.deploy(config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
        registry.remove_label(MODEL, "canary")


def test_a_failing_canary_is_rolled_back_automatically_without_failed_requests(rollout, tiny_saved_model) -> None:
    client, registry, key, _ = rollout
    signature = registry.get(MODEL, 1).metadata.signature
    broken = registry.publish(MODEL, str(tiny_saved_model), {"signature": signature}).version
    (Path(ArtifactCache(registry).local_path(MODEL, broken)) / "saved_model.pb").write_bytes(b"not a graph")
    registry.set_label(MODEL, "canary", broken, weight=0.5)
    with _load(client, key) as load:
        deadline = time.monotonic() + 120
        while "canary" in registry.labels(MODEL):
            assert time.monotonic() < deadline, f"canary not retired; answers {load.statuses()}"
            time.sleep(0.5)
        seen = len(load.outcomes)
        load.wait_until(lambda recent: set(recent) == {1}, "stable answers after the rollback")
    assert load.failures() == [] and load.retries == []  # the canary's failures were answered by the stable version
    assert load.mismatched_answers() == {}
    assert broken not in load.versions_since(0)
    assert sum(load.versions_since(seen).values()) > 0
    event = registry.label_history(MODEL)[-1].to_json()
    assert (event["label"], event["version"], event["previous"]) == ("canary", None, broken)
    assert event["reason"].startswith("auto-rollback: error rate ") and "exceeds 20.0%" in event["reason"]
    assert "auto-rollback: error rate" in _cli(registry, "history", MODEL)


def _post(client: Client, path: str, body: dict) -> tuple[int, dict]:
    reply = client.send(Call("POST", path, json.dumps(body).encode(), JSON))
    return reply.status, reply.json()


def test_a_slow_prediction_gets_504_and_the_service_goes_on(rollout, slow_saved_model) -> None:
    client, registry, _, _ = rollout
    path, signature = slow_saved_model
    version = registry.publish("slow", str(path), {"signature": signature.to_dict()}).version
    predict = "/v1/models/slow:predict"
    _warm_up(client, "slow", [[0.1]])
    started = time.monotonic()
    status, body = _post(client, predict, {"instances": [[REQUEST_TIMEOUT_S + 1]]})
    assert status == 504 and body == {"error": f"slow version {version} did not answer within {REQUEST_TIMEOUT_S:g}s"}
    assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2

    time.sleep(REQUEST_TIMEOUT_S)
    assert _post(client, f"/v1/models/{MODEL}:predict", {"instances": np.zeros((1, 8, 8)).tolist()})[0] == 200


def test_a_load_outlasting_the_timeout_goes_on_and_the_next_request_gets_its_result(
        rollout, slow_loading_saved_model) -> None:
    """The version's load (9 s) outlasts the 6 s request timeout: that request gets 504, the load is
    not cancelled with it, and the next request takes the loaded version in about the 3 s left. A load
    started anew would take 9 s again and end in another 504."""
    client, registry, _, _ = rollout
    path, signature = slow_loading_saved_model
    version = registry.publish("slow_loading", str(path), {"signature": signature.to_dict()}).version
    predict = "/v1/models/slow_loading:predict"
    status, body = _post(client, predict, {"instances": [[0.1]]})
    assert status == 504 and body["error"] == f"slow_loading version {version} did not answer within " \
                                              f"{REQUEST_TIMEOUT_S:g}s"
    started = time.monotonic()
    status, body = _post(client, predict, {"instances": [[0.1]]})
    assert status == 200, body
    assert time.monotonic() - started < REQUEST_TIMEOUT_S


def test_delete_and_gc_under_load_fail_no_request_on_the_versions_that_remain(
        rollout, tiny_saved_model, other_tiny_saved_model) -> None:
    """``maas models delete`` and ``gc`` while 3 clients use the stable version: those never fail; the
    deleted version answers 200 until serving sees it gone (within ``registry_refresh_s``), then 404."""
    client, registry, key, _ = rollout
    model = "retention"
    signature = registry.get(MODEL, 1).metadata.signature
    for artifact in (tiny_saved_model, other_tiny_saved_model, tiny_saved_model, other_tiny_saved_model):
        registry.publish(model, str(artifact), {"signature": signature})
    registry.promote(model, 4)
    x = np.zeros((1, 8, 8), np.float32)
    _warm_up(client, model, x.tolist(), 1)
    _warm_up(client, model, x.tolist(), 4)
    doomed: list[int] = []  # statuses of version 1's requests, counted here in the main thread
    with Traffic(client.base_url, key, model, clients=3, max_requests=20_000, max_s=240) as load:
        load.wait_until(lambda seen: set(seen) == {4}, "only the stable version 4")
        assert "labelled stable" in _cli_fails(registry, "delete", model, "4")
        deleted_at = time.monotonic()
        _cli(registry, "delete", model, "1")
        deadline = deleted_at + 30
        while time.monotonic() < deadline and (not doomed or doomed[-1] != 404):
            try:
                client.predict(model, x, version=1)
                doomed.append(200)
            except HTTPError as exc:
                doomed.append(exc.status)
        gone_after_s = time.monotonic() - deleted_at
        assert "would delete v2 v3" in _cli(registry, "gc", model, "--keep", "1")
        assert registry.versions(model) == [2, 3, 4]
        assert "deleted v2 v3" in _cli(registry, "gc", model, "--keep", "1", "--yes")
        load.wait_until(lambda seen: set(seen) == {4}, "the stable version 4 after gc")
    assert registry.versions(model) == [4]
    assert doomed[-1] == 404 and set(doomed) <= {200, 404}, doomed
    assert gone_after_s < 0.5 + 10  # registry_refresh_s, and the load on 2 cores
    assert len(load.outcomes) >= 100
    assert load.failures() == [] and load.retries == []
    assert registry.publish(model, str(tiny_saved_model), {"signature": signature}).version == 5


def _cli_fails(registry: Registry, *args: str) -> str:
    proc = subprocess.run([MAAS, "models", "--registry", registry.uri, *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc
    return proc.stderr
