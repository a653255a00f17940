"""Ray Serve applications (``serve run deployments.app:build_app`` or ``serve deploy deployments/serve_config.yaml``)."""
