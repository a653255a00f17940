"""Serving in layers: the protocol layer (``protocol/``: wire formats and route tables), the data plane
(``dataplane``), HTTP over it (``http``), the model host and runtime (``host``, ``runtime``), and the
Ray Serve wiring (``app``)."""
