"""``digits``: a small CNN on scikit-learn's real handwritten digits (1,797 images, 8x8, 10 classes).

The data ships inside scikit-learn's wheel (no download). Clients send raw pixels as scikit-learn
returns them (``load_digits().images``: 8x8 values in 0..16); scaling happens inside the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from maas.templates.base import DataInfo, DataSplits, HyperParameter, Hyperparameters, Template, dropout
from maas.templates.sources import list_column, stage_tables

if TYPE_CHECKING:
    import keras
    import pyarrow as pa

_SEED = 20240607
_TEST_FRACTION = 0.2


def _prepare_digits(data_dir: str) -> DataSplits:
    """A stratified, seeded 80/20 split of the digits as Parquet, staged once under ``data_dir``
    (a local folder or any ``pyarrow.fs`` URI: shared storage on a multi-node cluster)."""

    def make() -> tuple[pa.Table, pa.Table]:
        import pyarrow as pa
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = digits.data.astype(np.float32)  # (1797, 64), values 0..16
        y = digits.target.astype(np.int64)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=_TEST_FRACTION, random_state=_SEED, stratify=y
        )
        return tuple(pa.table({"pixels": list_column(xs), "label": pa.array(ys)})
                     for xs, ys in ((x_train, y_train), (x_test, y_test)))

    return stage_tables(data_dir, "digits", make)


def build_digits_cnn(info: DataInfo, hp: Hyperparameters) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input(shape=info.item_shape, name="pixels")
    x = layers.Rescaling(1.0 / 16.0, name="scale_0_16")(inputs)
    x = layers.Reshape((*info.item_shape, 1), name="add_channel")(x)
    filters = int(hp["filters"])
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(hp["width"]), activation="relu", name="dense")(x)
    x = layers.Dropout(hp["dropout"], name="dropout")(x)
    outputs = layers.Dense(info.num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


DIGITS = Template(
    name="digits",
    description="Handwritten digits (scikit-learn load_digits, real data): 8x8 pixels in 0..16 -> 10 classes.",
    task="classification",
    input_name="pixels",
    input_dtype="float32",
    item_shape=(8, 8),
    output_name="probabilities",
    class_names=tuple(str(i) for i in range(10)),
    builder=build_digits_cnn,
    prepare_data=_prepare_digits,
    data_source="scikit-learn load_digits (1,797 real handwritten digits, BSD-3), stratified 80/20 split",
    default_epochs=12,
    default_batch_size=32,
    default_learning_rate=2e-3,
    search_space=(HyperParameter("filters", 32, choices=(16, 32, 48), help="filters per conv layer"),
                  HyperParameter("width", 64, choices=(32, 64, 128), help="units of the dense layer"), dropout(0.2)),
)
