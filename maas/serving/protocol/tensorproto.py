"""TensorFlow's ``TensorProto`` to numpy and back, as TensorFlow Serving reads and writes it over gRPC.

A client may send the values as ``tensor_content`` (raw little-endian bytes, what ``tf.make_tensor_proto``
writes) or in the typed ``*_val`` field of the dtype (``float_val``, ``int_val``...). As TensorFlow's
``Tensor::FromProto`` does, fewer typed values than the shape holds are completed by repeating the
last one (a single value broadcast), and none at all means zeros. Each check happens before the work it
bounds: a shape whose values would be past ``max_request_bytes`` is refused before any array is made.
Pure functions over protobuf messages and numpy: no gRPC server, no Ray.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from maas.errors import InvalidInput, PayloadTooLarge
from maas.signature import TensorSpec, check_finite, check_in_range, check_shape

_MAX_DIMS = 32

# TensorFlow DataType -> (numpy dtype, the TensorProto field its values travel in without tensor_content)
_DTYPES: dict[int, tuple[str, str]] = {
    types_pb2.DT_FLOAT: ("float32", "float_val"),
    types_pb2.DT_DOUBLE: ("float64", "double_val"),
    types_pb2.DT_HALF: ("float16", "half_val"),  # the 16 bits of each value, in an int32
    types_pb2.DT_INT8: ("int8", "int_val"),
    types_pb2.DT_INT16: ("int16", "int_val"),
    types_pb2.DT_INT32: ("int32", "int_val"),
    types_pb2.DT_INT64: ("int64", "int64_val"),
    types_pb2.DT_UINT8: ("uint8", "int_val"),
    types_pb2.DT_UINT16: ("uint16", "int_val"),
    types_pb2.DT_UINT32: ("uint32", "uint32_val"),
    types_pb2.DT_UINT64: ("uint64", "uint64_val"),
    types_pb2.DT_BOOL: ("bool", "bool_val"),
}
_BY_NUMPY = {name: dtype for dtype, (name, _) in _DTYPES.items()}


def dtype_name(dtype: int) -> str:
    """``DT_FLOAT`` for ``types_pb2.DT_FLOAT`` (a number a client chose: unknown ones are named as such)."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DataType {dtype}"


def tf_dtype(spec: TensorSpec) -> int:
    """The ``DataType`` enum value of a signature's tensor."""
    return types_pb2.DataType.Value(spec.tf_serving_dtype)


def tensor_shape(shape: tuple[int, ...] | list[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])


def to_numpy(proto: tensor_pb2.TensorProto, spec: TensorSpec, *, where: str, max_bytes: int,
             max_instances: int) -> np.ndarray:
    """The batch ``proto`` carries for ``spec``: its dtype must be the signature's, its shape the
    signature's (any size where the signature says -1), its values finite."""
    if spec.dtype == "string":
        raise InvalidInput(f"{where}: string inputs are not supported")
    expected = tf_dtype(spec)
    if proto.dtype != expected:
        raise InvalidInput(f"{where}: input '{spec.name}' expects {spec.tf_serving_dtype}, "
                           f"received {dtype_name(proto.dtype)}")
    shape = _shape(proto, spec, where, max_instances)
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    count = math.prod(shape)
    if count * dtype.itemsize > max_bytes:
        raise PayloadTooLarge(f"{where}: input '{spec.name}' of shape {shape} is {count * dtype.itemsize} bytes; "
                              f"the limit is {max_bytes} bytes (max_request_bytes)")
    if proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise InvalidInput(f"{where}: tensor_content has {len(proto.tensor_content)} bytes; shape {shape} of "
                               f"{spec.tf_serving_dtype} needs {count * dtype.itemsize}")
        array = np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    else:
        array = _typed_values(proto, spec, shape, count, where)
    check_finite(array, spec, where=where)
    return array


def from_numpy(value: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with the values as ``tensor_content`` (what ``tf.make_ndarray`` reads back)."""
    array = np.ascontiguousarray(value)
    try:
        dtype = _BY_NUMPY[array.dtype.name]
    except KeyError:
        raise InvalidInput(f"An output of dtype {array.dtype.name} cannot be sent as a TensorProto") from None
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape(array.shape),
                                  tensor_content=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def encoded_size(outputs: Any) -> int:
    """Bytes the outputs take as ``tensor_content`` (what an answer's size is judged by before encoding)."""
    return sum(np.asarray(v).nbytes for v in outputs)


# ---- internals -------------------------------------------------------------------------------


def _shape(proto: tensor_pb2.TensorProto, spec: TensorSpec, where: str, max_instances: int) -> list[int]:
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"{where}: input '{spec.name}' has an unknown rank; give its shape")
    dims = proto.tensor_shape.dim
    if len(dims) > _MAX_DIMS or any(d.size < 0 for d in dims):
        raise InvalidInput(f"{where}: a shape is at most {_MAX_DIMS} non-negative sizes")
    shape = [d.size for d in dims]
    check_shape(shape, spec, where=where, max_instances=max_instances)
    return shape


def _typed_values(proto: tensor_pb2.TensorProto, spec: TensorSpec, shape: list[int], count: int,
                  where: str) -> np.ndarray:
    numpy_name, field = _DTYPES[proto.dtype]
    values = getattr(proto, field)
    n = len(values)
    if n > count:
        raise InvalidInput(f"{where}: {field} has {n} values; shape {shape} holds {count}")
    if field == "half_val":
        raw = np.asarray(values, dtype=np.int64)
        if n and (raw.min() < 0 or raw.max() > 0xFFFF):
            raise InvalidInput(f"{where}: half_val holds the 16 bits of each DT_HALF value, 0 to 65535")
        array = raw.astype(np.uint16).view(np.float16)
    else:
        array = np.asarray(values, dtype=np.int64 if field == "int_val" else numpy_name)
        check_in_range(array, spec, where=where)  # int_val carries 8- and 16-bit values in 32 bits
        array = array.astype(numpy_name, copy=False)
    if n == 0:
        return np.zeros(shape, dtype=numpy_name)
    if n < count:  # TensorFlow's rule: the last value fills the rest
        array = np.concatenate([array, np.full(count - n, array[-1], dtype=numpy_name)])
    return array.reshape(shape)
