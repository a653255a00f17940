"""``python -m jobs.predict`` in a checkout (``ray job submit --working-dir . -- python -m jobs.predict …``):
:mod:`maas.jobs.predict`, where the code and its ``--help`` live."""

import sys

from maas.jobs.predict import main

if __name__ == "__main__":
    sys.exit(main())
