"""The benchmarked models: the SavedModels this project's templates export, built once per run.

    mlp   tabular_mlp over 784 features (MNIST-style), 10 classes
    cnn   image_cnn on 128x128x3 images, 10 classes
    lstm  sports_sequence on 100 steps x 6 channels (speed, heart rate... series), 4 classes

Weights are untrained: speed does not depend on them, and every contender serves the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.signature import Signature
from maas.templates import DataInfo, DataSplits, FeatureStats, get_template


@dataclass(frozen=True)
class BenchModel:
    name: str  # the model's name in the registry and in every contender's URL
    template: str
    item_shape: tuple[int, ...]
    num_classes: int

    @property
    def input_name(self) -> str:
        return get_template(self.template).input_name

    @property
    def output_name(self) -> str:
        return get_template(self.template).output_name

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` instances of the model's input in its dtype (uint8 pixels 0-255 for the CNN)."""
        rng = np.random.default_rng(seed)
        dtype = np.dtype(get_template(self.template).input_dtype)
        if dtype.kind == "u":
            return rng.integers(0, 256, (n, *self.item_shape)).astype(dtype)
        return rng.random((n, *self.item_shape)).astype(dtype)


MODELS: dict[str, BenchModel] = {
    "mlp": BenchModel("bench_mlp", "tabular_mlp", (784,), 10),
    "cnn": BenchModel("bench_cnn", "image_cnn", (128, 128, 3), 10),
    "lstm": BenchModel("bench_lstm", "sports_sequence", (100, 6), 4),
}


def publish(model: BenchModel, registry: Registry, work: Path) -> Path:
    """Build the template's model, export it as the training jobs do, publish it as version 1 of
    ``model.name`` (once) and return the SavedModel's local path."""
    import keras

    from maas.training.export import export_saved_model

    if model.name in registry.models():
        return Path(ArtifactCache(registry).local_path(model.name, registry.latest(model.name)))
    template = get_template(model.template)
    channels = model.item_shape[-1]
    info = DataInfo(
        splits=DataSplits("", ""), item_shape=model.item_shape,
        class_names=tuple(str(k) for k in range(model.num_classes)),
        stats=FeatureStats(mean=(0.0,) * channels, std=(1.0,) * channels, count=1),
    )
    keras.utils.set_random_seed(0)
    built = template.build_model(info)
    staging = work / "export" / model.name
    signature: Signature = export_saved_model(built, template, info, str(staging))
    version = registry.publish(model.name, str(staging), {"signature": signature.to_dict(), "template": model.template,
                                                          "purpose": "benchmark"})
    return Path(ArtifactCache(registry).local_path(model.name, version.version))
