"""What every template provides, and what the driver learns from the data before training."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from maas.signature import TensorSpec

if TYPE_CHECKING:
    import keras

Task = Literal["classification", "regression"]
DataFormat = Literal["parquet", "csv", "images"]
LABEL_COLUMN = "label"
Hyperparameters = Mapping[str, float]  # a template's model settings by name: width, depth, dropout...


@dataclass(frozen=True)
class HyperParameter:
    """One dimension of a template's search space (``--tune``): a range (``low``..``high``, on a log
    scale with ``log``) or ``choices``; ``default`` is the value a run that does not tune uses."""

    name: str
    default: float
    low: float = 0.0
    high: float = 0.0
    choices: tuple[float, ...] = ()
    log: bool = False
    help: str = ""

    def domain(self) -> Any:
        """The Ray Tune search domain."""
        from ray import tune

        if self.choices:
            return tune.choice(list(self.choices))
        return (tune.loguniform if self.log else tune.uniform)(self.low, self.high)

    def describe(self) -> str:
        """``width in {32, 64, 128} (default 64): units of the dense layer`` (for ``--help``)."""
        space = ("{" + ", ".join(f"{c:g}" for c in self.choices) + "}" if self.choices
                 else f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else ""))
        return f"{self.name} in {space} (default {self.default:g})" + (f": {self.help}" if self.help else "")

    def check(self, value: float) -> float:
        ok = value in self.choices if self.choices else self.low <= value <= self.high
        if not ok or isinstance(value, bool):
            raise ValueError(f"{self.name} must be in {self.describe().split(' (')[0].split(' in ', 1)[1]}. "
                             f"Received: {value!r}")
        return value


def learning_rate(default: float) -> HyperParameter:
    """Every template's learning-rate dimension: a decade and a half around its default."""
    return HyperParameter("learning_rate", default, default / 10, default * 5, log=True, help="Adam's step size")


def dropout(default: float) -> HyperParameter:
    return HyperParameter("dropout", default, 0.0, 0.5, help="dropout rate before the head")


@dataclass(frozen=True)
class DataSplits:
    """Where a data set lives: a URI per split (a file or a folder of files; for ``images`` a folder
    with one sub-folder per class) and the format Ray Data reads it with."""

    train: str
    test: str
    format: DataFormat = "parquet"


@dataclass(frozen=True)
class FeatureStats:
    """Cleaning and normalization statistics of the training split only (NaN ignored).

    ``mean`` and ``std`` are per feature along the input's last axis (features, channels); missing
    values are filled with ``mean``. ``label_mean``/``label_std`` scale regression targets."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int
    label_mean: float | None = None
    label_std: float | None = None
    bin_shares: tuple[tuple[float, ...], ...] | None = None  # per feature, its share in each drift bin (maas.drift)


@dataclass(frozen=True)
class DataInfo:
    """What the driver learned from the data before training; every worker builds the model from it
    and it is recorded in the published version's metadata."""

    splits: DataSplits
    item_shape: tuple[int, ...]  # one example's input shape
    class_names: tuple[str, ...]  # () for regression
    feature_columns: tuple[str, ...] = ()  # flat tabular data: the columns that form the input, in order
    stats: FeatureStats | None = None
    train_rows: int = 0
    test_rows: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInfo:
        stats = data.get("stats")
        return cls(
            splits=DataSplits(**data["splits"]),
            item_shape=tuple(data["item_shape"]),
            class_names=tuple(data["class_names"]),
            feature_columns=tuple(data.get("feature_columns", ())),
            stats=None if stats is None else FeatureStats(**{
                **stats, "mean": tuple(stats["mean"]), "std": tuple(stats["std"]),
                "bin_shares": None if stats.get("bin_shares") is None else tuple(map(tuple, stats["bin_shares"]))}),
            train_rows=data.get("train_rows", 0),
            test_rows=data.get("test_rows", 0),
        )


# A template's model builder: the data info and every hyperparameter of its search space -> an uncompiled model.
Builder = Callable[[DataInfo, Hyperparameters], "keras.Model"]


@dataclass(frozen=True)
class Template:
    """A trainable use case.

    ``build_model(info, hyperparameters)`` returns an uncompiled Keras model whose first layers hold the
    preprocessing (missing-value filling and normalization with the training split's statistics,
    pixel scaling), so that the exported SavedModel takes raw inputs exactly as clients send them.

    Data schema: the input is the column ``input_name`` (a list column, reshaped to ``item_shape``;
    for ``images`` the decoded image) or, when ``feature_columns`` is set, those numeric columns in
    order (``("*",)``: every numeric column but the label). The label is the ``label`` column: class
    indices 0..K-1 for classification, numbers for regression; for images, the class folder.
    """

    name: str
    description: str
    task: Task
    input_name: str
    input_dtype: str
    item_shape: tuple[int | None, ...]  # None: taken from the data
    output_name: str
    builder: Builder
    prepare_data: Callable[[str], DataSplits]
    class_names: tuple[str, ...] = ()  # the built-in data set's; () for regression or from the data
    feature_columns: tuple[str, ...] = ()
    normalize: bool = False
    data_source: str = ""  # where the built-in data comes from (real data set, or the generator)
    default_epochs: int = 10
    default_batch_size: int = 32
    default_learning_rate: float = 1e-3
    # The builder's own settings (width, depth, dropout...): what ``--tune`` searches with the learning rate.
    search_space: tuple[HyperParameter, ...] = ()

    @property
    def tuning_space(self) -> tuple[HyperParameter, ...]:
        """What ``--tune`` searches: the learning rate around the template's default, then the builder's."""
        return (learning_rate(self.default_learning_rate), *self.search_space)

    def build_model(self, info: DataInfo, hyperparameters: Hyperparameters | None = None) -> keras.Model:
        """The model with ``hyperparameters`` (a subset of :attr:`search_space`; the rest their defaults)."""
        return self.builder(info, self.hyperparameters(hyperparameters))

    def hyperparameters(self, given: Hyperparameters | None = None) -> dict[str, float]:
        """Every builder setting of the search space, ``given`` ones checked, the others at their
        defaults."""
        from maas.errors import ConfigError

        space = {hp.name: hp for hp in self.search_space}
        unknown = sorted(set(given or {}) - set(space))
        if unknown:
            raise ConfigError(f"template {self.name} has no hyperparameter {', '.join(unknown)} "
                              f"(it has {', '.join(sorted(space)) or 'none'})")
        try:
            return {name: hp.check((given or {}).get(name, hp.default)) for name, hp in space.items()}
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def input_spec(self, info: DataInfo) -> TensorSpec:
        return TensorSpec(name=self.input_name, dtype=self.input_dtype, shape=(-1, *info.item_shape))

    def features(self, batch: dict[str, np.ndarray], info: DataInfo) -> np.ndarray:
        """The model input for a batch of rows as Ray Data (or Parquet) hands them over."""
        if info.feature_columns:
            x = np.column_stack([np.asarray(batch[c], dtype=np.float64) for c in info.feature_columns])
        else:
            column = batch[self.input_name]
            x = np.stack(list(column)) if column.dtype == object else np.asarray(column)
        return x.reshape(-1, *info.item_shape).astype(self.input_dtype, copy=False)

    def labels(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        y = np.asarray(batch[LABEL_COLUMN])
        return y.astype(np.int64 if self.task == "classification" else np.float32, copy=False)
