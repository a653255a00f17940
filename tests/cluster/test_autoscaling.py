"""Serving under pressure, over real HTTP: ModelServer replicas autoscale up under load and back down
after it; full queues answer 503 with Retry-After; a keep-alive connection idle across a redeploy
that replaced every replica is answered; replicas that hold one version at a time answer every
version, spread over the replicas."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from maas import deploy
from maas.client import JSON, NO_RETRY, Call, Client, Reply
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def models(ray_cluster, tiny_saved_model, other_tiny_saved_model, slow_saved_model, tmp_path_factory, new_api_key):
    """A registry with the busy-waiting model ``slow`` and two versions of ``tiny`` that answer
    differently (other weights)."""
    import tensorflow as tf

    from maas.signature import Signature

    root = str(tmp_path_factory.mktemp("scaling_registry"))
    registry = Registry(root)
    path, signature = slow_saved_model
    registry.publish("slow", str(path), {"signature": signature.to_dict()})
    tiny = Signature.from_concrete_function(tf.saved_model.load(str(tiny_saved_model)).signatures["serving_default"])
    for artifact in (tiny_saved_model, other_tiny_saved_model):
        registry.publish("tiny", str(artifact), {"signature": tiny.to_dict()})
    yield root, Client(ray_cluster.serve_url, api_key=new_api_key(root))
    deploy.undeploy(dashboard=ray_cluster.dashboard_url)  # give the CPUs back to the training tests


def _deploy(ray_cluster, root: str, server: dict, args: dict | None = None) -> None:
    config = deploy.load_serve_config(registry=root, port=ray_cluster.serve_port, grpc_port=ray_cluster.grpc_port)
    app = config["applications"][0]
    app["args"].update(args or {})
    spec = next(d for d in app["deployments"] if d["name"] == "ModelServer")
    spec.pop("autoscaling_config")
    spec.update(server)
    deploy.deploy(config, dashboard=ray_cluster.dashboard_url, timeout_s=300)


def _running(ray_cluster) -> int:
    return len(deploy.running_replicas(dashboard=ray_cluster.dashboard_url))


def _states(ray_cluster) -> list[str]:
    """The state of every ModelServer replica Serve knows, old ones still stopping included."""
    details = deploy.serve_client(ray_cluster.dashboard_url).get_serve_details()
    return sorted(r["state"] for r in details["applications"]["maas"]["deployments"]["ModelServer"]["replicas"])


def _slow_call(seconds: float) -> Call:
    return Call("POST", "/v1/models/slow:predict", json.dumps({"instances": [[seconds]]}).encode(), JSON)


@pytest.mark.slow
def test_replicas_scale_up_under_load_and_back_down_after_it(ray_cluster, models) -> None:
    root, client = models
    _deploy(ray_cluster, root, {
        "max_ongoing_requests": 8,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                               "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5,
                               "look_back_period_s": 2},
        "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0},  # one 0.2 s pass per request
    })
    assert _running(ray_cluster) == 1
    stop, statuses = threading.Event(), Counter()
    deadline = time.monotonic() + 120

    def load() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            statuses[client.send(_slow_call(0.2), retry=NO_RETRY).status] += 1  # every answer counted

    threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        peak = 1
        while peak < 2 and time.monotonic() < deadline:
            time.sleep(1)
            peak = max(peak, _running(ray_cluster))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert peak == 2, f"no second replica under load; answers {statuses}"
    assert set(statuses) == {200}, statuses

    settle = time.monotonic() + 90
    while _running(ray_cluster) > 1:
        assert time.monotonic() < settle, "replicas did not scale back down after the load stopped"
        time.sleep(1)
    assert client.send(_slow_call(0)).status == 200


def test_full_queues_answer_503_with_retry_after_and_the_service_recovers(ray_cluster, models) -> None:
    root, client = models
    _deploy(ray_cluster, root, {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                                "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0,
                                                "max_pending_predictions": 2}})
    client.send(_slow_call(0))  # loaded
    with ThreadPoolExecutor(max_workers=8) as pool:
        # The server's own answers: the SDK would retry each 503 that says Retry-After.
        replies = list(pool.map(lambda _: client.send(_slow_call(1.0), retry=NO_RETRY), range(8), timeout=120))
    codes = Counter(r.status for r in replies)
    assert set(codes) == {200, 503} and codes[200] >= 1 and codes[503] >= 1, codes
    rejected = next(r for r in replies if r.status == 503)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json() == {"error": "Model server queues are full; retry later"}
    assert client.send(_slow_call(0)).status == 200  # nothing wedged


def _replica_ids(ray_cluster) -> set[str]:
    return {r["replica_id"] for r in deploy.running_replicas(dashboard=ray_cluster.dashboard_url)}


def _two_new_replicas_alone(ray_cluster, old: set[str]) -> set[str]:
    deadline = time.monotonic() + 120  # the app is RUNNING before its second replica is, and before the
    while _states(ray_cluster) != ["RUNNING", "RUNNING"] or _replica_ids(ray_cluster) & old:  # old have stopped
        assert time.monotonic() < deadline, f"not two new running replicas alone: {_states(ray_cluster)}"
        time.sleep(1)
    return _replica_ids(ray_cluster)


@pytest.mark.slow
def test_a_connection_idle_across_a_redeploy_that_replaced_every_replica_is_answered(ray_cluster, models) -> None:
    """A keep-alive connection opened before a redeploy, idle while HAProxy reloads, is served by the
    HAProxy process of before the reload for one more request, with the replica list it had (both
    replicas gone) and no health checks: it must still be answered, by the server, with no retry by
    the client."""
    root, client = models
    two = {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}}
    _deploy(ray_cluster, root, two, {"max_models_per_replica": 3})
    old = _two_new_replicas_alone(ray_cluster, set())
    with ThreadPoolExecutor(max_workers=1) as one_thread:  # one thread: one keep-alive connection
        def send() -> Reply:
            return one_thread.submit(client.send, _slow_call(0), retry=NO_RETRY).result(timeout=60)

        deadline = time.monotonic() + 30
        while True:  # HAProxy reloads as the replica list settles: until one keeps the connection open
            first = send()
            assert first.status == 200, first
            if first.headers.get("connection") != "close":
                break
            assert time.monotonic() < deadline, "HAProxy kept closing the connection"
            time.sleep(1)
        _deploy(ray_cluster, root, two, {"max_models_per_replica": 2})  # new arguments: new replicas
        _two_new_replicas_alone(ray_cluster, old)
        reply = send()  # on the connection of before: a lost one would raise here (NO_RETRY)
    assert reply.status == 200, (reply.status, reply.body[:200])
    assert reply.headers.get("connection") == "close", "not answered by the HAProxy process of before the reload"


def test_replicas_holding_one_version_each_answer_every_version_spread_over_replicas(ray_cluster, models) -> None:
    """Each replica keeps one loaded version (LRU): alternating versions evict and reload, every answer
    is still right, and the ingress spreads the requests over both replicas."""
    root, client = models
    _deploy(ray_cluster, root, {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}},
            {"max_models_per_replica": 1})
    _two_new_replicas_alone(ray_cluster, set())
    import tensorflow as tf

    x = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    registry = Registry(root)
    expected = {}
    for version in (1, 2):  # computed here, from each version's own artifact: they differ
        fn = tf.saved_model.load(ArtifactCache(registry).local_path("tiny", version)).signatures["serving_default"]
        expected[version] = next(iter(fn(pixels=tf.constant(x)).values())).numpy()
    assert not np.allclose(expected[1], expected[2], rtol=1e-3)
    for _ in range(10):
        for version in (1, 2):
            np.testing.assert_allclose(client.predict("tiny", x, version=version), expected[version], rtol=1e-5)
    recent = client.service_status()["models"]["tiny"]["recent"]["versions"]
    deadline = time.monotonic() + 30
    replicas = set()
    while len(replicas) < 2:  # each status call is answered by one replica, about its own requests
        assert time.monotonic() < deadline, f"one replica answered everything: {recent}"
        recent = client.service_status()["models"]["tiny"]["recent"]["versions"]
        replicas |= {r for v in recent.values() for r in v["replicas"]}
