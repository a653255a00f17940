"""Batch inference: score a whole data set with a registry version on a pool of Ray Data actors and
write the predictions as Parquet.

    report = predict_dataset("digits", "s3://bucket/digits.parquet", "s3://bucket/scores/")

Why it is built this way:

- Everything that can be wrong with the data is found on the driver before Ray runs anything: the
  files are listed, the Parquet footers (or the first CSV block, or the first image's header) are read
  and checked against the version's signature and, for a version trained from a template, the
  columns its metadata says training used. A missing column or an image of the wrong size fails in
  one line in a second, not minutes later inside an actor.
- Rows become the model input the way training made them (:meth:`Template.features`: the recorded
  feature columns stacked in order, or one list column reshaped to the item shape; images resized
  like Ray Data's image reader did for training); normalization and the rest live inside the
  SavedModel, as for serving.
- Each actor loads the version once (:func:`maas.serving.runtime.load_saved_model`, which also
  applies the graph policy serving applies) and scores batch after batch.
- Every output row carries an identifier: the input's own ``id`` column, else for tables the row's
  position in the input (files in name order). Ray Data's Parquet reader can add the file's path to a
  row, not its position in the file, so tables are read by a small :class:`ray.data.Datasource` of our
  own: positions come from the Parquet footers' row counts per row group (for CSV, from counting the
  rows of every file but the last), and each read task numbers the rows it yields. Image folders keep
  Ray Data's own reader, whose ``include_paths`` gives each image's path: the identifier is that path
  relative to ``--data``.

Ray and TensorFlow are imported only where they are used.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from maas import settings
from maas.errors import ConfigError, InvalidInput, MaasError
from maas.records import VersionMetadata
from maas.signature import Signature, TensorSpec
from maas.storage import resolve_uri
from maas.training.data import IMAGE_EXTENSIONS  # the image files training reads

if TYPE_CHECKING:
    import pyarrow.csv as pacsv
    import ray.data
    from ray.data import ReadTask

    from maas.registry import ModelVersion
    from maas.training.resources import NodeFree

DataFormat = Literal["parquet", "csv", "images"]
ID_COLUMN = "id"  # an input column of this name identifies each row in the output
ROW_COLUMN = "row"  # otherwise, for tables: the row's position in the input
PATH_COLUMN = "path"  # for image folders: the image's path relative to --data
CLASS_COLUMN = "class"  # classification: the top class's index
CLASS_NAME_COLUMN = "class_name"  # ... and its name, when the version's metadata lists class names
DEFAULT_BATCH_SIZE: dict[DataFormat, int] = {"parquet": 1024, "csv": 1024, "images": 64}
_MIN_ROWS_PER_FILE = 100_000  # the predictions are small: fewer, larger output files
_TALLY_WAIT_S = 10.0


# ---- the request (pure) --------------------------------------------------------------------------

_CONCURRENCY = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)


def parse_concurrency(text: str) -> tuple[int, int]:
    """``--concurrency``: ``N`` actors, or ``MIN-MAX`` for a pool Ray Data grows and shrinks."""
    found = _CONCURRENCY.fullmatch(text.strip())
    if found is None:
        raise ConfigError(f"concurrency must be N or MIN-MAX (for example 4 or 1-4). Received: {text!r}")
    low = int(found.group(1))
    high = int(found.group(2) or low)
    if not 1 <= low <= high:
        raise ConfigError(f"concurrency needs 1 <= MIN <= MAX. Received: {text!r}")
    return low, high


@dataclass(frozen=True)
class BatchRequest:
    """One batch job, validated once here. ``concurrency`` ``None``: as many actors as fit now;
    ``batch_size`` ``None``: :data:`DEFAULT_BATCH_SIZE` for the data's format."""

    model: str
    data: str
    out: str
    version: int | None = None
    label: str | None = None
    registry: str = field(default_factory=settings.default_registry_uri)
    use_gpu: bool = False
    concurrency: tuple[int, int] | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.label is not None:
            raise ConfigError(f"give --version or --label, not both. Received: {self.version}, {self.label!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1. Received: {self.batch_size}")
        if self.concurrency is not None and not 1 <= self.concurrency[0] <= self.concurrency[1]:
            raise ConfigError(f"concurrency needs 1 <= MIN <= MAX. Received: {self.concurrency}")
        for name in ("data", "out", "registry"):  # the driver's view of a local path, for every node
            value = getattr(self, name)
            if not value:
                raise ConfigError(f"{name} must be a path or URI. Received: {value!r}")
            object.__setattr__(self, name, _absolute(value))


def _absolute(uri: str) -> str:
    from pathlib import Path

    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


# ---- the data set: its files and schema (no Ray) -------------------------------------------------


@dataclass(frozen=True)
class DataFiles:
    """``--data`` as found: its format and its files in name order (paths on ``fs``)."""

    uri: str
    root: str  # --data's own path on its file system: image paths are given relative to it
    format: DataFormat
    files: tuple[str, ...]


def data_format(names: Sequence[str], uri: str) -> DataFormat:
    """The one format among a folder's file names (hidden files and others ignored)."""
    kinds = {kind for kind in map(_file_kind, names) if kind is not None}
    if not kinds:
        raise InvalidInput(f"data {uri} is not a data set: no Parquet, CSV or image files there")
    if len(kinds) > 1:
        raise InvalidInput(f"data {uri} mixes {' and '.join(sorted(kinds))} files: point --data at one data set")
    return kinds.pop()


def _file_kind(name: str) -> DataFormat | None:
    base = name.rsplit("/", 1)[-1]
    if base.startswith((".", "_")):  # _SUCCESS, .crc, editors' files
        return None
    ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if ext == "parquet":
        return "parquet"
    if ext == "csv":
        return "csv"
    return "images" if ext in IMAGE_EXTENSIONS else None


def find_data(uri: str) -> tuple[pafs.FileSystem, DataFiles]:
    """List ``uri`` (a file, or a folder searched recursively) once; raises one line when it is not
    a data set."""
    fs, root = resolve_uri(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InvalidInput(f"data {uri} does not exist")
    if info.type == pafs.FileType.File:
        fmt = data_format([root], uri)
        if fmt == "images":
            raise InvalidInput(f"data {uri}: give the folder of images, not one image")
        return fs, DataFiles(uri, root.rsplit("/", 1)[0], fmt, (root,))
    listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    names = sorted(i.path for i in listed if i.type == pafs.FileType.File
                   and not any(part.startswith((".", "_")) for part in i.path[len(root):].split("/")))
    fmt = data_format(names, uri)
    return fs, DataFiles(uri, root, fmt, tuple(n for n in names if _file_kind(n) == fmt))


# ---- what the version's metadata says about its input (pure) --------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How rows became this version's input in training, as its metadata records it; empty for a
    version published from a SavedModel alone (then the signature's input names are the columns)."""

    template: str | None = None
    task: str | None = None
    classes: tuple[str, ...] = ()
    feature_columns: tuple[str, ...] = ()
    data_format: str | None = None  # "images": trained from an image folder, images resized to the input

    @classmethod
    def from_metadata(cls, metadata: VersionMetadata) -> Recipe:
        from maas.templates import TEMPLATES

        known = TEMPLATES.get(metadata.template) if metadata.template else None
        preprocessing, data = metadata.preprocessing, metadata.data
        return cls(
            template=metadata.template,
            task=metadata.task or (known.task if known else None),
            classes=tuple(metadata.classes or ()),
            feature_columns=tuple((preprocessing.feature_columns if preprocessing else None) or ()),
            data_format=data.format if data else None,
        )


@dataclass(frozen=True)
class ModelInput:
    """One input of the model and the columns that form it: several numeric columns stacked in
    order (a template's feature columns), or one numeric or list column reshaped to ``item_shape``."""

    name: str
    dtype: str
    item_shape: tuple[int, ...]
    columns: tuple[str, ...]
    stacked: bool = False


@dataclass(frozen=True)
class ImageInput:
    """The model's one image input: Ray Data's reader decodes to ``mode`` and, for a version trained
    from an image folder, resizes to ``size`` (height, width) as it did for training."""

    name: str
    dtype: str
    item_shape: tuple[int, ...]
    size: tuple[int, int]
    mode: str
    resize: bool


@dataclass(frozen=True)
class OutputPlan:
    """The output columns: the identifier, each signature output, and for a classifier the top class
    (and its name)."""

    id_column: str
    outputs: tuple[str, ...]
    classify: str | None = None  # the output whose argmax is the top class
    class_names: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        extra = (CLASS_COLUMN,) if self.classify else ()
        return (self.id_column, *self.outputs, *extra, *((CLASS_NAME_COLUMN,) if self.class_names else ()))


def shape_text(item_shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in item_shape) or "1"


def _is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _list_levels(t: pa.DataType) -> tuple[list[pa.DataType], pa.DataType]:
    """The list types from the outside in, and the type of the values inside them."""
    levels = []
    while _is_list(t):
        levels.append(t)
        t = t.value_type
    return levels, t


def level_lengths(item_shape: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """The length each of ``depth`` nested list levels must have to hold one ``item_shape`` item:
    the outer levels one dimension each, the innermost the rest (``(8, 8)`` in one level: 64)."""
    return (*item_shape[: depth - 1], math.prod(item_shape[depth - 1:]))


def column_problem(name: str, t: pa.DataType | None, spec: TensorSpec) -> str | None:
    """Why column ``name`` (of type ``t``; None: absent) cannot form input ``spec``, or None."""
    if t is None:
        return f"no column '{name}'"
    expected = f"{shape_text(spec.item_shape)} numbers per row"
    if spec.item_shape in ((), (1,)) and _is_numeric(t):
        return None
    levels, leaf = _list_levels(t)
    if not levels or not _is_numeric(leaf) or len(levels) > max(len(spec.item_shape), 1):
        return f"column '{name}' is {t}, expected a list of {expected}"
    for level, length in zip(levels, level_lengths(spec.item_shape, len(levels)), strict=True):
        if pa.types.is_fixed_size_list(level) and level.list_size != length:
            return f"column '{name}' holds {level.list_size} numbers per row, expected {expected}"
    return None


def plan_table_inputs(signature: Signature, recipe: Recipe, schema: pa.Schema) -> tuple[ModelInput, ...]:
    """Check ``schema`` against the version; return how to form each input. Raises
    :class:`InvalidInput` naming every problem, and what the model takes."""
    types = {f.name: f.type for f in schema}
    problems = [f"input '{s.name}' has a free dimension {list(s.shape)}: batch prediction needs a fixed "
                "item shape" for s in signature.inputs if -1 in s.item_shape]
    if recipe.feature_columns and len(signature.inputs) == 1:
        spec = signature.inputs[0]
        columns = recipe.feature_columns
        if spec.item_shape != (len(columns),):
            problems.append(f"the metadata lists {len(columns)} feature columns for input '{spec.name}' of "
                            f"shape {list(spec.shape)}")
        for name in columns:
            if name not in types:
                problems.append(f"no column '{name}'")
            elif not _is_numeric(types[name]):
                problems.append(f"column '{name}' is {types[name]}, expected numbers")
        plan: tuple[ModelInput, ...] = (ModelInput(spec.name, spec.dtype, spec.item_shape, columns, stacked=True),)
        expected = "numeric columns " + ", ".join(columns)
    else:
        problems += [p for s in signature.inputs if (p := column_problem(s.name, types.get(s.name), s))]
        plan = tuple(ModelInput(s.name, s.dtype, s.item_shape, (s.name,)) for s in signature.inputs)
        expected = "; ".join(f"a column '{s.name}' of {shape_text(s.item_shape)} numbers per row"
                             for s in signature.inputs)
    if problems:
        raise InvalidInput(f"{'; '.join(dict.fromkeys(problems))} (the model takes {expected})")
    return plan


_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def plan_image_input(signature: Signature, recipe: Recipe, first: tuple[str, int, int]) -> ImageInput:
    """The model's image input, checked against the first image (``(name, width, height)``): a
    version trained from an image folder gets every image resized as training resized them; any
    other version takes images of exactly its input's size."""
    if len(signature.inputs) != 1:
        raise InvalidInput(f"an image folder feeds one input; the model takes {[s.name for s in signature.inputs]}")
    spec = signature.inputs[0]
    shape = spec.item_shape
    channels = shape[2] if len(shape) == 3 else 1
    if len(shape) not in (2, 3) or channels not in _MODES or -1 in shape[:2]:
        raise InvalidInput(f"input '{spec.name}' of shape {list(spec.shape)} is not an image: expected "
                           "[-1, H, W] or [-1, H, W, C] with C 1, 3 or 4")
    height, width = shape[0], shape[1]
    resize = recipe.data_format == "images"
    name, got_width, got_height = first
    if not resize and (got_width, got_height) != (width, height):
        raise InvalidInput(f"image {name} is {got_width}x{got_height}; the model takes {width}x{height} images "
                           f"(input '{spec.name}' {list(spec.shape)}; it was not trained from an image folder, "
                           "so images are not resized)")
    return ImageInput(spec.name, spec.dtype, shape, (height, width), _MODES[channels], resize)


def plan_outputs(signature: Signature, recipe: Recipe, id_column: str) -> OutputPlan:
    """The output columns; raises if two would share a name."""
    names = tuple(s.name for s in signature.outputs)
    classify = None
    class_names: tuple[str, ...] = ()
    if recipe.task == "classification" and len(signature.outputs) == 1 and len(signature.outputs[0].shape) == 2:
        classify = names[0]
        k = signature.outputs[0].shape[1]
        class_names = recipe.classes if recipe.classes and k in (-1, len(recipe.classes)) else ()
    plan = OutputPlan(id_column, names, classify, class_names)
    clash = sorted({c for c in plan.columns if plan.columns.count(c) > 1})
    if clash:
        raise InvalidInput(f"output column names clash: {clash} (outputs {list(names)}, identifier '{id_column}')")
    return plan


# ---- row identifiers (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReadUnit:
    """A piece of one input file that one read task reads: some Parquet row groups, or a whole CSV
    file. ``start_row`` is the position of its first row in the whole input."""

    path: str
    start_row: int
    rows: int | None  # None: unknown until read (CSV)
    row_groups: tuple[int, ...] | None = None


def row_offsets(counts: Sequence[int]) -> list[int]:
    """The position of each file's first row, files in order: ``[3, 5, 2] -> [0, 3, 8]``."""
    return [int(x) for x in np.concatenate([[0], np.cumsum(counts[:-1], dtype=np.int64)])] if counts else []


def parquet_units(path: str, start_row: int, row_group_rows: Sequence[int]) -> list[ReadUnit]:
    """One unit per non-empty row group of one Parquet file whose first row is ``start_row``."""
    starts = row_offsets(row_group_rows)
    return [ReadUnit(path, start_row + s, n, (g,))
            for g, (s, n) in enumerate(zip(starts, row_group_rows, strict=True)) if n]


def group_units(units: Sequence[ReadUnit], tasks: int) -> list[list[ReadUnit]]:
    """``units`` in order, cut into at most ``tasks`` contiguous groups of about equal rows (a unit
    of unknown size counts as one average unit)."""
    if not units:
        return []
    known = [u.rows for u in units if u.rows is not None]
    average = (sum(known) / len(known)) if known else 1.0
    weights = np.array([u.rows if u.rows is not None else average for u in units], dtype=np.float64)
    edges = np.cumsum(weights) / max(weights.sum(), 1e-9) * max(1, min(tasks, len(units)))
    groups: dict[int, list[ReadUnit]] = {}
    for unit, edge in zip(units, edges, strict=True):
        groups.setdefault(min(math.ceil(edge - 1e-9) - 1, len(units) - 1), []).append(unit)
    return [groups[k] for k in sorted(groups)]


def relative_path(path: str, root: str) -> str:
    """An image's path relative to ``--data`` (``root``: its path on the same file system)."""
    return path.removeprefix(root.rstrip("/") + "/")


# ---- rows -> model inputs -> output columns (pure) -------------------------------------------------


def _where(ids: pa.ChunkedArray | np.ndarray | None, i: int) -> str:
    if ids is None:
        return f"batch row {i}"
    value = ids[i]
    return f"row {value.as_py() if hasattr(value, 'as_py') else value}"


def list_values(column: pa.ChunkedArray | pa.Array, item_shape: tuple[int, ...], name: str,
                ids: pa.ChunkedArray | None = None) -> np.ndarray:
    """A (nested) list column as an ``(n, *item_shape)`` array: each row's lengths are checked level
    by level, so that a short row fails with its identifier instead of shifting every row after it."""
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    levels, _ = _list_levels(array.type)
    for level, length in enumerate(level_lengths(item_shape, len(levels))):
        if array.null_count:
            bad = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
            raise InvalidInput(f"{_where(ids, bad) if level == 0 else 'a row'}: column '{name}' has no value")
        if not pa.types.is_fixed_size_list(array.type):
            lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
            wrong = np.flatnonzero(lengths != length)
            if wrong.size:
                where = _where(ids, int(wrong[0])) if level == 0 else "a row"
                raise InvalidInput(f"{where}: column '{name}' holds {int(lengths[wrong[0]])} numbers where the "
                                   f"model takes {shape_text(item_shape)}")
        array = array.flatten()
    values: np.ndarray = array.to_numpy(zero_copy_only=False)
    return values.reshape(n, *item_shape)


def _numbers(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64, missing values as NaN (the model fills them, as in training)."""
    import pyarrow.compute as pc

    numbers: np.ndarray = pc.cast(column, pa.float64()).to_numpy()
    return numbers


def table_inputs(table: pa.Table, inputs: Sequence[ModelInput], ids: pa.ChunkedArray | None = None
                 ) -> dict[str, np.ndarray]:
    """The model's inputs for a batch of rows: :meth:`Template.features`'s transformation (feature
    columns stacked as float64, or one column reshaped to the item shape, then cast to the input's
    dtype), read straight from Arrow with missing numbers as NaN."""
    out = {}
    for spec in inputs:
        if spec.stacked:
            x = np.column_stack([_numbers(table.column(c)) for c in spec.columns])
        else:
            column = table.column(spec.columns[0])
            x = (list_values(column, spec.item_shape, spec.columns[0], ids) if _is_list(column.type)
                 else _numbers(column))
        out[spec.name] = x.reshape(-1, *spec.item_shape).astype(spec.dtype, copy=False)
    return out


def image_inputs(batch: Mapping[str, np.ndarray], spec: ImageInput, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """The model's input for a batch of decoded images (Ray Data's ``image`` column)."""
    images = batch["image"]
    height, width = spec.size
    if images.dtype == object or tuple(images.shape[1:3]) != (height, width):  # of several sizes, or all wrong
        odd = next(i for i, im in enumerate(images) if tuple(np.shape(im)[:2]) != (height, width))
        got = np.shape(images[odd])
        raise InvalidInput(f"image {paths[odd]} is {got[1]}x{got[0]}; the model takes {width}x{height} images")
    return {spec.name: np.asarray(images).reshape(-1, *spec.item_shape).astype(spec.dtype, copy=False)}


def tensor_array(values: np.ndarray) -> pa.Array:
    """An ``(n, ...)`` array as an Arrow column: plain values for ``(n,)``, else nested fixed-size
    lists, which every Parquet reader reads (Ray's own tensor type needs Ray to read back)."""
    values = np.asarray(values)
    flat: pa.Array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def output_table(ids: pa.Array | pa.ChunkedArray, outputs: Mapping[str, np.ndarray], plan: OutputPlan) -> pa.Table:
    """The output rows: identifier, each output, and for a classifier the top class and its name."""
    columns: dict[str, Any] = {plan.id_column: ids}
    for name in plan.outputs:
        columns[name] = tensor_array(outputs[name])
    if plan.classify:
        top = np.argmax(outputs[plan.classify], axis=-1).astype(np.int64)
        columns[CLASS_COLUMN] = pa.array(top)
        if plan.class_names:  # dictionary-encoded: no string per row is built, any reader gets the names
            names = pa.array(plan.class_names, pa.string())
            columns[CLASS_NAME_COLUMN] = pa.DictionaryArray.from_arrays(pa.array(top.astype(np.int32)), names)
    return pa.table(columns)


# ---- the job, checked before Ray runs anything -----------------------------------------------------


@dataclass(frozen=True)
class BatchJob:
    """A request with everything checked: the version, the data's files, how rows become the
    model's input, the output columns and, for tables, the read units."""

    request: BatchRequest
    model: str
    version: int
    metadata: VersionMetadata
    data: DataFiles
    inputs: tuple[ModelInput, ...]
    image: ImageInput | None
    outputs: OutputPlan
    units: tuple[ReadUnit, ...] = ()
    read_columns: tuple[str, ...] = ()
    csv_types: tuple[tuple[str, pa.DataType], ...] = ()  # CSV column types pinned from the first file
    rows: int | None = None  # known for Parquet (footers) and images (files)

    @property
    def batch_size(self) -> int:
        return self.request.batch_size or DEFAULT_BATCH_SIZE[self.data.format]


def prepare(request: BatchRequest) -> BatchJob:
    """Resolve the version and check the data and ``--out`` against it, without Ray: every error
    here is one line (:class:`MaasError`) before anything is started."""
    from maas.registry import Registry

    registry = Registry(request.registry)
    number = registry.resolve(request.model, version=request.version, label=request.label)
    version = registry.get(request.model, number)
    fs, data = find_data(request.data)
    check_out(request.out, data)
    recipe = Recipe.from_metadata(version.metadata)
    base = partial(BatchJob, request=request, model=request.model, version=number, metadata=version.metadata, data=data)
    misfit = f"data {data.uri} does not fit {request.model} version {number}"
    if data.format != "images":
        return _prepare_table(fs, data, version, recipe, base, misfit)
    first = _first_image(fs, data)
    with _prefixed(misfit):
        image = plan_image_input(version.signature, recipe, first)
        outputs = plan_outputs(version.signature, recipe, PATH_COLUMN)
    return base(inputs=(), image=image, outputs=outputs, rows=len(data.files))


@contextmanager
def _prefixed(prefix: str) -> Iterator[None]:
    """Say which data and which version an :class:`InvalidInput` of the schema checks is about."""
    try:
        yield
    except InvalidInput as exc:
        raise InvalidInput(f"{prefix}: {exc}") from None


def _prepare_table(fs: pafs.FileSystem, data: DataFiles, version: ModelVersion, recipe: Recipe,
                   base: partial[BatchJob], misfit: str) -> BatchJob:
    if data.format == "parquet":
        footers = _parquet_footers(fs, data.files)
        schema = footers[0].schema.to_arrow_schema()
    else:
        schema = _csv_schema(fs, data.files[0])
    with _prefixed(misfit):
        inputs = plan_table_inputs(version.signature, recipe, schema)
    has_id = ID_COLUMN in schema.names
    columns = tuple(dict.fromkeys([c for spec in inputs for c in spec.columns] + ([ID_COLUMN] if has_id else [])))
    if data.format == "parquet":
        for path, footer in zip(data.files[1:], footers[1:], strict=True):  # every file has what the first has
            other = footer.schema.to_arrow_schema()
            differs = [c for c in columns if c not in other.names or other.field(c).type != schema.field(c).type]
            if differs:
                raise InvalidInput(f"file {path} has other columns or types than {data.files[0]}: {differs}")
        counts = [f.num_rows for f in footers]
        units = [u for path, start, footer in zip(data.files, row_offsets(counts), footers, strict=True)
                 for u in parquet_units(path, start,
                                        [footer.row_group(g).num_rows for g in range(footer.num_row_groups)])]
        rows: int | None = sum(counts)
        types: tuple[tuple[str, pa.DataType], ...] = ()
    else:
        counts = [] if has_id else [_csv_rows(fs, p, columns[0]) for p in data.files[:-1]]
        starts = row_offsets([*counts, 0]) if not has_id else [0] * len(data.files)
        units = [ReadUnit(path, start, None) for path, start in zip(data.files, starts, strict=True)]
        types = _csv_types(columns, inputs)
        empty = not any(counts) and not any(_csv_has_rows(fs, p) for p in data.files[len(counts):])
        rows = 0 if empty else None
    if rows == 0:
        raise InvalidInput(f"data {data.uri} has no rows")
    with _prefixed(misfit):
        outputs = plan_outputs(version.signature, recipe, ID_COLUMN if has_id else ROW_COLUMN)
    return base(inputs=inputs, image=None, outputs=outputs, units=tuple(units), read_columns=columns,
                csv_types=types, rows=rows)


def check_out(out: str, data: DataFiles) -> None:
    """``--out`` is a folder that holds nothing yet (a rerun must not mix its files with an earlier
    run's) and is not inside ``--data`` (a later run would read the predictions as data)."""
    fs, path = resolve_uri(out)
    data_fs, data_path = resolve_uri(data.uri)  # a folder, or the one file
    if type(fs) is type(data_fs) and (path == data_path or path.startswith(data_path.rstrip("/") + "/")):
        raise InvalidInput(f"--out {out} is inside --data {data.uri}: write the predictions elsewhere")
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise InvalidInput(f"--out {out} is a file: give a folder for the Parquet files")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path)):
        raise InvalidInput(f"--out {out} already holds files: give a new or empty folder")


def _parquet_footers(fs: pafs.FileSystem, files: Sequence[str]) -> list[Any]:
    """Every file's footer (row counts per row group, schema), fetched in parallel: object stores
    answer each in one request."""
    import pyarrow.parquet as pq

    def footer(path: str) -> Any:
        try:
            return pq.read_metadata(path, filesystem=fs)
        except pa.ArrowInvalid as exc:
            raise InvalidInput(f"file {path} is not Parquet: {_first_line(str(exc))}") from None

    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        return list(pool.map(footer, files))


def _csv_reader(fs: pafs.FileSystem, path: str, columns: Sequence[str] = (),
                types: Mapping[str, pa.DataType] | None = None) -> pacsv.CSVStreamingReader:
    import pyarrow.csv as pacsv

    convert = pacsv.ConvertOptions(include_columns=list(columns), column_types=dict(types or {}))
    try:
        return pacsv.open_csv(fs.open_input_stream(path), convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise InvalidInput(f"file {path}: {_first_line(str(exc))}") from None


def _csv_schema(fs: pafs.FileSystem, path: str) -> pa.Schema:
    """The types pyarrow infers from the first block of the first file."""
    return _csv_reader(fs, path).schema


def _csv_types(columns: Sequence[str], inputs: Sequence[ModelInput]
               ) -> tuple[tuple[str, pa.DataType], ...]:
    """Types for every CSV file, so that all read alike: numbers that form an input as float64, the
    identifier as text (``007`` stays ``007``: the predictions must join back to the input)."""
    numeric = {c for spec in inputs for c in spec.columns}
    return tuple((c, pa.float64() if c in numeric else pa.string()) for c in columns)


def _csv_rows(fs: pafs.FileSystem, path: str, column: str) -> int:
    """The data rows of a CSV file (one column read, as text: a count never fails on a value)."""
    try:
        return sum(len(batch) for batch in _csv_reader(fs, path, [column], {column: pa.string()}))
    except pa.ArrowInvalid as exc:
        raise InvalidInput(f"file {path}: {_first_line(str(exc))}") from None


def _csv_has_rows(fs: pafs.FileSystem, path: str) -> bool:
    return any(len(batch) for batch in _csv_reader(fs, path))


def _first_image(fs: pafs.FileSystem, data: DataFiles) -> tuple[str, int, int]:
    """``(relative name, width, height)`` of the first image, from its header."""
    from PIL import Image, UnidentifiedImageError

    path = data.files[0]
    name = relative_path(path, data.root)
    try:
        with fs.open_input_file(path) as f, Image.open(f) as image:
            return name, image.width, image.height
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"image {name} cannot be read: {_first_line(str(exc))}") from None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


# ---- reading with Ray Data -------------------------------------------------------------------------


def read_table_units(fs: pafs.FileSystem, fmt: DataFormat, units: Sequence[ReadUnit], columns: Sequence[str],
                     csv_types: Mapping[str, pa.DataType], number_rows: bool, chunk_rows: int) -> Iterator[pa.Table]:
    """What one read task yields: the ``columns`` of its units, chunk by chunk, each row numbered
    with its position in the input when ``number_rows``."""
    import pyarrow.parquet as pq

    for unit in units:
        position = unit.start_row
        if fmt == "parquet":
            with fs.open_input_file(unit.path) as f:
                chunks = (pa.Table.from_batches([b]) for b in pq.ParquetFile(f).iter_batches(
                    batch_size=chunk_rows, row_groups=list(unit.row_groups or ()), columns=list(columns)))
                yield from _numbered(chunks, position, number_rows)
        else:
            try:
                yield from _numbered((pa.Table.from_batches([b]) for b in _csv_reader(fs, unit.path, columns, csv_types)
                                      if len(b)), position, number_rows)
            except pa.ArrowInvalid as exc:
                raise InvalidInput(f"file {unit.path}: {_first_line(str(exc))}") from None


def _numbered(chunks: Iterator[pa.Table], start: int, number_rows: bool) -> Iterator[pa.Table]:
    for table in chunks:
        if number_rows:
            table = table.append_column(ROW_COLUMN, pa.array(np.arange(start, start + len(table), dtype=np.int64)))
        start += len(table)
        yield table


def _table_dataset(job: BatchJob, concurrency: int) -> ray.data.Dataset:
    """The table read as a Ray Data dataset: one read task per group of units."""
    import ray.data
    from ray.data import DataContext, Datasource, ReadTask
    from ray.data.block import BlockMetadata

    fs, _ = resolve_uri(job.data.uri)
    # What each read task needs, and no more (its closure travels with it).
    units, fmt, columns, csv_types = job.units, job.data.format, job.read_columns, dict(job.csv_types)
    number_rows = job.outputs.id_column == ROW_COLUMN
    chunk_rows = max(job.batch_size, 8192)

    class NumberedTable(Datasource):
        """The input's rows in name order of its files, each numbered with its position."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: DataContext | None = None) -> list[ReadTask]:
            tasks = []
            for group in group_units(units, parallelism):
                known = [u.rows for u in group]
                rows = None if None in known else sum(known)  # type: ignore[arg-type]
                meta = BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None,
                                     input_files=tuple(dict.fromkeys(u.path for u in group)))
                tasks.append(ReadTask(partial(read_table_units, fs, fmt, group, columns, csv_types, number_rows,
                                              chunk_rows), meta, per_task_row_limit=per_task_row_limit))
            return tasks

    # As many blocks as read tasks: Ray Data would otherwise split their output into ~200 blocks,
    # tiny ones for a small data set, each paying for its own trip through the object store.
    tasks = max(1, min(len(units), 4 * concurrency))
    source = NumberedTable()  # type: ignore[no-untyped-call]  # Ray's Datasource.__init__ is unannotated
    dataset: ray.data.Dataset = ray.data.read_datasource(source, num_cpus=0, concurrency=concurrency,
                                                         override_num_blocks=tasks)
    return dataset


def _image_dataset(job: BatchJob, concurrency: int) -> ray.data.Dataset:
    import ray.data

    assert job.image is not None
    fs, _ = resolve_uri(job.data.uri)
    return ray.data.read_images(list(job.data.files), filesystem=fs, size=job.image.size if job.image.resize else None,
                                mode=job.image.mode, include_paths=True, file_extensions=list(IMAGE_EXTENSIONS),
                                num_cpus=0, concurrency=concurrency)


# ---- the actors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorFigures:
    """One scoring actor's share: rows scored, seconds spent scoring, what loading took, and when
    (wall clock) its first batch began and its last one ended."""

    actor: str
    node: str
    rows: int
    busy_s: float
    load_s: float
    first_at: float | None = None
    last_at: float | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.busy_s if self.busy_s > 0 else 0.0


class Tally:
    """The actors' figures, gathered as they go (a Ray actor of no CPU). Each report is an actor's
    running total, so a report that arrives late or twice changes nothing.

    It also holds a handle of every scoring actor (:meth:`enlist`), so that the job can end its pool
    itself (:func:`run`): Ray Data releases a finished pool by dropping its handles, and where a
    reference cycle holds them (a failed job's traceback does) the actors, 1 CPU each, outlive the job
    in a long-lived driver (a notebook, a service) until Python's garbage collector runs."""

    def __init__(self) -> None:
        self._figures: dict[str, ActorFigures] = {}
        self._actors: list[Any] = []

    def enlist(self, actors: list[Any]) -> None:
        """``[handle]``: a scoring actor's own handle (in a list, so that Ray passes the handle itself)."""
        self._actors += actors

    def actors(self) -> list[Any]:
        return list(self._actors)

    def report(self, figures: ActorFigures) -> None:
        if figures.rows >= self._figures.get(figures.actor, figures).rows:
            self._figures[figures.actor] = figures

    def figures(self) -> list[ActorFigures]:
        return sorted(self._figures.values(), key=lambda f: (f.node, f.actor))


def limit_threads(threads: int) -> None:
    """One actor per CPU: TensorFlow's thread pools sized to the actor's CPUs, not the machine's
    (several actors on a node would otherwise each start a thread per core and fight over them)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran something in this process: keep its pools
        pass


def _load(job: BatchJob, threads: int | None) -> Any:
    """The version, loaded as serving loads it (graph policy, warm-up at the batch size); a failure
    that is not already one of ours is a :class:`ModelUnavailable` naming it."""
    from maas.errors import ModelUnavailable
    from maas.registry import Registry
    from maas.serving.artifact_cache import ArtifactCache
    from maas.serving.runtime import load_saved_model

    if threads:
        limit_threads(threads)
    try:
        path = ArtifactCache(Registry(job.request.registry)).local_path(job.model, job.version)
        return load_saved_model(job.model, job.version, path, warm_batch_size=job.batch_size,
                                allowed_ops=frozenset(job.metadata.allowed_ops or ()))
    except MaasError:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"{job.model} version {job.version} could not be loaded: {type(exc).__name__}: "
                               f"{_first_line(str(exc))}") from exc


class Scorer:
    """One actor of the pool (Ray Data's class-based UDF): loads the version once, then turns each
    batch of rows into output rows."""

    def __init__(self, job: BatchJob, tally: Any, threads: int | None) -> None:
        import ray

        started = time.perf_counter()
        self._job = job
        self._tally = tally
        context = ray.get_runtime_context()
        tally.enlist.remote([context.current_actor])  # first: a job that fails while this loads still ends it
        # A version that cannot load fails the job at the first batch, in one line: Ray Data reports an
        # actor whose constructor raised only as "died", without the error.
        self._error: MaasError | None = None
        try:
            self._model = _load(job, threads)
        except MaasError as exc:
            self._error = exc
        self._figures = ActorFigures(context.get_actor_id() or "", context.get_node_id(), 0, 0.0,
                                     time.perf_counter() - started)
        tally.report.remote(self._figures)  # an actor that gets no batch is still in the figures

    def __call__(self, batch: Any) -> pa.Table:
        if self._error is not None:
            raise self._error
        started, began = time.perf_counter(), time.time()
        job = self._job
        if job.image is not None:
            paths = [relative_path(str(p), job.data.root) for p in batch[PATH_COLUMN]]
            inputs, ids = image_inputs(batch, job.image, paths), pa.array(paths, pa.string())
        else:
            ids = batch.column(job.outputs.id_column)
            inputs = table_inputs(batch, job.inputs, ids)
        table = output_table(ids, self._model.predict(inputs), job.outputs)
        f = self._figures
        self._figures = ActorFigures(f.actor, f.node, f.rows + table.num_rows, f.busy_s + time.perf_counter() - started,
                                     f.load_s, began if f.first_at is None else f.first_at, time.time())
        self._tally.report.remote(self._figures)  # not awaited: the next batch does not wait for it
        return table


# ---- running it ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchReport:
    """What a batch job did: the figures the entry point prints."""

    model: str
    version: int
    data: str
    format: DataFormat
    out: str
    rows: int
    wall_s: float
    batch_size: int
    concurrency: tuple[int, int]
    use_gpu: bool
    actors: tuple[ActorFigures, ...]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def scoring_s(self) -> float | None:
        """From the first batch's start to the last one's end, over every actor: the run without its
        start-up (actors starting, the model loading), with reading and writing going on beside."""
        firsts = [a.first_at for a in self.actors if a.first_at is not None]
        lasts = [a.last_at for a in self.actors if a.last_at is not None]
        return max(lasts) - min(firsts) if firsts and lasts else None

    @property
    def scoring_rows_per_s(self) -> float | None:
        window = self.scoring_s
        return self.rows / window if window else None

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["rows_per_s"] = round(self.rows_per_s, 1)
        body["wall_s"] = round(self.wall_s, 3)
        window, steady = self.scoring_s, self.scoring_rows_per_s
        body["scoring_s"] = None if window is None else round(window, 3)
        body["scoring_rows_per_s"] = None if steady is None else round(steady, 1)
        body["concurrency"] = list(self.concurrency)
        body["actors"] = [{**asdict(a), "rows_per_s": round(a.rows_per_s, 1), "busy_s": round(a.busy_s, 3),
                           "load_s": round(a.load_s, 3)} for a in self.actors]
        return body

    def json_line(self) -> str:
        return json.dumps(self.to_dict())

    def lines(self) -> list[str]:
        nodes = len({a.node for a in self.actors})
        pool = (f"{self.concurrency[0]}" if self.concurrency[0] == self.concurrency[1]
                else f"{self.concurrency[0]}-{self.concurrency[1]}")
        steady = self.scoring_rows_per_s
        after = "" if steady is None else f" ({steady:,.0f} rows/s from the first batch to the last)"
        head = (f"Scored {self.rows:,} rows of {self.data} ({self.format}) with {self.model} version {self.version}: "
                f"{self.wall_s:.1f} s, {self.rows_per_s:,.0f} rows/s{after}; predictions in {self.out}")
        actors = f"{len(self.actors)} actor{'s' if len(self.actors) != 1 else ''}"
        pool_line = (f"{actors} (pool {pool}, {'1 GPU' if self.use_gpu else '1 CPU'} each) on "
                     f"{nodes} node{'s' if nodes != 1 else ''}, batch size {self.batch_size}:")
        lines = [head, pool_line]
        lines += [f"  actor {a.actor[:8]} on node {a.node[:8]}: {a.rows:,} rows, {a.rows_per_s:,.0f} rows/s while "
                  f"scoring (loaded in {a.load_s:.1f} s)" for a in self.actors]
        return lines


def pool_size(requested: tuple[int, int] | None, nodes: Sequence[NodeFree], use_gpu: bool) -> tuple[int, int]:
    """The actor pool: as many actors (1 CPU, or 1 GPU, each) as fit in the free resources now, or
    the range asked for, whose minimum must fit now (Ray Data would wait for it forever)."""
    from maas.training.resources import WorkerRequest, describe_free, workers_that_fit

    shape = WorkerRequest(1, 1 << 30, cpus=1.0, gpus=1.0 if use_gpu else 0.0)
    fits = workers_that_fit(nodes, shape)
    unit = "1 GPU" if use_gpu else "1 CPU"
    if requested is None:
        if fits < 1:
            raise InvalidInput(f"no scoring actor of {unit} fits now: {describe_free(nodes, shape)}")
        return fits, fits
    if requested[0] > fits:
        hint = f"; use --concurrency 1-{requested[1]} to start with what fits" if fits else ""
        raise InvalidInput(f"--concurrency {requested[0]}: {requested[0]} actors of {unit} do not fit now, {fits} do: "
                           f"{describe_free(nodes, shape)}{hint}")
    return requested


def run(job: BatchJob, *, nodes: Sequence[NodeFree] | None = None) -> BatchReport:
    """Read, score and write ``job`` on the connected cluster; return its figures."""
    import ray
    from ray.data import ActorPoolStrategy

    from maas.training.resources import read_nodes

    request = job.request
    low, high = pool_size(request.concurrency, read_nodes() if nodes is None else nodes, request.use_gpu)
    tally = ray.remote(num_cpus=0)(Tally).remote()
    out_fs, out_path = resolve_uri(request.out)
    started = time.perf_counter()
    try:
        with _errors_as_raised():
            read = _image_dataset if job.image is not None else _table_dataset
            scored = read(job, high).map_batches(
                Scorer, fn_constructor_kwargs={"job": replace(job, units=()),  # the read units stay with the reads
                                               "tally": tally, "threads": None if request.use_gpu else 1},
                batch_size=job.batch_size, batch_format="numpy" if job.image is not None else "pyarrow",
                compute=ActorPoolStrategy(size=low) if low == high else ActorPoolStrategy(min_size=low, max_size=high),
                num_cpus=1, num_gpus=1 if request.use_gpu else None, udf_modifying_row_count=False)
            scored.write_parquet(out_path, filesystem=out_fs, min_rows_per_file=_MIN_ROWS_PER_FILE,
                                 ray_remote_args={"num_cpus": 0}, concurrency=high)
        wall = time.perf_counter() - started
        rows = rows_written(out_fs, out_path)
        actors = _gathered(tally, rows, low)
    finally:
        _end_pool(tally)
    return BatchReport(job.model, job.version, job.data.uri, job.data.format, request.out, rows, wall,
                       job.batch_size, (low, high), request.use_gpu, tuple(actors))


def _end_pool(tally: Any) -> None:
    """Kill the job's scoring actors and its tally: the job is over, whether it succeeded or not."""
    import ray

    try:
        actors: list[Any] = ray.get(tally.actors.remote(), timeout=_TALLY_WAIT_S)
    except (ray.exceptions.RayError, TimeoutError):  # the tally is gone: Ray Data's release is all there is
        actors = []
    for actor in [*actors, tally]:
        ray.kill(actor)


@contextmanager
def _errors_as_raised() -> Iterator[None]:
    """Let an actor's :class:`MaasError` (a row that does not fit) reach the driver as itself.

    Ray Data wraps what a UDF raises in ``UserCodeException(...) from error``, and the chain does not
    survive the trip to the driver (exceptions pickle without ``__cause__``); with
    ``raise_original_map_exception`` the error itself travels, as ``RayTaskError.cause``."""
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.raise_original_map_exception
    context.raise_original_map_exception = True
    try:
        yield
    except Exception as exc:
        cause = domain_error(exc)
        if cause is None:
            raise
        raise cause from None
    finally:
        context.raise_original_map_exception = before


def _gathered(tally: Any, rows: int, actors: int) -> list[ActorFigures]:
    """The actors' last reports. They are sent without waiting, so wait (briefly) until they add up
    to the rows written and every actor of the pool's minimum has reported."""
    import ray

    deadline = time.monotonic() + _TALLY_WAIT_S
    while True:
        figures: list[ActorFigures] = ray.get(tally.figures.remote())
        if (sum(f.rows for f in figures) >= rows and len(figures) >= actors) or time.monotonic() > deadline:
            return figures
        time.sleep(0.05)


def rows_written(fs: pafs.FileSystem, path: str) -> int:
    """The rows in the Parquet files under ``path``, from their footers: what the job really wrote."""
    import pyarrow.parquet as pq

    files = [i.path for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
             if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(files)))) as pool:
        return sum(pool.map(lambda p: pq.read_metadata(p, filesystem=fs).num_rows, files))


def domain_error(exc: BaseException) -> MaasError | None:
    """The :class:`MaasError` a Ray task or actor raised, found inside the exceptions Ray Data wraps
    it in (``RayTaskError.cause``, ``__cause__``), so that a bad row fails the job in one line (our
    messages are one line; Ray Data adds its retry advice on the lines after)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MaasError) and type(current).__module__.startswith("maas"):
            if current.args and isinstance(current.args[0], str):  # Ray Data appends its retry advice
                current.args = (current.args[0].split("\n", 1)[0], *current.args[1:])
            return current
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def predict_dataset(model: str, data: str, out: str, *, version: int | None = None, label: str | None = None,
                    registry: str | None = None, use_gpu: bool = False, concurrency: tuple[int, int] | None = None,
                    batch_size: int | None = None, connect: Callable[[], None] | None = None) -> BatchReport:
    """Score ``data`` with ``model`` (its ``version``, its ``label``, or the default version) and write
    the predictions to ``out``; connects to the cluster (``RAY_ADDRESS``, ``maas cluster up``'s, or a
    local one) once the checks have passed."""
    request = BatchRequest(model=model, data=data, out=out, version=version, label=label,
                           registry=registry or settings.default_registry_uri(), use_gpu=use_gpu,
                           concurrency=concurrency, batch_size=batch_size)
    job = prepare(request)
    if connect is None:
        from maas.local_cluster import connect as connect_cluster

        connect = connect_cluster
    connect()
    return run(job)
