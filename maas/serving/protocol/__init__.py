"""The protocol layer: wire formats and route tables, as pure functions over bytes and numpy.

``tfserving`` (TensorFlow Serving REST), ``explain`` (KServe V1 ``:explain``), ``v2`` (KServe V2 /
Open Inference Protocol REST) and ``service`` (this service's own routes) each declare their routes
once; :data:`ROUTES` is all of them, from which the URL matcher, ``openapi`` (the OpenAPI document)
and ``maas.client`` are derived.
"""

from maas.serving.protocol import explain, service, tfserving, v2
from maas.serving.protocol.routes import RouteTable

ROUTES: RouteTable = tfserving.ROUTES + explain.ROUTES + v2.ROUTES + service.ROUTES
