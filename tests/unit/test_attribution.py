"""Integrated gradients in TensorFlow on real SavedModels (no Ray): completeness (the attributions of
an instance add up to its prediction's change from the baseline), passes that split the path, the
baselines, and the models that cannot be explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maas.errors import InvalidInput
from maas.serving.attribution import baseline_inputs, check_differentiable, integrated_gradients
from maas.serving.runtime import load_saved_model
from maas.signature import Signature, TensorSpec


@pytest.fixture(scope="module")
def digits(tiny_saved_model: Path):
    return load_saved_model("digits", 1, str(tiny_saved_model), warm_batch_size=2)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, (n, 8, 8)).astype(np.float32)


def test_attributions_add_up_to_the_change_from_the_baseline_and_closer_with_more_steps(digits) -> None:
    x = _images(3)
    zeros = baseline_inputs("zeros", {"pixels": x}, None, "digits version 1")
    coarse = digits.explain({"pixels": x}, zeros, steps=4, output="probabilities", target=None)
    fine = digits.explain({"pixels": x}, zeros, steps=128, output="probabilities", target=None)
    predicted = digits.predict({"pixels": x})["probabilities"]
    np.testing.assert_array_equal(fine.target, predicted.argmax(axis=1))  # the top class, by default
    np.testing.assert_allclose(fine.prediction, predicted.max(axis=1), rtol=1e-5)
    change = fine.prediction - fine.baseline_prediction
    assert np.abs(change).min() > 1e-3  # the check below is not vacuous
    np.testing.assert_allclose(fine.attributions["pixels"].reshape(3, -1).sum(axis=1), change,
                               atol=0.01 * np.abs(change).max())
    assert np.all(np.abs(fine.delta) < np.abs(coarse.delta)) and np.abs(fine.delta).max() < 1e-3
    assert fine.attributions["pixels"].shape == x.shape and fine.outputs["probabilities"].shape == (3, 10)


def test_a_path_split_into_small_passes_gives_the_same_attributions(digits) -> None:
    x = _images(2)
    zeros = baseline_inputs("zeros", {"pixels": x}, None, "d")
    whole = integrated_gradients(digits._fn, {"pixels": x}, zeros, steps=9, output="probabilities", target=4, what="d")
    split = integrated_gradients(digits._fn, {"pixels": x}, zeros, steps=9, output="probabilities", target=4, what="d",
                                 pass_values=64 * 3)  # 3 points a pass: 20 points in 7 passes
    np.testing.assert_allclose(split.attributions["pixels"], whole.attributions["pixels"], rtol=1e-5, atol=1e-7)
    assert whole.target.tolist() == [4, 4]
    with pytest.raises(InvalidInput, match="target 10 is past the end of output 'probabilities', which has 10 values"):
        integrated_gradients(digits._fn, {"pixels": x}, zeros, steps=2, output="probabilities", target=10, what="d")


def test_the_training_mean_baseline_is_the_feature_means_on_the_last_axis() -> None:
    sequence = np.ones((2, 5, 3), np.float32)
    found = baseline_inputs("training_mean", {"series": sequence}, [1.0, 2.0, 3.0], "s")["series"]
    assert found.shape == (2, 5, 3) and found[1, 4].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(InvalidInput, match=r"has 3 feature means, and its input 'x' has instances of shape \[4\]"):
        baseline_inputs("training_mean", {"x": np.ones((1, 4), np.float32)}, [1.0, 2.0, 3.0], "m version 1")
    with pytest.raises(InvalidInput, match="needs a version with one input"):
        baseline_inputs("training_mean", {"a": sequence, "b": sequence}, [1.0, 2.0, 3.0], "m version 1")


def test_a_model_without_a_gradient_with_respect_to_its_input_is_a_400(tmp_path: Path) -> None:
    import tensorflow as tf

    class Rounded(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.cast(tf.argmax(x, axis=1), tf.float32)}

    module = Rounded()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.serve})
    loaded = load_saved_model("rounded", 1, str(tmp_path / "m"))
    x = np.ones((1, 3), np.float32)
    with pytest.raises(InvalidInput, match="rounded version 1 cannot be explained: output 'y' has no gradient with "
                                           "respect to its input 'x'"):
        loaded.explain({"x": x}, {"x": np.zeros_like(x)}, steps=4, output="y", target=None)
    ids = Signature(inputs=(TensorSpec("ids", "int32", (-1, 2)),), outputs=(TensorSpec("y", "float32", (-1,)),))
    with pytest.raises(InvalidInput, match=r"takes 'ids' \(int32\)"):
        check_differentiable("m", 1, ids)
