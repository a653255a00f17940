"""Shared fixtures. Tiers: unit tests need nothing; ``cluster`` tests share ONE real local Ray
cluster per pytest run: a head and two worker nodes (``ray.cluster_utils.Cluster``), started on first
use with their own ports so that a ``make demo`` cluster on the same machine is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import SERVICE_BODY_TIMEOUT_S, SERVICE_MAX_BODY, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def maas_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private MAAS_HOME for the whole run (registry, runs, data), exported for every process."""
    home = tmp_path_factory.mktemp("maas_home")
    os.environ["MAAS_HOME"] = str(home)
    return home


@dataclass(frozen=True)
class S3Server:
    """A real S3-compatible server (moto in server mode) on 127.0.0.1."""

    endpoint: str

    def new_bucket(self) -> str:
        """Create an empty bucket; return its ``s3://`` URI."""
        import pyarrow.fs as pafs

        name = f"maas-test-{uuid.uuid4().hex[:12]}"
        pafs.S3FileSystem(
            endpoint_override=self.endpoint.removeprefix("http://"), scheme="http", allow_bucket_creation=True
        ).create_dir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """moto's S3 server on a loopback port, reached through the standard AWS variables, which every
    process started afterwards (the Ray nodes included) inherits, as instances inherit a role."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto S3 server did not start on {endpoint}") from None
            time.sleep(0.2)
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",  # never look for an instance role off this machine
    )
    yield S3Server(endpoint)
    proc.terminate()
    proc.wait(timeout=10)


@dataclass(frozen=True)
class TestCluster:
    dashboard_url: str
    serve_port: int
    grpc_port: int
    home: Path
    nodes: Any = None  # the ray.cluster_utils.Cluster: for tests that remove and add nodes

    def add_worker_node(self) -> Any:
        """One more worker node like the others (2 CPUs, ports of its own)."""
        return self.nodes.add_node(num_cpus=2, dashboard_agent_listen_port=free_port(),
                                   metrics_export_port=free_port(), runtime_env_agent_port=free_port())

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


WORKER_NODES = 2


@pytest.fixture(scope="session")
def ray_cluster(maas_home: Path, s3_server: S3Server):
    """One real local Ray cluster of three nodes: a head (dashboard for the job and Serve REST APIs,
    Serve's proxy) and two worker nodes; token auth on. It starts after the S3 server so that every
    node inherits the storage settings, as nodes of a real cluster inherit their instance role."""
    from maas.cluster import ensure_token

    ensure_token()
    # Jobs run `python -m jobs.train`: that must be this environment's Python.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    from maas.cluster import HAPROXY_DIR_ENV, haproxy_dir, node_env, prepare_haproxy_dir

    os.environ[HAPROXY_DIR_ENV] = f"/tmp/maas-hap-{uuid.uuid4().hex[:8]}"  # not a `make demo` cluster's
    os.environ.update(node_env(prepare_haproxy_dir(haproxy_dir()), head=True))  # as `maas cluster up`
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # The test runs have epochs of about a second; Ray Train's controller polls its workers every
    # 2 s by default, which would make every start, report and finish wait for the next poll.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    # HAProxy's stats and metrics ports and the replicas' direct-ingress ports default to fixed
    # numbers; move them so a `make demo` cluster running beside the tests does not collide.
    os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = "32000"
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = "33000"
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"] = "42000"
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"] = "43000"
    # An ingress replica being replaced or deleted drains for at least 30 s (time for HAProxy to stop
    # routing to it) and holds its CPU meanwhile; every redeploy and undeploy here would wait for it.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "3"
    import ray
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
    # Own ports throughout, so that a `make demo` cluster on this machine is neither used nor hurt.
    ray_cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,  # logical CPUs (2 per node, 6 in all): training workers beside Serve replicas
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port(),
        },
    )
    cluster = TestCluster(
        dashboard_url=f"http://127.0.0.1:{dashboard_port}", serve_port=free_port(), grpc_port=free_port(),
        home=maas_home, nodes=ray_cluster,
    )
    for _ in range(WORKER_NODES):
        cluster.add_worker_node()
    ray_cluster.wait_for_nodes()
    ray.init(address=ray_cluster.address, logging_level="WARNING")
    os.environ["RAY_DASHBOARD_ADDRESS"] = cluster.dashboard_url
    os.environ["MAAS_SERVE_URL"] = cluster.serve_url
    # Clients (maas.client, the CLI) send this key: every model of the session registry. Set after the
    # nodes started, so that no Ray process holds it.
    from maas.auth import KeyStore
    from maas.settings import API_KEY_ENV, default_registry_uri

    os.environ[API_KEY_ENV] = KeyStore(default_registry_uri()).create("tests", ["*"])[0]
    _wait_for_dashboard(cluster.dashboard_url)
    yield cluster
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        ray_cluster.shutdown()
        import shutil

        shutil.rmtree(haproxy_dir(), ignore_errors=True)


@pytest.fixture(scope="session")
def new_api_key():
    """``new_api_key(registry_uri, models=("*",))``: a fresh API key of that registry."""
    from maas.auth import KeyStore

    def create(registry_uri: str, models: tuple[str, ...] = ("*",), name: str = "tests") -> str:
        return KeyStore(registry_uri).create(name, list(models))[0]

    return create


def _wait_for_dashboard(url: str, timeout_s: float = 60) -> None:
    import time

    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            JobSubmissionClient(url)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _tiny_digits_model(path: Path, seed: int) -> Path:
    """A real (untrained) digits SavedModel, exported the way training exports it, its weights drawn
    from ``seed``: models of different seeds give different answers to the same input."""
    import keras

    from maas.templates import DataInfo, DataSplits, get_template
    from maas.training.export import export_saved_model

    template = get_template("digits")
    info = DataInfo(splits=DataSplits(train="", test=""), item_shape=(8, 8), class_names=template.class_names)
    keras.utils.set_random_seed(seed)
    export_saved_model(template.build_model(info), template, info, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_digits_model(tmp_path_factory.mktemp("tiny") / "saved_model", seed=1)


@pytest.fixture(scope="session")
def other_tiny_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_saved_model` with other weights: a version of it answers differently."""
    return _tiny_digits_model(tmp_path_factory.mktemp("tiny_other") / "saved_model", seed=2)


def _save_waiting_model(path: Path, warm_up_s: float):
    """A SavedModel that busy-waits for as many seconds as its input says, ``warm_up_s`` for an
    all-zeros input (the warm-up on load), and its signature: input ``seconds`` [-1, 1], output ``waited``."""
    import tensorflow as tf

    from maas.signature import Signature

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="seconds")])
    def wait(seconds: tf.Tensor) -> dict[str, tf.Tensor]:
        start = tf.timestamp()
        asked = tf.cast(tf.reduce_max(tf.abs(seconds)), tf.float64)
        until = start + tf.where(asked > 0, asked, tf.constant(warm_up_s, tf.float64))
        end = tf.while_loop(lambda t: t < until, lambda t: tf.timestamp(), [start])
        return {"waited": seconds * 0 + tf.cast(end - start, tf.float32)}

    module = tf.Module()
    module.wait = wait
    tf.saved_model.save(module, str(path), signatures={"serving_default": wait})
    return path, Signature.from_concrete_function(tf.saved_model.load(str(path)).signatures["serving_default"])


@pytest.fixture(scope="session")
def slow_saved_model(tmp_path_factory: pytest.TempPathFactory):
    """A model that answers after as many seconds as its input says (loads at once)."""
    return _save_waiting_model(tmp_path_factory.mktemp("slow") / "saved_model", warm_up_s=0.0)


@pytest.fixture(scope="session")
def slow_loading_saved_model(tmp_path_factory: pytest.TempPathFactory):
    """:func:`slow_saved_model`, but its load (the warm-up) takes 9 s."""
    return _save_waiting_model(tmp_path_factory.mktemp("slow_loading") / "saved_model", warm_up_s=9.0)


@pytest.fixture(scope="session")
def trained_digits(ray_cluster: TestCluster):
    """One real 2-worker Ray Train run on the digits, published to the session registry."""
    from maas.training.config import TrainConfig
    from maas.training.driver import run_training

    config = TrainConfig(template="digits", num_workers=2, epochs=6, model_name="digits")
    return config, run_training(config)




@dataclass
class DigitsService:
    """The Serve app of deployments/serve_config.yaml serving the session's trained digits model."""

    cluster: TestCluster
    registry_uri: str
    version: int
    deployed_at: float = 0.0

    def ensure(self) -> "DigitsService":
        """Deploy it, or deploy it again if another module has deployed its own app since."""
        from maas import deploy

        app = deploy.serve_client(self.cluster.dashboard_url).get_serve_details().get("applications", {}).get("maas")
        if app is None or app.get("last_deployed_time_s") != self.deployed_at:
            config = deploy.load_serve_config(registry=self.registry_uri, port=self.cluster.serve_port,
                                              grpc_port=self.cluster.grpc_port)
            limits = config["applications"][0]["args"]["limits"]
            limits["max_request_bytes"] = SERVICE_MAX_BODY
            limits["body_timeout_s"] = SERVICE_BODY_TIMEOUT_S
            details = deploy.deploy(config, dashboard=self.cluster.dashboard_url, timeout_s=300)
            self.deployed_at = details["applications"]["maas"]["last_deployed_time_s"]
        return self


@pytest.fixture(scope="session")
def digits_app(ray_cluster: TestCluster, trained_digits) -> DigitsService:
    config, outcome = trained_digits
    return DigitsService(ray_cluster, config.registry, outcome.version.version)
