"""Shared command-line conventions: expected errors print one line and exit 2; generated files are
written, or checked against what is committed, one way."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
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


def write_or_check(files: dict[Path, str], *, check: bool, command: str) -> int:
    """Write each generated file (printing its path), or with ``check`` write nothing and return 1
    when a committed file is missing or differs, naming it and ``command``, which regenerates it."""
    if check:
        stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
        for path in stale:
            print(f"out of date: {path} (run {command})", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0
