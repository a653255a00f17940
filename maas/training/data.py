"""The data side of a training job: find the splits, check them against the template's schema, learn
the classes and the training split's statistics, and hand Ray Data datasets to Ray Train.

Everything here runs on the driver before a training worker starts, so a wrong data set fails in a
second with one line instead of minutes later inside a worker. Statistics are computed with Ray Data
over the training split only (never the test split or a validation fold), then baked into the
model's first layers, so serving applies exactly the transform training saw.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from maas.drift import bin_counts
from maas.errors import ConfigError
from maas.storage import join_uri, resolve_uri
from maas.templates.base import LABEL_COLUMN, DataInfo, DataSplits, FeatureStats, Template

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from maas.training.config import TrainConfig

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff")
_EPSILON = 1e-6


def find_splits(uri: str, template: Template) -> DataSplits:
    """The train and test splits of a user's data set at ``uri`` (any ``pyarrow.fs`` URI):
    ``train.parquet``/``test.parquet`` or ``train.csv``/``test.csv`` (files or folders of files), or
    for image templates ``train/<class>/…`` and ``test/<class>/…``."""
    import pyarrow.fs as pafs

    fs, path = resolve_uri(uri)

    def kind(name: str) -> pafs.FileType:
        return fs.get_file_info(f"{path.rstrip('/')}/{name}").type

    if template.input_dtype == "uint8":  # image templates
        if all(kind(s) == pafs.FileType.Directory for s in ("train", "test")):
            return DataSplits(join_uri(uri, "train"), join_uri(uri, "test"), "images")
        raise ConfigError(f"--data {uri}: the {template.name} template expects image folders "
                          f"train/<class>/ and test/<class>/ there")
    for fmt in ("parquet", "csv"):
        names = (f"train.{fmt}", f"test.{fmt}")
        if all(kind(n) != pafs.FileType.NotFound for n in names):
            return DataSplits(join_uri(uri, names[0]), join_uri(uri, names[1]), fmt)
    raise ConfigError(f"--data {uri}: expected train.parquet and test.parquet (files or folders), "
                      f"or train.csv and test.csv, there")


def check_data(config: TrainConfig) -> DataInfo:
    """Find ``config``'s data set (``--data``, or the template's built-in one) and check it against
    the template's schema, without Ray: what a job does before it connects."""
    from maas.storage import uri_exists
    from maas.templates import get_template

    if config.resume and not uri_exists(join_uri(config.storage_path, config.run_name or "")):
        raise ConfigError(f"--resume {config.run_name}: no run of that name under {config.storage_path}")
    template = get_template(config.template)
    splits = find_splits(config.data, template) if config.data else template.prepare_data(config.data_dir)
    return describe_data(template, splits, with_stats=False)


def describe_data(template: Template, splits: DataSplits, *, with_stats: bool = True) -> DataInfo:
    """Check ``splits`` against ``template``'s schema and learn what building the model needs.

    Raises :class:`ConfigError` with one line naming every mismatch."""
    if splits.format == "images":
        classes = _image_classes(splits, template)
        info = DataInfo(splits=splits, item_shape=tuple(int(d) for d in template.item_shape),  # type: ignore[arg-type]
                        class_names=classes)
    else:
        info = _describe_table(template, splits)
    return add_training_stats(template, info) if with_stats else info


def add_training_stats(template: Template, info: DataInfo, train: ray.data.Dataset | None = None) -> DataInfo:
    """``info`` with the training split's statistics: templates that normalize or regress build them
    into the model, and every version's serving replicas compare the inputs they answer with them
    (:mod:`maas.drift`).

    ``train`` is the training split when the caller has it already (read, or cached in the object
    store); otherwise it is read from ``info.splits``."""
    return replace(info, stats=feature_stats(template, info, read_split(info, "train") if train is None else train))


def _dataset(uri: str, fmt: str) -> Any:
    import pyarrow.dataset as pads

    fs, path = resolve_uri(uri)
    return pads.dataset(path, filesystem=fs, format=fmt)


def _describe_table(template: Template, splits: DataSplits) -> DataInfo:
    import pyarrow.compute as pc

    train, test = _dataset(splits.train, splits.format), _dataset(splits.test, splits.format)
    feature_columns, problems = _check_schema(template, train.schema)
    if not problems:
        _, test_problems = _check_schema(template, test.schema)
        problems += [f"test split: {p}" for p in test_problems]
    if problems:
        raise ConfigError(f"data {splits.train} does not match the {template.name} template: {'; '.join(problems)} "
                          f"(expected {_expected(template)})")
    item_shape = _item_shape(template, train, feature_columns)
    labels = train.to_table(columns=[LABEL_COLUMN]).column(LABEL_COLUMN)
    test_labels = test.to_table(columns=[LABEL_COLUMN]).column(LABEL_COLUMN)
    class_names: tuple[str, ...] = ()
    if template.task == "classification":
        if labels.null_count or test_labels.null_count:
            raise ConfigError(f"data {splits.train}: the label column has missing values")
        low = min(pc.min(labels).as_py(), pc.min(test_labels).as_py())
        if low < 0:
            raise ConfigError(f"data {splits.train}: labels must be class indices 0..K-1, found {low}")
        k = int(pc.max(labels).as_py()) + 1
        if int(pc.max(test_labels).as_py()) >= k:
            raise ConfigError(f"data {splits.test}: the test split has class {pc.max(test_labels).as_py()}, "
                              f"which the training split never shows")
        if k < 2:
            raise ConfigError(f"data {splits.train}: classification needs at least 2 classes, found {k}")
        class_names = template.class_names if len(template.class_names) == k else tuple(str(i) for i in range(k))
    return DataInfo(splits=splits, item_shape=item_shape, class_names=class_names,
                    feature_columns=feature_columns, train_rows=len(labels), test_rows=len(test_labels))


def _is_numeric(t: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _is_numeric_list(t: pa.DataType) -> bool:
    import pyarrow as pa

    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        if _is_numeric(t):
            return True
    return False


def _check_schema(template: Template, schema: pa.Schema) -> tuple[tuple[str, ...], list[str]]:
    """(the feature columns, the problems) of ``schema`` for ``template``."""
    import pyarrow as pa

    problems: list[str] = []
    fields = {f.name: f.type for f in schema}
    if LABEL_COLUMN not in fields:
        problems.append(f"no column '{LABEL_COLUMN}'")
    elif template.task == "classification" and not pa.types.is_integer(fields[LABEL_COLUMN]):
        problems.append(f"column '{LABEL_COLUMN}' is {fields[LABEL_COLUMN]}, expected integer class indices")
    elif template.task == "regression" and not _is_numeric(fields[LABEL_COLUMN]):
        problems.append(f"column '{LABEL_COLUMN}' is {fields[LABEL_COLUMN]}, expected numbers")

    if template.input_name in fields and _is_numeric_list(fields[template.input_name]):
        return (), problems  # one list column holds each example's input
    if template.feature_columns == ("*",):
        columns = tuple(n for n in fields if n != LABEL_COLUMN)
        bad = [f"'{n}' ({fields[n]})" for n in columns if not _is_numeric(fields[n])]
        if bad:
            problems.append(f"every column but '{LABEL_COLUMN}' must be numeric; not so: {', '.join(bad)}")
        if not columns:
            problems.append("no feature columns")
        return columns, problems
    if template.feature_columns:
        for name in template.feature_columns:
            if name not in fields:
                problems.append(f"no column '{name}'")
            elif not _is_numeric(fields[name]):
                problems.append(f"column '{name}' is {fields[name]}, expected numbers")
        return template.feature_columns, problems
    if template.input_name not in fields:
        problems.append(f"no column '{template.input_name}'")
    else:
        problems.append(f"column '{template.input_name}' is {fields[template.input_name]}, expected a list of numbers")
    return (), problems


def _expected(template: Template) -> str:
    label = "integer class index" if template.task == "classification" else "number"
    shape = "x".join("N" if d is None else str(d) for d in template.item_shape)
    if template.feature_columns == ("*",):
        inputs = f"numeric feature columns, or a list column '{template.input_name}'"
    elif template.feature_columns:
        inputs = "numeric columns " + ", ".join(template.feature_columns)
    else:
        inputs = f"a list column '{template.input_name}' of {shape} numbers per row"
    return f"{inputs}, and a column '{LABEL_COLUMN}' ({label})"


def _item_shape(template: Template, train: Any, feature_columns: tuple[str, ...]) -> tuple[int, ...]:
    import pyarrow as pa

    if feature_columns:
        return (len(feature_columns),)
    column_type = train.schema.field(template.input_name).type
    if pa.types.is_fixed_size_list(column_type) and _is_numeric(column_type.value_type):
        length = column_type.list_size
    else:
        first = train.head(1, columns=[template.input_name]).column(0)
        if len(first) == 0:
            raise ConfigError("data: the training split has no rows")
        length = int(np.asarray(first[0].as_py(), dtype=np.float64).size)
    known = int(np.prod([d for d in template.item_shape if d is not None]))
    unknown = sum(d is None for d in template.item_shape)
    if (unknown == 0 and known != length) or (unknown and length % known):
        raise ConfigError(f"data: column '{template.input_name}' holds {length} numbers per row; the "
                          f"{template.name} template expects {_expected(template)}")
    return tuple(length // known if d is None else d for d in template.item_shape)


def _image_classes(splits: DataSplits, template: Template) -> tuple[str, ...]:
    import pyarrow.fs as pafs

    def classes(uri: str) -> list[str]:
        fs, path = resolve_uri(uri)
        entries = fs.get_file_info(pafs.FileSelector(path))
        return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory)

    train, test = classes(splits.train), classes(splits.test)
    if len(train) < 2:
        raise ConfigError(f"data {splits.train}: expected one folder per class (at least 2), found {train}")
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise ConfigError(f"data {splits.test}: classes {unknown} have no training images")
    return tuple(train)


def read_split(info: DataInfo, split: str) -> ray.data.Dataset:
    """A Ray Data dataset of one split (streamed; nothing is read until a consumer pulls)."""
    import ray.data

    uri = getattr(info.splits, split)
    fs, path = resolve_uri(uri)
    if info.splits.format == "parquet":
        return ray.data.read_parquet(path, filesystem=fs)
    if info.splits.format == "csv":
        return ray.data.read_csv(path, filesystem=fs)
    height, width, channels = info.item_shape
    images = ray.data.read_images(path, filesystem=fs, size=(height, width), mode="RGB" if channels == 3 else "L",
                                  include_paths=True, file_extensions=list(IMAGE_EXTENSIONS))
    # Ray types a batch function as taking any batch format, positionally only; this one takes the numpy
    # format (batch_format) and its classes from fn_kwargs.
    return images.map_batches(_label_from_folder,  # type: ignore[arg-type]
                              fn_kwargs={"classes": info.class_names}, batch_format="numpy")


def read_table(info: DataInfo, split: str) -> pa.Table:
    """One split of a Parquet or CSV data set read whole with pyarrow, by the same reader that
    checked its schema (for data small enough to go to the object store in one piece)."""
    return _dataset(getattr(info.splits, split), info.splits.format).to_table()


def _label_from_folder(batch: dict[str, np.ndarray], classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[p.replace("\\", "/").rsplit("/", 2)[-2]] for p in batch["path"]], dtype=np.int64)
    return {"image": batch["image"], LABEL_COLUMN: labels}


def feature_stats(template: Template, info: DataInfo, train: ray.data.Dataset) -> FeatureStats:
    """Per-feature mean and standard deviation (last axis, NaN ignored) of ``train``, and the
    label's for regression: one streaming Ray Data pass of partial sums, combined here; then a second
    pass for the share of each feature's values in the drift bins (:data:`maas.drift.Z_EDGES`, in
    that feature's standard deviations)."""
    parts = train.map_batches(
        _partial_sums,  # type: ignore[arg-type]  # a numpy batch, and the rest from fn_kwargs (see read_split)
        fn_kwargs={"template": template, "info": info}, batch_format="numpy", batch_size=4096
    ).take_all()
    if not parts:
        raise ConfigError(f"data {info.splits.train}: the training split has no rows")
    total = {k: np.sum([p[k] for p in parts], axis=0) for k in parts[0]}
    n = np.maximum(total["n"], 1)
    mean = total["sum"] / n
    std = np.sqrt(np.maximum(total["sumsq"] / n - mean**2, 0.0))
    std = np.where(std < _EPSILON, 1.0, std)  # constant features pass through unscaled
    label_mean = label_std = None
    if template.task == "regression":
        rows = max(float(total["rows"]), 1.0)
        label_mean = float(total["label_sum"] / rows)
        label_std = float(np.sqrt(max(total["label_sumsq"] / rows - label_mean**2, 0.0))) or 1.0
    parts = train.map_batches(
        _bin_counts,  # type: ignore[arg-type]  # as above
        fn_kwargs={"template": template, "info": info, "mean": mean, "std": std}, batch_format="numpy",
        batch_size=4096).take_all()
    counts = np.sum([p["bins"] for p in parts], axis=0)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    return FeatureStats(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                        count=int(total["rows"]), label_mean=label_mean, label_std=label_std,
                        bin_shares=tuple(tuple(float(v) for v in row) for row in shares))


def _bin_counts(batch: dict[str, np.ndarray], template: Template, info: DataInfo, mean: np.ndarray,
                std: np.ndarray) -> dict[str, np.ndarray]:
    x = template.features(batch, info).astype(np.float64)
    return {"bins": bin_counts(x.reshape(-1, x.shape[-1]), mean, std)[None]}


def _partial_sums(batch: dict[str, np.ndarray], template: Template, info: DataInfo) -> dict[str, np.ndarray]:
    x = template.features(batch, info).astype(np.float64)
    flat = x.reshape(-1, x.shape[-1])
    present = ~np.isnan(flat)
    values = np.where(present, flat, 0.0)
    y = np.asarray(batch[LABEL_COLUMN], dtype=np.float64)
    return {
        "n": present.sum(axis=0)[None], "sum": values.sum(axis=0)[None], "sumsq": (values**2).sum(axis=0)[None],
        "rows": np.array([len(x)]), "label_sum": np.array([y.sum()]), "label_sumsq": np.array([(y**2).sum()]),
    }


def majority_class(info: DataInfo) -> int:
    """The most frequent class of the training split (the baseline a model must beat)."""
    import pyarrow.compute as pc

    if info.splits.format == "images":  # one listing: the images in each class folder
        import pyarrow.fs as pafs

        fs, path = resolve_uri(info.splits.train)
        files = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        per_class = Counter(f.path.rsplit("/", 2)[-2] for f in files
                            if f.type == pafs.FileType.File and f.extension.lower() in IMAGE_EXTENSIONS)
        return max(range(len(info.class_names)), key=lambda k: (per_class[info.class_names[k]], -k))
    labels = _dataset(info.splits.train, info.splits.format).to_table(columns=[LABEL_COLUMN]).column(LABEL_COLUMN)
    counts = pc.value_counts(labels).to_pylist()
    return int(max(counts, key=lambda c: (c["counts"], -c["values"]))["values"])


def held_out(template: Template, info: DataInfo) -> tuple[np.ndarray, np.ndarray]:
    """The test split as (raw inputs exactly as clients send them, labels)."""
    return split_arrays(template, info, "test")


def split_arrays(template: Template, info: DataInfo, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split, whole, as (model inputs, labels). Tables are read with pyarrow (no Ray needed);
    image folders with Ray Data's image reader, as training reads them."""
    if info.splits.format == "images":
        batches = read_split(info, split).iter_batches(batch_size=1024, batch_format="numpy")
    else:
        table = read_table(info, split)
        batches = [{name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}]
    xs, ys = [], []
    for batch in batches:
        xs.append(template.features(batch, info))
        ys.append(template.labels(batch))
    return np.concatenate(xs), np.concatenate(ys)


def builtin_held_out(template: Template, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`held_out` of a template's built-in data set (staged under ``data_dir`` if need be)."""
    return held_out(template, describe_data(template, template.prepare_data(data_dir), with_stats=False))
