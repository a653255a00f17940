"""The client's requests are what the server's codecs accept, and it reads their answers back."""

from __future__ import annotations

import numpy as np
import pytest

from maas.client import Reply, infer_call, infer_result, predict_call
from maas.serving.protocol import tfserving, v2
from maas.serving.protocol.limits import RequestLimits
from maas.signature import Signature, TensorSpec

LIMITS = RequestLimits()

SIGNATURE = Signature(inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
                      outputs=(TensorSpec("probabilities", "float32", (-1, 10)),))


@pytest.mark.parametrize("binary", [True, False])
def test_v2_infer_round_trip_through_the_server_codec(binary: bool) -> None:
    x = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    call = infer_call("digits", {"pixels": x}, 2, binary=binary, outputs=None, request_id="r1")
    assert call.path == "/v2/models/digits/versions/2/infer"
    request = v2.decode_infer(*v2.split_binary(call.body, call.headers.get("inference-header-content-length")),
                              SIGNATURE, LIMITS)
    np.testing.assert_array_equal(request.inputs["pixels"], x)
    assert request.binary_outputs == (frozenset({"probabilities"}) if binary else frozenset())
    probabilities = np.random.default_rng(1).random((3, 10), dtype=np.float32)
    body, headers = v2.encode_infer("digits", 2, request, {"probabilities": probabilities}, LIMITS)
    out = infer_result(Reply(200, headers, body))
    assert out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"], probabilities, rtol=1e-6)


def test_tf_serving_predict_request_is_row_format() -> None:
    x = np.zeros((2, 8, 8), dtype=np.float32)
    call = predict_call("digits", x, None, "canary")
    assert call.path == "/v1/models/digits/labels/canary:predict"
    decoded = tfserving.decode_predict(call.body, SIGNATURE, LIMITS)
    assert decoded.row_format and decoded.inputs["pixels"].shape == (2, 8, 8)


def test_error_answers_raise_with_the_server_message() -> None:
    from maas.client import HTTPError

    with pytest.raises(HTTPError, match="HTTP 403: nope") as info:
        infer_result(Reply(403, {}, b'{"error": "nope"}'))
    assert info.value.status == 403
