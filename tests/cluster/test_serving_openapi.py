"""The served OpenAPI document is valid and matches behaviour: generated requests (valid and not, with
and without a key) get only the status codes it documents, with bodies that match its schemas."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas.client import JSON, Call, Client

pytestmark = pytest.mark.cluster
DOC_URI = "urn:maas:openapi"


@pytest.fixture(scope="module")
def spec(digits_app):
    from openapi_spec_validator import validate

    app = digits_app.ensure()
    reply = Client(app.cluster.serve_url, api_key="").send(Call("GET", "/openapi.json"))  # open, no key
    assert reply.status == 200
    document = reply.json()
    validate(document)
    return document


def _validator(document: dict, schema: dict):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource(DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": DOC_URI + schema["$ref"]} if "$ref" in schema else schema, registry=registry)


def _response_schema(document: dict, operation: dict, status: int) -> dict | None:
    response = operation["responses"].get(str(status))
    if response is None:
        return None
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False) |
                           st.text(max_size=5), lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
image = st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=8, max_size=8), min_size=8, max_size=8)
bodies = st.one_of(
    st.builds(lambda xs: {"instances": xs}, st.lists(image, min_size=1, max_size=3)),
    st.builds(lambda xs: {"inputs": {"pixels": xs}}, st.lists(image, min_size=1, max_size=2)),
    st.builds(lambda xs: {"inputs": [{"name": "pixels", "shape": [len(xs), 8, 8], "datatype": "FP32",
                                      "data": [v for x in xs for row in x for v in row]}]},
              st.lists(image, min_size=1, max_size=2)),
    st.dictionaries(st.sampled_from(["instances", "inputs", "id", "outputs", "signature_name"]), json_values,
                    max_size=3),
    json_values,
)
path_values = {"model": st.sampled_from(["digits", "nope", "other"]),
               "version": st.sampled_from(["1", "2", "999", "0", "x1"]),
               "label": st.sampled_from(["stable", "canary", "nolabel"])}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_every_answer_is_documented_and_matches_its_schema(spec, digits_app, data) -> None:
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    path, method, operation = data.draw(st.sampled_from(operations), label="operation")
    concrete = path
    for name, values in path_values.items():
        if "{" + name + "}" in concrete:
            concrete = concrete.replace("{" + name + "}", data.draw(values, label=name))
    key = data.draw(st.sampled_from([os.environ["MAAS_API_KEY"], "", "maas_0123456789ab_" + "y" * 43]), label="key")
    body = None
    if "requestBody" in operation:
        body = json.dumps(data.draw(bodies, label="body")).encode()
    reply = Client(digits_app.cluster.serve_url, api_key=key).send(Call(method.upper(), concrete, body,
                                                                        JSON if body else {}))
    schema = _response_schema(spec, operation, reply.status)
    assert schema is not None, (f"{method.upper()} {concrete} answered {reply.status}, "
                                f"not documented: {reply.body[:300]}")
    errors = [e.message for e in _validator(spec, schema).iter_errors(reply.json())]
    assert not errors, f"{method.upper()} {concrete} -> {reply.status}: {errors[:3]}"
