"""``python -m jobs.train`` in a checkout (``ray job submit --working-dir . -- python -m jobs.train …``):
:mod:`maas.jobs.train`, where the code and its ``--help`` live."""

import sys

from maas.jobs.train import main

if __name__ == "__main__":
    sys.exit(main())
