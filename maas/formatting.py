"""How the command line writes (and reads back) ages and sizes for people: ``--older-than 1h``,
``31.5 MiB``. Kept apart from what they describe, so every command spells them the same way."""

from __future__ import annotations

import re

from maas.errors import ConfigError

_AGE_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_age(text: str) -> float:
    """Seconds in an age such as ``3600``, ``90s``, ``30m``, ``1.5h`` or ``2d`` (``--older-than``)."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text, flags=re.ASCII)
    if found is None:
        raise ConfigError(f"--older-than takes an age such as 3600, 90s, 30m, 1h or 2d. Received: {text!r}")
    return float(found.group(1)) * _AGE_UNITS[found.group(2)]


def format_age(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it (``1h``, ``90m``, ``45s``), as ``parse_age`` reads it."""
    for unit in ("d", "h", "m"):
        if seconds >= _AGE_UNITS[unit] and seconds % _AGE_UNITS[unit] == 0:
            return f"{seconds / _AGE_UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def format_bytes(size: int) -> str:
    """``size`` for people: ``512 B``, ``2.0 KiB``, ``31.5 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
