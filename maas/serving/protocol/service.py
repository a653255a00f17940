"""This service's own routes, beside the two inference protocols."""

from __future__ import annotations

from maas.serving.protocol.routes import Route, RouteTable

PROTOCOL = "service"
STATUS_PATH = "/maas/v1/status"
OPENAPI_PATH = "/openapi.json"

ROUTES = RouteTable([
    Route(PROTOCOL, "status", "GET", STATUS_PATH, "Per-model versions, labels, replicas and recent error rate",
          "Service", ok={"schema": "ServiceStatus"}, errors=(401, 503)),
    Route(PROTOCOL, "openapi", "GET", OPENAPI_PATH, "This document", "Service", auth=False,
          ok={"schema": "OpenApiDocument"}),
])
