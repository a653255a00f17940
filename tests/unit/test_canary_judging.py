"""The canary is judged on its own faults only, at the data plane: overload (503), client errors and
timeouts spent waiting never retire it; its load or model failing, or its own pass outlasting the
deadline, do. A version labelled canary again is judged afresh."""

from __future__ import annotations

import json

import numpy as np

from maas.errors import InferenceError, InvalidInput, ModelUnavailable, ServerBusy
from maas.serving.canary import CanaryPolicy

BODY = json.dumps({"instances": [np.zeros((8, 8)).tolist()]}).encode()
POLICY = CanaryPolicy(window_s=60, min_requests=5, max_error_rate=0.2)


def _canary_stack(make_stack, **kwargs):
    stack = make_stack(canary=POLICY, **kwargs)
    stack.publish()  # version 2
    stack.registry.promote("digits", 1)
    stack.registry.set_label("digits", "canary", 2, weight=1.0)  # every routed request goes to the canary
    return stack


def _route(stack, n: int) -> list[int]:
    return [stack.call("POST", "/v1/models/digits:predict", BODY).status for _ in range(n)]


def test_a_saturated_healthy_canary_is_not_retired(make_stack) -> None:
    stack = _canary_stack(make_stack)
    stack.host.fail[2] = ServerBusy("Model server queues are full; retry later")
    assert set(_route(stack, 30)) == {503}
    assert stack.registry.labels("digits")["canary"].version == 2


def test_client_errors_on_the_canary_never_count(make_stack) -> None:
    stack = _canary_stack(make_stack)
    stack.host.fail[2] = InvalidInput("bad input")
    assert set(_route(stack, 30)) == {400}
    assert "canary" in stack.registry.labels("digits")


def test_timeouts_spent_waiting_do_not_count_but_the_canarys_own_slow_pass_does(make_stack) -> None:
    stack = _canary_stack(make_stack, request_timeout_s=0.05)
    stack.host.queued_s = 0.2  # waiting for a batch (or a load) past the deadline: not the canary's fault
    assert set(_route(stack, 10)) == {504}
    assert "canary" in stack.registry.labels("digits")
    stack.host.queued_s, stack.host.delay_s = 0.0, 0.2  # its own pass outlasts the deadline
    assert set(_route(stack, 6)) == {504}
    assert "canary" not in stack.registry.labels("digits")
    assert stack.registry.label_history("digits")[-1].reason.startswith("auto-rollback: error rate")


def test_a_corrupt_canary_is_retired_and_its_requests_answered_by_stable(make_stack) -> None:
    stack = _canary_stack(make_stack)
    stack.host.fail[2] = ModelUnavailable("digits version 2 could not be loaded: DecodeError")
    replies = [stack.call("POST", "/v1/models/digits:predict", BODY) for _ in range(6)]
    assert {r.status for r in replies} == {200} and {r.headers["Model-Version"] for r in replies} == {"1"}
    assert "canary" not in stack.registry.labels("digits")


def test_a_version_labelled_canary_again_is_judged_afresh(make_stack) -> None:
    stack = _canary_stack(make_stack)
    stack.host.fail[2] = InferenceError("digits version 2 failed")
    _route(stack, 6)
    assert "canary" not in stack.registry.labels("digits")
    stack.registry.set_label("digits", "canary", 2, weight=1.0)  # fixed, and labelled canary again
    stack.clock.now += 5  # the replica sees the new label
    _route(stack, 6)
    assert "canary" not in stack.registry.labels("digits")  # 6c14451 never judged it again on this replica


def test_a_rollback_that_cannot_be_written_is_tried_again(make_stack, monkeypatch) -> None:
    stack = _canary_stack(make_stack)
    stack.host.fail[2] = InferenceError("digits version 2 failed")
    calls = []
    real = stack.cache.retire_canary

    async def flaky(model, version, reason):
        calls.append(version)
        if len(calls) == 1:
            raise OSError("storage down")
        return await real(model, version, reason)

    monkeypatch.setattr(stack.cache, "retire_canary", flaky)
    _route(stack, 5)  # the breach: min_requests failures
    assert "canary" in stack.registry.labels("digits") and len(calls) == 1
    _route(stack, 1)
    assert "canary" not in stack.registry.labels("digits") and len(calls) == 2
