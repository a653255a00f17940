"""gRPC's error, auth and limit cases through :class:`maas.serving.grpc_api.GrpcApi` over the real data
plane, storage cache and key store (only the model host is a fake): TF Serving's PredictionService and
ModelService, KServe V2's GRPCInferenceService. Answers equal REST's; every error is a status code
with REST's message, never INTERNAL. (The messages come from tensorflow-serving-api, which imports
TensorFlow: this module takes some seconds to import.)"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
)
from tritonclient.grpc import service_pb2

from maas.errors import StorageUnavailable
from maas.serving.grpc_api import GrpcApi
from maas.serving.protocol import tensorproto
from maas.serving.protocol.limits import RequestLimits

CODE = grpc.StatusCode


def _api(stack, limits: RequestLimits | None = None, seen: list | None = None) -> GrpcApi:
    return GrpcApi(stack.plane, limits=limits or RequestLimits(),
                   observe=lambda info, status, ms: seen.append((info, status)) if seen is not None else None)


def _call(stack, method: str, request, *, key: str | None = "default", api: GrpcApi | None = None,
          metadata: dict[str, str] | None = None):
    md = dict(metadata or {})
    if key == "default":
        md.setdefault("authorization", f"Bearer {stack.key}")
    elif key is not None:
        md["authorization"] = f"Bearer {key}"
    return stack.run((api or _api(stack)).handle(method, request, md))


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def _pixels(n: int = 1, **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=values.pop("dtype", types_pb2.DT_FLOAT), tensor_shape=_shape(n, 8, 8),
                                   **values)
    if not values:
        proto.tensor_content = np.zeros((n, 8, 8), "<f4").tobytes()
    return proto


def _predict(tensor: tensor_pb2.TensorProto | None = None, *, model: str = "digits", version: int | None = None,
             label: str | None = None, output_filter: tuple[str, ...] = ()) -> predict_pb2.PredictRequest:
    spec = model_pb2.ModelSpec(name=model)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    request = predict_pb2.PredictRequest(model_spec=spec, output_filter=list(output_filter))
    request.inputs["pixels"].CopyFrom(tensor if tensor is not None else _pixels())
    return request


def _array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """An answer's tensor, which comes in its typed field, as TF Serving's do (clients read float_val)."""
    assert proto.dtype == types_pb2.DT_FLOAT and not proto.tensor_content and proto.float_val
    return tensorproto.to_array(proto)


def test_predict_answers_as_rest_does_with_the_version_in_trailing_metadata(stack) -> None:
    answer = _call(stack, "Predict", _predict(_pixels(3)))
    assert answer.code == CODE.OK, answer.details
    assert answer.trailing == [("model-version", "1")]
    assert answer.message.model_spec.name == "digits" and answer.message.model_spec.version.value == 1
    rest = stack.call("POST", "/v1/models/digits:predict",
                      json.dumps({"instances": np.zeros((3, 8, 8)).tolist()}).encode()).json()["predictions"]
    np.testing.assert_array_equal(_array(answer.message.outputs["probabilities"]), np.asarray(rest, np.float32))


def test_typed_values_a_single_value_broadcast_and_none_read_as_tensorflow_reads_them(stack) -> None:
    for values in ({"float_val": [0.5] * 64}, {"float_val": [0.5]}, {"float_val": []}):
        answer = _call(stack, "Predict", _predict(_pixels(1, **values)))
        assert answer.code == CODE.OK, (values, answer.details)
    assert stack.host.calls[-3:] == [("digits", 1, 1)] * 3
    answer = _call(stack, "Predict", _predict(_pixels(1, float_val=[0.5] * 65)))
    assert answer.code == CODE.INVALID_ARGUMENT and "float_val has 65 values" in answer.details


@pytest.mark.parametrize("tensor, expected", [
    (_pixels(1, dtype=types_pb2.DT_INT32, int_val=[1]), "expects DT_FLOAT, received DT_INT32"),
    (_pixels(1, dtype=12345), "received DataType 12345"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(1, 8, 9), float_val=[0.0]),
     "expects shape [-1, 8, 8], received [1, 8, 9]"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(0, 8, 8)), "no instances"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        unknown_rank=True)), "unknown rank"),
    (_pixels(1, tensor_content=b"\0" * 10), "tensor_content has 10 bytes"),
    (_pixels(1, float_val=[float("nan")]), "NaN or infinity"),
])
def test_a_tensor_that_does_not_fit_the_signature_is_invalid_argument(stack, tensor, expected) -> None:
    answer = _call(stack, "Predict", _predict(tensor))
    assert answer.code == CODE.INVALID_ARGUMENT and expected in answer.details, answer.details
    assert not stack.host.calls


def test_a_broadcast_past_the_request_limit_is_refused_before_any_array_is_made(stack) -> None:
    huge = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(8000, 8, 8), float_val=[1.0])
    answer = _call(stack, "Predict", _predict(huge), api=_api(stack, RequestLimits(max_request_bytes=1 << 20)))
    assert answer.code == CODE.RESOURCE_EXHAUSTED and "max_request_bytes" in answer.details
    answer = _call(stack, "Predict", _predict(_pixels(9)), api=_api(stack, RequestLimits(max_instances=8)))
    assert answer.code == CODE.RESOURCE_EXHAUSTED and "max_instances" in answer.details
    answer = _call(stack, "Predict", _predict(_pixels(40)), api=_api(stack, RequestLimits(max_request_bytes=4096)))
    assert answer.code == CODE.RESOURCE_EXHAUSTED and "Request of" in answer.details  # the message itself
    answer = _call(stack, "Predict", _predict(_pixels(40)), api=_api(stack, RequestLimits(max_response_bytes=100)))
    assert answer.code == CODE.RESOURCE_EXHAUSTED and "max_response_bytes" in answer.details


def test_versions_labels_and_names_route_and_fail_as_over_rest(stack) -> None:
    v2 = stack.publish()
    stack.registry.set_label("digits", "stable", 1)
    stack.clock.now += 10  # past the cache's refresh
    assert _call(stack, "Predict", _predict(version=v2)).trailing == [("model-version", str(v2))]
    assert _call(stack, "Predict", _predict(label="stable")).trailing == [("model-version", "1")]
    for request, code, text in [
        (_predict(version=99), CODE.NOT_FOUND, "has no version 99"),
        (_predict(label="nope"), CODE.NOT_FOUND, "has no label 'nope'"),
        (_predict(label="stable\n"), CODE.INVALID_ARGUMENT, "Labels are"),
        (_predict(model="absent"), CODE.NOT_FOUND, "Model 'absent' not found"),
        (_predict(model="no/slash"), CODE.INVALID_ARGUMENT, "Model names are"),
        (_predict(version=-3), CODE.INVALID_ARGUMENT, "Version must be"),
        (_predict(output_filter=("nope",)), CODE.INVALID_ARGUMENT, "Unknown output 'nope'"),
        (_predict(output_filter=("probabilities",) * 2), CODE.INVALID_ARGUMENT, "more than once"),
    ]:
        answer = _call(stack, "Predict", request)
        assert answer.code == code and text in answer.details, (request.model_spec, answer.details)
    request = _predict()
    request.model_spec.signature_name = "other"
    assert _call(stack, "Predict", request).code == CODE.INVALID_ARGUMENT


def test_keys_in_either_header_and_their_scope(stack) -> None:
    assert _call(stack, "Predict", _predict(), key=None).code == CODE.UNAUTHENTICATED
    assert _call(stack, "Predict", _predict(), key="maas_0123456789ab_" + "x" * 43).code == CODE.UNAUTHENTICATED
    assert _call(stack, "Predict", _predict(), key=None, metadata={"x-api-key": stack.key}).code == CODE.OK
    narrow = stack.keys.create("narrow", ["other"])[0]
    stack.clock.now += 1  # the key listing is read again at most once a second
    answer = _call(stack, "Predict", _predict(), key=narrow)
    assert answer.code == CODE.PERMISSION_DENIED and "may not call model 'digits'" in answer.details
    for method, request in [("ServerLive", service_pb2.ServerLiveRequest()),
                            ("ServerReady", service_pb2.ServerReadyRequest()),
                            ("ServerMetadata", service_pb2.ServerMetadataRequest())]:
        assert _call(stack, method, request, key=None).code == CODE.OK, method  # as REST's health routes
    assert _call(stack, "ModelReady", service_pb2.ModelReadyRequest(name="digits"), key=None).code == \
        CODE.UNAUTHENTICATED


def test_classify_regress_and_multi_inference_are_unimplemented(stack) -> None:
    request = classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name="digits"))
    answer = _call(stack, "Classify", request)
    assert answer.code == CODE.UNIMPLEMENTED and "Classification is not supported; use Predict" in answer.details
    assert isinstance(answer.message, classification_pb2.ClassificationResponse)
    multi = inference_pb2.MultiInferenceRequest()  # no model_spec of its own: one per task
    multi.tasks.add().model_spec.name = "digits"
    answer = _call(stack, "MultiInference", multi)
    assert answer.code == CODE.UNIMPLEMENTED and "MultiInference is not supported" in answer.details
    assert _call(stack, "MultiInference", multi, key=None).code == CODE.UNAUTHENTICATED


class _Strings:
    """A model host whose output 'label' is a string tensor (an object array of bytes, as TF gives it)."""

    async def predict(self, model, version, inputs, ticket):
        n = len(next(iter(inputs.values())))
        return {"label": np.array([b"cat", b"\xff\xfe"] * n, dtype=object)[:n]}


def test_string_outputs_are_string_val_in_tf_serving_and_length_prefixed_bytes_in_v2(stack) -> None:
    from maas.signature import Signature, TensorSpec

    stack.publish("labeller", Signature(inputs=(TensorSpec("x", "float32", (-1, 2)),),
                                        outputs=(TensorSpec("label", "string", (-1,)),)))
    stack.plane._host = _Strings()
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="labeller"))
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 2),
                                                        float_val=[1.0]))
    answer = _call(stack, "Predict", request)
    assert answer.code == CODE.OK, answer.details
    label = answer.message.outputs["label"]
    assert label.dtype == types_pb2.DT_STRING and list(label.string_val) == [b"cat", b"\xff\xfe"]
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    infer = service_pb2.ModelInferRequest(model_name="labeller", inputs=[tensor])
    answer = _call(stack, "ModelInfer", infer)
    assert answer.code == CODE.OK, answer.details
    assert answer.message.outputs[0].datatype == "BYTES"
    assert answer.message.raw_output_contents[0] == b"\x03\x00\x00\x00cat"


def test_model_metadata_and_status(stack) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name="digits"),
                                                             metadata_field=["signature_def"])
    answer = _call(stack, "GetModelMetadata", request)
    assert answer.code == CODE.OK, answer.details
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert answer.message.metadata["signature_def"].Unpack(signatures)
    definition = signatures.signature_def["serving_default"]
    assert definition.inputs["pixels"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in definition.inputs["pixels"].tensor_shape.dim] == [-1, 8, 8]
    assert [d.size for d in definition.outputs["probabilities"].tensor_shape.dim] == [-1, 10]
    del request.metadata_field[:]
    assert _call(stack, "GetModelMetadata", request).code == CODE.INVALID_ARGUMENT
    stack.publish()
    stack.clock.now += 10
    status = _call(stack, "GetModelStatus", get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="digits"))).message
    assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)]  # AVAILABLE


def _infer(*inputs, outputs: tuple[str, ...] = (), raw: list[bytes] | None = None,
           version: str = "") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits", model_version=version, id="r-1")
    for tensor in inputs:
        request.inputs.append(tensor)
    for name in outputs:
        request.outputs.add(name=name)
    request.raw_input_contents.extend(raw or [])
    return request


def _v2_pixels(n: int = 1, datatype: str = "FP32", **contents) -> service_pb2.ModelInferRequest.InferInputTensor:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="pixels", datatype=datatype, shape=[n, 8, 8])
    if contents:
        tensor.contents.CopyFrom(service_pb2.InferTensorContents(**contents))
    return tensor


def test_model_infer_with_raw_and_with_typed_contents_answers_raw_outputs(stack) -> None:
    for request in (_infer(_v2_pixels(2), raw=[np.zeros((2, 8, 8), "<f4").tobytes()]),
                    _infer(_v2_pixels(2, fp32_contents=[0.0] * 128))):
        answer = _call(stack, "ModelInfer", request)
        assert answer.code == CODE.OK, answer.details
        response = answer.message
        assert (response.model_name, response.model_version, response.id) == ("digits", "1", "r-1")
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("probabilities", "FP32",
                                                                                     [2, 10])]
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), np.ones(20))
        assert answer.trailing == [("model-version", "1")]


@pytest.mark.parametrize("request_, expected", [
    (_infer(_v2_pixels(1)), "shape [1, 8, 8] needs 64 values, fp32_contents has 0"),
    (_infer(_v2_pixels(1, fp32_contents=[0.0] * 3)), "needs 64 values"),
    (_infer(_v2_pixels(1, datatype="FP64", fp64_contents=[0.0] * 64)), "expects datatype FP32, received FP64"),
    (_infer(_v2_pixels(1), _v2_pixels(1), raw=[b"\0" * 256] * 2), "given twice"),
    (_infer(_v2_pixels(1), raw=[b"\0" * 255]), "raw_input_contents has 255 bytes"),
    (_infer(_v2_pixels(1), raw=[b"\0" * 256] * 2), "2 entries for 1 inputs"),
    (_infer(_v2_pixels(1, fp32_contents=[0.0] * 64), raw=[b"\0" * 256]), "contents as well as raw"),
    (_infer(), "no inputs"),
    (_infer(_v2_pixels(1, fp32_contents=[0.0] * 64), outputs=("probabilities",) * 2), "more than once"),
    (_infer(_v2_pixels(1, fp32_contents=[0.0] * 64), version="0"), "Version must be"),
])
def test_a_model_infer_that_does_not_fit_is_invalid_argument(stack, request_, expected) -> None:
    answer = _call(stack, "ModelInfer", request_)
    assert answer.code == CODE.INVALID_ARGUMENT and expected in answer.details, answer.details
    assert isinstance(answer.message, service_pb2.ModelInferResponse)


def test_v2_readiness_metadata_and_an_outage(stack, monkeypatch) -> None:
    ready = _call(stack, "ModelReady", service_pb2.ModelReadyRequest(name="digits"))
    assert ready.code == CODE.OK and ready.message.ready
    for absent in (service_pb2.ModelReadyRequest(name="absent"), service_pb2.ModelReadyRequest(name="digits",
                                                                                                version="7")):
        answer = _call(stack, "ModelReady", absent)  # as Triton answers (REST: 404)
        assert answer.code == CODE.OK and not answer.message.ready
    meta = _call(stack, "ModelMetadata", service_pb2.ModelMetadataRequest(name="digits")).message
    assert (meta.name, list(meta.versions), meta.platform) == ("digits", ["1"], "tensorflow_savedmodel")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("pixels", "FP32", [-1, 8, 8])]

    async def unreachable() -> None:
        raise StorageUnavailable("The registry's storage cannot be reached; retry later")

    monkeypatch.setattr(stack.plane, "ready", unreachable)
    answer = _call(stack, "ServerReady", service_pb2.ServerReadyRequest())
    assert answer.code == CODE.OK and not answer.message.ready  # REST: 503

    async def outage(model: str) -> None:
        raise StorageUnavailable("The registry's storage cannot be reached; retry later")

    monkeypatch.setattr(stack.plane, "versions", outage)
    answer = _call(stack, "GetModelStatus", get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="digits")))
    assert answer.code == CODE.UNAVAILABLE and "retry later" in answer.details
    assert answer.trailing == [("retry-after", "2")]  # as REST's Retry-After: clients may come back


def test_busy_and_slow_replicas_and_a_bug_map_to_their_codes(stack, caplog) -> None:
    stack.host.delay_s = 3.0  # past the stack's 2 s request timeout
    answer = _call(stack, "Predict", _predict())
    assert answer.code == CODE.DEADLINE_EXCEEDED
    stack.host.delay_s = 0.0

    class Broken:
        def ByteSize(self) -> int:  # noqa: N802 (protobuf's name)
            return 1

        @property
        def model_spec(self):
            raise TypeError("a bug")

    answer = _call(stack, "Predict", Broken())
    assert answer.code == CODE.INTERNAL and answer.details == "Internal error: TypeError"


def test_each_rpc_is_observed_with_its_protocol_and_status_code(stack) -> None:
    seen: list = []
    api = _api(stack, seen=seen)
    _call(stack, "Predict", _predict(), api=api)
    _call(stack, "ModelInfer", _infer(), api=api)
    _call(stack, "Predict", _predict(model="unknown"), api=api)
    assert [(i.protocol, i.model, i.version, i.code, status) for i, status in seen] == [
        ("tfserving-grpc", "digits", 1, "OK", 200),
        ("v2-grpc", "digits", 1, "INVALID_ARGUMENT", 400),
        ("tfserving-grpc", "", None, "NOT_FOUND", 404),  # made-up names never become metric series
    ]


def test_a_long_message_is_cut_to_fit_in_the_trailers(stack) -> None:
    for name in ("x" * 100_000, "\U0001f600" * 5_000):
        answer = _call(stack, "Predict", _predict(output_filter=(name,)))
        assert answer.code == CODE.INVALID_ARGUMENT and len(answer.details.encode()) <= 1024


def test_a_call_the_client_gives_up_on_is_counted_as_cancelled(stack) -> None:
    import asyncio

    seen: list = []
    stack.host.delay_s = 1.0

    async def give_up() -> None:
        task = asyncio.ensure_future(_api(stack, seen=seen).handle("Predict", _predict(),
                                                                   {"authorization": f"Bearer {stack.key}"}))
        await asyncio.sleep(0.3)
        task.cancel()  # what gRPC does to the handler when the call's deadline passes
        with pytest.raises(asyncio.CancelledError):
            await task

    stack.run(give_up())
    assert [(i.protocol, i.code, status) for i, status in seen] == [("tfserving-grpc", "CANCELLED", 499)]


def test_a_request_that_does_not_parse_is_invalid_argument_naming_its_type(stack) -> None:
    from maas.serving.grpc_services import _deserializer
    from maas.serving.protocol.grpc_rpcs import BY_NAME

    unreadable = _deserializer(BY_NAME["Predict"].request)(b"\xff\xff\xff\xff not a message")
    answer = _call(stack, "Predict", unreadable)
    assert answer.code == CODE.INVALID_ARGUMENT
    assert answer.details == "The request of 18 bytes is not a valid PredictRequest"
    assert _deserializer(BY_NAME["Predict"].request)(_predict().SerializeToString()) == _predict()
