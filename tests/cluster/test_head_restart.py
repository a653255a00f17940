"""The head's GCS killed and restarted under load (``make chaos``), on a cluster of its own whose GCS
keeps its tables in a real Redis (Debian's ``redis-server``, as ``maas cluster up --ha`` starts it):
serving goes on through the outage with no failed request (HAProxy and the replicas need no GCS to
answer), the GCS comes back on the same tables, the raylet and Serve's controller reconnect, and the
dashboard's Serve API and ``maas status`` answer again.

The GCS is SIGKILLed and started again with the command line and environment it had, which is what a
restarted head (a KubeRay head pod, a process supervisor) does. This cluster has its own ports, so the
shared test cluster (and a ``make demo`` one) are left alone, and it is torn down by its session's
processes, never with ``ray stop``, which would stop every Ray cluster on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port
from traffic import Traffic

from maas import deploy, local_cluster
from maas.registry import Registry
from maas.signature import Signature

pytestmark = pytest.mark.chaos
MAAS = str(Path(sys.executable).parent / "maas")
GCS_DOWN_S = 10


@dataclass(frozen=True)
class HaCluster:
    gcs_port: int
    dashboard_url: str
    serve_port: int
    session: str  # the Ray session's name, found in every process of this cluster

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"


def _processes_with(text: str) -> list[tuple[int, list[str]]]:
    return [(pid, args) for pid, args in local_cluster._processes() if any(text in a for a in args)]


def _gcs(ha: HaCluster) -> tuple[int, list[str], dict[str, str]]:
    """The GCS process of ``ha``: its pid, command line and environment."""
    [(pid, args)] = [(p, a) for p, a in _processes_with(f"--gcs_server_port={ha.gcs_port}") if "gcs_server" in a[0]]
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return pid, args, dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


@pytest.fixture(scope="module")
def ha_cluster(maas_home, tmp_path_factory):
    redis = local_cluster.start_redis(tmp_path_factory.mktemp("redis"), port=free_port())
    haproxy = local_cluster.prepare_haproxy_dir(Path(f"/tmp/maas-ha-{uuid.uuid4().hex[:8]}"))
    ha_env, ha_args = local_cluster.ha_head_args(redis)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", **ha_env)
    env.update(local_cluster.node_env(haproxy, head=True))
    env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
               RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT="34000", RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT="35000",
               RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT="44000", RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT="45000",
               RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="3")
    gcs_port, dashboard_port = free_port(), free_port()
    cmd = [local_cluster._ray_bin(), "start", "--head", "--port", str(gcs_port), "--num-cpus", "2",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
           "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
           "--runtime-env-agent-port", str(free_port()), "--disable-usage-stats", *ha_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ha = HaCluster(gcs_port, f"http://127.0.0.1:{dashboard_port}", free_port(), session="")
    session = next(a.split("=", 1)[1] for a in _gcs(ha)[1] if a.startswith("--session-name="))
    ha = HaCluster(gcs_port, ha.dashboard_url, ha.serve_port, session)
    assert any(a == f"--redis_port={redis.address.rsplit(':', 1)[1]}" for a in _gcs(ha)[1])  # tables in Redis
    local_cluster._wait_for_port("127.0.0.1", dashboard_port, what="the dashboard", timeout_s=60)
    yield ha
    for pid, _ in _processes_with(ha.session) + _processes_with(str(haproxy)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    local_cluster.stop_redis(redis.folder)
    import shutil

    shutil.rmtree(haproxy, ignore_errors=True)


def test_serving_goes_on_while_the_gcs_restarts_and_the_head_answers_again(
        ha_cluster, tiny_saved_model, tmp_path_factory, new_api_key) -> None:
    import tensorflow as tf

    ha = ha_cluster
    root = str(tmp_path_factory.mktemp("ha_registry"))
    registry = Registry(root)
    signature = Signature.from_concrete_function(
        tf.saved_model.load(str(tiny_saved_model)).signatures["serving_default"]).to_dict()
    registry.publish("switch", str(tiny_saved_model), {"signature": signature})
    config = deploy.load_serve_config(registry=root, port=ha.serve_port, grpc_port=free_port())
    server = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer")
    server["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}  # this cluster has 2 CPUs
    deploy.deploy(config, dashboard=ha.dashboard_url, timeout_s=300)
    key = new_api_key(root)
    with Traffic(ha.serve_url, key, "switch", clients=8, max_s=180, timeout_s=20) as load:
        deadline = time.monotonic() + 60
        while sum(load.statuses().values()) < 100:
            assert time.monotonic() < deadline, f"not answered: {load.statuses()}"
            time.sleep(0.2)
        pid, args, env = _gcs(ha)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(GCS_DOWN_S)
        during = load.statuses(since=killed)
        subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        restarted = time.monotonic()
        deadline = restarted + 120
        while True:  # the dashboard's Serve API (the controller through the new GCS) answers again
            try:
                if len(deploy.running_replicas(dashboard=ha.dashboard_url)) == 1:
                    break
            except Exception:  # noqa: BLE001 (still reconnecting: asked again)
                pass
            assert time.monotonic() < deadline, f"the head did not answer again; serving {load.statuses()}"
            time.sleep(1)
        back_s = time.monotonic() - restarted
        status = subprocess.run([MAAS, "status", "--url", ha.serve_url], capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, MAAS_API_KEY=key))
        time.sleep(2)
    print(f"\nGCS SIGKILL: {len(load.outcomes)} requests, {len(load.failures())} failed, {len(load.retries)} sent "
          f"again; {sum(during.values())} answered in the {GCS_DOWN_S} s without a GCS; head answering "
          f"{back_s:.1f} s after the restart; {dict(load.statuses())}")
    slowest = max((o.seconds for o in load.outcomes if killed <= o.at < restarted), default=0.0)
    print(f"slowest answer without a GCS {slowest:.2f} s; before the kill "
          f"{sum(load.statuses(since=killed - 5, until=killed).values()) / 5:.0f} req/s, without a GCS "
          f"{sum(during.values()) / GCS_DOWN_S:.0f} req/s")
    assert load.failures() == [] and load.retries == []
    assert during[200] >= 50 and set(during) == {200}
    assert status.returncode == 0, status.stderr
    assert "switch" in status.stdout
