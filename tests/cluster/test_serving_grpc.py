"""gRPC through Serve's HAProxy ingress on 127.0.0.1, with the clients people already have, unchanged:
TensorFlow Serving's ``PredictionServiceStub`` and ``ModelServiceStub`` (package tensorflow-serving-api)
and Triton's ``tritonclient.grpc``. The app is deployed from deployments/serve_config.yaml and serves
the version the 2-worker job published; every answer equals the REST answer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import metric_series, replica_logs_with_unhandled_errors, scrape_metrics

from maas.client import Client
from maas.registry import Registry
from maas.templates import get_template
from maas.training.data import builtin_held_out

pytestmark = pytest.mark.cluster


@pytest.fixture
def service(digits_app):
    app = digits_app.ensure()
    return app, Client(app.cluster.serve_url), Registry(app.registry_uri), app.version


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    from maas import settings

    x, _ = builtin_held_out(get_template("digits"), settings.default_data_dir())
    return x[:16]


@pytest.fixture(scope="module")
def channel(digits_app):
    digits_app.ensure()  # deployed: Serve opens the gRPC port with the first app that asks for it
    with grpc.insecure_channel(digits_app.cluster.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        yield channel


def _key() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {os.environ['MAAS_API_KEY']}")]


def _spec(version: int | None = None, name: str = "digits"):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name, signature_name="serving_default")
    if version is not None:
        spec.version.value = version
    return spec


def _predict_request(x: np.ndarray, version: int | None = None, name: str = "digits"):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest(model_spec=_spec(version, name))
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(x))  # binary: tensor_content
    return request


def test_tf_serving_predict_metadata_and_status_through_the_unchanged_stubs(service, channel, held_out) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    _, client, registry, version = service
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response, call = stub.Predict.with_call(_predict_request(held_out), metadata=_key(), timeout=30)
    grpc_answer = tf.make_ndarray(response.outputs["probabilities"])
    rest = client.predict("digits", held_out).astype(np.float32)  # JSON's shortest float32 text reads back exact
    np.testing.assert_array_equal(grpc_answer, rest)
    assert response.model_spec.name == "digits" and response.model_spec.version.value == max(
        registry.versions("digits"))
    assert ("model-version", str(response.model_spec.version.value)) in call.trailing_metadata()

    one = _predict_request(held_out[:1], version)
    typed = _predict_request(held_out[:1], version)  # the typed field instead of tensor_content
    typed.inputs["pixels"].ClearField("tensor_content")
    typed.inputs["pixels"].float_val.extend(held_out[:1].ravel().tolist())
    answers = [tf.make_ndarray(stub.Predict(r, metadata=_key(), timeout=30).outputs["probabilities"])
               for r in (one, typed)]
    np.testing.assert_array_equal(answers[0], answers[1])  # one instance: a pass of one, both times

    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=_spec(version),
                                                             metadata_field=["signature_def"])
    metadata = stub.GetModelMetadata(request, metadata=_key(), timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    inputs = signatures.signature_def["serving_default"].inputs
    assert [d.size for d in inputs["pixels"].tensor_shape.dim] == [-1, 8, 8]

    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=_spec()), metadata=_key(), timeout=30)
    assert [s.version for s in status.model_version_status] == sorted(registry.versions("digits"), reverse=True)


def test_tf_serving_errors_reach_the_stub_as_status_codes_with_rests_messages(service, channel, held_out) -> None:
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    cases = [
        (_predict_request(held_out), [], grpc.StatusCode.UNAUTHENTICATED, "API key required"),
        (_predict_request(held_out.reshape(-1, 64)), _key(), grpc.StatusCode.INVALID_ARGUMENT,
         "expects shape [-1, 8, 8], received [16, 64]"),
        (_predict_request(held_out.astype(np.float64)), _key(), grpc.StatusCode.INVALID_ARGUMENT,
         "expects DT_FLOAT, received DT_DOUBLE"),
        (_predict_request(held_out, name="nope"), _key(), grpc.StatusCode.NOT_FOUND, "Model 'nope' not found"),
        (_predict_request(held_out, version=999), _key(), grpc.StatusCode.NOT_FOUND, "has no version 999"),
    ]
    for request, metadata, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, metadata=metadata, timeout=30)
        assert caught.value.code() == code and message in caught.value.details(), caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classification_pb2.ClassificationRequest(model_spec=_spec()), metadata=_key(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED and "use Predict" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # the call's own deadline, far shorter than a prediction
        stub.Predict(_predict_request(held_out), metadata=_key(), timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    answer = stub.Predict(_predict_request(held_out), metadata=_key(), timeout=30)  # nothing wedged
    assert answer.outputs["probabilities"].tensor_shape.dim[0].size == len(held_out)


@pytest.fixture
def triton(service):
    import tritonclient.grpc as grpcclient

    app, _, _, _ = service
    with grpcclient.InferenceServerClient(url=app.cluster.grpc_target) as triton:
        yield triton


def test_v2_health_metadata_and_infer_through_an_unchanged_triton_grpc_client(service, triton, held_out) -> None:
    import tritonclient.grpc as grpcclient

    _, client, registry, version = service
    key = dict(_key())
    assert triton.is_server_live() and triton.is_server_ready()  # no key, as REST's health routes
    assert triton.is_model_ready("digits", headers=key) and triton.is_model_ready("digits", str(version), headers=key)
    assert not triton.is_model_ready("nope", headers=key)
    assert "binary_tensor_data" in triton.get_server_metadata().extensions
    meta = triton.get_model_metadata("digits", headers=key, as_json=True)
    assert meta["name"] == "digits" and meta["platform"] == "tensorflow_savedmodel"
    assert meta["versions"] == [str(v) for v in registry.versions("digits")]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": ["-1", "8", "8"]}]

    tensor = grpcclient.InferInput("pixels", list(held_out.shape), "FP32")
    tensor.set_data_from_numpy(held_out)  # raw_input_contents
    result = triton.infer("digits", [tensor], model_version=str(version), request_id="r-7", headers=key,
                          outputs=[grpcclient.InferRequestedOutput("probabilities")])
    rest = client.predict("digits", held_out, version=version).astype(np.float32)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), rest)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("digits", str(version), "r-7")


def test_v2_errors_reach_the_triton_grpc_client_as_status_codes(service, triton, held_out) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tensor = grpcclient.InferInput("pixels", [len(held_out), 64], "FP32")
    tensor.set_data_from_numpy(held_out.reshape(len(held_out), 64))
    cases = [(dict(_key()), "StatusCode.INVALID_ARGUMENT", r"expects shape \[-1, 8, 8\]"),
             ({}, "StatusCode.UNAUTHENTICATED", "API key required")]
    for headers, status, message in cases:
        with pytest.raises(InferenceServerException, match=message) as caught:
            triton.infer("digits", [tensor], headers=headers)
        assert caught.value.status() == status
    with pytest.raises(InferenceServerException, match="'nope' not found") as caught:
        triton.get_model_metadata("nope", headers=dict(_key()))
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_answers_reach_the_metrics_endpoint_with_their_protocol_and_code(service, channel, held_out) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for _ in range(5):
        stub.Predict(_predict_request(held_out[:1]), metadata=_key(), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Predict(_predict_request(held_out.reshape(-1, 64)), metadata=_key(), timeout=30)
    deadline = time.monotonic() + 60  # Ray's metrics agent exports every few seconds
    while True:
        text = scrape_metrics()
        ok = metric_series(text, "ray_maas_requests_total", model="digits", protocol="tfserving-grpc", code="OK")
        bad = metric_series(text, "ray_maas_requests_total", model="digits", protocol="tfserving-grpc",
                            code="INVALID_ARGUMENT")
        if ok >= 5 and bad >= 1:
            break
        assert time.monotonic() < deadline, f"gRPC answers not in the metrics: ok={ok} bad={bad}"
        time.sleep(2)


def test_no_replica_logged_an_unhandled_grpc_error(service) -> None:
    assert replica_logs_with_unhandled_errors() == []


# ---- the project's own gRPC client and CLI ---------------------------------------------------------


def test_the_sdks_grpc_clients_answer_as_rest_both_protocols_sync_and_async(service, held_out) -> None:
    import asyncio

    from maas.grpc_client import AsyncGrpcClient, GrpcClient, GrpcError

    app, client, registry, version = service
    rest = client.predict("digits", held_out, version=version).astype(np.float32)
    with GrpcClient(app.cluster.grpc_target) as grpc_client:
        np.testing.assert_array_equal(grpc_client.predict("digits", held_out, version=version), rest)  # float64 in
        infer = grpc_client.infer("digits", {"pixels": held_out.astype(np.float32)}, version=version)
        np.testing.assert_array_equal(infer["probabilities"], rest)
        assert grpc_client.status("digits") == sorted(registry.versions("digits"), reverse=True)
        assert grpc_client.live() and grpc_client.ready() and grpc_client.model_ready("digits")
        assert not grpc_client.model_ready("nope")
        assert [t.name for t in grpc_client.model_metadata("digits").inputs] == ["pixels"]
        with pytest.raises(GrpcError) as caught:
            grpc_client.predict("digits", {"pixels": held_out.astype(np.float32).reshape(-1, 64)})
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "expects shape" in caught.value.message
        assert grpc_client.retries == {}

    async def run() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncGrpcClient(app.cluster.grpc_target) as aclient:
            answers = await asyncio.gather(*(aclient.predict("digits", held_out, version=version) for _ in range(8)))
            infer = await aclient.infer("digits", {"pixels": held_out.astype(np.float32)}, version=version)
            return answers[0], infer["probabilities"]

    predicted, inferred = asyncio.run(run())
    np.testing.assert_array_equal(predicted, rest)
    np.testing.assert_array_equal(inferred, rest)


def test_maas_predict_over_grpc_prints_rests_answer_and_fails_in_one_line(service, held_out) -> None:
    import json
    import subprocess
    import sys

    app, _, _, version = service
    maas = str(Path(sys.executable).parent / "maas")
    instances = json.dumps(held_out[:2].tolist())
    rest = subprocess.run([maas, "predict", "digits", "--version", str(version), "--instances", instances,
                           "--url", app.cluster.serve_url], capture_output=True, text=True, timeout=120)
    over_grpc = subprocess.run([maas, "predict", "digits", "--version", str(version), "--instances", instances,
                                "--grpc", "--target", app.cluster.grpc_target], capture_output=True, text=True,
                               timeout=120)
    assert rest.returncode == 0 and over_grpc.returncode == 0, over_grpc.stderr
    np.testing.assert_array_equal(np.asarray(json.loads(over_grpc.stdout)["predictions"], np.float32),
                                  np.asarray(json.loads(rest.stdout)["predictions"], np.float32))
    bad = subprocess.run([maas, "predict", "digits", "--instances", "[[1, 2]]", "--grpc", "--target",
                          app.cluster.grpc_target], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "expects shape" in bad.stderr, bad.stderr


def test_oversized_unknown_and_unreadable_calls_get_status_codes_and_the_replica_stays_up(service, channel,
                                                                                         held_out) -> None:
    """Past the service's max_request_bytes (the test app's 1 MiB), past the transport's 64 MiB, an RPC
    these services do not have, and bytes that are no message: each its code; then a normal answer."""
    from support import SERVICE_MAX_BODY
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from maas.local_cluster import GRPC_MAX_MESSAGE_BYTES

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    big = np.zeros((SERVICE_MAX_BODY // 256 + 1, 8, 8), np.float32)  # just over 1 MiB of tensor_content
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(_predict_request(big), metadata=_key(), timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_request_bytes" in caught.value.details()
    huge = np.zeros((GRPC_MAX_MESSAGE_BYTES // 256 + 1024, 8, 8), np.float32)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(_predict_request(huge), metadata=_key(), timeout=120)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    for path, body, code in [
            ("/tensorflow.serving.ModelService/HandleReloadConfigRequest", b"", grpc.StatusCode.UNIMPLEMENTED),
            ("/inference.GRPCInferenceService/RepositoryIndex", b"", grpc.StatusCode.UNIMPLEMENTED),
            ("/tensorflow.serving.PredictionService/Predict", b"\xff\xff\xff\xff not a message",
             grpc.StatusCode.INVALID_ARGUMENT)]:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(path)(body, metadata=_key(), timeout=30)
        assert caught.value.code() == code, (path, caught.value.code(), caught.value.details())
    assert caught.value.details() == "The request of 18 bytes is not a valid PredictRequest"
    answer = stub.Predict(_predict_request(held_out), metadata=_key(), timeout=30)
    assert answer.outputs["probabilities"].tensor_shape.dim[0].size == len(held_out)
