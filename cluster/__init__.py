"""The local Ray cluster: ``python -m cluster.local up|down|status`` (also ``maas cluster …``)."""
