"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

It describes what the ingress does, route by route: the TF Serving REST API, the KServe V2 protocol,
this service's status route, their errors and who may call them. ``tests/test_openapi.py`` drives the
live service with generated requests and checks every answer against this document.
"""

from __future__ import annotations

from typing import Any

import maas

_ERR = {"$ref": "#/components/responses/Error"}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"},
            "description": "A positive integer; anything else is a 400."}
_LABEL = {"name": "label", "in": "path", "required": True, "schema": {"type": "string"}}
_OPEN: list[dict[str, list[str]]] = []  # no API key needed


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERR for c in codes}


_READ_ERRORS = _errors(400, 401, 403, 404, 503)
_INFER_ERRORS = _errors(400, 401, 403, 404, 405, 413, 500, 503, 504)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _tf_serving_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for suffix, params in (("", [_MODEL]), ("/versions/{version}", [_MODEL, _VERSION]),
                           ("/labels/{label}", [_MODEL, _LABEL])):
        base = "/v1/models/{model}" + suffix
        paths[base] = {"get": {
            "tags": ["TensorFlow Serving"], "summary": "Model version status", "parameters": params,
            "responses": {"200": _json(_ref("ModelStatus"), "Status of the servable versions"), **_READ_ERRORS}}}
        paths[base + "/metadata"] = {"get": {
            "tags": ["TensorFlow Serving"], "summary": "Model metadata (signature_def)", "parameters": params,
            "responses": {"200": _json(_ref("ModelMetadata"), "The version's serving_default signature"),
                          **_READ_ERRORS}}}
        paths[base + ":predict"] = {"post": {
            "tags": ["TensorFlow Serving"], "summary": "Predict (row or columnar format)", "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PredictRequest")}}},
            "responses": {"200": {**_json(_ref("PredictResponse"), "Predictions"),
                                  "headers": {"Model-Version": {"$ref": "#/components/headers/ModelVersion"}}},
                          **_INFER_ERRORS}}}
    return paths


def _v2_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2": {"get": {"tags": ["KServe V2"], "summary": "Server metadata", "security": _OPEN,
                        "responses": {"200": _json(_ref("ServerMetadata"), "Server name, version, extensions")}}},
        "/v2/health/live": {"get": {"tags": ["KServe V2"], "summary": "Liveness", "security": _OPEN,
                                    "responses": {"200": _json(_ref("Live"), "The server is live")}}},
        "/v2/health/ready": {"get": {"tags": ["KServe V2"], "summary": "Readiness (model storage reachable)",
                                     "security": _OPEN,
                                     "responses": {"200": _json(_ref("Ready"), "Ready"), "503": _ERR}}},
    }
    for suffix, params in (("", [_MODEL]), ("/versions/{version}", [_MODEL, _VERSION])):
        base = "/v2/models/{model}" + suffix
        paths[base] = {"get": {
            "tags": ["KServe V2"], "summary": "Model metadata", "parameters": params,
            "responses": {"200": _json(_ref("V2ModelMetadata"), "Name, versions, platform, tensors"),
                          **_READ_ERRORS}}}
        paths[base + "/ready"] = {"get": {
            "tags": ["KServe V2"], "summary": "Model readiness", "parameters": params,
            "responses": {"200": _json(_ref("ModelReady"), "The model version is ready"), **_READ_ERRORS}}}
        paths[base + "/infer"] = {"post": {
            "tags": ["KServe V2"], "summary": "Inference (JSON, or JSON plus binary tensors)", "parameters": params,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("InferRequest")},
                "application/octet-stream": {"schema": {
                    "type": "string", "format": "binary",
                    "description": "Binary tensor data extension: the JSON part's length is in "
                                   "Inference-Header-Content-Length."}}}},
            "responses": {"200": {"description": "Outputs", "headers": {
                "Model-Version": {"$ref": "#/components/headers/ModelVersion"},
                "Inference-Header-Content-Length": {"schema": {"type": "integer"},
                                                    "description": "Set when outputs are binary."}},
                "content": {"application/json": {"schema": _ref("InferResponse")},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                **_INFER_ERRORS}}}
    return paths


def _schemas() -> dict[str, Any]:
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
        "PredictRequest": {
            "type": "object", "description": "Exactly one of instances (row format) or inputs (columnar).",
            "properties": {"signature_name": {"type": "string"}, "instances": {"type": "array"}, "inputs": {}},
            "oneOf": [{"required": ["instances"], "not": {"required": ["inputs"]}},
                      {"required": ["inputs"], "not": {"required": ["instances"]}}]},
        "PredictResponse": {"type": "object", "oneOf": [
            {"required": ["predictions"], "properties": {"predictions": {"type": "array"}}},
            {"required": ["outputs"], "properties": {"outputs": {"type": ["array", "object"]}}}]},
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
        "ServiceStatus": {"type": "object", "required": ["models", "deployments"], "properties": {
            "deployments": {"type": "object", "additionalProperties": {"type": "object"}},
            "models": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["versions", "labels", "recent"], "properties": {
                    "versions": {"type": "array", "items": {"type": "integer"}},
                    "labels": {"type": "object"}, "last_label_change": {"type": ["object", "null"]},
                    "recent": {"type": "object", "required": ["requests", "errors", "error_rate"]}}}}}},
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "maas model service", "version": maas.__version__,
                 "description": "TensorFlow Serving REST API and KServe V2 Open Inference Protocol on Ray Serve. "
                                "Every route but health, server metadata and this document needs an API key "
                                "(`maas keys create`)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            **_tf_serving_paths(),
            **_v2_paths(),
            "/maas/v1/status": {"get": {
                "tags": ["Service"], "summary": "Per-model versions, labels, replicas and recent error rate",
                "responses": {"200": _json(_ref("ServiceStatus"), "Models the key may see"), **_errors(401)}}},
            "/openapi.json": {"get": {"tags": ["Service"], "summary": "This document", "security": _OPEN,
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
        "components": {
            "schemas": _schemas(),
            "responses": {"Error": _json(_ref("Error"), "An error, named in one message")},
            "headers": {"ModelVersion": {"schema": {"type": "string"}, "description": "The version that answered."}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer maas_…"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
