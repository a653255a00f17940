"""Bringing your own model (`maas models import`, `Registry.publish_keras`) without a cluster: which
signature is derived, what is refused and how it is said, the fingerprint, and that a refusal leaves
the registry as it was. Real TensorFlow and Keras models, a real registry on local disk."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from maas.errors import InvalidInput
from maas.importing import (
    artifact_sha256,
    describe_source,
    fix_input_shapes,
    import_model,
    parse_input_shapes,
    read_metrics,
)
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.signature import Signature, TensorSpec

MAAS = str(Path(sys.executable).with_name("maas"))
X = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_model():
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden))


@pytest.fixture(scope="module")
def saved(keras_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model as a .keras file, an .h5 file and a SavedModel folder (tf.saved_model.save)."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("artifacts")
    paths = {"keras": folder / "model.keras", "h5": folder / "model.h5", "saved_model": folder / "saved_model"}
    keras_model.save(paths["keras"])
    keras_model.save(paths["h5"])
    tf.saved_model.save(keras_model, str(paths["saved_model"]))
    return paths


@pytest.fixture(scope="module")
def dynamic_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel whose ``serving_default`` leaves its input's second size unknown, with a second
    signature ``sums`` whose sizes are all known."""
    import tensorflow as tf

    class Module(tf.Module):
        def __init__(self) -> None:
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def scaled(self, x):
            return {"y": x * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def sums(self, x):
            return {"total": tf.reduce_sum(x, -1) * self.scale}

    module = Module()
    path = tmp_path_factory.mktemp("dynamic") / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.scaled, "sums": module.sums})
    return path


def _published_answer(registry: Registry, name: str, version: int, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """What the published SavedModel answers, loaded as serving loads it."""
    import tensorflow as tf

    fn = tf.saved_model.load(ArtifactCache(registry).local_path(name, version)).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _left_in(root: Path) -> list[str]:
    """Every file and folder under a registry root (an empty ``.staging`` folder aside)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".staging") if root.exists() else []


# ---- the three formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["keras", "h5", "saved_model"])
def test_each_format_publishes_its_signature_answers_and_metadata(fmt: str, saved, keras_model, tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    version = import_model(registry, "byom", str(saved[fmt]), task="classification", classes=("a", "b", "c"))
    names = ("inputs", "output_0") if fmt == "saved_model" else ("features", "probabilities")  # tf.saved_model's
    assert version.signature == Signature(inputs=(TensorSpec(names[0], "float32", (-1, 6)),),
                                          outputs=(TensorSpec(names[1], "float32", (-1, 3)),))
    answer = _published_answer(registry, "byom", version.version, **{names[0]: X})[names[1]]
    np.testing.assert_allclose(answer, keras_model(X).numpy(), rtol=1e-5)
    meta = registry.get("byom", version.version).metadata
    assert meta.imported is True and meta.format == fmt and meta.source == str(saved[fmt])
    assert meta.sha256 == artifact_sha256(saved[fmt])
    assert (meta.task, meta.classes) == ("classification", ["a", "b", "c"])
    assert {"tensorflow", "keras", "numpy", "pyarrow", "ray", "maas", "python"} <= set(meta.libraries or ())
    document = meta.to_json()
    assert "metrics" not in document and "template" not in document and "training" not in document
    assert (tmp_path / "registry" / "byom" / str(version.version) / "saved_model.pb").is_file()


def test_publish_keras_exports_an_in_memory_model_even_one_never_built(tmp_path: Path) -> None:
    import keras

    registry = Registry(str(tmp_path / "registry"))
    unbuilt = keras.Sequential([keras.layers.Dense(2, name="scores")])
    with pytest.raises(InvalidInput, match=r"declares no inputs .* --input-shape"):
        registry.publish_keras("seq", unbuilt)
    version = registry.publish_keras("seq", unbuilt, input_shape=(4,), metrics={"accuracy": 0.5}, source="notebook")
    assert version.signature.inputs == (TensorSpec("inputs", "float32", (-1, 4)),)
    assert version.signature.outputs == (TensorSpec("scores", "float32", (-1, 2)),)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(_published_answer(registry, "seq", 1, inputs=x)["scores"], unbuilt(x).numpy(),
                               rtol=1e-5)
    meta = version.metadata
    assert (meta.format, meta.source, meta.metrics and meta.metrics.to_json()) == ("keras_model", "notebook",
                                                                                  {"accuracy": 0.5})


def test_several_inputs_and_outputs_are_named_after_the_model(tmp_path: Path) -> None:
    import keras

    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b", dtype="int32")
    joined = keras.layers.Concatenate()([a, keras.ops.cast(b, "float32")])
    model = keras.Model({"b": b, "a": a}, {"y": keras.layers.Dense(2)(joined), "x": keras.layers.Dense(1)(joined)})
    version = Registry(str(tmp_path)).publish_keras("multi", model)
    assert version.signature.inputs == (TensorSpec("a", "float32", (-1, 2)), TensorSpec("b", "int32", (-1, 3)))
    assert [s.name for s in version.signature.outputs] == ["x", "y"]
    with pytest.raises(InvalidInput, match=r"the model has 2 inputs \['a', 'b'\]: name the one"):
        Registry(str(tmp_path)).publish_keras("multi", model, input_shape=(2,))


# ---- unknown sizes, signatures, ops --------------------------------------------------------------


def test_an_unknown_size_is_refused_naming_input_and_dimension_until_input_shape_fixes_it(
        dynamic_saved_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    with pytest.raises(InvalidInput, match=r"^input 'x' has an unknown size in dimension 1 \(shape \[-1, -1\], "
                                           r"dimension 0 is the batch\): give the size N it takes with "
                                           r"--input-shape N \(or x=N"):
        import_model(Registry(str(root)), "dyn", str(dynamic_saved_model))
    assert _left_in(root) == []
    version = import_model(Registry(str(root)), "dyn", str(dynamic_saved_model), input_shape={"x": (4,)})
    assert version.signature.inputs == (TensorSpec("x", "float32", (-1, 4)),)
    answer = _published_answer(Registry(str(root)), "dyn", 1, x=np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(answer["y"], np.full((2, 4), 2.0, np.float32))  # the original's variable


def test_another_signature_is_served_as_serving_default_and_a_missing_one_is_named(
        dynamic_saved_model: Path, tmp_path: Path) -> None:
    registry = Registry(str(tmp_path))
    version = import_model(registry, "sums", str(dynamic_saved_model), signature="sums")
    assert version.signature.outputs == (TensorSpec("total", "float32", (-1,)),)
    assert version.metadata.source_signature == "sums"
    answer = _published_answer(registry, "sums", 1, x=np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(answer["total"], [6.0, 6.0])
    with pytest.raises(InvalidInput, match=r"no signature 'nope'; it has \['serving_default', 'sums'\]"):
        import_model(registry, "sums", str(dynamic_saved_model), signature="nope")


@pytest.mark.parametrize("item, given, message", [
    ((-1, 28), None, "unknown size in dimension 1"),
    ((28, -1), (28,), r"has 2 dimensions after the batch \(shape \[-1, 28, -1\]\); the input shape given has 1"),
    ((28, -1), (27, 5), r"has size 28 in dimension 1 \(shape \[-1, 28, -1\]\); the input shape given says 27"),
    ((28, 28), {"other": (28, 28)}, r"input shape given for 'other', but the model's inputs are \['x'\]"),
])
def test_input_shapes_that_leave_a_size_unknown_or_contradict_the_model_are_refused(item, given, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        fix_input_shapes([TensorSpec("x", "float32", (-1, *item))], given)


def test_input_shapes_fill_only_unknown_sizes() -> None:
    assert fix_input_shapes([TensorSpec("x", "float32", (-1, 28, -1))], (28, 3)) == [
        TensorSpec("x", "float32", (-1, 28, 3))]


def test_a_graph_that_reads_files_is_refused_as_serving_would_refuse_it(tmp_path: Path) -> None:
    import tensorflow as tf

    secret = tmp_path / "secret.txt"
    secret.write_text("token")

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def leak(x):
        return {"y": x + tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32)}

    module = tf.Module()
    module.leak = leak
    tf.saved_model.save(module, str(tmp_path / "leaky"), signatures={"serving_default": leak})
    root = tmp_path / "registry"
    with pytest.raises(InvalidInput, match=r"signature 'serving_default' uses ReadFile, which serving refuses"):
        import_model(Registry(str(root)), "leaky", str(tmp_path / "leaky"))
    assert _left_in(root) == []


def test_string_inputs_unbatched_outputs_and_a_failing_warm_up_are_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def lengths(text):
        return {"n": tf.strings.length(text)}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def total(x):
        return {"sum": x[: tf.maximum(tf.shape(x)[0] - 1, 1)]}  # one row short: the batch is not followed

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def positive_only(x):
        tf.debugging.assert_greater(tf.reduce_min(x), 0.0, message="inputs must be positive")
        return {"log": tf.math.log(x)}

    for name, fn in (("strings", lengths), ("unbatched", total), ("positive", positive_only)):
        module = tf.Module()
        module.fn = fn
        tf.saved_model.save(module, str(tmp_path / name), signatures={"serving_default": fn})
    registry = Registry(str(tmp_path / "registry"))
    with pytest.raises(InvalidInput, match="input 'text' is a string tensor"):
        import_model(registry, "s", str(tmp_path / "strings"))
    with pytest.raises(InvalidInput, match=r"output 'sum' does not follow the batch: a batch of 2 gave shape \[1, 2\]"):
        import_model(registry, "s", str(tmp_path / "unbatched"))
    with pytest.raises(InvalidInput, match=r"positive does not serve: a call on a zero batch \{'x': \[2, 2\]\} failed: "
                                           "refused the input"):
        import_model(registry, "s", str(tmp_path / "positive"))
    assert _left_in(tmp_path / "registry") == []


# ---- what is not a model -------------------------------------------------------------------------


def _not_models(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Things that are not models, each with the start of the error it gets."""
    rng = np.random.default_rng(1)
    (tmp_path / "random.keras").write_bytes(rng.bytes(4096))
    (tmp_path / "notes.h5").write_text("not hdf5\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "saved_model.pb").write_bytes(b"\xff" * 64)
    (tmp_path / "fake.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + rng.bytes(512))
    return {
        "random bytes": (tmp_path / "random.keras", "random.keras is not a Keras 3 archive"),
        "text as h5": (tmp_path / "notes.h5", "notes.h5 is not an HDF5 file"),
        "text file": (tmp_path / "notes.txt", "notes.txt is not a model file: expected a Keras .keras file"),
        "empty folder": (tmp_path / "empty", "is a folder without saved_model.pb: not a SavedModel"),
        "missing": (tmp_path / "missing.keras", "no such file or folder: "),
        "garbage saved_model.pb": (tmp_path / "garbage", "garbage/saved_model.pb is not a SavedModel protocol buffer"),
        "broken hdf5": (tmp_path / "fake.h5", "fake.h5 does not load as a Keras model (h5)"),
    }


def test_what_is_not_a_model_is_refused_naming_it_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where an import works
    root = tmp_path / "registry"
    Registry(str(root)).publish_keras("kept", _tiny_model(), input_shape=(2,))
    before = _left_in(root)
    for what, (path, message) in _not_models(tmp_path).items():
        with pytest.raises(InvalidInput) as refused:
            import_model(Registry(str(root)), "kept", str(path))
        assert message in str(refused.value), what
        assert "\n" not in str(refused.value), what
    assert _left_in(root) == before and Registry(str(root)).versions("kept") == [1]
    assert list(scratch.iterdir()) == []


def test_a_keras_file_holding_python_code_is_refused_not_run(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((2,), name="x")
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(tmp_path / "lambda.keras")
    with pytest.raises(InvalidInput, match=r"lambda.keras does not load as a Keras model \(keras\): ValueError: "
                                           "Requested the deserialization of a `Lambda` layer"):
        import_model(Registry(str(tmp_path / "registry")), "m", str(tmp_path / "lambda.keras"))
    assert _left_in(tmp_path / "registry") == []


def _tiny_model():
    import keras

    return keras.Sequential([keras.Input((2,), name="x"), keras.layers.Dense(1, name="y")])


@pytest.mark.parametrize("args, message", [
    (["random.keras"], "error: random.keras is not a Keras 3 archive (a zip file holding config.json)"),
    (["notes.txt"], ("error: notes.txt is not a model file: expected a Keras .keras file, a legacy .h5 file or "
                     "a SavedModel folder")),
    (["empty"], "is a folder without saved_model.pb: not a SavedModel"),
    (["missing.keras"], "error: no such file or folder: "),
    (["empty", "--task", "ranking"], "error: task is one of classification, regression. Received: 'ranking'"),
    (["empty", "--input-shape", "28,x"], "error: --input-shape takes positive sizes such as 28,28 or NAME=28,28"),
    (["empty", "--input-shape", "28", "--input-shape", "x=1"], "error: --input-shape given more than once: name"),
    (["empty", "--classes", "a,,b"], "error: classes are non-empty names, such as cat,dog. Received: ['a', '', 'b']"),
    (["empty", "--metrics", "missing.json"], "error: --metrics: no such file: missing.json"),
    (["empty", "--metrics", "notes.txt"], "error: --metrics: notes.txt is not JSON"),
    (["empty", "--task", "regression", "--classes", "a,b"], "error: classes name a classifier's outputs"),
])
def test_the_cli_refuses_in_one_line_with_exit_code_2_and_writes_nothing(args: list[str], message: str,
                                                                         tmp_path: Path) -> None:
    _not_models(tmp_path)
    root = tmp_path / "registry"
    proc = subprocess.run([MAAS, "models", "--registry", str(root), "import", "m", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == "" and _left_in(root) == []


def test_the_cli_imports_without_loading_tensorflow_or_ray_first() -> None:
    code = ("import sys, maas.cli, maas.importing; "
            "print(sorted(m for m in ('ray', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- fingerprints, flags, metadata ---------------------------------------------------------------


def test_sha256_is_a_files_bytes_and_a_folders_sorted_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "file.bin").write_bytes(b"abc")
    assert artifact_sha256(tmp_path / "file.bin") == hashlib.sha256(b"abc").hexdigest()
    folder = tmp_path / "model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    expected = hashlib.sha256(b"saved_model.pb\x005\x00graph" + b"variables/variables.index\x005\x00index")
    assert artifact_sha256(folder) == expected.hexdigest()
    (folder / "variables" / "variables.index").rename(folder / "variables" / "other.index")
    assert artifact_sha256(folder) != expected.hexdigest()  # a renamed file is another artifact


@pytest.mark.parametrize("texts, shape", [([], None), (["28,28"], (28, 28)), (["x=3"], {"x": (3,)}),
                                          (["a=1,2", "b=3"], {"a": (1, 2), "b": (3,)})])
def test_input_shape_flags_read_as_one_shape_or_shapes_by_name(texts: list[str], shape) -> None:
    assert parse_input_shapes(texts) == shape


@pytest.mark.parametrize("texts", [["0,28"], ["-1"], [""], ["x="], ["a=1", "a=2"]])
def test_other_input_shape_flags_are_refused(texts: list[str]) -> None:
    with pytest.raises(InvalidInput, match="--input-shape"):
        parse_input_shapes(texts)


@pytest.mark.parametrize("body, message", [
    ('{"accuracy": 0.9, "f1_macro": 0.8}', None),
    ('[0.9]', "a JSON object of numbers"),
    ('{"accuracy": "high"}', "finite numbers. Received: 'accuracy': high"),
    ('{"accuracy": true}', "finite numbers"),
    ('{"loss": NaN}', "finite numbers"),
    ('{"r2": 0.5}', "metrics with 'r2' need 'mse' and 'mae'"),
])
def test_metrics_files_hold_a_flat_object_of_finite_numbers(body: str, message: str | None, tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(body)
    if message is None:
        assert read_metrics(str(tmp_path / "metrics.json")) == json.loads(body)
    else:
        with pytest.raises(InvalidInput, match=message):
            read_metrics(str(tmp_path / "metrics.json"))


def test_classes_must_count_a_classifiers_outputs(saved, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"2 classes were given, but output 'probabilities' has shape \[-1, 3\]"):
        import_model(Registry(str(tmp_path)), "m", str(saved["keras"]), classes=("a", "b"))
    assert _left_in(tmp_path) == []


def test_a_recorded_source_keeps_no_credentials() -> None:
    assert describe_source("s3://KEY:SECRET@bucket/models/m.keras?secret_key=x") == "s3://bucket/models/m.keras"
    assert describe_source("gs://bucket/m") == "gs://bucket/m"
    assert describe_source("hdfs://user@namenode:8020/m.h5") == "hdfs://namenode:8020/m.h5"
