"""Serving in three layers: the model runtime, the wire protocols, and the Ray Serve wiring."""
