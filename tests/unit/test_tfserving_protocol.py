"""TF Serving REST codec and signature checks: unit tests, no Ray, no TensorFlow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maas.errors import InvalidInput
from maas.serving import tfserving
from maas.signature import Signature, TensorSpec

DIGITS = Signature(
    inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
    outputs=(TensorSpec("probabilities", "float32", (-1, 10)),),
)
TWO_INPUTS = Signature(
    inputs=(TensorSpec("a", "float32", (-1, 2)), TensorSpec("b", "int64", (-1,))),
    outputs=(TensorSpec("y", "float32", (-1,)),),
)
IMAGE = np.arange(64, dtype=np.float32).reshape(8, 8) % 17


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v1/models/digits", tfserving.Route("status", "digits")),
        ("/v1/models/digits/versions/3", tfserving.Route("status", "digits", version=3)),
        ("/v1/models/digits/metadata", tfserving.Route("metadata", "digits")),
        ("/v1/models/digits/versions/2/metadata", tfserving.Route("metadata", "digits", version=2)),
        ("/v1/models/digits:predict", tfserving.Route("predict", "digits")),
        ("/v1/models/digits/versions/7:predict", tfserving.Route("predict", "digits", version=7)),
        ("/v1/models/digits/labels/canary:predict", tfserving.Route("predict", "digits", label="canary")),
        ("/v2/models/digits", None),
        ("/v1/models", None),
    ],
)
def test_routes(path: str, expected: tfserving.Route | None) -> None:
    assert tfserving.match_route(path) == expected


@pytest.mark.parametrize("path", ["/v1/models/d/versions/0:predict", "/v1/models/d/versions/x", "/v1/models/d:classify"])
def test_bad_routes_are_invalid_input(path: str) -> None:
    with pytest.raises(InvalidInput):
        tfserving.match_route(path)


def test_row_format_single_input() -> None:
    req = tfserving.decode_predict(json.dumps({"instances": [IMAGE.tolist(), IMAGE.tolist()]}).encode(), DIGITS)
    assert req.row_format and req.batch_size == 2
    assert req.inputs["pixels"].dtype == np.float32 and req.inputs["pixels"].shape == (2, 8, 8)


def test_row_format_named_instances_and_columnar() -> None:
    named = {"instances": [{"pixels": IMAGE.tolist()}]}
    assert tfserving.decode_predict(json.dumps(named).encode(), DIGITS).inputs["pixels"].shape == (1, 8, 8)
    columnar = tfserving.decode_predict(json.dumps({"inputs": {"pixels": [IMAGE.tolist()]}}).encode(), DIGITS)
    assert not columnar.row_format and columnar.batch_size == 1
    bare = tfserving.decode_predict(json.dumps({"inputs": [IMAGE.tolist()]}).encode(), DIGITS)
    assert bare.inputs["pixels"].shape == (1, 8, 8)


def test_multiple_inputs() -> None:
    body = {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [0.5, 0.5], "b": 4}]}
    req = tfserving.decode_predict(json.dumps(body).encode(), TWO_INPUTS)
    assert req.inputs["a"].shape == (2, 2) and req.inputs["b"].dtype == np.int64
    with pytest.raises(InvalidInput, match="each instance must be an object"):
        tfserving.decode_predict(json.dumps({"instances": [[1.0, 2.0]]}).encode(), TWO_INPUTS)
    with pytest.raises(InvalidInput, match="expects integers"):
        tfserving.decode_predict(json.dumps({"inputs": {"a": [[1.0, 2.0]], "b": [1.5]}}).encode(), TWO_INPUTS)


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
        tfserving.decode_predict(body, DIGITS)


def test_nan_and_infinity_are_rejected() -> None:
    image = IMAGE.tolist()
    image[0][0] = float("nan")
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        tfserving.decode_predict(json.dumps({"instances": [image]}).encode(), DIGITS)


def test_encode_predict_shapes() -> None:
    one = {"probabilities": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)}
    assert tfserving.encode_predict(one, row_format=True) == {"predictions": one["probabilities"].tolist()}
    assert tfserving.encode_predict(one, row_format=False) == {"outputs": one["probabilities"].tolist()}
    two = {"p": np.array([0.5, 0.25]), "c": np.array([1, 0])}
    assert tfserving.encode_predict(two, row_format=True) == {"predictions": [{"p": 0.5, "c": 1}, {"p": 0.25, "c": 0}]}
    assert tfserving.encode_predict(two, row_format=False) == {"outputs": {"p": [0.5, 0.25], "c": [1, 0]}}


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
    assert tfserving.decode_predict(b'{"instances": [[0, 255]]}', image).inputs["image"].dtype == np.uint8
    with pytest.raises(InvalidInput, match=r"expects uint8 values in \[0, 255\], received values in \[-1, 256\]"):
        tfserving.decode_predict(b'{"instances": [[-1, 256]]}', image)
