"""The route tables: one declaration per route, from which matching, the OpenAPI document and the
client's paths come. Rules are ASCII, whole-string and bounded."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maas.errors import InvalidInput
from maas.names import MODEL_PATTERN, parse_version, validate_label, validate_model_name
from maas.serving.protocol import ROUTES, openapi


@pytest.mark.parametrize("method, path, kind, values", [
    ("GET", "/v1/models/digits", "status", {"model": "digits"}),
    ("GET", "/v1/models/digits/versions/3", "status", {"model": "digits", "version": 3}),
    ("GET", "/v1/models/digits/labels/stable/metadata", "metadata", {"model": "digits", "label": "stable"}),
    ("POST", "/v1/models/d.v-2_x:predict", "predict", {"model": "d.v-2_x"}),
    ("POST", "/v1/models/digits/versions/7:predict", "predict", {"model": "digits", "version": 7}),
    ("GET", "/v2", "server_metadata", {}),
    ("GET", "/v2/health/ready", "ready", {}),
    ("GET", "/v2/models/digits/versions/2/ready", "model_ready", {"model": "digits", "version": 2}),
    ("POST", "/v2/models/digits/infer", "infer", {"model": "digits"}),
    ("GET", "/maas/v1/status", "status", {}),
])
def test_routes_match_and_convert(method: str, path: str, kind: str, values: dict) -> None:
    match = ROUTES.lookup(method, path).match
    assert match is not None and match.route.kind == kind and match.values() == values


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/models/digits:predict", ("POST",)), ("POST", "/v2/health/live", ("GET",)),
    ("PUT", "/v2/models/digits", ("GET",)), ("GET", "/v1/models", ()), ("GET", "/v2/models/a:b", ()),
])
def test_no_match_says_which_methods_the_path_takes(method: str, path: str, allowed: tuple) -> None:
    lookup = ROUTES.lookup(method, path)
    assert lookup.match is None and lookup.allowed == allowed


@pytest.mark.parametrize("text", ["\u00b2", "0", "007", "1" * 19, "1\n", "١٢", " 1", "+1", "1_000"])
def test_versions_are_plain_bounded_ascii_integers(text: str) -> None:
    with pytest.raises(InvalidInput, match="Version must be a positive integer of at most 18 digits"):
        parse_version(text)
    assert parse_version("9" * 18) == int("9" * 18) < 2**63


@pytest.mark.parametrize("name", ["stable\n", "Stable", "s" * 64, "st\u0430ble", ""])
def test_labels_are_whole_string_ascii(name: str) -> None:
    with pytest.raises(InvalidInput, match="Labels are"):
        validate_label(name)


@pytest.mark.parametrize("name", ["digits\n", ".hidden", "a/b", "d" * 129, "dígits", "a b"])
def test_model_names_are_whole_string_ascii(name: str) -> None:
    with pytest.raises(InvalidInput, match="Model names are"):
        validate_model_name(name)


def test_every_route_is_documented_with_the_patterns_the_server_applies() -> None:
    doc = openapi.document(ROUTES)
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert operations == {(r.method, r.template) for r in ROUTES.routes}
    predict = doc["paths"]["/v1/models/{model}/versions/{version}:predict"]["post"]
    patterns = {p["name"]: p["schema"]["pattern"] for p in predict["parameters"]}
    assert patterns == {"model": f"^{MODEL_PATTERN}$", "version": "^[1-9][0-9]{0,17}$"}
    assert "500" not in predict["responses"] and "408" in predict["responses"]
    assert doc["paths"]["/v2/health/live"]["get"]["security"] == []


@settings(max_examples=300, deadline=None)
@given(st.from_regex(re.compile(f"^{MODEL_PATTERN}$", re.ASCII), fullmatch=True),
       st.from_regex(r"^[1-9][0-9]{0,17}$", fullmatch=True))
def test_every_schema_valid_name_and_version_is_accepted_and_round_trips(model: str, version: str) -> None:
    route = ROUTES.route("tfserving", "predict", with_params={"model", "version"})
    path = route.path(model=model, version=version)
    assert ROUTES.lookup("POST", path).match.values() == {"model": model, "version": int(version)}
