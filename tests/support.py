"""Small helpers the cluster tests share (importable as ``support``; ``conftest`` is not a module
name tests can rely on, as each tier has its own)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fixtures.ray_cluster import TestCluster

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `ray job submit --working-dir` uploads it
SERVICE_MAX_BODY = 1 << 20  # the digits service's max_request_bytes, small enough to test 413 cheaply
SERVICE_BODY_TIMEOUT_S = 5.0  # and its body_timeout_s, short enough to test 408 in seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_job_submit(ray_cluster: TestCluster, *entrypoint: str) -> subprocess.CompletedProcess[str]:
    """``ray job submit --working-dir <checkout> -- <entrypoint>`` to the shared cluster, as a user runs it."""
    env = dict(os.environ, RAY_AUTH_MODE="token")
    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster.dashboard_url,
           "--working-dir", str(ROOT), "--", *entrypoint]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


@contextmanager
def cpus_held(leave: float) -> Iterator[None]:
    """Hold every free CPU of the connected cluster with pinned placeholder actors (class
    ``Placeholder``, as Ray's state API names them) except ``leave`` CPUs on the node with the most
    free; release them on exit. ``leave=1.5`` is a 2-core machine where a Serve replica holds 0.5."""
    import ray
    from ray._private.state import available_resources_per_node
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from maas.training.resources import read_nodes

    @ray.remote
    class Placeholder:
        def ready(self) -> bool:
            return True

    def free_cpus() -> dict[str, float]:
        return {n.node_id: n.cpu_free for n in read_nodes()}

    deadline = time.monotonic() + 60
    # A node that has just joined may not have reported its free resources yet.
    while not {n["NodeID"] for n in ray.nodes() if n["Alive"]} <= set(available_resources_per_node()):
        assert time.monotonic() < deadline, "nodes did not report their resources"
        time.sleep(0.2)
    initially = free_cpus()
    keep = max(initially.items(), key=lambda item: item[1])[0]
    actors = []
    try:
        while True:
            free = free_cpus()
            excess = {node: round(cpus - (leave if node == keep else 0.0), 4) for node, cpus in free.items()}
            assert excess[keep] >= 0, free
            todo = {node: cpus for node, cpus in excess.items() if cpus > 0}
            if not todo:
                break
            assert time.monotonic() < deadline, free
            # Pinned: each placeholder holds exactly its node's excess.
            placed = [Placeholder.options(num_cpus=cpus,
                                          scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                      for node, cpus in todo.items()]
            ray.get([a.ready.remote() for a in placed], timeout=60)
            actors += placed
            reported = time.monotonic() + 5  # the nodes report what the placeholders hold within moments
            while (time.monotonic() < reported
                   and any(free_cpus()[node] > free[node] - cpus + 1e-4 for node, cpus in todo.items())):
                time.sleep(0.1)  # (CPUs that other work gives back meanwhile are taken on the next round)
        yield
    finally:
        for actor in actors:
            ray.kill(actor)
        released = time.monotonic() + 10  # give the next test the CPUs back, not CPUs coming back
        while time.monotonic() < released and sum(free_cpus().values()) < sum(initially.values()) - 1e-4:
            time.sleep(0.1)


def scrape_metrics() -> str:
    """The Prometheus text of every live node's metrics endpoint (what the dashboard's Prometheus scrapes)."""
    import ray

    texts = []
    for node in ray.nodes():
        if node["Alive"]:
            with urllib.request.urlopen(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=10) as resp:
                texts.append(resp.read().decode())
    return "\n".join(texts)


def metric_series(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$", line)
        if m and all(f'{k}="{v}"' in m["labels"] for k, v in labels.items()):
            total += float(m["value"])
    return total


def replica_logs_with_unhandled_errors() -> list[str]:
    """The ModelServer replica log files of this session that hold the handler's "unhandled" line
    (a 500 or an INTERNAL is a bug: the suite must have none)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return [p.name for p in logs.rglob("*ModelServer*") if p.is_file() and b"unhandled " in p.read_bytes()]


def assert_complete(explanation: dict, tolerance: float = 0.01, floor: float = 0.002) -> None:
    """Completeness of an ``:explain`` answer's explanation: its attributions add up to prediction -
    baseline_prediction within the method's error, ``tolerance`` of that change or ``floor`` of the
    output's own scale (a probability), whichever is larger. On a ReLU network the gradient is
    piecewise constant along the path, so the quadrature's error falls as 1/steps (measured on a
    trained digits MLP: at most 0.006 at 64 steps, 0.0014 at 256), and follows the output's variation
    along the whole path, which can be far larger than a small net change. Its ``delta`` is their
    difference."""
    import numpy as np
    import pytest

    change = explanation["prediction"] - explanation["baseline_prediction"]
    total = float(np.sum(explanation["attributions"], dtype=np.float64))
    assert abs(change) > floor, explanation  # the check below is not vacuous
    assert abs(total - change) <= max(tolerance * abs(change), floor), (total, change)
    assert explanation["delta"] == pytest.approx(total - change, abs=1e-4)
