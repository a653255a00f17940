"""The request path's error, auth and limit cases, through the HTTP layer over the real data plane,
storage cache and key store (only the model host is a fake). Each case of the hostile-input report
(issue 14, measured on 6c14451) is here: none may answer 500."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest

from maas.serving.protocol.limits import RequestLimits

IMAGE = np.zeros((8, 8)).tolist()
PREDICT = "/v1/models/digits:predict"
INFER = "/v2/models/digits/infer"


def _predict_body(n: int = 1) -> bytes:
    return json.dumps({"instances": [IMAGE] * n}).encode()


def _infer_body(n: int = 1, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "pixels", "shape": [n, 8, 8], "datatype": "FP32",
                                   "data": [0.0] * (64 * n)}], **extra}).encode()


def test_a_prediction_in_both_protocols(stack) -> None:
    reply = stack.call("POST", PREDICT, _predict_body(2))
    assert reply.status == 200 and reply.headers["Model-Version"] == "1"
    assert np.asarray(reply.json()["predictions"]).shape == (2, 10)
    reply = stack.call("POST", INFER, _infer_body(3, id="r-1"))
    assert reply.status == 200 and reply.json()["id"] == "r-1"
    assert reply.json()["outputs"][0]["shape"] == [3, 10]


@pytest.mark.parametrize("path", ["/v1/models/digits/versions/\u00b2", "/v1/models/digits/versions/" + "9" * 5000,
                                  "/v2/models/digits/versions/\u00b2/ready", "/v1/models/digits/versions/0007"])
def test_a_version_that_is_not_plain_ascii_digits_is_a_400_with_a_key_and_401_without(stack, path) -> None:
    """6c14451 answered 500 'Internal error: ValueError' to '²' ('²'.isdigit() is true) and 5,000 digits."""
    assert stack.call("GET", path, key=None).status == 401
    reply = stack.call("GET", path)
    assert reply.status == 400 and "Version must be a positive integer of at most 18 digits" in reply.json()["error"]


def test_a_label_with_a_trailing_newline_is_not_that_label(stack) -> None:
    """6c14451 answered /labels/stable%0A:predict as 'stable': `$` accepts a trailing newline."""
    stack.registry.promote("digits", 1)
    assert stack.call("POST", "/v1/models/digits/labels/stable:predict", _predict_body()).status == 200
    reply = stack.call("POST", "/v1/models/digits/labels/stable\n:predict", _predict_body())
    assert reply.status == 400 and "Label must be" in reply.json()["error"] and "'stable\\n'" in reply.json()["error"]
    assert stack.call("GET", "/v1/models/digits\n").status == 400


def test_deeply_nested_json_and_huge_integers_are_400s_naming_the_problem(stack) -> None:
    """6c14451: a body nested 1,100 deep raised RecursionError and a 5,000-digit integer ValueError (500s)."""
    deep = b'{"instances": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    reply = stack.call("POST", PREDICT, deep)
    assert reply.status == 400 and "nested 1101 levels deep; the limit is 32 (max_json_depth)" in reply.json()["error"]
    huge = b'{"instances": [[' + b"1" * 5000 + b"]]}"
    reply = stack.call("POST", PREDICT, huge)
    assert reply.status == 400 and "integer of 5000 digits" in reply.json()["error"]
    reply = stack.call("POST", INFER, b'{"inputs": [{"name": "pixels", "data": [\xff]}]}')
    assert reply.status == 400 and "not valid UTF-8" in reply.json()["error"]


def test_one_output_named_2000_times_is_refused(stack) -> None:
    """6c14451 answered a 73 KB request naming one output 2,000 times with 39.9 MB."""
    reply = stack.call("POST", INFER, _infer_body(outputs=[{"name": "probabilities"}] * 2000))
    assert reply.status == 400 and "more than once" in reply.json()["error"]
    assert stack.host.calls == []  # refused before the model


def test_instances_bodies_and_answers_past_their_limits_are_413(make_stack) -> None:
    stack = make_stack(limits=RequestLimits(max_instances=4, max_request_bytes=40_000, max_response_bytes=100))
    reply = stack.call("POST", PREDICT, _predict_body(5))
    assert reply.status == 413 and "the limit is 4 (max_instances)" in reply.json()["error"]
    reply = stack.call("POST", PREDICT, b" " * 40_001, {"content-length": "40001"})
    assert reply.status == 413 and "max_request_bytes" in reply.json()["error"]
    assert reply.headers["Connection"] == "close"
    reply = stack.call("POST", PREDICT, chunks=[b" " * 30_000] * 2)  # no Content-Length: counted as it arrives
    assert reply.status == 413
    reply = stack.call("POST", PREDICT, _predict_body(4))  # 40 numbers "1.0": over 100 bytes
    assert reply.status == 413 and "max_response_bytes" in reply.json()["error"]
    assert stack.call("POST", PREDICT, b"{}", {"content-length": "\u00b2"}).status == 400


def test_a_body_that_trickles_gets_408_and_a_client_header_cannot_lift_the_deadline(make_stack) -> None:
    stack = make_stack(limits=RequestLimits(body_timeout_s=0.3), request_timeout_s=0.3)
    started = time.monotonic()
    reply = stack.call("POST", PREDICT, chunks=[b"{"] * 100, delay_s=0.05, headers={"x-request-timeout-seconds": "0"})
    assert reply.status == 408 and "body_timeout_s" in reply.json()["error"]
    assert time.monotonic() - started < 1.0 and reply.headers["Connection"] == "close"
    stack.host.delay_s = 2.0
    started = time.monotonic()
    reply = stack.call("POST", PREDICT, _predict_body(), {"x-request-timeout-seconds": "0"})
    assert reply.status == 504 and reply.json()["error"] == "digits version 1 did not answer within 0.3s"
    assert time.monotonic() - started < 1.0


def test_bodies_held_at_once_are_bounded_per_replica(make_stack) -> None:
    stack = make_stack(max_buffered_bytes=10_000, limits=RequestLimits(body_timeout_s=2))

    async def scenario():
        slow = asyncio.ensure_future(stack.acall("POST", PREDICT, chunks=[b" " * 6000, b" " * 10], delay_s=0.2))
        await asyncio.sleep(0.3)  # the first chunk is held
        second = await stack.acall("POST", PREDICT, chunks=[b" " * 6000])
        return await slow, second

    slow, second = stack.run(scenario())
    assert second.status == 503 and second.headers["Retry-After"] == "1"
    assert "max_buffered_bytes" in second.json()["error"]
    assert slow.status == 400  # its own body (not JSON) read in full
    assert stack.api._budget.held == 0  # everything given back


def test_large_json_bodies_and_answers_are_decoded_and_encoded_off_the_event_loop(make_stack) -> None:
    stack = make_stack(limits=RequestLimits(offload_bytes=10_000))
    assert stack.call("POST", PREDICT, _predict_body(1)).status == 200
    assert stack.offloaded == []
    assert stack.call("POST", PREDICT, _predict_body(100)).status == 200
    assert stack.offloaded == ["decode_predict", "encode_predict"]
    assert stack.call("POST", INFER, _infer_body(100)).status == 200
    assert stack.offloaded[2:] == ["decode_infer", "encode_infer"]


def test_405_names_the_allowed_methods_in_an_allow_header(stack) -> None:
    reply = stack.call("GET", PREDICT)
    assert reply.status == 405 and reply.headers["Allow"] == "POST" and "use POST" in reply.json()["error"]
    reply = stack.call("DELETE", "/v2/health/live")
    assert reply.status == 405 and reply.headers["Allow"] == "GET"
    assert stack.call("GET", "/nowhere").status == 404


def test_missing_forged_revoked_and_out_of_scope_keys(stack) -> None:
    assert stack.call("POST", PREDICT, _predict_body(), key=None).status == 401
    assert stack.call("POST", PREDICT, _predict_body(), key="maas_0123456789ab_" + "x" * 43).status == 401
    scoped = stack.keys.create("scoped", ["other"])[0]
    stack.clock.now += 1  # the key listing is read again at most once a second
    reply = stack.call("POST", PREDICT, _predict_body(), key=scoped)
    assert reply.status == 403 and "may not call model 'digits'" in reply.json()["error"]
    basic_then_key = {"authorization": "Basic dXNlcjpwdw==", "x-api-key": stack.key}
    assert stack.call("POST", PREDICT, _predict_body(), basic_then_key, key=None).status == 200
    for path in ("/v2/health/live", "/v2", "/openapi.json"):
        assert stack.call("GET", path, key=None).status == 200, path
    assert stack.call("GET", "/maas/v1/status", key=None).status == 401


def test_ten_thousand_random_key_ids_cost_no_storage_read_and_evict_nothing(stack, monkeypatch) -> None:
    reads: list[str] = []
    listings: list[int] = []
    get, ids = stack.keys.get, stack.keys.ids
    monkeypatch.setattr(stack.keys, "get", lambda kid: reads.append(kid) or get(kid))
    monkeypatch.setattr(stack.keys, "ids", lambda: listings.append(1) or ids())
    assert stack.call("GET", "/v2/models/digits").status == 200  # the valid key, read once
    assert len(reads) == 1 and len(listings) == 1

    async def flood():
        rng = np.random.default_rng(0)
        return [await stack.acall("GET", "/v2/models/digits", key=f"maas_{rng.bytes(6).hex()}_{'y' * 43}")
                for _ in range(10_000)]

    assert {r.status for r in stack.run(flood())} == {401}
    assert len(reads) == 1 and len(listings) == 1  # unknown ids: no record read, and the listing is cached
    assert stack.call("GET", "/v2/models/digits").status == 200
    assert len(reads) == 1  # the valid key still answered from the cache


def test_a_storage_outage_keeps_loaded_versions_answering_then_503_never_401(stack) -> None:
    """6c14451: with the storage unreachable for 8 s under load, 12,503 of 25,811 predictions failed, each a 401."""
    stack.registry.promote("digits", 1)
    assert stack.call("POST", PREDICT, _predict_body()).status == 200  # labels, key and signature read
    moved = stack.root.with_name("registry-away")
    stack.root.rename(moved)  # the volume is gone
    stack.clock.now += 5  # past registry_refresh_s: every look-up tries the storage again
    for path in (PREDICT, "/v1/models/digits/versions/1:predict", "/v1/models/digits/labels/stable:predict"):
        assert stack.call("POST", path, _predict_body()).status == 200, path
    reply = stack.call("POST", "/v1/models/never-read:predict", _predict_body())
    assert reply.status == 503 and reply.headers["Retry-After"] == "2" and "unreachable" in reply.json()["error"]
    assert stack.call("GET", "/v2/health/ready", key=None).status == 503
    stack.clock.now += 60  # past stale_while_unreachable_s
    reply = stack.call("POST", PREDICT, _predict_body())
    assert reply.status == 503 and "Retry-After" in reply.headers
    moved.rename(stack.root)  # back
    assert stack.call("POST", PREDICT, _predict_body()).status == 200
    assert stack.call("GET", "/v2/health/ready", key=None).status == 200


def test_an_unknown_model_is_a_404_only_while_the_storage_answers(stack) -> None:
    reply = stack.call("POST", "/v1/models/nope:predict", _predict_body())
    assert reply.status == 404 and reply.json()["error"] == "Model 'nope' not found"
    assert stack.call("GET", "/v1/models/digits/versions/9").status == 404
    assert stack.call("GET", "/v1/models/digits/labels/nolabel").status == 404


def test_a_bug_is_a_500_whose_log_line_escapes_the_clients_text(stack, caplog) -> None:
    stack.host.fail[1] = RuntimeError("a bug")
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        reply = stack.call("POST", "/v1/models/digits:predict", _predict_body())
    assert reply.status == 500 and reply.json() == {"error": "Internal error: RuntimeError"}
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        stack.call("POST", "/v2/models/digits\nFORGED line/infer", _infer_body())
    assert all("\nFORGED" not in r.getMessage() for r in caplog.records)


def test_status_and_metadata_routes(stack) -> None:
    assert stack.call("GET", "/v1/models/digits").json()["model_version_status"][0]["version"] == "1"
    meta = stack.call("GET", "/v1/models/digits/versions/1/metadata").json()
    assert meta["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    assert stack.call("GET", "/v2/models/digits/versions/1").json()["versions"] == ["1"]
    assert stack.call("GET", "/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    status = stack.call("GET", "/maas/v1/status").json()
    assert status["models"]["digits"]["versions"] == [1] and status["deployments"] == {}
    assert status["replica"] == "unit-replica"  # the figures of one replica: which one
    assert stack.call("POST", "/v1/models/digits:classify", b"{}").status == 400


def test_auth_off_lets_anyone_in(make_stack) -> None:
    stack = make_stack(auth=False)
    assert stack.call("POST", PREDICT, _predict_body(), key=None).status == 200


def test_a_slow_storage_is_answered_from_the_cache_and_refreshed_behind(stack, monkeypatch) -> None:
    """6c14451's S3 outage: a refresh stuck in the SDK's retries held every request behind it (504s
    after 24 s). A refresh slower than a quarter second is left to finish in the background."""
    stack.registry.promote("digits", 1)
    assert stack.call("POST", PREDICT, _predict_body()).status == 200
    slow = stack.registry.labels
    monkeypatch.setattr(stack.registry, "labels", lambda model: time.sleep(1.5) or slow(model))
    stack.clock.now += 5  # every entry is due for a refresh
    started = time.monotonic()
    assert [stack.call("POST", PREDICT, _predict_body()).status for _ in range(5)] == [200] * 5
    assert time.monotonic() - started < 1.0  # none waited for the slow read (one read, shared)
    stack.run(asyncio.sleep(1.6))  # the refresh ends behind the requests...
    assert stack.cache._short[("labels", "digits")].at == stack.clock.now  # ...and is cached


def test_a_version_published_a_moment_ago_is_found_without_waiting_for_the_refresh(stack) -> None:
    assert stack.call("POST", "/v1/models/digits/versions/2:predict", _predict_body()).status == 404
    stack.publish()
    stack.clock.now += 1.0  # a second later, well inside registry_refresh_s
    assert stack.call("POST", "/v1/models/digits/versions/2:predict", _predict_body()).status == 200


# ---- found by a hostile review of this layer ----------------------------------------------------


class _Strings:
    """A model host whose output 'label' is a string tensor (object array of bytes, as TF gives it)."""

    async def predict(self, model, version, inputs, ticket):
        n = len(next(iter(inputs.values())))
        return {"label": np.array([b"cat", b"\xff\xfe"] * n, dtype=object)[:n]}


def test_string_outputs_are_text_or_b64_in_tf_serving_and_bytes_in_v2(stack) -> None:
    from maas.signature import Signature, TensorSpec

    signature = Signature(inputs=(TensorSpec("x", "float32", (-1, 2)),),
                          outputs=(TensorSpec("label", "string", (-1,)),))
    stack.publish("labeller", signature)
    stack.plane._host = _Strings()
    reply = stack.call("POST", "/v1/models/labeller:predict", b'{"instances": [[1, 2], [3, 4]]}')
    assert reply.status == 200 and reply.json() == {"predictions": ["cat", {"b64": "//4="}]}
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    reply = stack.call("POST", "/v2/models/labeller/infer", body.encode())
    assert reply.status == 200 and reply.json()["outputs"][0]["datatype"] == "BYTES"
    binary = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                         "parameters": {"binary_data_output": True}})
    reply = stack.call("POST", "/v2/models/labeller/infer", binary.encode())
    head = int(reply.headers["inference-header-content-length"])
    assert reply.status == 200 and reply.body[head:] == b"\x03\x00\x00\x00cat"  # length-prefixed, per element
    strings_in = Signature(inputs=(TensorSpec("s", "string", (-1,)),), outputs=(TensorSpec("y", "float32", (-1,)),))
    stack.publish("texts", strings_in)
    head = json.dumps({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 7}}]}).encode()
    reply = stack.call("POST", "/v2/models/texts/infer", head + b"\x03\x00\x00\x00abc",
                       {"inference-header-content-length": str(len(head))})
    assert reply.status == 400 and "string inputs are not supported" in reply.json()["error"]


def test_a_random_key_id_does_not_make_valid_keys_wait_for_the_storage(stack, monkeypatch) -> None:
    assert stack.call("GET", "/v2/models/digits").status == 200
    listing = stack.keys.ids
    monkeypatch.setattr(stack.keys, "ids", lambda: time.sleep(1.0) or listing())
    stack.clock.now += 1.5  # the listing may be read again (once a second), still within registry_refresh_s

    async def both():
        stranger = asyncio.ensure_future(stack.acall("GET", "/v2/models/digits", key=f"maas_{'e' * 12}_{'z' * 43}"))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        valid = await stack.acall("GET", "/v2/models/digits")
        seconds = time.monotonic() - started
        return (await stranger).status, valid.status, seconds

    stranger, valid, seconds = stack.run(both())
    assert (stranger, valid) == (401, 200) and seconds < 0.2  # the valid key never waited for the slow listing


def test_what_an_outage_hides_is_503_not_401_or_404(stack) -> None:
    assert stack.call("GET", "/v2/models/digits").status == 200  # the key listing read
    assert stack.call("GET", "/v1/models/later").status == 404  # "no such model", read
    newer = stack.keys.create("made-before-the-outage")[0]  # not in the cached listing
    stack.publish("later")
    stack.root.rename(stack.root.with_name("away"))
    stack.clock.now += 5
    stack.call("POST", PREDICT, _predict_body())  # the replica notices the outage
    assert stack.call("GET", "/v2/models/digits", key=newer).status == 503
    assert stack.call("GET", "/v1/models/later").status == 503


def test_an_input_that_fails_every_version_does_not_count_against_the_canary(make_stack) -> None:
    from maas.errors import InferenceError
    from maas.serving.canary import CanaryPolicy

    stack = make_stack(canary=CanaryPolicy(window_s=60, min_requests=5, max_error_rate=0.2))
    stack.publish()
    stack.registry.promote("digits", 1)
    stack.registry.set_label("digits", "canary", 2, weight=1.0)
    stack.host.fail = {1: InferenceError("digits version 1 failed"), 2: InferenceError("digits version 2 failed")}
    assert {stack.call("POST", PREDICT, _predict_body()).status for _ in range(10)} == {500}
    assert "canary" in stack.registry.labels("digits")  # 6c14451's review: retired by 5 poison requests


def test_a_refresh_under_way_does_not_bring_a_retired_canary_back(make_stack, monkeypatch) -> None:
    from maas.errors import InferenceError
    from maas.serving.canary import CanaryPolicy

    stack = make_stack(canary=CanaryPolicy(window_s=60, min_requests=5, max_error_rate=0.2))
    stack.publish()
    stack.registry.promote("digits", 1)
    stack.registry.set_label("digits", "canary", 2, weight=1.0)
    assert stack.call("POST", PREDICT, _predict_body()).headers["Model-Version"] == "2"
    labels = stack.registry.labels
    monkeypatch.setattr(stack.registry, "labels", lambda model: time.sleep(0.6) or labels(model))
    stack.clock.now += 5  # a slow labels read starts with the next request, with the canary still set
    stack.host.fail[2] = InferenceError("digits version 2 failed")
    replies = [stack.call("POST", PREDICT, _predict_body()) for _ in range(8)]  # the breach, the rollback
    stack.run(asyncio.sleep(0.8))  # the slow read that began before the rollback ends now
    assert {r.headers["Model-Version"] for r in replies} == {"1"}
    assert "canary" not in stack.registry.labels("digits")
    assert [stack.call("POST", PREDICT, _predict_body()).headers["Model-Version"] for _ in range(3)] == ["1"] * 3


def test_reads_in_flight_stay_bounded_while_the_storage_hangs(make_stack, monkeypatch) -> None:
    from maas.serving import storage_cache

    stack = make_stack(request_timeout_s=10)
    assert stack.call("POST", PREDICT, _predict_body()).status == 200
    versions = stack.registry.versions
    monkeypatch.setattr(stack.registry, "versions", lambda model: time.sleep(0.5) or versions(model))
    stack.root.rename(stack.root.with_name("away"))
    stack.clock.now += 5

    async def many():
        return await asyncio.gather(*(stack.acall("POST", f"/v1/models/m{i}:predict", _predict_body())
                                      for i in range(200)))

    assert {r.status for r in stack.run(many())} == {503}
    assert len(stack.cache._reading) <= storage_cache._MAX_READS  # the rest answered at once, not queued


def test_the_status_route_answers_within_the_request_timeout(make_stack, monkeypatch) -> None:
    stack = make_stack(request_timeout_s=0.5)
    history = stack.registry.label_history
    monkeypatch.setattr(stack.registry, "label_history", lambda model: time.sleep(2) or history(model))
    started = time.monotonic()
    reply = stack.call("GET", "/maas/v1/status")
    assert reply.status == 504 and time.monotonic() - started < 1.5


def test_a_body_the_replica_can_never_hold_is_413_and_a_full_budget_closes(make_stack) -> None:
    stack = make_stack(max_buffered_bytes=10_000)
    reply = stack.call("POST", PREDICT, b" " * 20_000, {"content-length": "20000"})
    assert reply.status == 413 and "max_buffered_bytes" in reply.json()["error"]
    reply = stack.call("POST", PREDICT, chunks=[b" " * 6000, b" " * 6000])  # no Content-Length: refused midway
    assert reply.status == 503 and reply.headers["Connection"] == "close" and reply.headers["Retry-After"] == "1"


def test_made_up_model_names_never_become_metric_series(make_stack) -> None:
    seen = []
    stack = make_stack()
    stack.api._observe = lambda info, status, ms: seen.append((info.model, status))
    for path in ("/v1/models/made-up-1", "/v1/models/made-up-2/metadata", "/v2/models/made-up-3/ready"):
        assert stack.call("GET", path).status == 404
    stack.call("POST", "/v1/models/made-up-4:predict", _predict_body())
    assert stack.call("GET", "/v1/models/digits").status == 200
    assert seen == [("", 404)] * 4 + [("digits", 200)]
