"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Its paths are derived from the route tables (:data:`maas.serving.protocol.ROUTES`): each route's
method, path parameters with the patterns the server applies, request body, answer and the errors it
may give. The schemas of the protocols' bodies are written here; the service's own (its status) come
from the typed models that build those answers. ``tests/cluster/test_serving_openapi.py`` and the
fuzzing tier (schemathesis) drive the live service with generated requests and check every answer
against it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import maas
from maas.serving.protocol.routes import Route, RouteTable
from maas.serving.status import ServiceStatus

_OPEN: list[dict[str, list[str]]] = []  # no API key needed
_ERROR_RESPONSES = {401: "Unauthorized", 405: "MethodNotAllowed", 503: "Unavailable"}  # others: "Error"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(route: Route) -> dict[str, Any]:
    """One route's OpenAPI operation, from its declaration in the protocol's route table."""
    op: dict[str, Any] = {"tags": [route.tag], "summary": route.summary,
                          "operationId": route.template.strip("/").replace("/", "_").replace("{", "")
                          .replace("}", "").replace(":", "_").replace(".", "_") or "root"}
    if route.params:
        op["parameters"] = [{"name": p.name, "in": "path", "required": True, "schema": p.schema(),
                             "description": f"{p.rule.capitalize()}; anything else is a 400."} for p in route.params]
    if not route.auth:
        op["security"] = _OPEN
    if route.request_body is not None:
        content = {"application/json": {"schema": _ref(route.request_body["schema"])}}
        if route.request_body.get("binary"):
            content["application/octet-stream"] = {"schema": {
                "type": "string", "format": "binary",
                "description": "Binary tensor data extension: the JSON part's length is in "
                               "Inference-Header-Content-Length."}}
        op["requestBody"] = {"required": True, "content": content}
    responses: dict[str, Any] = {}
    if route.ok:
        ok: dict[str, Any] = {"description": route.summary,
                              "content": {"application/json": {"schema": _ref(route.ok["schema"])}}}
        if route.ok.get("binary"):
            ok["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        headers = {h: {"$ref": f"#/components/headers/{h.replace('-', '')}"} for h in route.ok.get("headers", ())}
        if route.ok.get("binary"):
            headers["Inference-Header-Content-Length"] = {"$ref": "#/components/headers/InferenceHeaderContentLength"}
        if headers:
            ok["headers"] = headers
        responses["200"] = ok
    codes = set(route.errors) | ({401, 403} if route.auth else set())
    if route.auth and not route.params:
        codes.discard(403)  # no model in the path: nothing outside a key's scope
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/{_ERROR_RESPONSES.get(code, 'Error')}"}
    return op | {"responses": responses}


def _paths(table: RouteTable) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in table.routes:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route)
    return paths


def _model_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """The JSON schemas of ``models`` and of the models they hold, named as the classes are, with
    references into ``#/components/schemas`` (OpenAPI 3.1's schemas are JSON Schema 2020-12)."""
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_ref("{model}")["$ref"])
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _schemas() -> dict[str, Any]:
    written = _written_schemas()
    typed = _model_schemas(ServiceStatus)
    clashes = set(written) & set(typed)
    if clashes:
        raise AssertionError(f"OpenAPI schema names used twice: {sorted(clashes)}")
    return written | typed


def _written_schemas() -> dict[str, Any]:
    """The protocols' bodies, whose shapes TF Serving and KServe define (no model of ours holds them)."""
    tensor_meta = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}}
    tensor_info = {"type": "object", "required": ["dtype", "tensor_shape", "name"], "properties": {
        "dtype": {"type": "string"}, "name": {"type": "string"},
        "tensor_shape": {"type": "object", "required": ["dim"], "properties": {
            "dim": {"type": "array", "items": {"type": "object", "properties": {"size": {"type": "string"}}}},
            "unknown_rank": {"type": "boolean"}}}}}
    parameters = {"type": "object", "additionalProperties": True}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string", "minLength": 1}}},
        "ModelStatus": {"type": "object", "required": ["model_version_status"], "properties": {
            "model_version_status": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["version", "state", "status"], "properties": {
                    "version": {"type": "string"}, "state": {"type": "string", "enum": ["AVAILABLE"]},
                    "status": {"type": "object", "required": ["error_code"], "properties": {
                        "error_code": {"type": "string"}, "error_message": {"type": "string"}}}}}}}},
        "ModelMetadata": {"type": "object", "required": ["model_spec", "metadata"], "properties": {
            "model_spec": {"type": "object", "required": ["name", "version"], "properties": {
                "name": {"type": "string"}, "version": {"type": "string"}, "signature_name": {"type": "string"}}},
            "metadata": {"type": "object", "required": ["signature_def"], "properties": {
                "signature_def": {"type": "object", "required": ["signature_def"], "properties": {
                    "signature_def": {"type": "object", "additionalProperties": {
                        "type": "object", "required": ["inputs", "outputs", "method_name"], "properties": {
                            "inputs": {"type": "object", "additionalProperties": tensor_info},
                            "outputs": {"type": "object", "additionalProperties": tensor_info},
                            "method_name": {"type": "string"}}}}}}}}}},
        "AnyJson": {"description": "Any JSON document"},
        "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
        "PredictRequest": {
            "type": "object", "description": "Exactly one of instances (row format) or inputs (columnar).",
            "properties": {"signature_name": {"type": "string"}, "instances": {"type": "array", "minItems": 1},
                           "inputs": {}},
            "oneOf": [{"required": ["instances"], "not": {"required": ["inputs"]}},
                      {"required": ["inputs"], "not": {"required": ["instances"]}}]},
        "PredictResponse": {"type": "object", "oneOf": [
            {"required": ["predictions"], "properties": {"predictions": {"type": "array"}}},
            {"required": ["outputs"], "properties": {"outputs": {"type": ["array", "object"]}}}]},
        "ExplainRequest": {
            "type": "object", "description": "A :predict body (exactly one of instances or inputs) and how to "
                                             "explain it.",
            "properties": {"signature_name": {"type": "string"}, "instances": {"type": "array", "minItems": 1},
                           "inputs": {}, "baseline": {"type": "string", "enum": ["zeros", "training_mean"]},
                           "steps": {"type": "integer", "minimum": 1}, "output": {"type": "string"},
                           "target": {"type": "integer", "minimum": 0}},
            "additionalProperties": False,
            "oneOf": [{"required": ["instances"], "not": {"required": ["inputs"]}},
                      {"required": ["inputs"], "not": {"required": ["instances"]}}]},
        "ExplainResponse": {"type": "object", "required": ["predictions", "explanations"], "properties": {
            "predictions": {"type": "array"},
            "explanations": {"type": "array", "items": {"type": "object", "required": [
                "method", "baseline", "steps", "output", "target", "prediction", "baseline_prediction", "delta",
                "attributions"], "properties": {
                    "method": {"type": "string", "enum": ["integrated_gradients"]},
                    "baseline": {"type": "string"}, "steps": {"type": "integer"}, "output": {"type": "string"},
                    "target": {"type": "integer", "description": "The position explained in one instance's "
                                                                 "(flattened) output: by default its top class."},
                    "prediction": {"type": "number"}, "baseline_prediction": {"type": "number"},
                    "delta": {"type": "number", "description": "Sum of the attributions minus (prediction - "
                                                               "baseline_prediction): the method's error."},
                    "attributions": {"type": ["array", "object"], "description": "One number per input element, "
                                     "in the instance's shape (by input name when the model takes several)."}}}}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "ready": {"type": "boolean"}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor_meta},
            "outputs": {"type": "array", "items": tensor_meta}}},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": parameters,
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string"}, "parameters": parameters, "data": {"type": "array"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "parameters": parameters}}}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": parameters,
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string"}, "parameters": parameters, "data": {"type": "array"}}}}}},
    }


def document(table: RouteTable) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of ``table`` (the service's routes)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "maas model service", "version": maas.__version__,
                 "description": "TensorFlow Serving REST API and KServe V2 Open Inference Protocol on Ray Serve. "
                                "Every route but health, server metadata and this document needs an API key "
                                "(`maas keys create`). Errors are JSON `{\"error\": \"...\"}` naming the "
                                "problem. No request is answered 500 for what it sends: a 500 is a bug of the "
                                "service (or a model failing on valid input), and is not a documented answer."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": _paths(table),
        "components": {
            "schemas": _schemas(),
            "responses": {
                "Error": _error_response("An error, named in one message"),
                "Unauthorized": _error_response("No valid API key", {"WWW-Authenticate": {
                    "schema": {"type": "string"}, "required": True, "description": "Bearer realm=\"maas\""}}),
                "MethodNotAllowed": _error_response("Wrong method", {"Allow": {
                    "schema": {"type": "string"}, "required": True, "description": "The methods the path takes"}}),
                "Unavailable": _error_response("Overloaded, storage unreachable, or the version cannot be loaded", {
                    "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait (when retrying "
                                                                                 "can help)"}}),
            },
            "headers": {
                "ModelVersion": {"schema": {"type": "string"}, "required": True,
                                 "description": "The version that answered."},
                "InferenceHeaderContentLength": {"schema": {"type": "string", "pattern": "^[0-9]+$"},
                                                 "description": "Set when outputs are binary: the JSON part's length."},
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer maas_…"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": _ref("Error")}}}
    if headers:
        out["headers"] = headers
    return out
