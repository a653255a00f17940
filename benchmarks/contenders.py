"""Each contender: how it starts on 127.0.0.1, how it stops, and the request it gets for a payload.

Payloads: ``json1`` (one instance per JSON request), ``json32`` (32 instances per JSON request),
``binary`` (one instance as a KServe V2 binary tensor), ``grpc1`` and ``grpc32`` (1 or 32 instances
in a TF Serving gRPC ``Predict``, as ``tensor_content``). A contender that cannot take a payload in
its own protocol answers ``None`` for it and is left out of that row.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path

from benchmarks.loadgen import Request
from benchmarks.models import BenchModel
from maas.client import infer_call, predict_call

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / "benchmarks" / ".venvs"
PAYLOADS = {"json1": 1, "json32": 32, "binary": 1, "grpc1": 1, "grpc32": 32}
GRPC_PAYLOADS = ("grpc1", "grpc32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


JSON = {"content-type": "application/json"}


def tf_serving_body(model: BenchModel, payload: str) -> bytes:
    """``{"instances": [...]}``: TF Serving's row format (BentoML's API takes the same body)."""
    return predict_call(model.name, model.sample(PAYLOADS[payload]), None, None).body  # type: ignore[return-value]


def tf_serving_request(base_url: str, model: BenchModel, payload: str, headers: dict[str, str]) -> Request:
    return Request(f"{base_url}/v1/models/{model.name}:predict", tf_serving_body(model, payload),
                   {**JSON, **headers}, PAYLOADS[payload])


def v2_request(base_url: str, model: BenchModel, payload: str, headers: dict[str, str]) -> Request:
    """A V2 ``infer`` request: JSON tensors, or (``binary``) the binary tensor data extension."""
    call = infer_call(model.name, {model.input_name: model.sample(PAYLOADS[payload])}, None,
                      binary=payload == "binary", outputs=None, request_id=None)
    return Request(base_url + call.path, call.body, {**call.headers, **headers}, PAYLOADS[payload])  # type: ignore[arg-type]


def grpc_predict_request(target: str, model: BenchModel, payload: str, metadata: dict[str, str]) -> Request:
    """A TF Serving gRPC ``Predict``, serialized once (what ``PredictionServiceStub`` sends)."""
    from maas.grpc_client import predict_request

    message = predict_request(model.name, {model.input_name: model.sample(PAYLOADS[payload])}, None, None, None)
    return Request(target, message.SerializeToString(), metadata, PAYLOADS[payload],
                   grpc_method="/tensorflow.serving.PredictionService/Predict")


class Contender(ABC):
    name: str

    @abstractmethod
    def start(self, models: dict[BenchModel, Path]) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def request(self, model: BenchModel, payload: str) -> Request | None: ...

    def settle(self, request: Request, concurrency: int) -> float | None:
        """Bring the server to its steady state for ``concurrency`` clients before it is measured;
        the seconds that took, or None where there is nothing to wait for (fixed-size servers)."""
        return None

    @classmethod
    def available(cls) -> str | None:
        """Why it cannot run here, or None."""
        return None


class Subprocess(Contender):
    """A server in its own process (in ``benchmarks/.venvs/<venv>`` where it has a venv of its own)."""

    venv: str | None = None

    @classmethod
    def available(cls) -> str | None:
        if cls.venv is None or venv_python(cls.venv).exists():
            return None
        return f"run `make bench-venvs` (benchmarks/.venvs/{cls.venv})"

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self._log = ROOT / "benchmarks" / "results" / f"{self.name}.log"

    def _spawn(self, cmd: list[str], port: int, env: dict[str, str] | None = None, timeout_s: float = 180) -> None:
        self._log.parent.mkdir(parents=True, exist_ok=True)
        log = self._log.open("ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})))
        self._procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {proc.returncode}; see {self._log}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not listen on {port} within {timeout_s:.0f}s; see {self._log}")
            time.sleep(0.25)

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()


class FastAPIServer(Subprocess):
    name = "fastapi"  # FastAPI + uvicorn, hand-written

    def start(self, models: dict[BenchModel, Path]) -> None:
        self._port = free_port()
        self._spawn([sys.executable, "-m", "benchmarks.servers.fastapi_server", "--port", str(self._port),
                     *(f"{m.name}={p}" for m, p in models.items())], self._port)

    def request(self, model: BenchModel, payload: str) -> Request | None:
        if payload == "binary" or payload in GRPC_PAYLOADS:
            return None  # what users write by hand: JSON only
        return tf_serving_request(f"http://127.0.0.1:{self._port}", model, payload, {})


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


class BentoML(Subprocess):
    name = venv = "bentoml"  # with its adaptive batching

    def start(self, models: dict[BenchModel, Path]) -> None:
        self._ports = {}
        bentoml = venv_python("bentoml").with_name("bentoml")
        for model, path in models.items():  # one service per model: a BentoML service serves one
            port = self._ports[model.name] = free_port()
            self._spawn([str(bentoml), "serve", "benchmarks.servers.bentoml_service:Predictor", "--port", str(port),
                         "--host", "127.0.0.1"], port,
                        env={"BENCH_MODEL_DIR": str(path), "BENTOML_HOME": str(VENVS / "bentoml-home"),
                             "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(ROOT)})

    def request(self, model: BenchModel, payload: str) -> Request | None:
        if payload == "binary" or payload in GRPC_PAYLOADS:
            return None
        return Request(f"http://127.0.0.1:{self._ports[model.name]}/predict", tf_serving_body(model, payload), JSON,
                       PAYLOADS[payload])


class KServe(Subprocess):
    name = venv = "kserve"  # KServe's Python model server, V2 protocol

    def start(self, models: dict[BenchModel, Path]) -> None:
        self._port = free_port()
        self._spawn([str(venv_python("kserve")), "-m", "benchmarks.servers.kserve_server", "--port", str(self._port),
                     *(f"{m.name}={p}" for m, p in models.items())], self._port, env={"PYTHONPATH": str(ROOT)})

    def request(self, model: BenchModel, payload: str) -> Request | None:
        if payload in GRPC_PAYLOADS:
            return None  # its V2 gRPC server is a separate process and protocol: not measured here
        return v2_request(f"http://127.0.0.1:{self._port}", model, payload, {})


class Maas(Contender):
    """This project as users run it: `maas cluster up` (Ray head, HAProxy ingress), the Serve config
    of deployments/serve_config.yaml applied with the benchmark's registry, an API key."""

    name = "maas"

    def __init__(self, registry_uri: str) -> None:
        self._registry_uri = registry_uri
        self._started_cluster = False

    def start(self, models: dict[BenchModel, Path]) -> None:
        from maas import deploy, local_cluster, settings
        from maas.auth import KeyStore

        if local_cluster.local_state().running:
            raise RuntimeError("a Ray cluster already runs on this machine: stop it (`make stop`) so that the "
                               "benchmark has the machine to itself")
        local_cluster.up()
        self._started_cluster = True
        self._key = KeyStore(self._registry_uri).create("benchmark")[0]
        self._config = config = deploy.load_serve_config(registry=self._registry_uri)
        deploy.deploy(config, timeout_s=600)
        self._url = f"http://127.0.0.1:{settings.SERVE_PORT}"
        self._grpc_target = f"127.0.0.1:{config['grpc_options']['port']}"

    def stop(self) -> None:
        from maas import local_cluster

        if self._started_cluster:
            local_cluster.down()

    def settle(self, request: Request, concurrency: int) -> float | None:
        """Serve's autoscaler adds replicas when the ongoing requests per replica exceed the config's
        target: under that load, wait (bounded) until it has, as a user's service would have."""
        from benchmarks.loadgen import closed_loop
        from maas import deploy

        spec = self._config["applications"][0]["deployments"][0]["autoscaling_config"]
        wanted = min(spec["max_replicas"],
                     max(spec["min_replicas"], -(-concurrency // spec["target_ongoing_requests"])))
        started = time.monotonic()
        while len(deploy.running_replicas()) < wanted:
            if time.monotonic() - started > 90:
                raise RuntimeError(f"Serve did not scale to {wanted} replicas within 90 s")
            closed_loop(request, concurrency, max_requests=100_000, max_seconds=3.0, warmup=0)
        return round(time.monotonic() - started, 1)

    def request(self, model: BenchModel, payload: str) -> Request | None:
        auth = {"authorization": f"Bearer {self._key}"}
        if payload in GRPC_PAYLOADS:
            return grpc_predict_request(self._grpc_target, model, payload, auth)
        if payload == "binary":
            return v2_request(self._url, model, payload, auth)
        return tf_serving_request(self._url, model, payload, auth)


def in_process(path: Path, model: BenchModel, batch_sizes: list[int], seconds: float = 3.0) -> dict[int, float]:
    """The ceiling: samples/s of the SavedModel's serving function called directly, per batch size."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    result = {}
    for batch in batch_sizes:
        x = tf.constant(model.sample(batch))
        fn(**{model.input_name: x})  # trace and allocate
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            fn(**{model.input_name: x})[model.output_name].numpy()
            n += 1
        result[batch] = round(n * batch / elapsed, 1)
    return result


def answers(request: Request) -> None:
    """One request sent with urllib or gRPC (an error raises): a contender must answer before it is measured."""
    if request.grpc_method:
        import grpc

        with grpc.insecure_channel(request.url) as channel:
            channel.unary_unary(request.grpc_method)(request.body, metadata=tuple(request.headers.items()),
                                                     timeout=120)
        return
    req = urllib.request.Request(request.url, data=request.body, headers=request.headers, method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()
