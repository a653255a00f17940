"""What every template provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from maas.signature import TensorSpec

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class DataSplits:
    """Where a template's data lives: Parquet (or other Ray Data readable) URIs for each split."""

    train: str
    test: str


@dataclass(frozen=True)
class Template:
    """A trainable use case.

    ``build_model`` returns an uncompiled Keras model whose first layers hold the preprocessing, so
    that the exported SavedModel takes raw inputs exactly as clients send them.
    """

    name: str
    description: str
    task: Literal["classification", "regression"]
    input: TensorSpec
    output_name: str
    class_names: tuple[str, ...]
    label_column: str
    build_model: Callable[[], "keras.Model"]
    prepare_data: Callable[[str], DataSplits]
    features: Callable[[dict[str, np.ndarray]], np.ndarray]
    default_epochs: int = 10
    default_batch_size: int = 32
    default_learning_rate: float = 1e-3

    def held_out(self, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
        """The held-out test split as (raw inputs exactly as clients send them, labels)."""
        import pyarrow.parquet as pq

        from maas.storage import resolve_uri

        fs, path = resolve_uri(self.prepare_data(data_dir).test)
        table = pq.read_table(path, filesystem=fs)
        batch = {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}
        return self.features(batch), batch[self.label_column]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "description": self.description,
            "input": self.input.to_dict(),
            "classes": list(self.class_names),
        }
