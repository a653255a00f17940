"""Import path of the Serve application: ``deployments.app:build_app``.

    serve run deployments.app:build_app registry=/path/to/registry
    serve run deployments/serve_config.yaml
"""

from maas.serving.app import AppArgs, build_app

__all__ = ["AppArgs", "build_app"]
