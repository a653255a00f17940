"""A version switch at the data plane: when a label (or the latest version) moves to a version this
replica has not loaded, requests go on to the version it was answering with until the new one is
loaded and warm (TF Serving's order); a version that fails to load leaves the traffic where it was.
A request naming a version is answered by that version, loaded if need be."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from maas.errors import ModelUnavailable

BODY = json.dumps({"instances": [np.zeros((8, 8)).tolist()]}).encode()


def _answers(stack, n: int = 1, path: str = "/v1/models/digits:predict") -> list[tuple[int, str]]:
    replies = [stack.call("POST", path, BODY) for _ in range(n)]
    return [(r.status, r.headers.get("Model-Version")) for r in replies]


def _sees_labels(stack) -> None:
    stack.clock.now += 5  # past the storage cache's TTL: the replica reads the new labels


def _wait(stack, seconds: float) -> None:
    stack.run(asyncio.sleep(seconds))


def test_a_promoted_cold_version_takes_traffic_only_once_it_is_loaded(stack) -> None:
    stack.registry.promote("digits", 1)
    assert _answers(stack) == [(200, "1")]
    stack.publish()  # version 2: never loaded here
    stack.registry.promote("digits", 2)
    _sees_labels(stack)
    stack.host.load_s = 0.3
    assert _answers(stack, 3) == [(200, "1")] * 3  # version 1 answers while 2 loads
    assert stack.host.load_state("digits", 2) == "loading"
    assert [c[1] for c in stack.host.calls] == [1, 1, 1, 1]  # no request waited on version 2
    _wait(stack, 0.4)
    assert _answers(stack, 2) == [(200, "2")] * 2
    assert _answers(stack, 1, "/v1/models/digits/labels/stable:predict") == [(200, "2")]


def test_a_label_route_switches_the_same_way(stack) -> None:
    stack.registry.promote("digits", 1)
    path = "/v1/models/digits/labels/stable:predict"
    assert _answers(stack, 1, path) == [(200, "1")]
    stack.publish()
    stack.registry.promote("digits", 2)
    _sees_labels(stack)
    stack.host.load_s = 0.2
    assert _answers(stack, 1, path) == [(200, "1")]
    _wait(stack, 0.3)
    assert _answers(stack, 1, path) == [(200, "2")]


def test_a_new_latest_version_is_warmed_before_it_answers(stack) -> None:
    assert _answers(stack) == [(200, "1")]  # no stable label: the latest version answers routed requests
    stack.publish()
    _sees_labels(stack)
    stack.host.load_s = 0.2
    assert _answers(stack) == [(200, "1")]
    _wait(stack, 0.3)
    assert _answers(stack) == [(200, "2")]


def test_a_version_that_fails_to_load_leaves_the_traffic_on_the_one_before(stack) -> None:
    stack.registry.promote("digits", 1)
    assert _answers(stack) == [(200, "1")]
    stack.publish()
    stack.host.fail[2] = ModelUnavailable("digits version 2 could not be loaded: DecodeError")
    stack.registry.promote("digits", 2)
    _sees_labels(stack)
    for _ in range(3):
        assert _answers(stack, 2) == [(200, "1")] * 2
        _wait(stack, 0.05)
    assert stack.host.load_state("digits", 2) == "failed"
    reply = stack.call("POST", "/v1/models/digits/versions/2:predict", BODY)  # asked by number: its own error
    assert reply.status == 503 and "could not be loaded" in json.loads(reply.body)["error"]


def test_a_canary_share_goes_to_the_canary_once_it_is_warm(stack) -> None:
    stack.registry.promote("digits", 1)
    assert _answers(stack) == [(200, "1")]
    stack.publish()
    stack.registry.set_label("digits", "canary", 2, weight=1.0)  # from no share to all of it
    _sees_labels(stack)
    stack.host.load_s = 0.2
    assert _answers(stack, 2) == [(200, "1")] * 2
    _wait(stack, 0.3)
    assert _answers(stack, 2) == [(200, "2")] * 2


def test_a_version_asked_by_number_is_loaded_for_the_request(stack) -> None:
    stack.registry.promote("digits", 1)
    assert _answers(stack) == [(200, "1")]
    stack.publish()
    _sees_labels(stack)
    assert _answers(stack, 1, "/v1/models/digits/versions/2:predict") == [(200, "2")]
    assert _answers(stack) == [(200, "1")]  # the routed traffic stays on stable
