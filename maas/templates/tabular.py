"""``tabular_mlp``: a dense classifier over N numeric features (the source documents' 1000-feature,
10-class example; MNIST-style 784 inputs work the same).

No real 1000-feature data set ships offline, so the built-in data is *generated*: scikit-learn's
``make_classification`` (seed 20240611; 3,000 rows, 1,000 features of which 40 informative, 10
classes, 2 clusters per class), with 1% of the values blanked (NaN) to exercise cleaning. Bring real
data with ``--data``: Parquet or CSV with a ``label`` column (0..K-1) and either numeric feature
columns or one list column ``features``. Missing values are filled with the training split's means
and every feature is standardized with its statistics, inside the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from maas.templates.base import DataInfo, DataSplits, HyperParameter, Hyperparameters, Template, dropout
from maas.templates.sources import list_column, stage_tables

if TYPE_CHECKING:
    import keras
    import pyarrow as pa

_SEED = 20240611


def _prepare_tabular(data_dir: str) -> DataSplits:
    def make() -> tuple[pa.Table, pa.Table]:
        import pyarrow as pa
        from sklearn.datasets import make_classification
        from sklearn.model_selection import train_test_split

        x, y = make_classification(n_samples=3000, n_features=1000, n_informative=40, n_redundant=20,
                                   n_classes=10, n_clusters_per_class=2, class_sep=1.5, random_state=_SEED)
        x = x.astype(np.float32)
        x[np.random.default_rng(_SEED).random(x.shape) < 0.01] = np.nan
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=_SEED, stratify=y)
        return tuple(pa.table({"features": list_column(xs), "label": pa.array(ys.astype(np.int64))})
                     for xs, ys in ((x_train, y_train), (x_test, y_test)))

    return stage_tables(data_dir, "tabular_mlp", make)


def build_tabular_mlp(info: DataInfo, hp: Hyperparameters) -> keras.Model:
    import keras
    from keras import layers

    from maas.templates.layers import clean_and_normalize, head

    inputs = keras.Input(shape=info.item_shape, name="features")
    x = clean_and_normalize(inputs, info)
    x = layers.Dense(int(hp["width"]), activation="relu", name="dense1")(x)
    x = layers.Dropout(hp["dropout"], name="dropout1")(x)
    x = layers.Dense(int(hp["width"]) // 2, activation="relu", name="dense2")(x)
    x = layers.Dropout(hp["dropout"], name="dropout2")(x)
    return keras.Model(inputs, head(x, info, "classification", "probabilities"), name="tabular_mlp")


TABULAR_MLP = Template(
    name="tabular_mlp",
    description="Dense classifier over N numeric features (generated 1000-feature, 10-class data by default).",
    task="classification",
    input_name="features",
    input_dtype="float32",
    item_shape=(None,),
    output_name="probabilities",
    class_names=tuple(str(i) for i in range(10)),
    feature_columns=("*",),
    normalize=True,
    builder=build_tabular_mlp,
    search_space=(HyperParameter("width", 256, choices=(128, 256, 512), help="units of the first dense layer "
                                 "(the second has half)"), dropout(0.3)),
    prepare_data=_prepare_tabular,
    data_source="generated: sklearn make_classification, seed 20240611, 3,000 x 1,000, 10 classes, 1% NaN",
    default_epochs=15,
    default_batch_size=64,
    default_learning_rate=1e-3,
)
