"""The SDK's gRPC client against an in-process gRPC server on 127.0.0.1 that answers as a replica does
(Serve's ``request_id`` trailing metadata on every answer): which failures it retries, that each retry is
counted, and that the answer's arrays and version come back. No Ray."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from maas.client import RetryPolicy
from maas.grpc_client import GrpcClient, GrpcError
from maas.serving.protocol import tensorproto

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.01)


class Scripted(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers each Predict with the next scripted outcome: ``"ok"``, or ``(code, trailing)``."""

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.details = ""  # the details of a scripted failure ("scripted CODE" if empty)
        self.calls = 0
        self.metadata: list[dict] = []

    def Predict(self, request, context):  # noqa: N802 (gRPC's names)
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "ok":
            context.set_trailing_metadata((("request_id", "r"), ("model-version", "3")))
            value = tensorproto.to_array(request.inputs["x"]) * 2
            response = predict_pb2.PredictResponse()
            response.outputs["y"].CopyFrom(tensorproto.from_numpy(value))
            return response
        code, trailing = outcome
        context.set_trailing_metadata(tuple(trailing))
        context.abort(code, self.details or f"scripted {code.name}")


@pytest.fixture
def serve():
    servers = []

    def start(script: list) -> tuple[Scripted, str]:
        servicer = Scripted(script)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def _predict(target: str, **kwargs) -> tuple[np.ndarray, GrpcClient]:
    client = GrpcClient(target, api_key="maas_k", timeout_s=5, retry=kwargs.pop("retry", FAST))
    try:
        return client.predict("m", {"x": np.arange(4, dtype=np.float32)}), client
    finally:
        client.close()


def test_an_answer_comes_back_as_arrays_with_the_key_sent(serve) -> None:
    servicer, target = serve(["ok"])
    answer, client = _predict(target)
    np.testing.assert_array_equal(answer, np.arange(4, dtype=np.float32) * 2)
    assert servicer.metadata[0]["authorization"] == "Bearer maas_k" and client.retries == {}


def test_what_clears_by_waiting_is_retried_and_counted(serve) -> None:
    busy = (grpc.StatusCode.UNAVAILABLE, [("request_id", "r"), ("retry-after", "0")])  # a full replica
    no_replica = (grpc.StatusCode.UNAVAILABLE, [])  # nobody answered: HAProxy had no replica, or the link fell
    servicer, target = serve([busy, no_replica, "ok"])
    answer, client = _predict(target)
    assert servicer.calls == 3 and client.retries == {"UNAVAILABLE": 1, "connection": 1}
    np.testing.assert_array_equal(answer, np.arange(4, dtype=np.float32) * 2)


@pytest.mark.parametrize("outcome", [
    (grpc.StatusCode.UNAVAILABLE, [("request_id", "r")]),  # the service's own: a version that cannot load
    (grpc.StatusCode.INVALID_ARGUMENT, [("request_id", "r")]),
    (grpc.StatusCode.DEADLINE_EXCEEDED, [("request_id", "r")]),  # may still be running: never sent twice
])
def test_what_does_not_clear_by_waiting_is_raised_at_once(serve, outcome) -> None:
    servicer, target = serve([outcome, "ok"])
    with pytest.raises(GrpcError) as caught:
        _predict(target)
    assert caught.value.code == outcome[0] and caught.value.message == f"scripted {outcome[0].name}"
    assert servicer.calls == 1


def test_the_policys_attempts_bound_the_retries(serve) -> None:
    busy = (grpc.StatusCode.UNAVAILABLE, [("request_id", "r"), ("retry-after", "0")])
    servicer, target = serve([busy] * 10)
    with pytest.raises(GrpcError):
        _predict(target, retry=RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.01))
    assert servicer.calls == 3


def test_haproxys_own_502_and_504_are_not_sent_again(serve) -> None:
    """Over gRPC, HAProxy's 502 (the replica died under the call) and 504 reach the client as an
    UNAVAILABLE with the HTTP status in its details: the call may have run, so it is not repeated."""
    for status in (502, 504):
        servicer, target = serve([(grpc.StatusCode.UNAVAILABLE, []), "ok"])
        servicer.details = f"Received http2 header with status: {status}"
        with pytest.raises(GrpcError):
            _predict(target)
        assert servicer.calls == 1, status


def test_every_try_shares_one_deadline(serve) -> None:
    busy = (grpc.StatusCode.UNAVAILABLE, [("request_id", "r"), ("retry-after", "1")])
    servicer, target = serve([busy] * 10)
    client = GrpcClient(target, api_key="k", timeout_s=1.5, retry=RetryPolicy(attempts=10, max_backoff_s=1.0))
    with pytest.raises(GrpcError):
        client.predict("m", {"x": np.zeros(1, np.float32)})
    client.close()
    assert servicer.calls <= 2  # each wait is 1-1.5 s: a second try at most fits in the 1.5 s


def test_inputs_are_cast_only_where_no_value_changes() -> None:
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    from maas.grpc_client import as_inputs, cast_inputs

    definition = meta_graph_pb2.SignatureDef()
    definition.inputs["small"].dtype = types_pb2.DT_INT8
    definition.inputs["pixels"].dtype = types_pb2.DT_UINT8
    definition.inputs["x"].dtype = types_pb2.DT_FLOAT
    cast = cast_inputs({"small": np.array([300]), "pixels": np.array([0, 255]), "x": np.array([0.5, 2])},
                       definition)
    assert cast["small"].dtype == np.int64  # 300 does not fit int8: sent as is, for the service to refuse
    assert cast["pixels"].dtype == np.uint8 and cast["x"].dtype == np.float32
    assert cast_inputs({"pixels": np.array([0.5])}, definition)["pixels"].dtype == np.float64  # never truncated
    with pytest.raises(ValueError, match="takes 3 inputs"):
        as_inputs(np.zeros(3), definition)
