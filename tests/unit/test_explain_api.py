"""``:explain`` through the HTTP layer and the data plane (the model host a fake whose model is linear):
what is checked before any gradient is computed, the baselines, the answer's shape, and its bounds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maas.errors import InvalidInput, PayloadTooLarge
from maas.serving.attribution import Attributions, ExplainArgs
from maas.serving.protocol.explain import ExplainPolicy, decode_explain, encode_explain
from maas.serving.protocol.limits import RequestLimits
from maas.signature import Signature, TensorSpec

EXPLAIN = "/v1/models/digits:explain"
TABLE = Signature(inputs=(TensorSpec("features", "float32", (-1, 3)),),
                  outputs=(TensorSpec("failure", "float32", (-1, 2)),))
TWO_OUTPUTS = Signature(inputs=(TensorSpec("x", "float32", (-1, 2)),),
                        outputs=(TensorSpec("a", "float32", (-1, 1)), TensorSpec("b", "float32", (-1, 1))))
IDS = Signature(inputs=(TensorSpec("ids", "int64", (-1, 4)),), outputs=(TensorSpec("score", "float32", (-1, 1)),))
STATS = {"preprocessing": {"feature_columns": ["a", "b", "c"], "item_shape": [3],
                           "training_split_stats": {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0], "count": 9}}}


def _body(instances, **extra) -> bytes:
    return json.dumps({"instances": instances, **extra}).encode()


def _decode(body: dict, signature: Signature = TABLE, policy: ExplainPolicy | None = None) -> ExplainArgs:
    return decode_explain(json.dumps(body).encode(), signature, RequestLimits(), policy or ExplainPolicy())


# ---- the protocol layer ----------------------------------------------------------------------------

def test_a_body_names_only_what_to_explain_and_the_rest_has_defaults() -> None:
    args = _decode({"instances": [[1, 2, 3]]})
    assert (args.baseline, args.steps, args.output, args.target) == ("zeros", 50, "failure", None)
    assert args.inputs["features"].shape == (1, 3) and args.inputs["features"].dtype == np.float32
    args = _decode({"inputs": {"features": [[1, 2, 3]]}, "baseline": "training_mean", "steps": 8, "target": 1})
    assert (args.baseline, args.steps, args.target) == ("training_mean", 8, 1)


@pytest.mark.parametrize(("extra", "message"), [
    ({"step": 10}, "Unknown field ['step']; :explain takes"),
    ({"baseline": "mean"}, "'baseline' must be one of ['zeros', 'training_mean']. Received: 'mean'"),
    ({"steps": 0}, "'steps' must be an integer from 1 to 256 (max_steps). Received: 0"),
    ({"steps": 257}, "'steps' must be an integer from 1 to 256 (max_steps)"),
    ({"steps": True}, "'steps' must be an integer"),
    ({"steps": "10"}, "'steps' must be an integer"),
    ({"target": -1}, "'target' must be a position in the output"),
    ({"target": 1.5}, "'target' must be a position in the output"),
    ({"output": "probabilities"}, "'output' must be one of ['failure']. Received: 'probabilities'"),
])
def test_a_bad_option_is_a_400_naming_it(extra: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode({"instances": [[1, 2, 3]], **extra})
    assert type(caught.value) is InvalidInput and message in str(caught.value)


def test_a_model_of_several_outputs_needs_the_output_named() -> None:
    with pytest.raises(InvalidInput, match=r"This model has 2 outputs: name the one to explain in 'output', one of "
                                           r"\['a', 'b'\]"):
        _decode({"instances": [[1, 2]]}, TWO_OUTPUTS)
    assert _decode({"instances": [[1, 2]], "output": "b"}, TWO_OUTPUTS).output == "b"


def test_instances_past_the_explain_bound_are_413_before_any_work() -> None:
    with pytest.raises(PayloadTooLarge, match=r"may carry 2 instances \(max_instances of args.explain\); this one "
                                              "has 3"):
        _decode({"instances": [[1, 2, 3]] * 3}, policy=ExplainPolicy(max_instances=2))
    with pytest.raises(ValueError, match="steps"):
        ExplainPolicy(steps=300)
    with pytest.raises(PayloadTooLarge, match=r"would evaluate 306 input values \(2 instances x 51 points\); the limit "
                                              r"is 300 \(max_path_values of args.explain\)"):
        _decode({"instances": [[1, 2, 3]] * 2}, policy=ExplainPolicy(max_path_values=300))


def test_the_answer_holds_predictions_and_one_explanation_per_instance_in_the_instances_shape() -> None:
    args = _decode({"instances": [[1, 2, 3], [4, 5, 6]]})
    found = Attributions(output="failure", outputs={"failure": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)},
                         target=np.array([0, 1]), prediction=np.array([0.9, 0.8]),
                         baseline_prediction=np.array([0.5, 0.5]),
                         attributions={"features": np.array([[0.1, 0.1, 0.2], [0.1, 0.1, 0.0]], np.float32)})
    doc = json.loads(encode_explain(found, args, RequestLimits()))
    assert doc["predictions"] == [[pytest.approx(0.9), pytest.approx(0.1)], [pytest.approx(0.2), pytest.approx(0.8)]]
    first, second = doc["explanations"]
    assert {k: first[k] for k in ("method", "baseline", "steps", "output", "target")} == {
        "method": "integrated_gradients", "baseline": "zeros", "steps": 50, "output": "failure", "target": 0}
    assert first["attributions"] == [pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.2)]
    assert first["delta"] == pytest.approx(0.0, abs=1e-6) and second["delta"] == pytest.approx(-0.1, abs=1e-6)
    with pytest.raises(PayloadTooLarge, match="max_response_bytes"):
        encode_explain(found, args, RequestLimits(max_response_bytes=40))


# ---- through HTTP and the data plane ---------------------------------------------------------------

def test_an_explanation_over_http_adds_up_and_says_which_version_answered(stack) -> None:
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    reply = stack.call("POST", EXPLAIN, _body([x.tolist()], steps=10))
    assert reply.status == 200 and reply.headers["Model-Version"] == "1"
    doc = reply.json()
    assert np.asarray(doc["predictions"]).shape == (1, 10)
    (item,) = doc["explanations"]
    np.testing.assert_allclose(item["attributions"], x)  # the fake's model is sum(x): its gradient is 1
    assert item["prediction"] - item["baseline_prediction"] == pytest.approx(np.sum(item["attributions"]))
    assert stack.host.explained[0][:5] == ("digits", 1, 10, "probabilities", None)
    assert stack.call("POST", "/v1/models/digits/versions/1:explain", _body([x.tolist()])).status == 200
    assert stack.call("POST", EXPLAIN, _body([x.tolist()]), key=None).status == 401


def test_a_version_with_integer_inputs_is_a_400_before_the_model_is_asked(stack) -> None:
    stack.publish("ids", IDS)
    reply = stack.call("POST", "/v1/models/ids:explain", _body([[1, 2, 3, 4]]))
    assert reply.status == 400
    assert reply.json()["error"] == ("ids version 1 cannot be explained: integrated gradients need inputs the model is "
                                     "differentiable with respect to (floating point), and it takes 'ids' (int64)")
    assert stack.host.explained == []


def test_the_training_mean_baseline_comes_from_the_versions_metadata(stack) -> None:
    stack.publish("table", TABLE, **STATS)
    reply = stack.call("POST", "/v1/models/table:explain", _body([[2, 2, 2]], baseline="training_mean"))
    assert reply.status == 200, reply.json()
    np.testing.assert_array_equal(stack.host.explained[-1][5], [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(reply.json()["explanations"][0]["attributions"], [1.0, 0.0, -1.0])
    reply = stack.call("POST", EXPLAIN, _body([np.zeros((8, 8)).tolist()], baseline="training_mean"))
    assert reply.status == 400 and reply.json()["error"] == (
        "digits version 1 has no training statistics in its metadata (preprocessing.training_split_stats): use the "
        "baseline 'zeros'")


def test_bad_explain_bodies_are_400s_and_oversized_ones_413s(make_stack) -> None:
    stack = make_stack(explain=ExplainPolicy(max_instances=2, max_steps=20, steps=10))
    image = np.zeros((8, 8)).tolist()
    for body, status, text in [
        (_body([image], steps=21), 400, "(max_steps)"),
        (_body([image] * 3), 413, "(max_instances of args.explain)"),
        (_body([[0.0] * 63]), 400, "expects instances of shape [8, 8]"),
        (b"[1]", 400, "must be a JSON object"),
        (_body([image], bogus=1), 400, "Unknown field ['bogus']"),
    ]:
        reply = stack.call("POST", EXPLAIN, body)
        assert reply.status == status and text in reply.json()["error"], reply.json()
    assert stack.host.explained == []
    assert stack.call("GET", EXPLAIN).status == 405
