"""Every template: its real (or documented, generated) data, its schema checks, its preprocessing
inside the model, a 2-worker Ray Train job, and HTTP predictions from the published version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import assert_complete

from maas.errors import ConfigError
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.templates import TEMPLATES, DataInfo, DataSplits, FeatureStats, get_template
from maas.training.config import TrainConfig
from maas.training.data import check_data, held_out

ROOT = Path(__file__).resolve().parents[2]


# ---- real data sets, found inside their wheels -----------------------------------------------------

def test_basic_motions_is_the_real_uea_archive() -> None:
    from maas.templates.sports import MOTIONS, read_basic_motions

    for split in ("TRAIN", "TEST"):
        x, y = read_basic_motions(split)
        assert x.shape == (40, 100, 6) and x.dtype == np.float32
        assert np.bincount(y, minlength=len(MOTIONS)).tolist() == [10, 10, 10, 10]
        assert np.isfinite(x).all() and x.std() > 0.1


def test_ai4i_is_the_real_table() -> None:
    from maas.templates.maintenance import _read_ai4i

    table = _read_ai4i()
    assert len(table) == 10_000 and int(table["failure"].sum()) == 339
    assert table["rotational_speed_rpm"].min() >= 1168 and table["rotational_speed_rpm"].max() <= 2886


def test_animal_mnist_is_the_real_data_set() -> None:
    from maas.templates.images import read_animal_mnist

    images, labels = read_animal_mnist()
    assert images.shape == (10_000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10


# ---- schema checks before training -----------------------------------------------------------------

def _write_csv(folder: Path, rows: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        pacsv.write_csv(pa.table(rows), folder / f"{split}.csv")


def test_user_csv_data_defines_the_features(tmp_path: Path) -> None:
    _write_csv(tmp_path, {"speed": [1.0, 2.0, 3.0], "heart_rate": [120, 130, None], "label": [0, 1, 2]})
    info = check_data(TrainConfig(template="tabular_mlp", data=str(tmp_path)))
    assert info.splits.format == "csv" and info.feature_columns == ("speed", "heart_rate")
    assert info.item_shape == (2,) and info.num_classes == 3


def test_the_majority_class_of_an_image_folder_counts_only_images(tmp_path: Path) -> None:
    from maas.training.data import majority_class

    for split, counts in (("train", {"cat": 2, "dog": 3, "horse": 3}), ("test", {"cat": 1})):
        for name, n in counts.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                (tmp_path / split / name / f"{i}.PNG").write_bytes(b"")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / "more.txt").write_text("not an image")
    info = check_data(TrainConfig(template="image_cnn", data=str(tmp_path)))
    assert info.class_names == ("cat", "dog", "horse")
    assert majority_class(info) == 1  # dog and horse tie at 3: the first class wins


@pytest.mark.parametrize(
    ("template", "rows", "message"),
    [
        ("tabular_mlp", {"a": [1.0, 2.0], "target": [0, 1]}, "no column 'label'"),
        ("tabular_mlp", {"a": [1.0, 2.0], "city": ["x", "y"], "label": [0, 1]},
         "every column but 'label' must be numeric; not so: 'city' (string)"),
        ("tabular_mlp", {"a": [1.0, 2.0], "label": [0.5, 1.5]}, "column 'label' is double, expected integer class"),
        ("maintenance", {"torque_nm": [1.0, 2.0], "label": [0, 1]}, "no column 'product_quality'"),
        ("maintenance_regression", {"product_quality": [1.0, 2.0], "label": ["a", "b"]},
         "column 'label' is string, expected numbers"),
    ],
)
def test_a_schema_mismatch_names_the_problem(tmp_path: Path, template: str, rows: dict, message: str) -> None:
    _write_csv(tmp_path, rows)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_data(TrainConfig(template=template, data=str(tmp_path)))


def test_the_job_rejects_mismatched_data_in_one_line_before_training(tmp_path: Path) -> None:
    _write_csv(tmp_path, {"speed": [1.0], "label": [0]})
    proc = subprocess.run([sys.executable, "-m", "jobs.train", "--template", "sports_sequence", "--data",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no column 'series'" in lines[0], proc.stderr
    missing = subprocess.run([sys.executable, "-m", "jobs.train", "--template", "image_cnn", "--data",
                              str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 2 and "expects image folders train/<class>/" in missing.stderr


# ---- preprocessing inside the model ------------------------------------------------------------------

def test_missing_values_and_scaling_use_the_training_statistics_inside_the_model() -> None:
    template = get_template("maintenance_regression")
    stats = FeatureStats(mean=(1.0, 300.0, 310.0, 1500.0, 100.0), std=(0.5, 2.0, 1.5, 180.0, 60.0), count=10,
                         label_mean=40.0, label_std=10.0)
    info = DataInfo(splits=DataSplits("", ""), item_shape=(5,), class_names=(), stats=stats)
    model = template.build_model(info)
    with_gap = np.array([[1.0, np.nan, 311.0, np.nan, 20.0]], np.float32)
    filled = np.array([[1.0, 300.0, 311.0, 1500.0, 20.0]], np.float32)
    np.testing.assert_allclose(model(with_gap).numpy(), model(filled).numpy(), rtol=1e-6)
    assert np.isfinite(model(with_gap).numpy()).all()
    normalize = model.get_layer("normalize")
    np.testing.assert_allclose(np.asarray(normalize.mean).reshape(-1), stats.mean, rtol=1e-6)


def test_regression_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from maas.training.metrics import regression_metrics, summarize_folds

    rng = np.random.default_rng(0)
    y, p = rng.normal(size=50), rng.normal(size=50)
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx(mean_squared_error(y, p))
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(r2_score(y, p))
    summary = summarize_folds([{"mse": 1.0, "num_examples": 5}, {"mse": 3.0, "num_examples": 5}])
    assert summary == {"mse": {"mean": 2.0, "std": 1.0}}


# ---- 2-worker jobs, published, answering HTTP ------------------------------------------------------

def _user_wine_csv(folder: Path) -> str:
    """scikit-learn's real wine table (178 rows, 13 measurements, 3 cultivars) as a user's CSV data
    set, with 2% of the values missing."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    wine = load_wine(as_frame=True)
    frame = wine.data.mask(np.random.default_rng(1).random(wine.data.shape) < 0.02)
    frame["label"] = wine.target
    train, test = train_test_split(frame, test_size=0.3, random_state=0, stratify=frame["label"])
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return str(folder)


def _user_image_folders(folder: Path) -> str:
    """A user's class-per-folder JPEG directory: 3 Animal-MNIST classes, 12 training and 4 test images
    each (the reader resizes them to 128x128x3)."""
    from PIL import Image

    from maas.templates.images import read_animal_mnist

    images, labels = read_animal_mnist()
    for k, name in enumerate(("cat", "dog", "horse")):
        chosen = np.flatnonzero(labels == k)[:16]
        for i, index in enumerate(chosen):
            split = "train" if i < 12 else "test"
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / split / name / f"{i}.jpg")
    return str(folder)


IN_FLIGHT = 2  # training runs at once (3 is no faster on 2 cores: the runs are CPU-bound)


def _runs(tmp: Path) -> dict[str, TrainConfig]:
    return {
        "tabular_mlp": TrainConfig(template="tabular_mlp", data=_user_wine_csv(tmp / "wine"), epochs=25,
                                   batch_size=16, model_name="wine"),
        "image_cnn": TrainConfig(template="image_cnn", data=_user_image_folders(tmp / "animals"), epochs=2,
                                 batch_size=6, model_name="animals"),
        "sports_frames": TrainConfig(template="sports_frames", epochs=1),
        "sports_sequence": TrainConfig(template="sports_sequence", epochs=4),
        "maintenance": TrainConfig(template="maintenance", epochs=2),
        # float16 compute on CPU exercises the loss-scaled mixed-precision step; 2-fold CV first.
        "maintenance_regression": TrainConfig(template="maintenance_regression", epochs=2, mixed_precision=True,
                                              cv_folds=2),
    }


@pytest.fixture(scope="module")
def trained_templates(ray_cluster, tmp_path_factory: pytest.TempPathFactory):
    """Every template but digits trained in its own 2-worker Ray Train job, two jobs at a time
    (each driver a Ray task, as cross-validation runs its folds)."""
    import ray

    from maas.training.driver import run_training

    runs = _runs(tmp_path_factory.mktemp("template_data"))
    train = ray.remote(num_cpus=0)(run_training)
    pending, outcomes = {}, {}
    for name, config in runs.items():
        if len(pending) >= IN_FLIGHT:
            done, _ = ray.wait(list(pending), num_returns=1)
            outcomes[pending.pop(done[0])] = ray.get(done[0])
        pending[train.remote(config)] = name
    for ref, name in pending.items():
        outcomes[name] = ray.get(ref)
    return runs, outcomes


@pytest.mark.cluster
def test_every_template_is_covered() -> None:
    assert set(_runs(Path("/nonexistent"))) | {"digits"} == set(TEMPLATES)


@pytest.fixture(scope="module")
def service(ray_cluster, trained_templates, new_api_key):
    from maas import deploy
    from maas.client import Client

    runs, _ = trained_templates
    registry = next(iter(runs.values())).registry
    serve_config = deploy.load_serve_config(registry=registry, port=ray_cluster.serve_port,
                                            grpc_port=ray_cluster.grpc_port)
    deploy.deploy(serve_config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
    return Client(ray_cluster.serve_url, api_key=new_api_key(registry))


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("name", sorted(set(TEMPLATES) - {"digits"}))
def test_template_trains_on_two_workers_publishes_and_answers_http(trained_templates, service, name: str) -> None:
    import tensorflow as tf

    runs, outcomes = trained_templates
    config, outcome = runs[name], outcomes[name]
    template = get_template(name)
    version = Registry(config.registry).get(config.model_name, outcome.version.version)
    meta = version.metadata.to_json()
    assert meta["template"] == name and meta["params"]["num_workers"] == 2
    assert meta["training"]["epoch_history"] == list(range(1, config.epochs + 1))
    metrics = meta["metrics"]
    if template.task == "classification":
        assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["confusion_matrix"]) == len(meta["classes"])
        assert metrics["baseline"]["predict"] == "majority class"
    else:
        assert {"mse", "mae", "r2"} <= set(metrics) and metrics["baseline"]["predict"] == "training mean"

    info = DataInfo.from_dict({"splits": {"train": meta["data"]["train"], "test": meta["data"]["test"],
                                          "format": meta["data"]["format"]},
                               "item_shape": meta["preprocessing"]["item_shape"], "class_names": meta["classes"],
                               "feature_columns": meta["preprocessing"]["feature_columns"]})
    x, _ = held_out(template, info)
    x = x[:2]
    artifact = ArtifactCache(Registry(config.registry)).local_path(config.model_name, version.version)
    expected = tf.saved_model.load(artifact).signatures["serving_default"](
        **{template.input_name: tf.constant(x)})[template.output_name].numpy()
    answer = service.predict(config.model_name, x, version=version.version)
    np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.cluster
def test_wine_csv_learns_well_above_the_majority_class(trained_templates) -> None:
    runs, outcomes = trained_templates
    metrics = outcomes["tabular_mlp"].metrics
    assert metrics["accuracy"] >= 0.85 > metrics["baseline"]["accuracy"] + 0.3, metrics
    stored = Registry(runs["tabular_mlp"].registry).get("wine", outcomes["tabular_mlp"].version.version).metadata
    stats = stored.to_json()["preprocessing"]["training_split_stats"]
    assert stats["count"] == 124  # the training split only (70% of 178), never the test rows


@pytest.mark.slow
@pytest.mark.cluster
def test_cross_validation_reports_mean_and_std_per_metric(trained_templates) -> None:
    runs, outcomes = trained_templates
    cv = Registry(runs["maintenance_regression"].registry).get(
        "maintenance_regression", outcomes["maintenance_regression"].version.version
    ).metadata.to_json()["cross_validation"]
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2
    for key in ("mse", "mae", "r2"):
        assert set(cv["summary"][key]) == {"mean", "std"}
        assert cv["summary"][key]["mean"] == pytest.approx(np.mean([f[key] for f in cv["per_fold"]]))
    assert outcomes["maintenance_regression"].metrics["r2"] > 0.3  # torque is predictable from speed


@pytest.mark.slow
@pytest.mark.cluster
def test_tensorboard_event_files_land_in_the_run_storage(trained_templates) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs, _ = trained_templates
    config = runs["sports_sequence"]
    board = Path(config.storage_path) / config.run_name / "tensorboard"
    events = EventAccumulator(str(board), size_guidance={"tensors": 0})
    events.Reload()
    assert {"loss", "train_accuracy", "learning_rate", "test_accuracy"} <= set(events.Tags()["tensors"])
    assert [e.step for e in events.Tensors("loss")] == list(range(1, config.epochs + 1))


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(("name", "baseline"), [("maintenance", "training_mean"), ("sports_sequence", "training_mean")])
def test_explanations_over_http_add_up_to_each_predictions_change(trained_templates, service, name: str,
                                                                 baseline: str) -> None:
    """Integrated gradients through the serving function, its cleaning and normalization inside."""
    runs, outcomes = trained_templates
    config, version = runs[name], outcomes[name].version.version
    template = get_template(name)
    meta = Registry(config.registry).get(config.model_name, version).metadata
    assert meta.preprocessing is not None and meta.preprocessing.training_split_stats is not None
    info = DataInfo.from_dict({"splits": {"train": meta.data.train, "test": meta.data.test, "format": meta.data.format},
                               "item_shape": meta.preprocessing.item_shape, "class_names": meta.classes,
                               "feature_columns": meta.preprocessing.feature_columns})
    x, _ = held_out(template, info)
    answer = service.explain(config.model_name, x[:8], version=version, baseline=baseline, steps=256)
    served = service.predict(config.model_name, x[:8], version=version)
    np.testing.assert_allclose(answer["predictions"], served, rtol=1e-4, atol=1e-5)
    checked = 0
    for i, item in enumerate(answer["explanations"]):
        assert item["target"] == int(np.argmax(served[i])) and item["attributions"].shape == x.shape[1:]
        if abs(item["prediction"] - item["baseline_prediction"]) > 0.002:  # an instance like the mean: nothing to add
            assert_complete(item)
            checked += 1
    assert checked >= 1
