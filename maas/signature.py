"""Input/output signatures of a model version, and the one place where request data is checked
against them and turned into numpy arrays.

A signature is recorded in each version's metadata when it is published, read from the SavedModel
itself, so serving never has to guess what the model takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maas.errors import InvalidInput, PayloadTooLarge

# dtype name (numpy / TensorFlow spelling) -> KServe V2 / Open Inference Protocol datatype.
_V2_DATATYPES = {
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "bool": "BOOL",
    "string": "BYTES",
}

_NUMPY_DTYPES = {v2: name for name, v2 in _V2_DATATYPES.items() if name != "string"}


def v2_datatype(dtype: str) -> str:
    """The V2 protocol's name (``FP32``...) for a numpy / TensorFlow dtype name (``float32``...)."""
    try:
        return _V2_DATATYPES[dtype]
    except KeyError:
        raise ValueError(f"No V2 datatype for dtype {dtype!r}") from None


def v2_tensor(name: str, value: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """A V2 tensor object for ``value``: with ``data`` (JSON), or, when ``binary``, with
    ``parameters.binary_data_size`` and the raw little-endian bytes that follow the JSON part. String
    tensors (TensorFlow's come as object arrays of bytes) are ``BYTES``: UTF-8 text in JSON, each
    element as a 4-byte little-endian length and its bytes in binary, as the protocol's extension says."""
    array = np.asarray(value)
    if array.dtype.kind in "OSU":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1).tolist()]
        tensor: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": "BYTES"}
        if not binary:
            tensor["data"] = [x.decode("utf-8", "replace") for x in items]
            return tensor, None
        raw = b"".join(len(x).to_bytes(4, "little") + x for x in items)
        tensor["parameters"] = {"binary_data_size": len(raw)}
        return tensor, raw
    tensor = {"name": name, "shape": list(array.shape), "datatype": v2_datatype(array.dtype.name)}
    if not binary:
        tensor["data"] = array.reshape(-1).tolist()
        return tensor, None
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    return tensor, raw


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a numeric V2 datatype (``FP32`` -> ``float32``)."""
    try:
        return np.dtype(_NUMPY_DTYPES[datatype])
    except KeyError:
        raise ValueError(f"No numpy dtype for V2 datatype {datatype!r}") from None


# dtype name (numpy / TensorFlow spelling) -> TensorFlow Serving DataType enum name.
_TF_SERVING_DTYPES = {
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor. ``shape`` includes the batch dimension first; ``-1`` means any size."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _TF_SERVING_DTYPES:
            raise ValueError(f"Unsupported dtype for tensor '{self.name}'. Received: {self.dtype!r}")
        if not self.shape or self.shape[0] != -1:
            raise ValueError(
                f"Tensor '{self.name}' must have a leading batch dimension of -1. Received: {self.shape}"
            )

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one instance (without the batch dimension)."""
        return self.shape[1:]

    @property
    def tf_serving_dtype(self) -> str:
        return _TF_SERVING_DTYPES[self.dtype]

    @property
    def v2_datatype(self) -> str:
        return v2_datatype(self.dtype)

    def v2_metadata(self) -> dict[str, Any]:
        """``{name, datatype, shape}`` as the V2 protocol's model metadata lists a tensor."""
        return {"name": self.name, "datatype": self.v2_datatype, "shape": list(self.shape)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Signature:
    """The ``serving_default`` signature of a SavedModel."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    method_name: str = field(default="tensorflow/serving/predict")

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InvalidInput(f"Unknown input '{name[:64]}'; the model takes {[s.name for s in self.inputs]}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise InvalidInput(f"Unknown output '{name[:64]}'; the model gives {[s.name for s in self.outputs]}")

    def chosen_outputs(self, names: list[str], field: str) -> tuple[str, ...]:
        """The outputs a request names in ``field`` (each known, each at most once), or all of them."""
        if not names:
            return tuple(s.name for s in self.outputs)
        chosen = tuple(self.output(name).name for name in names)
        if len(set(chosen)) != len(chosen):
            twice = next(n for n in chosen if chosen.count(n) > 1)
            raise InvalidInput(f"{field} names '{twice}' more than once; name each output at most once")
        return chosen

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "method_name": self.method_name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(s) for s in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(s) for s in data["outputs"]),
            method_name=data.get("method_name", "tensorflow/serving/predict"),
        )

    @classmethod
    def from_concrete_function(cls, fn: Any) -> Signature:
        """Read the signature of a loaded SavedModel's ``serving_default`` concrete function."""
        _, kwargs = fn.structured_input_signature
        inputs = tuple(
            TensorSpec(name=name, dtype=spec.dtype.name, shape=tuple(-1 if d is None else d for d in spec.shape))
            for name, spec in sorted(kwargs.items())
        )
        outputs = tuple(
            TensorSpec(name=name, dtype=spec.dtype.name, shape=tuple(-1 if d is None else d for d in spec.shape))
            for name, spec in sorted(fn.structured_outputs.items())
        )
        return cls(inputs=inputs, outputs=outputs)


def to_batch(value: Any, spec: TensorSpec, *, where: str) -> np.ndarray:
    """Turn JSON-decoded data for one input into a batch array of ``spec``'s dtype and shape.

    ``where`` names the place in the request for error messages (for example ``instances[3]``).
    Raises :class:`InvalidInput` naming the problem: ragged lists, wrong types, wrong shape,
    NaN or infinity.
    """
    if spec.dtype == "string":
        raise InvalidInput(f"{where}: string inputs are not supported")
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InvalidInput(f"{where}: nested lists are ragged (all rows must have the same length)") from exc
    if array.dtype == object:
        raise InvalidInput(f"{where}: nested lists are ragged or mix types")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(
            f"{where}: expected numbers of type {spec.dtype} for input '{spec.name}', "
            f"received values of type {_json_type_name(array)}"
        )
    if array.ndim == 0:
        raise InvalidInput(f"{where}: expected a list for input '{spec.name}', received a single number")
    expected = spec.item_shape
    got = array.shape[1:]
    if len(got) != len(expected) or any(e != -1 and e != g for e, g in zip(expected, got, strict=True)):
        raise InvalidInput(
            f"{where}: input '{spec.name}' expects instances of shape {list(expected)}, "
            f"received shape {list(got)}"
        )
    if spec.dtype == "bool" and array.dtype.kind != "b":
        raise InvalidInput(f"{where}: input '{spec.name}' expects true or false, received {_json_type_name(array)}")
    if np.dtype(spec.dtype).kind in "iub" and array.dtype.kind == "f":
        raise InvalidInput(f"{where}: input '{spec.name}' expects integers ({spec.dtype}), received floats")
    check_in_range(array, spec, where=where)
    out = array.astype(spec.dtype, copy=False)
    check_finite(out, spec, where=where)
    return out


MAX_DIMS = 32  # the most dimensions a request's tensor may declare


def check_shape(shape: list[int], spec: TensorSpec, *, where: str, max_instances: int) -> None:
    """A request's shape for ``spec``: at most ``MAX_DIMS`` non-negative sizes, its rank and sizes (any
    where the signature says -1), at least one instance and at most ``max_instances``."""
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidInput(f"{where}: a shape is at most {MAX_DIMS} non-negative sizes. Received: {shape[:8]}")
    if len(shape) != len(spec.shape) or any(e != -1 and e != g for e, g in zip(spec.shape, shape, strict=True)):
        raise InvalidInput(f"{where}: input '{spec.name}' expects shape {list(spec.shape)}, received {shape}")
    if shape[0] == 0:
        raise InvalidInput(f"{where}: input '{spec.name}' has no instances (batch size 0)")
    if shape[0] > max_instances:
        raise PayloadTooLarge(f"{where}: input '{spec.name}' has {shape[0]} instances; the limit is "
                              f"{max_instances} (max_instances)")


def check_in_range(array: np.ndarray, spec: TensorSpec, *, where: str) -> None:
    """Integers sent for an integer input fit its dtype (``astype`` would wrap them around silently)."""
    if np.dtype(spec.dtype).kind in "iu" and array.dtype.kind in "iu" and array.size:
        info = np.iinfo(spec.dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise InvalidInput(f"{where}: input '{spec.name}' expects {spec.dtype} values in "
                               f"[{info.min}, {info.max}], received values in [{low}, {high}]")


def check_finite(array: np.ndarray, spec: TensorSpec, *, where: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{where}: input '{spec.name}' contains NaN or infinity")


def _json_type_name(array: np.ndarray) -> str:
    kind = array.dtype.kind
    return {"U": "string", "S": "string", "O": "mixed", "b": "bool"}.get(kind, str(array.dtype))
