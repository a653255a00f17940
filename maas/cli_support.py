"""Shared command-line conventions: expected errors print one line and exit 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

from maas.errors import MaasError

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def run_cli(fn: Callable[[], int]) -> int:
    """Run a command body; a :class:`MaasError` becomes one ``error: …`` line and exit code 2, and so
    does something that cannot be reached (storage: a wrong bucket, endpoint or credentials; or the
    cluster's dashboard), unless ``MAAS_VERBOSE`` asks for the traceback."""
    try:
        return fn()
    except MaasError as exc:
        fail(str(exc))
    except OSError as exc:
        if os.environ.get("MAAS_VERBOSE"):
            raise
        fail(f"{type(exc).__name__}: " + " ".join(str(exc).split()))  # pyarrow, requests, urllib: all OSError
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
