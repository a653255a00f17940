"""``image_cnn``: a CNN over a class-per-folder image directory (the source documents'
``flow_from_directory`` layout), read with Ray Data's image reader and resized to 128x128x3.

The built-in images are real: Animal-MNIST silhouettes (``animal-mnist`` 0.4 wheel, MIT; 10 classes,
28x28 grayscale), a seeded, stratified subset of 100 training and 30 test images per class, written
as PNG folders ``train/animal_<k>/`` and ``test/animal_<k>/`` (the package does not document which
index is which animal, so the folders keep its indices). Bring your own with ``--data``: any folder
of ``train/<class>/*.png|jpg`` and ``test/<class>/…``; the classes are the folder names.
"""

from __future__ import annotations

import gzip
import pickle
from typing import TYPE_CHECKING

import numpy as np

from maas.templates.base import DataInfo, DataSplits, HyperParameter, Hyperparameters, Template, dropout
from maas.templates.sources import ANIMAL_MNIST, package_file, stage_images

if TYPE_CHECKING:
    import keras

IMAGE_SIZE = 128
_SEED = 20240614
_DATA = "data/Animal_MNIST/animal_{}_version_3.gz"


def read_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """``(images (10000, 28, 28) uint8, labels (10000,))`` from the package's gzipped NumPy pickles."""
    with gzip.open(package_file(ANIMAL_MNIST, _DATA.format("data"))) as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)  # a pinned package's own data file
    with gzip.open(package_file(ANIMAL_MNIST, _DATA.format("label"))) as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    return images, labels


def _prepare_images(data_dir: str, per_class: tuple[int, int] = (100, 30)) -> DataSplits:
    def make() -> dict[str, list[tuple[str, np.ndarray]]]:
        images, labels = read_animal_mnist()
        rng = np.random.default_rng(_SEED)
        out: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
        for k in np.unique(labels):
            chosen = rng.permutation(np.flatnonzero(labels == k))[: sum(per_class)]
            out["train"] += [(f"animal_{k}", images[i]) for i in chosen[: per_class[0]]]
            out["test"] += [(f"animal_{k}", images[i]) for i in chosen[per_class[0]:]]
        return out

    return stage_images(data_dir, "image_cnn", make)


def build_image_cnn(info: DataInfo, hp: Hyperparameters) -> keras.Model:
    import keras
    from keras import layers

    from maas.templates.layers import head

    inputs = keras.Input(shape=info.item_shape, name="image", dtype="uint8")
    x = layers.Rescaling(1.0 / 255.0, name="scale_0_255")(inputs)
    for i, filters in enumerate((16, 32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv4")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(int(hp["width"]), activation="relu", name="dense")(x)
    x = layers.Dropout(hp["dropout"], name="dropout")(x)
    return keras.Model(inputs, head(x, info, "classification", "probabilities"), name="image_cnn")


IMAGE_CNN = Template(
    name="image_cnn",
    description="Image classification CNN over a class-per-folder directory, resized to 128x128x3 "
                "(real Animal-MNIST silhouettes by default, 10 classes).",
    task="classification",
    input_name="image",
    input_dtype="uint8",
    item_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
    output_name="probabilities",
    class_names=tuple(f"animal_{k}" for k in range(10)),
    builder=build_image_cnn,
    prepare_data=_prepare_images,
    data_source="Animal-MNIST (animal-mnist 0.4 wheel, MIT): 100 train + 30 test silhouettes per class, seed 20240614",
    default_epochs=12,
    default_batch_size=32,
    default_learning_rate=2e-3,
    search_space=(HyperParameter("width", 64, choices=(32, 64, 128), help="units of the dense layer"),
                  dropout(0.2)),
)
