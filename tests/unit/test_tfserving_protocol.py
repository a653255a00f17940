"""TF Serving REST codec and signature checks: unit tests, no Ray, no TensorFlow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maas.errors import InvalidInput, PayloadTooLarge
from maas.serving.protocol import tfserving
from maas.serving.protocol.limits import RequestLimits
from maas.signature import Signature, TensorSpec

LIMITS = RequestLimits()

DIGITS = Signature(
    inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
    outputs=(TensorSpec("probabilities", "float32", (-1, 10)),),
)
TWO_INPUTS = Signature(
    inputs=(TensorSpec("a", "float32", (-1, 2)), TensorSpec("b", "int64", (-1,))),
    outputs=(TensorSpec("y", "float32", (-1,)),),
)
IMAGE = np.arange(64, dtype=np.float32).reshape(8, 8) % 17


def test_row_format_single_input() -> None:
    req = tfserving.decode_predict(json.dumps({"instances": [IMAGE.tolist(), IMAGE.tolist()]}).encode(), DIGITS, LIMITS)
    assert req.row_format
    assert req.inputs["pixels"].dtype == np.float32 and req.inputs["pixels"].shape == (2, 8, 8)


def test_row_format_named_instances_and_columnar() -> None:
    named = {"instances": [{"pixels": IMAGE.tolist()}]}
    assert tfserving.decode_predict(json.dumps(named).encode(), DIGITS, LIMITS).inputs["pixels"].shape == (1, 8, 8)
    columnar = tfserving.decode_predict(json.dumps({"inputs": {"pixels": [IMAGE.tolist()]}}).encode(), DIGITS, LIMITS)
    assert not columnar.row_format and columnar.inputs["pixels"].shape == (1, 8, 8)
    bare = tfserving.decode_predict(json.dumps({"inputs": [IMAGE.tolist()]}).encode(), DIGITS, LIMITS)
    assert bare.inputs["pixels"].shape == (1, 8, 8)


def test_multiple_inputs() -> None:
    body = {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [0.5, 0.5], "b": 4}]}
    req = tfserving.decode_predict(json.dumps(body).encode(), TWO_INPUTS, LIMITS)
    assert req.inputs["a"].shape == (2, 2) and req.inputs["b"].dtype == np.int64
    with pytest.raises(InvalidInput, match="each instance must be an object"):
        tfserving.decode_predict(json.dumps({"instances": [[1.0, 2.0]]}).encode(), TWO_INPUTS, LIMITS)
    with pytest.raises(InvalidInput, match="expects integers"):
        tfserving.decode_predict(json.dumps({"inputs": {"a": [[1.0, 2.0]], "b": [1.5]}}).encode(), TWO_INPUTS, LIMITS)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "exactly one of 'instances'"),
        (json.dumps({"instances": [], "inputs": []}).encode(), "exactly one of"),
        (json.dumps({"instances": []}).encode(), "no instances"),
        (json.dumps({"instances": "abc"}).encode(), "must be a list"),
        (json.dumps({"instances": [list(range(64))]}).encode(), r"shape \[8, 8\], received shape \[64\]"),
        (json.dumps({"instances": [[["a"] * 8] * 8]}).encode(), "type string"),
        (json.dumps({"instances": [[[1, 2], [3]]]}).encode(), "ragged"),
        (json.dumps({"instances": 5}).encode(), "must be a list"),
        (json.dumps({"inputs": 5}).encode(), "single number"),
        (b'{"instances": [[[NaN, 0, 0, 0, 0, 0, 0, 0]]]}', "ragged|shape"),
        (json.dumps({"instances": [{"image": IMAGE.tolist()}]}).encode(), r"keys \['image'\]"),
        (json.dumps({"signature_name": "other", "instances": [IMAGE.tolist()]}).encode(), "signature_name"),
    ],
)
def test_bad_requests_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tfserving.decode_predict(body, DIGITS, LIMITS)


def test_nan_and_infinity_are_rejected() -> None:
    image = IMAGE.tolist()
    image[0][0] = float("nan")
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        tfserving.decode_predict(json.dumps({"instances": [image]}).encode(), DIGITS, LIMITS)


def _encode(outputs: dict, row_format: bool, limits: RequestLimits = LIMITS) -> dict:
    return json.loads(tfserving.encode_predict(outputs, row_format, limits))


def test_encode_predict_shapes() -> None:
    one = {"probabilities": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)}
    assert _encode(one, row_format=True) == {"predictions": [[0.1, 0.9], [0.8, 0.2]]}  # float32's shortest text
    assert _encode(one, row_format=False) == {"outputs": [[0.1, 0.9], [0.8, 0.2]]}
    two = {"p": np.array([0.5, 0.25]), "c": np.array([1, 0])}
    assert _encode(two, row_format=True) == {"predictions": [{"p": 0.5, "c": 1}, {"p": 0.25, "c": 0}]}
    assert _encode(two, row_format=False) == {"outputs": {"p": [0.5, 0.25], "c": [1, 0]}}
    assert _encode({"p": np.array([np.nan, 1.0])}, row_format=True) == {"predictions": [None, 1.0]}


def test_status_and_metadata_bodies_follow_tf_serving() -> None:
    status = tfserving.status_body([1, 2])
    assert status["model_version_status"][0] == {
        "version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}
    }
    meta = tfserving.metadata_body("digits", 2, DIGITS)
    assert meta["model_spec"] == {"name": "digits", "signature_name": "", "version": "2"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["pixels"]["tensor_shape"]["dim"]] == ["-1", "8", "8"]
    assert sig["outputs"]["probabilities"]["name"] == "StatefulPartitionedCall:0"


def test_integer_inputs_out_of_their_dtype_range_are_rejected_not_wrapped() -> None:
    image = Signature(inputs=(TensorSpec("image", "uint8", (-1, 2)),), outputs=(TensorSpec("p", "float32", (-1, 1)),))
    assert tfserving.decode_predict(b'{"instances": [[0, 255]]}', image, LIMITS).inputs["image"].dtype == np.uint8
    with pytest.raises(InvalidInput, match=r"expects uint8 values in \[0, 255\], received values in \[-1, 256\]"):
        tfserving.decode_predict(b'{"instances": [[-1, 256]]}', image, LIMITS)


def test_instances_over_the_limit_are_413_in_both_formats() -> None:
    limits = RequestLimits(max_instances=2)
    rows = json.dumps({"instances": [IMAGE.tolist()] * 3}).encode()
    with pytest.raises(PayloadTooLarge, match=r"'instances' has 3 instances; the limit is 2 \(max_instances\)"):
        tfserving.decode_predict(rows, DIGITS, limits)
    columns = json.dumps({"inputs": {"pixels": [IMAGE.tolist()] * 3}}).encode()
    with pytest.raises(PayloadTooLarge, match=r"'inputs.pixels' has 3 instances"):
        tfserving.decode_predict(columns, DIGITS, limits)


def test_an_answer_over_max_response_bytes_is_413() -> None:
    outputs = {"probabilities": np.full((4, 10), 0.123456, dtype=np.float32)}
    with pytest.raises(PayloadTooLarge, match=r"the limit is 100 .max_response_bytes."):
        tfserving.encode_predict(outputs, True, RequestLimits(max_response_bytes=100))


def test_boolean_inputs_take_true_and_false_only() -> None:
    flags = Signature(inputs=(TensorSpec("f", "bool", (-1, 2)),), outputs=(TensorSpec("p", "float32", (-1,)),))
    assert tfserving.decode_predict(b'{"instances": [[true, false]]}', flags, LIMITS).inputs["f"].dtype == np.bool_
    with pytest.raises(InvalidInput, match="expects true or false"):
        tfserving.decode_predict(b'{"instances": [[2, 0]]}', flags, LIMITS)
