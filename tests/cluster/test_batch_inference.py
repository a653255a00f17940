"""Batch inference on the shared cluster (a head and two worker nodes): `ray job submit -- python -m
jobs.predict` over the session's trained digits (Parquet, from and to the moto S3 server), an image
folder, and bad input that fails in one line, before the job runs or from inside an actor; predictions
are compared with what the Serve service answers over HTTP for the same rows."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import ray_job_submit

from maas.batch import predict_dataset
from maas.client import Client
from maas.errors import InvalidInput
from maas.registry import Registry
from maas.storage import resolve_uri, write_parquet_atomic

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = [0, 1, 57, 123, 200, 359]  # rows of the digits test split compared with the service's answers


@pytest.fixture(scope="module")
def digits(digits_app):
    """The session's trained digits version, its test split (Parquet) and the service serving it."""
    app = digits_app.ensure()
    registry = Registry(app.registry_uri)
    test_split = registry.get("digits", app.version).metadata.to_json()["data"]["test"]
    return app, test_split, Client(app.cluster.serve_url)


def _scores(fs_uri: str) -> pa.Table:
    fs, path = resolve_uri(fs_uri)
    return pq.read_table(path, filesystem=fs)


def _probabilities(table: pa.Table, key: str, keys: list) -> np.ndarray:
    index = {k: i for i, k in enumerate(table.column(key).to_pylist())}
    column = table.column("probabilities")
    return np.stack([np.asarray(column[index[k]].as_py(), np.float32) for k in keys])


@contextmanager
def _no_garbage_collector() -> Iterator[None]:
    """A job must end its own pool, not leave it to the garbage collector of a long-lived driver."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _scoring_actors_alive() -> list[str]:
    """This cluster's scoring actors still alive a few seconds after the job returned (a kill takes
    effect asynchronously)."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + 10.0
    while True:
        alive = [a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                 if "Scorer" in a.class_name]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.25)


def _job_json(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith('{"model"')))


@pytest.mark.slow
def test_a_submitted_job_scores_digits_from_s3_to_s3_on_actors_across_nodes_as_serving_does(
        ray_cluster, s3_server, digits) -> None:
    app, test_split, client = digits
    bucket = s3_server.new_bucket()
    source = pq.read_table(test_split)
    write_parquet_atomic(source.slice(200), f"{bucket}/digits/part-1.parquet")  # name order, not write order
    write_parquet_atomic(source.slice(0, 200), f"{bucket}/digits/part-0.parquet")
    proc = ray_job_submit(ray_cluster, "python", "-m", "jobs.predict", "--model", "digits", "--version",
                           str(app.version), "--data", f"{bucket}/digits", "--out", f"{bucket}/scores",
                           "--registry", app.registry_uri, "--concurrency", "2", "--batch-size", "40", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = _job_json(proc.stdout)
    assert report["rows"] == 360 and report["version"] == app.version and report["concurrency"] == [2, 2]
    actors = report["actors"]  # Ray Data spreads its actors over the nodes
    assert sum(a["rows"] for a in actors) == 360 and len({a["node"] for a in actors}) == 2, actors
    assert "Running Dataset" in proc.stdout + proc.stderr  # Ray Data's own progress

    table = _scores(f"{bucket}/scores")
    assert table.column_names == ["row", "probabilities", "class", "class_name"]
    assert sorted(table.column("row").to_pylist()) == list(range(360))
    x = np.stack(source.column("pixels").to_numpy(zero_copy_only=False))[SAMPLE].reshape(-1, 8, 8)
    served = client.predict("digits", x.tolist(), version=app.version)
    np.testing.assert_allclose(_probabilities(table, "row", SAMPLE), served, rtol=1e-5, atol=1e-6)
    by_row = dict(zip(table.column("row").to_pylist(), table.column("class").to_pylist(), strict=True))
    assert [by_row[r] for r in SAMPLE] == np.argmax(served, axis=1).tolist()
    labels = source.column("label").to_numpy()
    accuracy = np.mean([by_row[r] == labels[r] for r in range(360)])
    assert accuracy > 0.8, accuracy  # the trained model, not noise


def _animal_folder(folder: Path) -> list[str]:
    """A user's class-per-folder image directory: 3 Animal-MNIST silhouettes (28x28 grayscale) each of
    two classes, in nested folders and two formats; the model takes 128x128x3."""
    from PIL import Image

    from maas.templates.images import read_animal_mnist

    images, labels = read_animal_mnist()
    names = []
    for k, name in enumerate(("cat", "dog")):
        for i, index in enumerate(np.flatnonzero(labels == k)[:3]):
            path = folder / name / ("seen" if i else "new") / f"{i}.{'png' if i % 2 else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(path)
            names.append(str(path.relative_to(folder)))
    return sorted(names)


def _publish_images_version(registry: Registry, folder: Path, work: Path) -> int:
    """An image_cnn version over ``folder``'s classes, exported and recorded as a training run records
    it (template, classes, item shape, data format), with untrained weights: the batch job's reading,
    resizing and scoring are what is tested here, and the template's training is tested elsewhere."""
    import keras

    from maas.templates import DataInfo, DataSplits, get_template
    from maas.training.export import export_saved_model

    template = get_template("image_cnn")
    info = DataInfo(splits=DataSplits(str(folder), str(folder), "images"), item_shape=(128, 128, 3),
                    class_names=("cat", "dog"))
    keras.utils.set_random_seed(3)
    signature = export_saved_model(template.build_model(info), template, info, str(work / "export"))
    return registry.publish("animals-batch", str(work / "export"), {
        "template": "image_cnn", "task": "classification", "classes": ["cat", "dog"],
        "signature": signature.to_dict(),
        "data": {"train": str(folder), "test": str(folder), "format": "images"},
        "preprocessing": {"feature_columns": [], "item_shape": [128, 128, 3], "training_split_stats": None},
    }).version


def test_an_image_folder_is_resized_as_training_did_and_scored_as_serving_does(ray_cluster, digits,
                                                                               tmp_path: Path) -> None:
    from PIL import Image

    app, _, client = digits
    folder = tmp_path / "animals"
    names = _animal_folder(folder)
    version = _publish_images_version(Registry(app.registry_uri), folder, tmp_path)
    with _no_garbage_collector():
        report = predict_dataset("animals-batch", str(folder), str(tmp_path / "scores"), version=version,
                                 registry=app.registry_uri, concurrency=(1, 1), batch_size=4)
        assert _scoring_actors_alive() == []
    assert report.rows == len(names) == 6 and report.format == "images"

    table = _scores(str(tmp_path / "scores"))
    assert sorted(table.column("path").to_pylist()) == names
    assert set(table.column("class_name").to_pylist()) <= {"cat", "dog"}
    # What Ray Data's image reader (training's) makes of each file: resized bilinearly, then RGB.
    x = np.stack([np.asarray(Image.open(folder / n).resize((128, 128), resample=Image.BILINEAR).convert("RGB"))
                  for n in names])
    assert x.shape == (6, 128, 128, 3) and x.dtype == np.uint8
    served = client.infer("animals-batch", {"image": x}, version=version, binary=True)["probabilities"]
    np.testing.assert_allclose(_probabilities(table, "path", names), served, rtol=1e-5, atol=1e-6)


def _predict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobs.predict", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def test_bad_input_fails_in_one_line_with_exit_code_2(ray_cluster, digits, tmp_path: Path) -> None:
    app, _, _ = digits
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"image": pa.array([[0.0] * 64]), "label": [1]}), wrong)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not data")
    base = ["--model", "digits", "--registry", app.registry_uri, "--out", str(tmp_path / "scores")]
    for data, message in [
        (wrong, (f"error: data {wrong} does not fit digits version {app.version}: no column 'pixels' "
                 "(the model takes a column 'pixels' of 8x8 numbers per row)")),
        (notes, f"error: data {notes} is not a data set: no Parquet, CSV or image files there"),
    ]:
        proc = _predict(*base, "--version", str(app.version), "--data", str(data))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [message]


@pytest.mark.slow
def test_a_bad_row_found_by_an_actor_fails_the_job_in_one_line(ray_cluster, digits, tmp_path: Path) -> None:
    app, _, _ = digits
    rows = [[1.0] * 64] * 30 + [[1.0] * 63] + [[1.0] * 64] * 9  # a list column: lengths only known per row
    data = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"id": [f"u{i}" for i in range(40)], "pixels": pa.array(rows, pa.list_(pa.float32()))}),
                   data)
    with _no_garbage_collector():
        with pytest.raises(InvalidInput) as caught:
            predict_dataset("digits", str(data), str(tmp_path / "scores"), version=app.version,
                            registry=app.registry_uri, concurrency=(1, 2))  # a pool Ray Data may grow
        assert _scoring_actors_alive() == []  # a failed job ends its pool too (its traceback is held here)
    assert str(caught.value) == "row u30: column 'pixels' holds 63 numbers where the model takes 8x8"
