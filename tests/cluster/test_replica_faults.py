"""Faults under load on two ModelServer replicas, over real HTTP with clients of both protocols
(issue 15), each outcome counted in the main thread:

- a label moved to a version no replica has loaded (promote), and (``make chaos``) one whose load
  outlasts the request timeout: every replica loads and warms it before routing to it, so no request
  fails or waits past the timeout, and each answer was computed by the version its header names;
- one replica process SIGKILLed (``make chaos``): HAProxy retries the requests that were in flight on
  it on the other one (``retry-on empty-response``); the few whose connection it closes without an
  answer are sent again by the client as the SDK does, counted; Serve starts a replacement; no
  request fails;
- the Serve controller SIGKILLed (``make chaos``): serving goes on with no failed request, and the
  controller is back;
- a worker node holding one replica lost (``make chaos``): at most the requests in flight there
  fail, and the replica is replaced on a surviving node;
- the only replica SIGKILLed (``make chaos``): failures bounded by the time Serve takes to replace it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest
from traffic import Traffic

from maas import deploy
from maas.registry import Registry
from maas.signature import Signature

pytestmark = pytest.mark.cluster
REQUEST_TIMEOUT_S = 6.0
CLIENTS = 16


@pytest.fixture(scope="module")
def two_replicas(ray_cluster, tiny_saved_model, other_tiny_saved_model, slow_saved_model,
                 slow_loading_saved_model, tmp_path_factory, new_api_key):
    """``switch`` (versions 1 and 2 answer differently; stable on 1) and ``slowload`` (version 1 loads at
    once, version 2 takes 9 s; stable on 1), on exactly 2 replicas that re-read labels every 0.5 s."""
    import tensorflow as tf

    root = str(tmp_path_factory.mktemp("faults_registry"))
    registry = Registry(root)
    digits = Signature.from_concrete_function(
        tf.saved_model.load(str(tiny_saved_model)).signatures["serving_default"]).to_dict()
    for artifact in (tiny_saved_model, other_tiny_saved_model):
        registry.publish("switch", str(artifact), {"signature": digits})
    for path, signature in (slow_saved_model, slow_loading_saved_model):
        registry.publish("slowload", str(path), {"signature": signature.to_dict()})
    registry.promote("switch", 1)
    registry.promote("slowload", 1)
    config = deploy.load_serve_config(registry=root, port=ray_cluster.serve_port, grpc_port=ray_cluster.grpc_port)
    app = config["applications"][0]
    app["args"].update(registry_refresh_s=0.5, request_timeout_s=REQUEST_TIMEOUT_S)
    server = next(d for d in app["deployments"] if d["name"] == "ModelServer")
    server["autoscaling_config"] = {"min_replicas": 2, "max_replicas": 2}
    deploy.deploy(config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
    deadline = time.monotonic() + 120
    while len(_replicas(ray_cluster)) < 2:  # Serve may call the app running before the second one is
        assert time.monotonic() < deadline, "the second replica did not start"
        time.sleep(0.5)
    key = new_api_key(root)
    yield registry, key
    deploy.undeploy(dashboard=ray_cluster.dashboard_url)  # give the CPUs back to the training tests


def _replicas(ray_cluster) -> list[dict]:
    return deploy.running_replicas(dashboard=ray_cluster.dashboard_url)


def _slow_bodies(model: str, client: int) -> list[tuple[str, bytes]]:
    """A 1 ms prediction of the busy-waiting model, over both protocols."""
    return [(f"/v1/models/{model}:predict", json.dumps({"instances": [[0.001]]}).encode()),
            (f"/v2/models/{model}/infer", json.dumps({"inputs": [
                {"name": "seconds", "shape": [1, 1], "datatype": "FP32", "data": [0.001]}]}).encode())]


def _started(load: Traffic, n: int = 100, timeout_s: float = 60) -> None:
    """Wait until the load has ``n`` answers (the service answering it at full speed)."""
    deadline = time.monotonic() + timeout_s
    while len(load.outcomes) < n:
        assert time.monotonic() < deadline, f"load not answered: {load.statuses()}"
        time.sleep(0.2)


def _after_kill(load: Traffic, recovered: Callable[[], bool], what: str, timeout_s: float = 120) -> float:
    """Seconds until ``recovered()``, under the load; then 200 answers more (served after it)."""
    killed = time.monotonic()
    while not recovered():
        assert time.monotonic() < killed + timeout_s, f"not seen within {timeout_s:.0f}s: {what}; {load.statuses()}"
        time.sleep(0.5)
    seconds = time.monotonic() - killed
    _started(load, len(load.outcomes) + 200)
    return seconds


def _kill_replica(ray_cluster, load: Traffic, victim: dict, *, replicas: int) -> tuple[float, float]:
    """SIGKILL ``victim``'s process once the load is answered; when it was, and the seconds until
    Serve runs ``replicas`` replicas again without it."""
    _started(load)
    killed = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> bool:
        ids = {r["replica_id"] for r in _replicas(ray_cluster)}
        return len(ids) == replicas and victim["replica_id"] not in ids

    return killed, _after_kill(load, replaced, "the replica replaced")


def _report(what: str, load: Traffic, **figures: object) -> None:
    extra = "".join(f", {k} {v}" for k, v in figures.items())
    print(f"\n{what}: {len(load.outcomes)} requests, {len(load.failures())} failed, {len(load.retries)} sent "
          f"again by the client (connection closed without an answer), slowest {load.slowest_s():.2f}s{extra}; "
          f"{dict(load.statuses())}")


def test_a_cold_version_promoted_under_load_is_warmed_first_on_every_replica(ray_cluster, two_replicas) -> None:
    registry, key = two_replicas
    assert len(_replicas(ray_cluster)) == 2
    with Traffic(ray_cluster.serve_url, key, "switch", clients=CLIENTS, max_s=120,
                 timeout_s=REQUEST_TIMEOUT_S + 10) as load:
        load.wait_until(lambda seen: set(seen) == {1}, "stable version 1 answering")
        registry.promote("switch", 2)  # no replica has loaded version 2
        load.wait_until(lambda seen: set(seen) == {2}, "every answer from the promoted version 2")
    _report("cold promote", load)
    assert load.failures() == [] and load.retries == []
    assert load.slowest_s() < REQUEST_TIMEOUT_S
    assert load.mismatched_answers() == {}


@pytest.mark.chaos
def test_a_version_whose_load_outlasts_the_timeout_is_promoted_without_a_failed_request(
        ray_cluster, two_replicas) -> None:
    registry, key = two_replicas
    with Traffic(ray_cluster.serve_url, key, "slowload", clients=CLIENTS, max_s=120, bodies=_slow_bodies,
                 timeout_s=REQUEST_TIMEOUT_S + 10) as load:
        load.wait_until(lambda seen: set(seen) == {1}, "stable version 1 answering")
        promoted = time.monotonic()
        registry.promote("slowload", 2)  # its load (the warm-up) takes 9 s, past the 6 s timeout
        load.wait_until(lambda seen: set(seen) == {2}, "every answer from version 2", timeout_s=90)
        switched_s = time.monotonic() - promoted
    _report("promote of a 9 s load", load, seconds_to_switch=f"{switched_s:.1f}")
    assert load.failures() == [] and load.retries == []
    assert load.slowest_s() < REQUEST_TIMEOUT_S
    assert switched_s > 9  # version 2 answered nothing before its load had finished


@pytest.mark.chaos
def test_a_replica_killed_under_load_fails_no_request_and_is_replaced(ray_cluster, two_replicas) -> None:
    _, key = two_replicas
    before = _replicas(ray_cluster)
    assert len(before) == 2
    victim = before[0]
    with Traffic(ray_cluster.serve_url, key, "switch", clients=CLIENTS, max_s=150,
                 timeout_s=REQUEST_TIMEOUT_S + 10) as load:
        killed, recovered_s = _kill_replica(ray_cluster, load, victim, replicas=2)
    _report("replica SIGKILL", load, seconds_to_full_capacity=f"{recovered_s:.1f}",
            during=sum(1 for o in load.outcomes if killed <= o.at < killed + recovered_s))
    assert load.failures() == []
    assert len(load.retries) <= CLIENTS  # at most the requests in flight on the killed replica
    assert load.mismatched_answers() == {}


@pytest.mark.chaos
def test_the_serve_controller_killed_under_load_fails_no_request_and_comes_back(ray_cluster, two_replicas) -> None:
    from ray.util.state import list_actors

    _, key = two_replicas

    def controller() -> dict | None:
        alive = list_actors(address=ray_cluster.dashboard_url, detail=True,
                            filters=[("class_name", "=", "ServeController"), ("state", "=", "ALIVE")])
        return alive[0] if alive else None

    old = controller()
    assert old is not None and old["pid"]
    with Traffic(ray_cluster.serve_url, key, "switch", clients=CLIENTS, max_s=150,
                 timeout_s=REQUEST_TIMEOUT_S + 10) as load:
        _started(load)
        os.kill(old["pid"], signal.SIGKILL)

        def back() -> bool:
            now = controller()
            try:  # a new controller that answers for the app again
                return now is not None and now["pid"] != old["pid"] and len(_replicas(ray_cluster)) == 2
            except Exception:  # noqa: BLE001 (the controller still starting: asked again)
                return False

        back_s = _after_kill(load, back, "the controller back")
    _report("controller SIGKILL", load, seconds_until_back=f"{back_s:.1f}")
    assert load.failures() == [] and load.retries == []


@pytest.mark.chaos
def test_a_worker_node_lost_under_load_costs_at_most_its_requests_in_flight(ray_cluster, two_replicas) -> None:
    """The node holding one of the two replicas removed at once (its raylet and processes killed, as a
    lost machine): HAProxy retries what was in flight there, Serve starts a replacement on a surviving
    node. A node is added back afterwards, so the cluster keeps three."""
    registry, key = two_replicas
    config = deploy.load_serve_config(registry=registry.uri, port=ray_cluster.serve_port,
                                      grpc_port=ray_cluster.grpc_port)
    app = config["applications"][0]
    app["args"].update(registry_refresh_s=0.5, request_timeout_s=REQUEST_TIMEOUT_S)
    server = next(d for d in app["deployments"] if d["name"] == "ModelServer")
    server["autoscaling_config"] = {"min_replicas": 2, "max_replicas": 2}
    server["max_replicas_per_node"] = 1  # one per node: losing a node loses one replica
    deploy.deploy(config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
    head = ray_cluster.nodes.head_node.node_id
    deadline = time.monotonic() + 120
    while len({r["node_id"] for r in _replicas(ray_cluster)} - {head}) == 0 or len(_replicas(ray_cluster)) != 2:
        assert time.monotonic() < deadline, f"no replica on a worker node: {_replicas(ray_cluster)}"
        time.sleep(0.5)
    victim = next(r for r in _replicas(ray_cluster) if r["node_id"] != head)
    node = next(n for n in ray_cluster.nodes.worker_nodes if n.node_id == victim["node_id"])
    try:
        with Traffic(ray_cluster.serve_url, key, "switch", clients=CLIENTS, max_s=180,
                     timeout_s=REQUEST_TIMEOUT_S + 10) as load:
            _started(load)
            lost = time.monotonic()
            ray_cluster.nodes.remove_node(node, allow_graceful=False)

            def replaced() -> bool:
                replicas = _replicas(ray_cluster)
                return len(replicas) == 2 and victim["node_id"] not in {r["node_id"] for r in replicas}

            recovered_s = _after_kill(load, replaced, "the replica replaced on a surviving node")
    finally:
        ray_cluster.add_worker_node()
    failed = load.failures()
    _report("worker node lost", load, seconds_to_full_capacity=f"{recovered_s:.1f}",
            failures=dict(Counter(o.status for o in failed)),
            during=sum(1 for o in load.outcomes if lost <= o.at < lost + recovered_s))
    assert len(failed) + len(load.retries) <= CLIENTS  # at most what was in flight on the lost node
    assert set(load.statuses(since=lost + recovered_s)) <= {200}
    assert load.mismatched_answers() == {}


@pytest.mark.chaos
def test_a_single_replica_killed_fails_requests_only_until_it_is_replaced(ray_cluster, two_replicas) -> None:
    """With one replica there is nobody to retry on: HAProxy holds the requests until a replica is
    back or the client gives up, so failures are bounded to the time Serve takes to replace it
    (measured), and the service answers again by itself."""
    registry, key = two_replicas
    config = deploy.load_serve_config(registry=registry.uri, port=ray_cluster.serve_port,
                                      grpc_port=ray_cluster.grpc_port)
    app = config["applications"][0]
    app["args"].update(registry_refresh_s=0.5, request_timeout_s=REQUEST_TIMEOUT_S)
    next(d for d in app["deployments"] if d["name"] == "ModelServer")["autoscaling_config"] = {
        "min_replicas": 1, "max_replicas": 1}
    deploy.deploy(config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
    deadline = time.monotonic() + 120
    while len(_replicas(ray_cluster)) != 1:
        assert time.monotonic() < deadline, "not down to one replica"
        time.sleep(0.5)
    victim = _replicas(ray_cluster)[0]
    with Traffic(ray_cluster.serve_url, key, "switch", clients=CLIENTS, max_s=150,
                 timeout_s=REQUEST_TIMEOUT_S + 10) as load:
        killed, recovered_s = _kill_replica(ray_cluster, load, victim, replicas=1)
        time.sleep(3)  # answers after the replacement, to show they all succeed
    failed = load.failures()
    window = (min(o.at for o in failed) - killed, max(o.at for o in failed) - killed) if failed else (0.0, 0.0)
    _report("single replica SIGKILL", load, seconds_to_replaced=f"{recovered_s:.1f}",
            failure_window_s=f"{window[0]:.1f}-{window[1]:.1f}",
            failures=dict(Counter(o.status for o in failed)))
    assert window[1] <= recovered_s + 5  # failures end once the replacement runs
    after = load.statuses(since=killed + recovered_s + 1)
    assert set(after) == {200} and after[200] >= 50, after
