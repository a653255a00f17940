"""Shared command-line conventions: expected errors print one line and exit 2."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

from maas.errors import MaasError

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def run_cli(fn: Callable[[], int]) -> int:
    """Run a command body; a :class:`MaasError` becomes one ``error: …`` line and exit code 2, and so
    does storage that cannot be reached (a wrong bucket, endpoint or credentials), unless
    ``MAAS_VERBOSE`` asks for the traceback."""
    try:
        return fn()
    except MaasError as exc:
        fail(str(exc))
    except OSError as exc:
        if os.environ.get("MAAS_VERBOSE"):
            raise
        fail("storage unavailable: " + " ".join(str(exc).split()))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
