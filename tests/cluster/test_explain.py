"""``:explain`` over real HTTP on the session's trained digits (the Serve app of
deployments/serve_config.yaml): the attributions of each instance add up to its prediction's change
from the baseline (completeness), what cannot be explained is a 400, and explanations computed beside
predictions leave the predictions answering. (The maintenance template's, with its training-mean
baseline, are in test_templates.py, whose slow tier trains it.)"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest
from support import assert_complete

from maas.client import JSON, Call, Client, HTTPError
from maas.templates import get_template
from maas.training.data import builtin_held_out

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def service(digits_app):
    from maas import settings

    app = digits_app.ensure()
    x, _ = builtin_held_out(get_template("digits"), settings.default_data_dir())
    return Client(app.cluster.serve_url, timeout_s=30), app.version, x[:16]


def test_digits_attributions_add_up_to_each_predictions_change_from_the_baseline(service) -> None:
    client, version, x = service
    served = client.predict("digits", x[:4])
    found = client.explain("digits", x[:4], steps=256)
    coarse = client.explain("digits", x[:4], steps=16)["explanations"]
    np.testing.assert_allclose(found["predictions"], served, rtol=1e-5, atol=1e-6)
    for i, item in enumerate(found["explanations"]):
        assert item["target"] == int(served[i].argmax()) and item["output"] == "probabilities"
        assert item["prediction"] == pytest.approx(float(served[i].max()), rel=1e-4)
        assert item["attributions"].shape == (8, 8) and (item["method"], item["steps"]) == ("integrated_gradients", 256)
        assert_complete(item)
        assert abs(item["delta"]) <= abs(coarse[i]["delta"]) + 1e-6  # more steps, closer
    means = client.explain("digits", x[:4], baseline="training_mean", steps=256)["explanations"]
    checked = 0
    for item in means:  # against the training split's per-column means, from the version's metadata
        assert item["baseline"] == "training_mean"
        if abs(item["prediction"] - item["baseline_prediction"]) > 0.002:  # else nothing to add up
            assert_complete(item)
            checked += 1
    assert checked >= 1
    other = client.explain("digits", x[:1], version=version, target=3, steps=32)["explanations"][0]
    assert other["target"] == 3
    assert other["prediction"] == pytest.approx(float(served[0][3]), rel=1e-4, abs=1e-6)


def test_what_cannot_be_explained_is_a_400_and_past_a_bound_a_413(service) -> None:
    client, _, x = service
    for options, status, message in [
        ({"target": 10}, 400, "target 10 is past the end of output 'probabilities', which has 10 values"),
        ({"steps": 100_000}, 400, "'steps' must be an integer from 1 to 256 (max_steps)"),
    ]:
        with pytest.raises(HTTPError) as caught:
            client.explain("digits", x[:1], **options)
        assert caught.value.status == status and message in caught.value.message
    with pytest.raises(HTTPError) as caught:
        client.explain("digits", np.concatenate([x, x[:1]]))
    assert caught.value.status == 413 and "(max_instances of args.explain)" in caught.value.message
    anonymous = Client(client.base_url, api_key="")
    assert anonymous.send(Call("POST", "/v1/models/digits:explain", b'{"instances": [[1]]}', JSON)).status == 401


def test_explanations_beside_predictions_leave_the_predictions_answering(service) -> None:
    """Clients explaining 16 instances x 256 steps at once, beside clients predicting: every
    prediction is answered 200; each explanation is answered, or refused with 503 + Retry-After when
    its replica already computes one and holds max_waiting more. Every outcome is counted here."""
    client, _, x = service
    deadline = time.monotonic() + 60.0
    outcomes: Counter[str] = Counter()

    def explain() -> str:
        try:
            client.explain("digits", x, steps=256)
            return "explain 200"
        except HTTPError as exc:
            return f"explain {exc.status}" + (" retry-after" if "retry-after" in exc.headers else "")

    def predict() -> str:
        try:
            client.predict("digits", x[:1])
            return "predict 200"
        except HTTPError as exc:
            return f"predict {exc.status}"

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(explain) for _ in range(8)] + [pool.submit(predict) for _ in range(200)]
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        for future in done:
            try:
                outcomes[future.result()] += 1
            except Exception as exc:  # noqa: BLE001 (counted: a connection lost is an outcome)
                outcomes[type(exc).__name__] += 1
        outcomes["not answered in 60 s"] += len(pending)
    assert outcomes["predict 200"] == 200, outcomes
    assert outcomes["explain 200"] >= 1 and outcomes["explain 200"] + outcomes["explain 503 retry-after"] == 8, outcomes
