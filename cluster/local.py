"""Start, stop or inspect the single-machine Ray cluster.

    python -m cluster.local up       # Ray head, dashboard on http://127.0.0.1:8265, token auth on
    python -m cluster.local status
    python -m cluster.local down     # stops Ray and Serve's HAProxy; nothing is left running
"""

import sys

from maas.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
