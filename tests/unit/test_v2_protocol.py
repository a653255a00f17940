"""KServe V2 / Open Inference Protocol codec: routes, JSON and binary tensors, errors. No Ray, no TF."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maas.errors import InvalidInput, PayloadTooLarge
from maas.serving.protocol import v2
from maas.serving.protocol.limits import RequestLimits
from maas.signature import Signature, TensorSpec

LIMITS = RequestLimits()

DIGITS = Signature(
    inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
    outputs=(TensorSpec("probabilities", "float32", (-1, 10)),),
)
TWO_IN_TWO_OUT = Signature(
    inputs=(TensorSpec("a", "float32", (-1, 2)), TensorSpec("b", "int64", (-1,))),
    outputs=(TensorSpec("y", "float32", (-1,)), TensorSpec("z", "int64", (-1, 3))),
)
IMAGES = (np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8) % 17)


def decode(body: bytes, signature: Signature, header_length: str | None = None,
           limits: RequestLimits = LIMITS) -> v2.InferRequest:
    return v2.decode_infer(*v2.split_binary(body, header_length), signature, limits)


def encode(model: str, version: int, request: v2.InferRequest, outputs: dict,
           limits: RequestLimits = LIMITS) -> tuple[bytes, dict]:
    return v2.encode_infer(model, version, request, outputs, limits)


def _body(*inputs: dict, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _pixels(data, shape=(2, 8, 8), datatype="FP32", **extra) -> dict:
    return {"name": "pixels", "shape": list(shape), "datatype": datatype, "data": data, **extra}


@pytest.mark.parametrize("data", [IMAGES.reshape(-1).tolist(), IMAGES.tolist()], ids=["flat", "nested"])
def test_json_tensor_flat_or_nested(data) -> None:
    request = decode(_body(_pixels(data), id="req-1"), DIGITS)
    np.testing.assert_array_equal(request.inputs["pixels"], IMAGES)
    assert request.inputs["pixels"].dtype == np.float32
    assert request.id == "req-1" and request.outputs == ("probabilities",) and not request.binary_outputs


def test_binary_tensor_input_is_read_without_json_numbers() -> None:
    head = json.dumps({"inputs": [_pixels(None, parameters={"binary_data_size": IMAGES.nbytes})]}).encode()
    head = head.replace(b'"data": null, ', b"")
    request = decode(head + IMAGES.tobytes(), DIGITS, header_length=str(len(head)))
    np.testing.assert_array_equal(request.inputs["pixels"], IMAGES)


def test_several_inputs_mixing_json_and_binary() -> None:
    b = np.array([4, 5, 6], dtype=np.int64)
    head = json.dumps({"inputs": [
        {"name": "b", "shape": [3], "datatype": "INT64", "parameters": {"binary_data_size": b.nbytes}},
        {"name": "a", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
    ]}).encode()
    request = decode(head + b.tobytes(), TWO_IN_TWO_OUT, header_length=str(len(head)))
    np.testing.assert_array_equal(request.inputs["b"], b)
    np.testing.assert_array_equal(request.inputs["a"], [[1, 2], [3, 4], [5, 6]])


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{nope", "not valid JSON"),
        (json.dumps({"instances": [1]}).encode(), "non-empty 'inputs' list"),
        (_body(_pixels([0] * 128, datatype="FP64")), "expects datatype FP32, received FP64"),
        (_body(_pixels([0] * 128, shape=(2, 64))), r"expects shape \[-1, 8, 8\], received \[2, 64\]"),
        (_body(_pixels([0] * 127)), r"shape \[2, 8, 8\] needs 128 values, 'data' has 127"),
        (_body(_pixels([[0, 1], [2]], shape=(1, 8, 8))), "ragged"),
        (_body(_pixels(["a"] * 128)), "expected numbers"),
        (_body(_pixels([float("nan")] * 128)), "NaN or infinity"),
        (_body(_pixels([0] * 128, shape=(2, 8, -8))), "non-negative integers"),
        (_body(_pixels([0] * 128), parameters={"binary_data_output": "yes"}), "must be true or false"),
        (_body(_pixels([0] * 128), outputs=[{"name": "probabilities"}] * 2), "more than once"),
        (_body(_pixels([0] * 128) | {"name": "image"}), "Unknown input 'image'"),
        (_body(_pixels([0] * 128), _pixels([0] * 128)), "given twice"),
        (_body(_pixels([], shape=(0, 8, 8))), "batch size 0"),
        (_body(_pixels([0] * 128), outputs=[{"name": "logits"}]), "Unknown output 'logits'"),
        (_body(_pixels([0] * 128), id=7), "'id' must be a string"),
        (_body(_pixels(None, parameters={"binary_data_size": 512})), "no Inference-Header-Content-Length"),
        (_body(_pixels([0] * 128), parameters=[1]), "'parameters' must be an object"),
    ],
)
def test_bad_requests_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode(body, DIGITS)


def test_binary_sizes_and_leftovers_are_checked() -> None:
    def call(size: int, payload: bytes, header: str | None = None) -> None:
        head = json.dumps({"inputs": [{"name": "pixels", "shape": [2, 8, 8], "datatype": "FP32",
                                       "parameters": {"binary_data_size": size}}]}).encode()
        decode(head + payload, DIGITS, header_length=header or str(len(head)))

    with pytest.raises(InvalidInput, match="binary_data_size must be 512 bytes"):
        call(500, IMAGES.tobytes()[:500])
    with pytest.raises(InvalidInput, match="ends before"):
        call(512, IMAGES.tobytes()[:100])
    with pytest.raises(InvalidInput, match="4 binary bytes that no input claims"):
        call(512, IMAGES.tobytes() + b"\0" * 4)
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length must be"):
        call(512, IMAGES.tobytes(), header="99999")


def test_encode_json_outputs_flat_with_shape_and_id() -> None:
    request = decode(_body(_pixels(IMAGES.tolist()), id="abc"), DIGITS)
    probs = np.full((2, 10), 0.1, dtype=np.float32)
    body, headers = encode("digits", 3, request, {"probabilities": probs})
    answer = json.loads(body)
    assert headers == {"content-type": "application/json"}
    assert answer["model_name"] == "digits" and answer["model_version"] == "3" and answer["id"] == "abc"
    (out,) = answer["outputs"]
    assert out["name"] == "probabilities" and out["shape"] == [2, 10] and out["datatype"] == "FP32"
    assert len(out["data"]) == 20


def test_requested_outputs_and_binary_outputs() -> None:
    body = json.dumps({
        "inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
                   {"name": "b", "shape": [1], "datatype": "INT64", "data": [3]}],
        "outputs": [{"name": "z", "parameters": {"binary_data": True}}, {"name": "y"}],
    }).encode()
    request = decode(body, TWO_IN_TWO_OUT)
    assert request.outputs == ("z", "y") and request.binary_outputs == {"z"}
    z = np.array([[7, 8, 9]], dtype=np.int64)
    content, headers = encode("m", 1, request, {"y": np.array([0.5], np.float32), "z": z})
    n = int(headers[v2.HEADER_LENGTH])
    head = json.loads(content[:n])
    assert [o["name"] for o in head["outputs"]] == ["z", "y"]
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 24} and "data" not in head["outputs"][0]
    assert head["outputs"][1]["data"] == [0.5]
    np.testing.assert_array_equal(np.frombuffer(content[n:], dtype="<i8").reshape(1, 3), z)


def test_binary_data_output_for_every_output() -> None:
    request = decode(_body(_pixels(IMAGES.tolist()), parameters={"binary_data_output": True}), DIGITS)
    assert request.binary_outputs == {"probabilities"}


def test_metadata_bodies() -> None:
    body = v2.model_metadata_body("digits", [1, 2], DIGITS)
    assert body == {
        "name": "digits",
        "versions": ["1", "2"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert v2.server_metadata_body("0.1.0")["extensions"] == ["binary_tensor_data"]


def test_an_output_asked_for_2000_times_is_refused_not_answered_40_mb() -> None:
    """Measured on 6c14451: a 73 KB request naming the same output 2,000 times was answered 200, 39.9 MB."""
    body = _body(_pixels(IMAGES.tolist()), outputs=[{"name": "probabilities"}] * 2000)
    with pytest.raises(InvalidInput, match="asks for 'probabilities' more than once"):
        decode(body, DIGITS)


def test_instances_over_the_limit_are_413_before_any_is_converted() -> None:
    limits = RequestLimits(max_instances=1)
    with pytest.raises(PayloadTooLarge, match=r"has 2 instances; the limit is 1 \(max_instances\)"):
        decode(_body(_pixels(IMAGES.tolist())), DIGITS, limits=limits)


def test_an_answer_over_max_response_bytes_is_413() -> None:
    request = decode(_body(_pixels(IMAGES.tolist())), DIGITS)
    big = np.zeros((2, 100_000), dtype=np.float32)
    with pytest.raises(PayloadTooLarge, match=r"at least 400000 bytes; the limit is 1000 .max_response_bytes."):
        encode("digits", 1, request, {"probabilities": big}, RequestLimits(max_response_bytes=1000))
    binary = decode(_body(_pixels(IMAGES.tolist()), parameters={"binary_data_output": True}), DIGITS)
    with pytest.raises(PayloadTooLarge, match="at least 800000 bytes"):
        encode("digits", 1, binary, {"probabilities": big}, RequestLimits(max_response_bytes=1000))


@pytest.mark.parametrize("header", ["²", "1e3", " 12", "-1", "1" * 20])
def test_the_header_length_is_ascii_digits(header: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length must be"):
        v2.split_binary(b"{}", header)
