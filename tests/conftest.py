"""The suite's tiers, by what their tests start:

- ``tests/unit/``: no Ray cluster, no server; in-process, seconds each (``make test-unit``).
- ``tests/cluster/``: the shared real local Ray cluster (:mod:`fixtures.ray_cluster`, started once per
  pytest run on first use) or other real servers (moto's S3, HTTP and gRPC servers).

Across both folders, markers pick what ``make test`` leaves out (pyproject's ``addopts``): ``slow``
(long end-to-end runs, ``make slow``), ``chaos`` (faults under load, ``make chaos``) and ``exclusive``
(takes this machine's default ports and stops every Ray process on it: ``make test`` runs it in a
pytest process of its own). The fixtures live in ``tests/fixtures/``, one module per thing they start.
"""

pytest_plugins = [
    "fixtures.home",
    "fixtures.s3",
    "fixtures.ray_cluster",
    "fixtures.models",
    "fixtures.services",
]
