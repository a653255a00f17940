"""Bring your own model, end to end: a Keras model built here is saved as ``.keras``, ``.h5`` and with
``tf.saved_model.save`` (that one uploaded to the moto S3 server), each imported with the `maas models
import` command line into the registry the shared cluster's service serves, and each version's answers
over REST ``:predict``, KServe V2 ``infer`` and gRPC ``Predict`` equal the model called in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.client import Client, HTTPError
from maas.importing import artifact_sha256
from maas.registry import Registry
from maas.signature import Signature
from maas.storage import join_uri

pytestmark = pytest.mark.cluster
MAAS = str(Path(sys.executable).with_name("maas"))
MODEL = "byom"
FORMATS = ("keras", "h5", "saved_model")


@dataclass(frozen=True)
class Imported:
    client: Client
    registry: Registry
    grpc_target: str
    versions: dict[str, int]  # format -> version
    sources: dict[str, str]  # format -> path or URI imported
    x: np.ndarray
    expected: np.ndarray  # the Keras model's answer to x, in this process

    def signature(self, fmt: str) -> Signature:
        return self.registry.get(MODEL, self.versions[fmt]).signature


def _build_and_save(folder: Path) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    """A small Keras classifier with seeded weights, saved in the three formats; a batch and its answer."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(11)
    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden))
    paths = {"keras": folder / "model.keras", "h5": folder / "model.h5", "saved_model": folder / "saved_model"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    tf.saved_model.save(model, str(paths["saved_model"]))
    x = np.random.default_rng(5).normal(size=(8, 6)).astype(np.float32)
    return paths, x, model(x).numpy()


def _upload(folder: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    from maas.storage import resolve_uri

    fs, path = resolve_uri(uri)
    pafs.copy_files(str(folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _wait_until_served(client: Client, version: int, x: np.ndarray, timeout_s: float = 120) -> None:
    """Until the service answers for ``version``: it lists new versions within registry_refresh_s (404
    before), and a first request loads the version (a 504 when the load outlasts the request timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.predict(MODEL, x[:1], version=version)
            return
        except HTTPError as exc:
            if exc.status not in (404, 503, 504) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def imported(digits_app, s3_server, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """The three imports, run side by side as three `maas models import` processes."""
    app = digits_app.ensure()
    paths, x, expected = _build_and_save(tmp_path_factory.mktemp("byom"))
    sources = {fmt: str(path) for fmt, path in paths.items()}
    sources["saved_model"] = join_uri(s3_server.new_bucket(), "exported", "saved_model")
    _upload(paths["saved_model"], sources["saved_model"])
    procs = {fmt: subprocess.Popen([MAAS, "models", "--registry", app.registry_uri, "import", MODEL, source,
                                    "--task", "classification", "--classes", "a,b,c"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for fmt, source in sources.items()}
    for fmt, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{fmt}: {err}"
        assert out.startswith(f"{MODEL}: version ") and f"({fmt};" in out, out
    registry = Registry(app.registry_uri)
    versions = {registry.get(MODEL, v).metadata.to_json()["format"]: v for v in registry.versions(MODEL)}
    assert set(versions) == set(FORMATS)
    client = Client(app.cluster.serve_url, timeout_s=60)
    for version in versions.values():
        _wait_until_served(client, version, x)
    return Imported(client, registry, app.cluster.grpc_target, versions, sources, x, expected)


def test_rest_predict_and_v2_infer_answer_as_the_model_in_process(imported: Imported) -> None:
    for fmt in FORMATS:
        version = imported.versions[fmt]
        signature = imported.signature(fmt)
        rest = imported.client.predict(MODEL, imported.x, version=version)
        np.testing.assert_allclose(rest, imported.expected, rtol=1e-5, err_msg=fmt)
        v2 = imported.client.infer(MODEL, {signature.inputs[0].name: imported.x}, version=version)
        np.testing.assert_allclose(v2[signature.outputs[0].name], imported.expected, rtol=1e-5, err_msg=fmt)


def test_grpc_predict_answers_as_the_model_in_process(imported: Imported) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import (
        model_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    version = imported.versions["saved_model"]  # the one imported from S3
    signature = imported.signature("saved_model")
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL, signature_name="serving_default"))
    request.model_spec.version.value = version
    request.inputs[signature.inputs[0].name].CopyFrom(tf.make_tensor_proto(imported.x))
    with grpc.insecure_channel(imported.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, metadata=[("authorization", f"Bearer {os.environ['MAAS_API_KEY']}")],
                                timeout=60)
    answer = tf.make_ndarray(response.outputs[signature.outputs[0].name])
    np.testing.assert_allclose(answer, imported.expected, rtol=1e-5)
    assert response.model_spec.version.value == version


def test_imported_versions_are_described_listed_and_reported_like_trained_ones(imported: Imported) -> None:
    base = [MAAS, "models", "--registry", imported.registry.uri]
    for fmt in FORMATS:
        shown = subprocess.run([*base, "show", MODEL, "--version", str(imported.versions[fmt])],
                               capture_output=True, text=True, timeout=60, check=False)
        meta = json.loads(shown.stdout)
        assert (meta["imported"], meta["format"], meta["source"]) == (True, fmt, imported.sources[fmt])
        assert (meta["task"], meta["classes"]) == ("classification", ["a", "b", "c"])
        assert "metrics" not in meta and meta["libraries"]["tensorflow"]
    local = Path(imported.sources["keras"])
    stored = imported.registry.get(MODEL, imported.versions["keras"]).metadata.to_json()
    assert stored["sha256"] == artifact_sha256(local)
    listing = subprocess.run([*base, "list"], capture_output=True, text=True, timeout=60, check=False)
    assert listing.returncode == 0 and all(f"v{v} " in listing.stdout for v in imported.versions.values())
    status = subprocess.run([MAAS, "status", MODEL], capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    versions = ", ".join(map(str, sorted(imported.versions.values())))
    assert f"{MODEL}: versions {versions}" in status.stdout
