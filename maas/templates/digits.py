"""``digits``: a small CNN on scikit-learn's real handwritten digits (1,797 images, 8x8, 10 classes).

The data ships inside scikit-learn's wheel (no download). Clients send raw pixels as scikit-learn
returns them (``load_digits().images``: 8x8 values in 0..16); scaling happens inside the model.
"""

from __future__ import annotations

import numpy as np

from maas.signature import TensorSpec
from maas.storage import join_uri, uri_exists, write_parquet_atomic
from maas.templates.base import DataSplits, Template

_SEED = 20240607
_TEST_FRACTION = 0.2


def _prepare_digits(data_dir: str) -> DataSplits:
    """Write a stratified, seeded 80/20 split of the digits to Parquet, once, under ``data_dir``
    (a local folder or any ``pyarrow.fs`` URI: shared storage on a multi-node cluster)."""
    splits = DataSplits(train=join_uri(data_dir, "digits", "train.parquet"),
                        test=join_uri(data_dir, "digits", "test.parquet"))
    if all(uri_exists(uri) for uri in (splits.train, splits.test)):
        return splits
    import pyarrow as pa
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)  # (1797, 64), values 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_TEST_FRACTION, random_state=_SEED, stratify=y
    )
    for uri, xs, ys in ((splits.train, x_train, y_train), (splits.test, x_test, y_test)):
        pixels = pa.FixedSizeListArray.from_arrays(pa.array(xs.reshape(-1), pa.float32()), 64)
        write_parquet_atomic(pa.table({"pixels": pixels, "label": pa.array(ys)}), uri)
    return splits


def _features(batch: dict[str, np.ndarray]) -> np.ndarray:
    pixels = np.stack(batch["pixels"]) if batch["pixels"].dtype == object else batch["pixels"]
    return pixels.reshape(-1, 8, 8).astype(np.float32, copy=False)


def build_digits_cnn():
    import keras
    from keras import layers

    inputs = keras.Input(shape=(8, 8), name="pixels")
    x = layers.Rescaling(1.0 / 16.0, name="scale_0_16")(inputs)
    x = layers.Reshape((8, 8, 1), name="add_channel")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="dense")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


DIGITS = Template(
    name="digits",
    description="Handwritten digits (scikit-learn load_digits, real data): 8x8 pixels in 0..16 -> 10 classes.",
    task="classification",
    input=TensorSpec(name="pixels", dtype="float32", shape=(-1, 8, 8)),
    output_name="probabilities",
    class_names=tuple(str(i) for i in range(10)),
    label_column="label",
    build_model=build_digits_cnn,
    prepare_data=_prepare_digits,
    features=_features,
    default_epochs=12,
    default_batch_size=32,
    default_learning_rate=2e-3,
)
