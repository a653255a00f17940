"""One cluster across several nodes, with everything shared on S3-compatible object storage.

The shared test cluster is a head and two worker nodes (``ray.cluster_utils.Cluster``: separate
raylets, object stores and worker processes on this one machine). Here a 2-worker training job is
spread over two nodes with data, checkpoints and the registry all on a real S3 server (moto, on
127.0.0.1), and the published version is served by ModelServer replicas on two different nodes,
reached over HTTP through the one ingress.

What one machine cannot show: separate disks (every node here could also read the local file system,
so the test keeps every shared path on S3 to prove nothing depends on it), network partitions, or
real bandwidth between nodes.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.fs as pafs
import pytest

from maas import deploy
from maas.client import Client
from maas.registry import Registry
from maas.storage import join_uri, resolve_uri
from maas.templates import get_template
from maas.training.data import builtin_held_out
from maas.training.loop import REPLICA_FINGERPRINT_PREFIX, STATE_FILE

pytestmark = pytest.mark.cluster
MODEL = "digits-on-s3"


@pytest.fixture(scope="module")
def spread_run(ray_cluster, s3_server):
    """A real 2-worker Ray Train run, one worker per node (STRICT_SPREAD), storage all on S3."""
    from maas.training.config import TrainConfig
    from maas.training.driver import run_training

    bucket = s3_server.new_bucket()
    config = TrainConfig(
        template="digits",
        num_workers=2,
        epochs=4,
        model_name=MODEL,
        data_dir=join_uri(bucket, "data"),
        storage_path=join_uri(bucket, "runs"),
        registry=join_uri(bucket, "registry"),
        placement_strategy="STRICT_SPREAD",
    )
    return config, run_training(config)


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def test_the_shared_cluster_has_a_head_and_two_worker_nodes(ray_cluster) -> None:
    nodes = _alive_nodes()
    assert len(nodes) == 3
    assert all(n["Resources"].get("CPU") == 2 for n in nodes)


@pytest.mark.slow
def test_training_workers_on_two_nodes_share_data_checkpoints_and_registry_on_s3(spread_run) -> None:
    config, outcome = spread_run
    meta = outcome.version.metadata.to_json()
    workers = meta["ray"]["worker_nodes"]
    assert len(workers) == 2 and len(set(workers)) == 2, workers  # one worker per node
    assert set(workers) <= {n["NodeID"] for n in _alive_nodes()}
    assert meta["params"]["placement_strategy"] == "STRICT_SPREAD"
    assert meta["metrics"]["accuracy"] >= 0.85, meta["metrics"]
    # The data was staged on S3 and fingerprinted from there.
    assert meta["data"]["train"].startswith("s3://") and len(meta["data"]["fingerprint"]) == 64

    # The registry lives on S3, in the layout TF Serving reads.
    registry = Registry(config.registry)
    assert registry.versions(MODEL) == [outcome.version.version]
    fs, root = resolve_uri(config.registry)
    assert fs.get_file_info(f"{root}/{MODEL}/{outcome.version.version}/saved_model.pb").is_file

    # Checkpoints went to S3 (Ray Train storage_path) from both nodes: the final one holds both
    # workers' weight fingerprints, and they agree.
    runs_fs, runs_root = resolve_uri(config.storage_path)
    assert isinstance(runs_fs, pafs.S3FileSystem)
    assert outcome.checkpoint_path.startswith(f"{runs_root}/{config.run_name}/")
    files = {i.base_name: i.path for i in runs_fs.get_file_info(pafs.FileSelector(outcome.checkpoint_path))}
    assert STATE_FILE in files
    prints = []
    for rank in range(2):
        with runs_fs.open_input_stream(files[f"{REPLICA_FINGERPRINT_PREFIX}{rank}.txt"]) as f:
            prints.append(f.read().decode())
    assert prints[0] == prints[1]


@pytest.mark.slow
def test_serve_replicas_on_two_nodes_answer_through_the_ingress(ray_cluster, spread_run, new_api_key) -> None:
    config, outcome = spread_run
    serve_config = deploy.load_serve_config(registry=config.registry, port=ray_cluster.serve_port,
                                            grpc_port=ray_cluster.grpc_port)
    app = serve_config["applications"][0]
    server = next(d for d in app["deployments"] if d["name"] == "ModelServer")
    server["autoscaling_config"].update(min_replicas=2, max_replicas=2)
    server["max_replicas_per_node"] = 1
    deploy.deploy(copy.deepcopy(serve_config), dashboard=ray_cluster.dashboard_url, timeout_s=300)

    replicas = _model_server_replicas(ray_cluster.dashboard_url, want=2)
    assert len({r["node_id"] for r in replicas}) == 2, replicas

    x, y = builtin_held_out(get_template("digits"), config.data_dir)  # read back from S3
    client = Client(ray_cluster.serve_url, api_key=new_api_key(config.registry))
    probabilities = client.predict(MODEL, x)
    assert (probabilities.argmax(1) == y).mean() == pytest.approx(outcome.metrics["accuracy"], abs=1e-9)

    # Many concurrent single-instance requests: both replicas take load, none fails.
    def one(i: int) -> int:
        return int(client.predict(MODEL, x[i : i + 1]).argmax(1)[0])

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(64)))
    assert np.array_equal(answers, probabilities[:64].argmax(1))


def _model_server_replicas(dashboard_url: str, *, want: int, timeout_s: float = 120) -> list[dict]:
    """ModelServer's RUNNING replicas once there are ``want`` of them (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = deploy.running_replicas(dashboard=dashboard_url)
        if len(running) >= want or time.monotonic() > deadline:
            assert len(running) == want, running
            return running
        time.sleep(1)
