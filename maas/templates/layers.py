"""Keras building blocks shared by the templates: the preprocessing that travels inside the model,
and the regression head. Imported by model builders only (it imports Keras)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import KerasTensor, layers, ops

from maas.templates.base import DataInfo

if TYPE_CHECKING:
    import tensorflow as tf


class FillMissing(layers.Layer):  # type: ignore[misc]  # Keras has no type information: Layer is Any
    """Replaces NaN with the training split's per-feature mean (the last axis)."""

    def __init__(self, values: list[float], **kwargs: Any) -> None:  # Layer's own: name, dtype, trainable
        super().__init__(**kwargs)
        self.values = list(values)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        fill = ops.convert_to_tensor(np.asarray(self.values, dtype="float32"), dtype=x.dtype)
        return ops.where(ops.isnan(x), fill, x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "values": self.values}


def clean_and_normalize(x: KerasTensor, info: DataInfo) -> KerasTensor:
    """Fill missing values and standardize with the training split's statistics (``info.stats``)."""
    if info.stats is None:
        raise ValueError("this template normalizes its inputs: the data info must carry training statistics")
    mean = np.asarray(info.stats.mean, dtype="float32")
    std = np.asarray(info.stats.std, dtype="float32")
    x = FillMissing(mean.tolist(), name="fill_missing")(x)
    return layers.Normalization(mean=mean, variance=std**2, name="normalize")(x)


def head(x: KerasTensor, info: DataInfo, task: str, name: str) -> KerasTensor:
    """Class probabilities for classification; for regression one number in the label's own units
    (the network predicts a standardized target, rescaled with the training split's label stats)."""
    if task == "classification":
        return layers.Dense(info.num_classes, activation="softmax", dtype="float32", name=name)(x)
    assert info.stats is not None and info.stats.label_mean is not None
    z = layers.Dense(1, dtype="float32", name="standardized")(x)
    scale = float(info.stats.label_std or 1.0)
    return layers.Rescaling(scale, offset=float(info.stats.label_mean), dtype="float32", name=name)(z)


def model(inputs: KerasTensor, outputs: KerasTensor, name: str) -> keras.Model:
    return keras.Model(inputs, outputs, name=name)
