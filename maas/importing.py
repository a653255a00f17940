"""Bring your own model: publish a Keras 3 ``.keras`` file, a legacy ``.h5`` file, a SavedModel folder
or an in-memory Keras model as a registry version that serves like a trained one.

A trained version is a SavedModel whose ``serving_default`` signature has a batch dimension first and
every other dimension known, and that serving can load (its graph passes
:mod:`maas.serving.graph_policy`) and call. An imported model is held to the same terms, and checked
against them here, before the registry is touched: a model that fails any check leaves nothing behind
(all work happens in a temporary folder outside the registry, and :meth:`Registry.publish` is atomic).

What is checked, in order: the source exists and is one of the three formats (by its first bytes, not
only its name); its signature (a SavedModel's ``serving_default``, or the one chosen; a Keras model's
inputs and outputs) has a leading batch dimension, known other dimensions (``input_shape`` fixes the
unknown ones of inputs) and dtypes the request codecs handle; a SavedModel's graph uses no op serving
refuses; and the SavedModel as published loads and answers a zero batch, as serving will load it.

TensorFlow is imported inside the functions that need it: the CLI parses and checks its flags first.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from maas.errors import InvalidInput
from maas.names import validate_model_name
from maas.records import valid_metadata
from maas.signature import Signature, TensorSpec
from maas.storage import resolve_uri

if TYPE_CHECKING:
    import keras

    from maas.registry import ModelVersion, Registry

Format = Literal["keras", "h5", "saved_model", "keras_model"]  # keras_model: an in-memory model
Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = get_args(Task)
InputShape = tuple[int, ...] | Mapping[str, tuple[int, ...]]  # one input's shape, or each named input's
DEFAULT_SIGNATURE = "serving_default"  # the only signature serving calls
WARM_UP_BATCH = 2  # instances in the check call: more than one shows whether outputs follow the batch

_SUFFIXES: dict[str, Format] = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ACCEPTED = "a Keras .keras file, a legacy .h5 file or a SavedModel folder"
_CHECKED = "import"  # the name the servability check loads a model under


# ---- the two entry points ------------------------------------------------------------------------


def import_model(registry: Registry, name: str, source: str, *, signature: str = DEFAULT_SIGNATURE,
                 input_shape: InputShape | None = None, task: Task | None = None,
                 classes: tuple[str, ...] | None = None, metrics: Mapping[str, float] | None = None) -> ModelVersion:
    """Publish the model at ``source`` (a local path or any ``pyarrow.fs`` URI) as ``name``'s next version.

    Raises :class:`InvalidInput` naming the problem when ``source`` is not a servable model; the registry
    is then left as it was."""
    validate_model_name(name)
    details = _details(task, classes, metrics)
    with tempfile.TemporaryDirectory(prefix="maas-import-") as tmp:
        local = _fetch(source, Path(tmp) / "source")
        fmt = detect_format(local)
        digest = artifact_sha256(local)
        export = Path(tmp) / "export"
        if fmt == "saved_model":
            served = prepare_saved_model(local, export, signature=signature, input_shape=input_shape)
        else:
            if signature != DEFAULT_SIGNATURE:
                raise InvalidInput(f"--signature chooses among a SavedModel's signatures; {source} is a {fmt} file")
            export_keras(_load_keras(local, fmt), export, input_shape=input_shape)
            served = export
        metadata = {"format": fmt, "source": describe_source(source), "sha256": digest, **details}
        if fmt == "saved_model":
            metadata["source_signature"] = signature
        return _check_and_publish(registry, name, served, metadata, what=source)


def publish_keras(registry: Registry, name: str, model: keras.Model, *, input_shape: InputShape | None = None,
                  task: Task | None = None, classes: tuple[str, ...] | None = None,
                  metrics: Mapping[str, float] | None = None, source: str | None = None) -> ModelVersion:
    """Publish an in-memory Keras model as ``name``'s next version, exported as :func:`import_model`
    exports a ``.keras`` file. There is no file to fingerprint: ``sha256`` is the exported SavedModel's."""
    validate_model_name(name)
    details = _details(task, classes, metrics)
    with tempfile.TemporaryDirectory(prefix="maas-import-") as tmp:
        export = Path(tmp) / "export"
        export_keras(model, export, input_shape=input_shape)
        metadata: dict[str, Any] = {"format": "keras_model", "sha256": artifact_sha256(export), **details}
        if source is not None:  # where the caller says the model came from, as said
            metadata["source"] = source
        return _check_and_publish(registry, name, export, metadata, what=f"Keras model {model.name!r}")


def _check_and_publish(registry: Registry, name: str, saved_model: Path, metadata: dict[str, Any],
                       *, what: str) -> ModelVersion:
    """Check ``saved_model`` as serving will load it, then publish it with the metadata trained versions
    carry that applies to an imported model (no training fields are made up)."""
    from maas.training.driver import library_versions

    signature = check_servable(saved_model, what=what)
    _check_classes(signature, metadata.get("classes"))
    full = valid_metadata({**metadata, "signature": signature, "imported": True, "libraries": library_versions()})
    return registry.publish(name, str(saved_model), full)


# ---- what the user says about the model ----------------------------------------------------------


def _details(task: Task | None, classes: tuple[str, ...] | None,
             metrics: Mapping[str, float] | None) -> dict[str, Any]:
    """``task``, ``classes`` and ``metrics`` for the metadata, checked before any model is loaded; only
    those given are recorded (an imported model has no held-out evaluation of ours)."""
    details: dict[str, Any] = {}
    if task is not None:
        if task not in TASKS:
            raise InvalidInput(f"task is one of {', '.join(TASKS)}. Received: {task!r}")
        details["task"] = task
    if classes is not None:
        if task == "regression":
            raise InvalidInput("classes name a classifier's outputs; a regression model has none")
        details["classes"] = list(_check_class_names(classes))
    if metrics is not None:
        details["metrics"] = check_metrics(metrics)
    return details


def _check_class_names(classes: tuple[str, ...]) -> tuple[str, ...]:
    if not classes or any(not isinstance(c, str) or not c for c in classes):
        raise InvalidInput(f"classes are non-empty names, such as cat,dog. Received: {list(classes)!r}")
    if len(set(classes)) != len(classes):
        raise InvalidInput(f"classes must be distinct. Received: {list(classes)!r}")
    return tuple(classes)


def _check_classes(signature: Signature, classes: list[str] | None) -> None:
    """A classifier with one output gives one score per class: its last dimension must count them."""
    if classes is None or len(signature.outputs) != 1:
        return
    output = signature.outputs[0]
    if not output.item_shape or output.item_shape[-1] != len(classes):
        raise InvalidInput(f"{len(classes)} classes were given, but output '{output.name}' has shape "
                           f"{list(output.shape)}: a classifier's last dimension counts its classes")


def check_metrics(metrics: Any) -> dict[str, float]:
    """A flat object of finite numbers, as ``maas models list`` shows them."""
    if not isinstance(metrics, Mapping) or not metrics:
        raise InvalidInput(f"metrics are a JSON object of numbers, such as {{\"accuracy\": 0.97}}. "
                           f"Received: {str(metrics)[:80]}")
    for key, value in metrics.items():
        if (not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise InvalidInput(f"metrics are a JSON object of finite numbers. Received: {key!r}: {str(value)[:40]}")
    if "r2" in metrics and not {"mse", "mae"} <= set(metrics):
        raise InvalidInput("metrics with 'r2' need 'mse' and 'mae' as well (`maas models list` shows all three "
                           "for a regression model)")
    return {key: float(value) for key, value in metrics.items()}


def read_metrics(uri: str) -> dict[str, float]:
    """``--metrics FILE``: the JSON object of numbers in a local file or at a URI."""
    fs, path = resolve_uri(uri)
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        raise InvalidInput(f"--metrics: no such file: {uri}") from None
    except OSError as exc:
        raise InvalidInput(f"--metrics: cannot read {uri}: {' '.join(str(exc).split())}") from None
    try:
        return check_metrics(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--metrics: {uri} is not JSON: {exc}") from None


def parse_input_shapes(texts: list[str]) -> InputShape | None:
    """``--input-shape 28,28`` (the only input) or ``--input-shape NAME=28,28`` (repeatable): the shape
    of one instance, without the batch dimension."""
    if not texts:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        named, _, dims = text.rpartition("=")
        if not named and len(texts) > 1:
            raise InvalidInput(f"--input-shape given more than once: name each input (NAME=28,28). Received: {text!r}")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise InvalidInput(f"--input-shape takes positive sizes such as 28,28 or NAME=28,28 (no batch "
                               f"dimension). Received: {text!r}")
        if not named:
            return shape
        if named in shapes:
            raise InvalidInput(f"--input-shape names input '{named}' twice")
        shapes[named] = shape
    return shapes


def parse_classes(text: str) -> tuple[str, ...]:
    """``--classes cat,dog,bird``."""
    return _check_class_names(tuple(c.strip() for c in text.split(",")))


def describe_source(source: str) -> str:
    """Where the model came from, as recorded: a local path made absolute; a URI without the
    credentials or options it may carry (``s3://key:secret@bucket/...?access_key=...``)."""
    if "://" not in source:
        return str(Path(source).expanduser().resolve())
    parts = urlsplit(source)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


# ---- reading the source --------------------------------------------------------------------------


def _fetch(source: str, into: Path) -> Path:
    """A local path holding ``source``: itself when local, else a copy (file or folder) in ``into``."""
    try:
        fs, path = resolve_uri(source)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as exc:  # pyarrow: unknown scheme, unreachable store
        raise InvalidInput(f"cannot read {source}: {' '.join(str(exc).split())}") from None
    if info.type == pafs.FileType.NotFound:
        raise InvalidInput(f"no such file or folder: {source}")
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path)
    into.mkdir(parents=True)
    local = into / (info.base_name or "model")
    if info.type == pafs.FileType.Directory:
        pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    else:
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return local


def detect_format(path: Path) -> Format:
    """Which of the three formats ``path`` holds, judged by its contents (a ``.keras`` file is a zip
    archive with ``config.json``; an ``.h5`` file starts with HDF5's signature; a SavedModel folder
    holds ``saved_model.pb``), so that a file that merely bears the name is refused in one line."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise InvalidInput(f"{path.name} is a folder without saved_model.pb: not a SavedModel (expected "
                               f"{_ACCEPTED})")
        return "saved_model"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput(f"{path.name} is not a model file: expected {_ACCEPTED}")
    with open(path, "rb") as f:
        head = f.read(len(_HDF5_MAGIC))
    if fmt == "h5" and head != _HDF5_MAGIC:
        raise InvalidInput(f"{path.name} is not an HDF5 file (it does not start with HDF5's signature)")
    if fmt == "keras" and not _is_keras_archive(path):
        raise InvalidInput(f"{path.name} is not a Keras 3 archive (a zip file holding config.json)")
    return fmt


def _is_keras_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def artifact_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; of a folder, over its files in sorted order of their relative paths,
    each as ``path NUL size NUL bytes`` (so that moving bytes from one file to another changes it)."""
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    else:
        files = [("", path)]
    for relative, file in files:
        if relative:
            digest.update(f"{relative}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _load_keras(path: Path, fmt: Format) -> keras.Model:
    """The model in a ``.keras`` or ``.h5`` file, uncompiled (serving needs no optimizer), in Keras's
    safe mode: a ``Lambda`` layer's Python bytecode is refused, not run on this machine."""
    import keras

    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 (Keras raises ValueError, TypeError, OSError, KeyError... here)
        raise InvalidInput(f"{path.name} does not load as a Keras model ({fmt}): {type(exc).__name__}: "
                           f"{_first_line(str(exc))}") from None
    if not isinstance(model, keras.Model):
        raise InvalidInput(f"{path.name} holds a {type(model).__name__}, not a Keras model")
    return model


# ---- signatures ----------------------------------------------------------------------------------


def tensor_spec(kind: Literal["input", "output"], name: str, dtype: str,
                shape: tuple[int | None, ...] | None) -> TensorSpec:
    """A signature tensor as serving takes it (``None`` sizes as ``-1``), or the reason it cannot be."""
    if shape is None:
        raise InvalidInput(f"{kind} '{name}' has an unknown rank: serving needs [batch, ...] shapes")
    if not shape:
        raise InvalidInput(f"{kind} '{name}' is a scalar: serving needs a leading batch dimension")
    if shape[0] is not None:
        raise InvalidInput(f"{kind} '{name}' has a fixed batch dimension of {shape[0]} (shape {_shape(shape)}): "
                           "serving batches requests, so the first dimension must be unknown (None)")
    if dtype == "string":
        raise InvalidInput(f"{kind} '{name}' is a string tensor: serving takes and gives numbers and booleans only")
    try:
        return TensorSpec(name=name, dtype=dtype, shape=tuple(-1 if d is None else int(d) for d in shape))
    except ValueError as exc:
        raise InvalidInput(f"{kind} '{name}': {exc}") from None


def fix_input_shapes(inputs: list[TensorSpec], input_shape: InputShape | None) -> list[TensorSpec]:
    """``inputs`` with the sizes ``input_shape`` gives; refused when a non-batch size stays unknown
    (serving warms a version up, and checks requests, against known sizes), or when ``input_shape``
    contradicts the model."""
    shapes = _named_shapes(inputs, input_shape)
    fixed = []
    for spec in inputs:
        given = shapes.get(spec.name)
        if given is not None:
            if len(given) != len(spec.item_shape):
                raise InvalidInput(f"input '{spec.name}' has {len(spec.item_shape)} dimensions after the batch "
                                   f"(shape {list(spec.shape)}); the input shape given has {len(given)}: {list(given)}")
            for i, (known, size) in enumerate(zip(spec.item_shape, given, strict=True), start=1):
                if known not in (-1, size):
                    raise InvalidInput(f"input '{spec.name}' has size {known} in dimension {i} (shape "
                                       f"{list(spec.shape)}); the input shape given says {size}")
            spec = TensorSpec(spec.name, spec.dtype, (-1, *given))
        unknown = [i for i, d in enumerate(spec.item_shape, start=1) if d == -1]
        if unknown:
            example = ",".join("N" if d == -1 else str(d) for d in spec.item_shape)
            raise InvalidInput(
                f"input '{spec.name}' has an unknown size in dimension {unknown[0]} (shape {list(spec.shape)}, "
                f"dimension 0 is the batch): give the size N it takes with --input-shape {example} (or "
                f"{spec.name}={example}; input_shape= in Python)")
        fixed.append(spec)
    return fixed


def _named_shapes(inputs: list[TensorSpec], input_shape: InputShape | None) -> dict[str, tuple[int, ...]]:
    if input_shape is None:
        return {}
    names = [s.name for s in inputs]
    if isinstance(input_shape, Mapping):
        unknown = sorted(set(input_shape) - set(names))
        if unknown:
            raise InvalidInput(f"input shape given for '{unknown[0]}', but the model's inputs are {names}")
        return {k: tuple(v) for k, v in input_shape.items()}
    if len(names) != 1:
        raise InvalidInput(f"the model has {len(names)} inputs {names}: name the one an input shape is for "
                           "(--input-shape NAME=28,28)")
    return {names[0]: tuple(input_shape)}


# ---- exporting -----------------------------------------------------------------------------------


def export_keras(model: keras.Model, path: Path, *, input_shape: InputShape | None = None) -> None:
    """Write ``model`` to ``path`` as a SavedModel with one ``serving_default`` endpoint, as
    :mod:`maas.training.export` does for trained models: each input named after the model's input,
    each output after the model's output (its layer name; its key when the model returns a dict)."""
    import keras
    import tensorflow as tf

    structure = _input_structure(model)
    if structure is None:  # a subclassed or never-built model declares no inputs: only a given shape helps
        if input_shape is None or isinstance(input_shape, Mapping):
            raise InvalidInput(f"Keras model {model.name!r} declares no inputs (subclassed, or never built): give "
                               "the shape of one instance with --input-shape (input_shape= in Python)")
        structure = keras.KerasTensor((None, *input_shape), dtype="float32", name="inputs")
        _build(model, structure)
    flat = keras.tree.flatten(structure)
    raw = [tensor_spec("input", _input_name(t), tf.as_dtype(t.dtype).name, tuple(t.shape)) for t in flat]
    if len({s.name for s in raw}) != len(raw):
        raise InvalidInput(f"Keras model {model.name!r} has inputs sharing a name: {[s.name for s in raw]}")
    inputs = fix_input_shapes(raw, input_shape)
    specs = [tf.TensorSpec((None, *s.item_shape), s.dtype, name=s.name) for s in inputs]
    output_names = _output_names(model)

    def serve(*args: Any) -> dict[str, Any]:
        out = model(keras.tree.pack_sequence_as(structure, list(args)), training=False)
        return _named_outputs(out, output_names)

    archive = keras.export.ExportArchive()
    archive.track(model)
    try:
        archive.add_endpoint(name=DEFAULT_SIGNATURE, fn=serve, input_signature=specs)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 (whatever the model's own code raises while traced)
        raise InvalidInput(f"Keras model {model.name!r} cannot be called on inputs "
                           f"{[list(s.shape) for s in inputs]}: {type(exc).__name__}: "
                           f"{_first_line(str(exc))}") from None
    archive.write_out(str(path), verbose=False)


def _input_structure(model: keras.Model) -> Any:
    """The inputs as the model's ``call`` takes them (a tensor, a list, a dict), or None if it declares none."""
    try:
        structure = model.input  # a functional model's own structure
    except (AttributeError, ValueError):
        try:
            structure = model.inputs  # a Sequential model
        except (AttributeError, ValueError):
            return None
    if structure is None:
        return None
    if isinstance(structure, (list, tuple)) and len(structure) == 1:
        return structure[0]
    return structure


def _input_name(tensor: keras.KerasTensor) -> str:
    """The name of the input layer that makes ``tensor``: what the model calls that input, and the same
    in every process (an unnamed tensor's own name counts up per process, ``keras_tensor_12``)."""
    history = getattr(tensor, "_keras_history", None)
    name: str = getattr(getattr(history, "operation", None), "name", None) or tensor.name
    return name


def _build(model: keras.Model, inputs: keras.KerasTensor) -> None:
    """Build a model that declares no inputs for ``inputs``' shape (export needs its weights)."""
    if model.built:
        return
    try:
        model.build(tuple(inputs.shape))
    except Exception as exc:  # noqa: BLE001 (whatever the model's own build raises)
        raise InvalidInput(f"Keras model {model.name!r} does not build for inputs of shape {list(inputs.shape)}: "
                           f"{type(exc).__name__}: {_first_line(str(exc))}") from None


def _output_names(model: keras.Model) -> list[str]:
    """The names of a model's outputs, in order: a functional model's output names, else its last layer's."""
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    return [model.layers[-1].name] if getattr(model, "layers", None) else ["output_0"]


def _named_outputs(out: Any, names: list[str]) -> dict[str, Any]:
    """The outputs of one call, named: by key for a dict, else after ``names``."""
    if isinstance(out, Mapping):
        return {str(key): value for key, value in out.items()}
    if isinstance(out, (list, tuple)):
        if len(out) != len(names):
            names = [f"output_{i}" for i in range(len(out))]
        if len(set(names)) != len(names):
            raise InvalidInput(f"the model's outputs share a name: {names}")
        return dict(zip(names, out, strict=True))
    return {names[0] if len(names) == 1 else "output_0": out}


def prepare_saved_model(path: Path, export: Path, *, signature: str = DEFAULT_SIGNATURE,
                        input_shape: InputShape | None = None) -> Path:
    """The SavedModel folder to publish for the one at ``path``: itself when its ``serving_default``
    serves as is; otherwise, a re-export to ``export`` whose ``serving_default`` calls the chosen
    signature with the input sizes fixed (the original's graph and variables inside it, unchanged).

    The signature and its ops are checked from ``saved_model.pb`` before TensorFlow loads anything
    (loading runs a graph's initializers), and it is loaded only when it has to be re-exported."""
    declared = saved_model_signature(path, signature)
    _check_graph(path, signature)
    inputs = fix_input_shapes(list(declared.inputs), input_shape)
    if signature == DEFAULT_SIGNATURE and tuple(inputs) == declared.inputs:
        return path
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 (TensorFlow raises many kinds for an artifact it cannot restore)
        raise InvalidInput(f"{path.name} does not load as a SavedModel: {type(exc).__name__}: "
                           f"{_first_line(str(exc))}") from None
    fn = loaded.signatures[signature]
    names = [s.name for s in inputs]

    @tf.function(  # type: ignore[untyped-decorator]  # TensorFlow has no type information
        input_signature=[tf.TensorSpec((None, *s.item_shape), s.dtype, name=s.name) for s in inputs])
    def serve(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs: dict[str, tf.Tensor] = fn(**dict(zip(names, args, strict=True)))
        return outputs

    module = tf.Module()
    module.source = loaded  # tracked: its variables and functions are saved with the wrapper
    module.serve = serve
    tf.saved_model.save(module, str(export), signatures={DEFAULT_SIGNATURE: serve.get_concrete_function()})
    return export


def _read_proto(path: Path) -> Any:
    """The ``SavedModel`` protocol buffer of the folder at ``path`` (nothing is loaded or run)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except DecodeError:
        raise InvalidInput(f"{path.name}/saved_model.pb is not a SavedModel protocol buffer") from None
    return proto


def saved_model_signature(path: Path, signature: str = DEFAULT_SIGNATURE) -> Signature:
    """The signature ``signature`` of the SavedModel at ``path``, read from ``saved_model.pb`` and checked
    by :func:`tensor_spec`; refused, listing the others, when it has none of that name. (TF Serving's
    classify and regress signatures take serialized ``tf.Example`` strings and are refused there.)"""
    import tensorflow as tf

    defs = {key: meta.signature_def[key] for meta in _read_proto(path).meta_graphs for key in meta.signature_def}
    available = sorted(key for key in defs if not key.startswith("__"))
    if signature not in available:
        raise InvalidInput(f"the SavedModel has no signature '{signature}'; it has {available or 'none'}"
                           + (" (choose one with --signature NAME)" if available else ""))
    found = defs[signature]
    if not found.outputs:
        raise InvalidInput(f"signature '{signature}' gives no outputs")

    def specs(kind: Literal["input", "output"], infos: Any) -> tuple[TensorSpec, ...]:
        return tuple(tensor_spec(kind, name, tf.dtypes.as_dtype(info.dtype).name, _proto_dims(info.tensor_shape))
                     for name, info in sorted(infos.items()))

    return Signature(inputs=specs("input", found.inputs), outputs=specs("output", found.outputs))


def _proto_dims(shape: Any) -> tuple[int | None, ...] | None:
    """A ``TensorShapeProto`` as a tuple (``None`` for unknown sizes), or ``None`` for an unknown rank."""
    return None if shape.unknown_rank else tuple(None if d.size < 0 else d.size for d in shape.dim)


def _check_graph(path: Path, signature: str) -> None:
    """Refuse a SavedModel whose signature's graph uses an op that serving refuses
    (:data:`maas.serving.graph_policy.REFUSED_OPS`): it would never load on a serving node."""
    from maas.serving.graph_policy import REFUSED_OPS, serving_ops

    refused = sorted(serving_ops(path, signature) & REFUSED_OPS)
    if refused:
        raise InvalidInput(f"signature '{signature}' uses {', '.join(refused)}, which serving refuses (these ops "
                           "read or write files or run Python on the serving node): not imported")


# ---- the servability check -----------------------------------------------------------------------


def check_servable(path: Path, *, what: str) -> Signature:
    """Load ``path`` as a serving replica does (:func:`maas.serving.runtime.load_saved_model`: the graph
    policy, the load, a warm-up call on a zero batch), call it once more and check that every output
    follows the batch; return the signature serving reads from it, to record."""
    import numpy as np

    from maas.errors import MaasError
    from maas.serving.runtime import load_saved_model

    declared = saved_model_signature(path)
    fix_input_shapes(list(declared.inputs), None)  # every size known, or say which is not
    _check_graph(path, DEFAULT_SIGNATURE)  # in words of an import, before serving's own check says it
    zeros = {s.name: np.zeros((WARM_UP_BATCH, *s.item_shape), s.dtype) for s in declared.inputs}
    shapes = {name: list(value.shape) for name, value in zeros.items()}
    try:
        loaded = load_saved_model(_CHECKED, 0, str(path), warm_batch_size=WARM_UP_BATCH)
        outputs = loaded.predict(zeros)
    except MaasError as exc:  # its message names the model and version: not yet a version, here
        reason = str(exc).removeprefix(f"{_CHECKED} version 0 ")
        raise InvalidInput(f"{what} does not serve: a call on a zero batch {shapes} failed: {reason}") from None
    except Exception as exc:  # noqa: BLE001 (a SavedModel whose variables or functions do not restore)
        raise InvalidInput(f"{what} does not load as serving loads it: {type(exc).__name__}: "
                           f"{_first_line(str(exc))}") from None
    for spec in loaded.signature.outputs:
        got = outputs[spec.name].shape
        if not got or got[0] != WARM_UP_BATCH:
            raise InvalidInput(f"{what}: output '{spec.name}' does not follow the batch: a batch of {WARM_UP_BATCH} "
                               f"gave shape {list(got)}")
    return loaded.signature


def _shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def _first_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
