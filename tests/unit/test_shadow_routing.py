"""Shadow versions through the HTTP layer and the data plane (the model host a fake): a shadow's share
of routed requests is also predicted by its version after the answer, compared and never returned; a
failing, slow or saturated shadow changes nothing for clients, and the status counts every outcome."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from maas.errors import InferenceError, ModelUnavailable
from maas.serving.shadow import ShadowPolicy, compare

PREDICT = "/v1/models/digits:predict"
BODY = json.dumps({"instances": [np.zeros((8, 8)).tolist()] * 2}).encode()


def _shadowed(make_stack, weight: float = 1.0, **options):
    stack = make_stack(**options)
    stack.publish()  # version 2
    stack.registry.promote("digits", 1)
    stack.registry.set_label("digits", "shadow", 2, weight=weight)
    stack.host.loaded.add(2)  # the shadow is loaded here (a shadow not loaded yet: see the test below)
    return stack


def _shadow_status(stack) -> dict:
    return stack.call("GET", "/maas/v1/status").json()["models"]["digits"]["shadow"]


def test_agreement_is_the_share_of_same_top_class_or_else_the_mean_absolute_difference() -> None:
    a = {"p": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])}
    assert compare(a, {"p": np.array([[0.7, 0.3], [0.9, 0.1], [0.5, 0.4]])}) == (pytest.approx(2 / 3), True)
    assert compare({"y": np.array([[1.0], [3.0]])}, {"y": np.array([[1.5], [2.0]])}) == (pytest.approx(0.75), False)
    assert compare(a, {"q": a["p"]}) is None and compare(a, {"p": a["p"][:, :1]}) is None


def test_routed_requests_are_answered_by_the_default_version_and_also_predicted_by_the_shadow(make_stack) -> None:
    stack = _shadowed(make_stack)
    stack.host.top[2] = 3  # the shadow's top class differs from stable's
    for _ in range(4):
        reply = stack.call("POST", PREDICT, BODY)
        assert reply.status == 200 and reply.headers["Model-Version"] == "1"
        assert np.asarray(reply.json()["predictions"])[0].argmax() == 0  # stable's answer, never the shadow's
    assert stack.host.alone == [("digits", 2)] * 4
    shadow = _shadow_status(stack)
    assert {k: shadow[k] for k in ("version", "weight", "compared", "errors", "skipped", "instances")} == {
        "version": 2, "weight": 1.0, "compared": 4, "errors": 0, "skipped": 0, "instances": 8}
    assert shadow["agreement"] == 0.0 and shadow["mean_abs_diff"] is None
    assert shadow["shadow_p50_ms"] is not None and shadow["answer_p50_ms"] is not None
    assert stack.call("POST", "/v1/models/digits/versions/1:predict", BODY).status == 200  # named: no shadow
    assert stack.call("POST", "/v1/models/digits/labels/stable:predict", BODY).status == 200
    assert len(stack.host.alone) == 4


def test_only_the_shadows_share_is_predicted_twice(make_stack) -> None:
    draws = iter([0.1, 0.5, 0.9, 0.19])
    stack = _shadowed(make_stack, weight=0.2, draw=lambda: next(draws))
    for _ in range(4):
        assert stack.call("POST", PREDICT, BODY).status == 200
    assert _shadow_status(stack)["compared"] == 2


def test_a_failing_shadow_fails_no_request_and_counts_its_errors(make_stack) -> None:
    stack = _shadowed(make_stack)
    stack.host.fail[2] = InferenceError("digits version 2 failed: corrupt")
    statuses = [stack.call("POST", PREDICT, BODY).status for _ in range(5)]
    assert statuses == [200] * 5
    shadow = _shadow_status(stack)
    assert shadow["errors"] == 5 and shadow["compared"] == 0 and shadow["agreement"] is None


def test_a_slow_shadow_slows_no_request_and_beyond_max_concurrent_is_skipped(make_stack) -> None:
    stack = _shadowed(make_stack, shadow=ShadowPolicy(max_concurrent=2), request_timeout_s=0.5)
    stack.host.slow[2] = 2.0  # past the request timeout

    async def burst() -> list[tuple[int, float]]:
        async def one() -> tuple[int, float]:
            started = time.monotonic()
            reply = await stack.acall("POST", PREDICT, BODY)
            return reply.status, time.monotonic() - started
        return list(await asyncio.gather(*(one() for _ in range(6))))

    answers = stack.loop.run_until_complete(burst())
    assert [status for status, _ in answers] == [200] * 6
    assert max(seconds for _, seconds in answers) < 0.2  # none waited for its shadow
    stack.run(asyncio.sleep(0))  # the shadows' judges: past their deadline, counted as errors
    shadow = _shadow_status(stack)
    assert shadow["skipped"] == 4 and shadow["errors"] == 2 and shadow["compared"] == 0
    assert shadow["running"] == 2 and shadow["state"] == "ready"  # the two shadows' work still holds their slots
    stack.loop.run_until_complete(asyncio.sleep(1.6))
    assert _shadow_status(stack)["running"] == 0


def test_a_shadow_label_set_again_starts_its_figures_afresh_and_removed_leaves_none(make_stack) -> None:
    stack = _shadowed(make_stack)
    stack.call("POST", PREDICT, BODY)
    assert _shadow_status(stack)["compared"] == 1
    stack.registry.set_label("digits", "shadow", 2, weight=1.0)  # a new label id
    stack.clock.now += 10  # past registry_refresh_s
    assert _shadow_status(stack)["compared"] == 0
    stack.registry.remove_label("digits", "shadow")
    stack.clock.now += 10
    stack.call("POST", PREDICT, BODY)
    assert stack.call("GET", "/maas/v1/status").json()["models"]["digits"]["shadow"] is None


def test_a_shadow_not_loaded_yet_is_loaded_in_the_background_and_one_that_fails_to_load_counts(make_stack) -> None:
    stack = _shadowed(make_stack)
    stack.host.loaded.discard(2)
    stack.host.load_s = 0.05
    assert stack.call("POST", PREDICT, BODY).status == 200
    shadow = _shadow_status(stack)
    assert shadow["skipped"] == 1 and shadow["state"] == "loading" and stack.host.alone == []  # never on its account
    stack.loop.run_until_complete(asyncio.sleep(0.1))  # loaded in the background
    assert stack.call("POST", PREDICT, BODY).status == 200
    assert stack.host.alone == [("digits", 2)] and _shadow_status(stack)["compared"] == 1

    broken = _shadowed(make_stack)
    broken.host.loaded.discard(2)
    broken.host.fail[2] = ModelUnavailable("digits version 2 could not be loaded: corrupt")
    broken.host.tried.add(2)  # its load failed lately
    assert [broken.call("POST", PREDICT, BODY).status for _ in range(3)] == [200] * 3
    shadow = _shadow_status(broken)
    assert shadow["errors"] == 3 and shadow["state"] == "failed" and broken.host.alone == []


def test_maas_status_says_how_many_shadows_run_and_when_the_shadow_is_not_ready_here(make_stack) -> None:
    from maas.cli import _model_status_lines
    from maas.serving.status import ServiceStatus

    stack = _shadowed(make_stack)
    stack.host.loaded.discard(2)
    stack.host.load_s = 0.05
    assert stack.call("POST", PREDICT, BODY).status == 200
    answer = ServiceStatus.model_validate(stack.call("GET", "/maas/v1/status").json())
    line = next(x for x in _model_status_lines("digits", answer.models["digits"]) if "shadow v2" in x)
    assert "1 skipped, 0 running; " in line and line.endswith("; loading on this replica"), line

    older = stack.call("GET", "/maas/v1/status").json()  # a service from before state and running
    for field in ("state", "running"):
        del older["models"]["digits"]["shadow"][field]
    del older["replica"]
    line = next(x for x in _model_status_lines("digits", ServiceStatus.model_validate(older).models["digits"])
                if "shadow v2" in x)
    assert "1 skipped; p50" in line and "running" not in line and "on this replica" not in line, line
    stack.loop.run_until_complete(asyncio.sleep(0.1))  # the background load ends before the loop does

