"""Strict JSON for request bodies: nesting bounded before parsing, integers bounded, UTF-8 required,
and no body of any bytes makes decoding raise anything but a named client error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas.errors import InvalidInput, MaasError
from maas.serving.protocol import jsonbody, tfserving, v2
from maas.serving.protocol.limits import RequestLimits
from maas.signature import Signature, TensorSpec

SIGNATURE = Signature(inputs=(TensorSpec("x", "float32", (-1, 2)), TensorSpec("k", "int64", (-1,))),
                      outputs=(TensorSpec("y", "float32", (-1,)),))
LIMITS = RequestLimits(max_instances=50)


@pytest.mark.parametrize("body, depth", [
    (b"1", 0), (b"[]", 1), (b'{"a": [[1]]}', 3), (b'{"a": "[[[["}', 1), (b'["\\"[[[", [[]]]', 3),
    (b'["\\\\", [[]]]', 3), (b'{"k\\\\\\"[": [1]}', 2), (b'["]]]]]", [[[[]]]]]', 5),
])
def test_nesting_depth_ignores_brackets_in_strings(body: bytes, depth: int) -> None:
    assert jsonbody.nesting_depth(body) == depth


def test_limits_name_themselves() -> None:
    with pytest.raises(InvalidInput, match="nested 40 levels deep; the limit is 32"):
        jsonbody.parse(b"[" * 40 + b"]" * 40, max_depth=32)
    assert jsonbody.parse(b"[" + b"9" * 21 + b"]", max_depth=32) == [1e21]  # orjson reads it as a float
    with pytest.raises(InvalidInput, match="integer of 400 digits"):  # too large for a float: not read at all
        jsonbody.parse(b"[" + b"9" * 400 + b"]", max_depth=32)
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        jsonbody.parse(b'["\xc3\x28"]', max_depth=32)
    assert jsonbody.parse(b"[NaN, Infinity]", max_depth=32)[0] != 0  # read, for validation to name


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30)
shaped = st.fixed_dictionaries({
    "instances": st.lists(st.fixed_dictionaries({"x": json_values, "k": json_values}), max_size=3) | json_values,
})
v2_shaped = st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["x", "k", "z"]) | json_values,
    "shape": st.lists(st.integers(-2, 3), max_size=3) | json_values,
    "datatype": st.sampled_from(["FP32", "INT64", "BYTES"]) | json_values,
    "data": json_values,
    "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 64) | json_values}) | json_values,
}), max_size=3), "outputs": json_values, "parameters": json_values, "id": json_values})


def _body(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values.map(_body), shaped.map(_body), st.binary(max_size=64)))
def test_any_predict_body_decodes_or_is_a_named_client_error(body: bytes) -> None:
    try:
        tfserving.decode_predict(body, SIGNATURE, LIMITS)
    except MaasError as exc:
        assert 400 <= exc.http_status < 500 and str(exc)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(v2_shaped.map(_body), json_values.map(_body)), st.binary(max_size=64),
       st.sampled_from([None, "0", "5"]))
def test_any_infer_body_decodes_or_is_a_named_client_error(head: bytes, tail: bytes, length: str | None) -> None:
    body = head + tail if length is not None else head
    try:
        request = v2.decode_infer(*v2.split_binary(body, length if length != "5" else str(len(head))),
                                  SIGNATURE, LIMITS)
    except MaasError as exc:
        assert 400 <= exc.http_status < 500 and str(exc)
    else:
        assert all(isinstance(a, np.ndarray) for a in request.inputs.values())
