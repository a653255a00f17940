"""TensorFlow's ``TensorProto`` to numpy and back, as TensorFlow Serving reads and writes it over gRPC.

A client may send the values as ``tensor_content`` (raw little-endian bytes, what ``tf.make_tensor_proto``
writes) or in the typed ``*_val`` field of the dtype (``float_val``, ``int_val``...); answers carry them
in the typed field, as TF Serving's do. As TensorFlow's
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
        name: str = types_pb2.DataType.Name(dtype)
        return name
    except ValueError:
        return f"DataType {dtype}"


def dtype_of(dtype: int) -> np.dtype:
    """The numpy dtype of a numeric TensorFlow ``DataType``."""
    try:
        return np.dtype(_DTYPES[dtype][0])
    except KeyError:
        raise InvalidInput(f"No numpy dtype for {dtype_name(dtype)}") from None


def tf_dtype(spec: TensorSpec) -> int:
    """The ``DataType`` enum value of a signature's tensor."""
    value: int = types_pb2.DataType.Value(spec.tf_serving_dtype)
    return value


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


def from_numpy(value: np.ndarray, *, content: bool = False) -> tensor_pb2.TensorProto:
    """A TensorProto of ``value``: its values in the typed field of its dtype, as TF Serving answers
    (``AsProtoField``: clients read ``float_val`` directly), or as ``tensor_content`` (``content``:
    what ``tf.make_tensor_proto`` sends). Strings (object arrays of bytes) go in ``string_val``."""
    array = np.ascontiguousarray(value)
    shape = tensor_shape(array.shape)
    if array.dtype.kind in "OSU":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1).tolist()]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=items)
    try:
        dtype = _BY_NUMPY[array.dtype.name]
    except KeyError:
        raise InvalidInput(f"A tensor of dtype {array.dtype.name} cannot be sent as a TensorProto") from None
    if content:
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape,
                                      tensor_content=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape)
    field = _DTYPES[dtype][1]
    flat = array.reshape(-1)
    getattr(proto, field).extend((flat.view(np.uint16) if field == "half_val" else flat).tolist())
    return proto


def to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Any numeric or string TensorProto as an array (a client reading an answer: no signature to check
    against); strings as an object array of bytes."""
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING:
        return np.asarray(list(proto.string_val), dtype=object).reshape(shape)
    try:
        numpy_name, field = _DTYPES[proto.dtype]
    except KeyError:
        raise InvalidInput(f"A TensorProto of {dtype_name(proto.dtype)} cannot be read as numbers") from None
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np.dtype(numpy_name).newbyteorder("<")).reshape(shape)
    return _field_values(proto, numpy_name, field).astype(numpy_name, copy=False).reshape(shape)


def encoded_size(outputs: Any) -> int:
    """Bytes the outputs' values take (what an answer's size is judged by before it is encoded)."""
    return sum(np.asarray(v).nbytes for v in outputs)


# ---- internals -------------------------------------------------------------------------------


def _shape(proto: tensor_pb2.TensorProto, spec: TensorSpec, where: str, max_instances: int) -> list[int]:
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"{where}: input '{spec.name}' has an unknown rank; give its shape")
    shape = [d.size for d in proto.tensor_shape.dim]
    check_shape(shape, spec, where=where, max_instances=max_instances)
    return shape


def _typed_values(proto: tensor_pb2.TensorProto, spec: TensorSpec, shape: list[int], count: int,
                  where: str) -> np.ndarray:
    numpy_name, field = _DTYPES[proto.dtype]
    n = len(getattr(proto, field))
    if n > count:
        raise InvalidInput(f"{where}: {field} has {n} values; shape {shape} holds {count}")
    array = _field_values(proto, numpy_name, field)
    check_in_range(array, spec, where=where)  # int_val carries 8- and 16-bit values in 32 bits
    array = array.astype(numpy_name, copy=False)
    if n == 0:
        return np.zeros(shape, dtype=numpy_name)
    if n < count:  # TensorFlow's rule: the last value fills the rest
        array = np.concatenate([array, np.full(count - n, array[-1], dtype=numpy_name)])
    return array.reshape(shape)


def _field_values(proto: tensor_pb2.TensorProto, numpy_name: str, field: str) -> np.ndarray:
    """The values of a typed field as TensorFlow reads them: ``half_val``'s low 16 bits of each int32 as
    float16, ``int_val`` as int64 (it carries 8- and 16-bit values, to be range-checked), others as is."""
    values = getattr(proto, field)
    if field == "half_val":
        return (np.asarray(values, dtype=np.int64) & 0xFFFF).astype(np.uint16).view(np.float16)
    return np.asarray(values, dtype=np.int64 if field == "int_val" else numpy_name)
