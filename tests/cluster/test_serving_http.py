"""The Serve application over real HTTP on 127.0.0.1, deployed from deployments/serve_config.yaml
through the dashboard (as `serve deploy`), serving the version the 2-worker job published."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import SERVICE_MAX_BODY as MAX_BODY
from support import replica_logs_with_unhandled_errors

from maas.client import JSON, Call, Client, HTTPError
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.templates import get_template
from maas.training.data import builtin_held_out

pytestmark = pytest.mark.cluster


@pytest.fixture
def service(digits_app):
    app = digits_app.ensure()
    return Client(app.cluster.serve_url), Registry(app.registry_uri), app.version


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    from maas import settings

    x, y = builtin_held_out(get_template("digits"), settings.default_data_dir())
    return x[:64], y[:64]


def _raw(client: Client, path: str, method: str = "POST", body: bytes | None = None) -> tuple[int, dict]:
    reply = client.send(Call(method, path, body, JSON if body is not None else {}))
    return reply.status, reply.json()


def test_http_predictions_match_the_saved_model_in_process(service, held_out) -> None:
    import tensorflow as tf

    client, registry, version = service
    x, y = held_out
    http = client.predict("digits", x)
    fn = tf.saved_model.load(ArtifactCache(registry).local_path("digits", version)).signatures["serving_default"]
    local = fn(pixels=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(http, local, rtol=1e-5, atol=1e-6)
    assert (http.argmax(1) == y).mean() >= 0.9


def test_concurrent_single_instance_requests_are_batched_and_correct(service, held_out) -> None:
    client, _, _ = service
    x, _ = held_out
    expected = client.predict("digits", x[:32]).argmax(1)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: client.predict("digits", x[i : i + 1])[0], range(32), timeout=60))
    assert [int(a.argmax()) for a in answers] == expected.tolist()


def test_batches_count_instances_and_a_request_larger_than_a_batch_runs_in_passes_of_its_own(
        service, held_out) -> None:
    """max_batch_size (32) counts instances: 8 concurrent requests of 20 instances each are batched
    without a pass over 32, and a request of 100 instances runs in passes of 32; every answer is the
    model's own for its instances."""
    client, _, _ = service
    x, _ = held_out
    expected = client.predict("digits", x[:1])  # warm
    expected = np.concatenate([client.predict("digits", x[i: i + 16]) for i in range(0, 64, 16)])
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: client.predict("digits", x[i: i + 20]), range(0, 40, 5), timeout=120))
    for i, answer in zip(range(0, 40, 5), answers, strict=True):
        np.testing.assert_allclose(answer, expected[i: i + 20], rtol=1e-5, atol=1e-6)
    big = np.concatenate([x] * 2)[:100]
    np.testing.assert_allclose(client.predict("digits", big), np.concatenate([expected] * 2)[:100],
                               rtol=1e-5, atol=1e-6)


def test_versions_columnar_format_status_and_metadata(service, held_out) -> None:
    client, _, version = service
    x, _ = held_out
    by_version = client.predict("digits", x[:3], version=version)
    status, body = _raw(client, f"/v1/models/digits/versions/{version}:predict",
                        body=json.dumps({"inputs": {"pixels": x[:3].tolist()}}).encode())
    assert status == 200 and np.allclose(body["outputs"], by_version, atol=1e-6)
    assert client.status("digits")["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.status("digits", version=version)["model_version_status"][0]["version"] == str(version)
    meta = client.metadata("digits")
    assert meta["model_spec"]["name"] == "digits"
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["pixels"]["dtype"] == "DT_FLOAT"


def test_label_route_follows_the_registry_without_redeploy(service, held_out) -> None:
    client, registry, version = service
    x, _ = held_out
    registry.set_label("digits", "canary", version, weight=0.1)
    deadline = time.monotonic() + 15
    while True:  # the ingress re-reads labels every registry_refresh_s (2 s)
        try:
            out = client.predict("digits", x[:2], label="canary")
            break
        except HTTPError as exc:
            assert exc.status == 404 and time.monotonic() < deadline, exc
            time.sleep(0.5)
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out, client.predict("digits", x[:2], version=version), atol=1e-6)  # that version's


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/models/digits:predict", b"{oops", 400, "not valid JSON"),
        ("/v1/models/digits:predict", json.dumps({"instances": [list(range(64))]}).encode(), 400,
         r"expects instances of shape [8, 8], received shape [64]"),
        ("/v1/models/digits:predict", json.dumps({"instances": [[["x"] * 8] * 8]}).encode(), 400, "type string"),
        ("/v1/models/digits:predict", json.dumps({"instances": [[[1] * 8] * 7 + [[1]]]}).encode(), 400, "ragged"),
        ("/v1/models/digits:predict", json.dumps({"rows": []}).encode(), 400, "exactly one of 'instances'"),
        ("/v1/models/nope:predict", json.dumps({"instances": [[[0] * 8] * 8]}).encode(), 404, "'nope' not found"),
        ("/v1/models/digits/versions/999:predict", json.dumps({"instances": [[[0] * 8] * 8]}).encode(), 404,
         "no version 999"),
        ("/v1/models/digits/labels/nolabel:predict", json.dumps({"instances": [[[0] * 8] * 8]}).encode(), 404,
         "no label 'nolabel'"),
        ("/v1/models/digits/versions/abc:predict", b"{}", 400, "positive integer"),
        ("/v2/unknown", b"{}", 404, "No route"),
        ("/v1/models/digits:predict", b"[" + b"0," * (MAX_BODY // 2) + b"0]", 413, "exceeds the limit"),
    ],
)
def test_bad_requests_get_json_errors(service, path: str, body: bytes, status: int, message: str) -> None:
    client, _, _ = service
    got_status, got = _raw(client, path, body=body)
    assert got_status == status
    assert message in got["error"]


def test_wrong_method_and_service_survives_bad_input(service, held_out) -> None:
    client, _, _ = service
    status, body = _raw(client, "/v1/models/digits:predict", method="GET")
    assert status == 405 and "use POST" in body["error"]
    x, _ = held_out
    assert client.predict("digits", x[:1]).shape == (1, 10)  # still serving after every bad request


def test_a_corrupt_version_fails_alone_with_a_clear_error(service, tiny_saved_model, held_out) -> None:
    from maas.signature import Signature, TensorSpec

    client, registry, _ = service
    signature = Signature(inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
                          outputs=(TensorSpec("probabilities", "float32", (-1, 10)),))
    broken = registry.publish("broken", str(tiny_saved_model), {"signature": signature.to_dict()})
    (Path(ArtifactCache(registry).local_path("broken", broken.version)) / "saved_model.pb").write_bytes(b"not a graph")
    status, body = _raw(client, "/v1/models/broken:predict",
                        body=json.dumps({"instances": [[[0] * 8] * 8]}).encode())
    assert status == 503  # the version cannot answer; a 500 would mean a bug of the service
    assert body["error"].startswith(f"broken version {broken.version} could not be loaded")
    assert "Traceback" not in body["error"]
    x, _ = held_out
    assert client.predict("digits", x[:1]).shape == (1, 10)


# ---- KServe V2 / Open Inference Protocol ----------------------------------------------------------


@pytest.fixture
def triton(service):
    """Triton's own HTTP client, unchanged: an existing client of the V2 protocol."""
    import tritonclient.http as httpclient

    client, _, _ = service
    triton = httpclient.InferenceServerClient(url=client.base_url.removeprefix("http://"), network_timeout=60)
    triton.register_plugin(_bearer(os.environ["MAAS_API_KEY"]))  # tritonclient's own way to add a header
    return triton


def _bearer(key: str):
    """A tritonclient plugin that sends the API key with every call."""
    from tritonclient.http import InferenceServerClientPlugin

    class Bearer(InferenceServerClientPlugin):
        def __call__(self, request) -> None:
            request.headers["Authorization"] = f"Bearer {key}"

    return Bearer()


def test_v2_health_and_metadata_through_an_unchanged_triton_client(service, triton) -> None:
    _, registry, version = service
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("digits") and triton.is_model_ready("digits", str(version))
    assert not triton.is_model_ready("nope")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["platform"] == "tensorflow_savedmodel"
    assert meta["versions"] == [str(v) for v in registry.versions("digits")]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8]}]
    assert triton.get_model_metadata("digits", str(version))["versions"] == [str(version)]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_v2_infer_through_an_unchanged_triton_client_matches_v1(service, triton, held_out, binary: bool) -> None:
    import tritonclient.http as httpclient

    client, _, version = service
    x, _ = held_out
    tensor = httpclient.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = triton.infer("digits", [tensor], outputs=[wanted], model_version=str(version), request_id="r-42")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(x), 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, client.predict("digits", x, version=version), rtol=1e-5, atol=1e-6)
    answer = result.get_response()
    assert answer["model_name"] == "digits" and answer["model_version"] == str(version) and answer["id"] == "r-42"


def test_v2_errors_reach_triton_clients_as_named_problems(triton, held_out) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    x, _ = held_out
    tensor = httpclient.InferInput("pixels", [len(x), 64], "FP32")
    tensor.set_data_from_numpy(x.reshape(len(x), 64))
    with pytest.raises(InferenceServerException, match=r"expects shape \[-1, 8, 8\]"):
        triton.infer("digits", [tensor])
    with pytest.raises(InferenceServerException, match="'nope' not found"):
        triton.get_model_metadata("nope")


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/v2/models/digits/infer", b"{oops", 400, "not valid JSON"),
        ("POST", "/v2/models/digits/infer",
         json.dumps({"inputs": [{"name": "pixels", "shape": [1, 8, 8], "datatype": "INT64",
                                 "data": [0] * 64}]}).encode(),
         400, "expects datatype FP32, received INT64"),
        ("POST", "/v2/models/digits/infer",
         json.dumps({"inputs": [{"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32",
                                 "data": [0] * 63}]}).encode(),
         400, "needs 64 values, 'data' has 63"),
        ("POST", "/v2/models/nope/infer", json.dumps({"inputs": []}).encode(), 404, "'nope' not found"),
        ("GET", "/v2/models/digits/versions/999", None, 404, "no version 999"),
        ("GET", "/v2/models/digits/versions/0/ready", None, 400, "positive integer"),
        ("GET", "/v2/models/digits/infer", None, 405, "use POST"),
        ("POST", "/v2/health/live", b"{}", 405, "use GET"),
        ("POST", "/v2/models/digits/infer", b"[" + b"0," * (MAX_BODY // 2) + b"0]", 413, "exceeds the limit"),
    ],
)
def test_v2_bad_requests_get_json_errors(service, method: str, path: str, body: bytes | None, status: int,
                                         message: str) -> None:
    client, _, _ = service
    got_status, got = _raw(client, path, method=method, body=body)
    assert got_status == status
    assert message in got["error"]


# ---- hostile and careless requests, end to end through HAProxy (issue 14, measured on 6c14451) -----


def _send_raw(base_url: str, method: str, raw_path: str, body: bytes | None, headers: dict[str, str]):
    """A request with its path exactly as given (percent-escapes included), as curl would send it."""
    import http.client

    conn = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=60)
    try:
        conn.request(method, raw_path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


_ONE = json.dumps({"instances": [[[0] * 8] * 8]}).encode()
_KEY = "with-key"


@pytest.mark.parametrize("method, raw_path, body, key, status, message", [
    ("GET", "/v1/models/digits/versions/%C2%B2", None, None, 401, "API key required"),
    ("GET", "/v1/models/digits/versions/%C2%B2", None, _KEY, 400, "Version must be a positive integer"),
    ("GET", "/v1/models/digits/versions/" + "9" * 5000, None, _KEY, 400, "Version must be a positive integer"),
    ("POST", "/v1/models/digits/labels/stable%0A:predict", _ONE, _KEY, 400, "Label must be"),
    ("POST", "/v1/models/digits:predict", b'{"instances": ' + b"[" * 1100 + b"]" * 1100 + b"}", _KEY, 400,
     "(max_json_depth)"),
    ("POST", "/v1/models/digits:predict", b'{"instances": [[' + b"7" * 5000 + b"]]}", _KEY, 400, "5000 digits"),
    ("POST", "/v2/models/digits/infer", json.dumps({
        "inputs": [{"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32", "data": [0] * 64}],
        "outputs": [{"name": "probabilities"}] * 2000}).encode(), _KEY, 400, "more than once"),
    ("POST", "/v1/models/digits:predict", json.dumps({"instances": [0] * 9000}).encode(), _KEY, 413,
     "(max_instances)"),
])
def test_hostile_requests_get_named_4xx_over_http(service, method: str, raw_path: str, body: bytes | None,
                                                  key: str | None, status: int, message: str) -> None:
    client, _, _ = service
    headers = {"content-type": "application/json"} if body else {}
    if key:
        headers["authorization"] = f"Bearer {os.environ['MAAS_API_KEY']}"
    got, _, content = _send_raw(client.base_url, method, raw_path, body, headers)
    assert got == status, content[:300]
    assert message in json.loads(content)["error"]


def test_405_carries_allow_and_a_proxy_credential_does_not_hide_the_key(service) -> None:
    client, _, _ = service
    status, headers, _ = _send_raw(client.base_url, "GET", "/v1/models/digits:predict", None, {})
    assert status == 405 and headers["allow"] == "POST"
    status, _, _ = _send_raw(client.base_url, "POST", "/v1/models/digits:predict", _ONE, {
        "content-type": "application/json", "authorization": "Basic dXNlcjpwdw==",
        "x-api-key": os.environ["MAAS_API_KEY"]})
    assert status == 200


def test_no_replica_logged_an_unhandled_error(service) -> None:
    """A 500 is a bug, and the suite has none: no replica log holds the handler's 'unhandled' line."""
    assert replica_logs_with_unhandled_errors() == []


@pytest.fixture(scope="module")
def file_reading_model(tmp_path_factory: pytest.TempPathFactory):
    """A SavedModel whose serving signature reads a file of the serving node (its length, as the answer)."""
    import tensorflow as tf

    from maas.signature import Signature

    secret = tmp_path_factory.mktemp("node") / "secret"
    secret.write_text("s" * 37)

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            size = tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32)
            return {"y": x * 0 + size}

    path = tmp_path_factory.mktemp("reader") / "saved_model"
    module = Reader()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path, Signature.from_concrete_function(tf.saved_model.load(str(path)).signatures["serving_default"])


def test_a_model_that_reads_files_is_refused_unless_its_metadata_allows_it(service, file_reading_model) -> None:
    client, registry, _ = service
    path, signature = file_reading_model
    refused = registry.publish("reader", str(path), {"signature": signature.to_dict()}).version
    status, body = _raw(client, f"/v1/models/reader/versions/{refused}:predict", body=b'{"instances": [[1.0]]}')
    assert status == 503 and "its serving graph uses ReadFile" in body["error"] and "allowed_ops" in body["error"]
    allowed = registry.publish("reader", str(path), {"signature": signature.to_dict(),
                                                     "allowed_ops": ["ReadFile"]}).version
    deadline = time.monotonic() + 10  # a new version is seen within a second (re-listed on a miss)
    while (reply := _raw(client, f"/v1/models/reader/versions/{allowed}:predict",
                         body=b'{"instances": [[1.0]]}'))[0] == 404:
        assert time.monotonic() < deadline, reply
        time.sleep(0.3)
    assert reply == (200, {"predictions": [[37.0]]})
