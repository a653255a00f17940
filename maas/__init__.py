"""Model-as-a-service on Ray: train with Ray Train, version in a registry, serve with Ray Serve."""

__version__ = "0.1.0"
