"""The rules for model names, labels and versions, in one place: the registry, the CLI, the route
tables and the OpenAPI document all apply these.

Each rule is a regex without anchors that means the same in Python and ECMAScript (JSON Schema's
``pattern``), applied with ``fullmatch`` and ASCII semantics: ``$`` would accept a trailing newline,
``\\d`` and ``str.isdigit`` accept digits such as ``²``.
"""

from __future__ import annotations

import re

from maas.errors import InvalidInput

MODEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
LABEL_PATTERN = r"[a-z][a-z0-9_-]{0,62}"
VERSION_PATTERN = r"[1-9][0-9]{0,17}"  # below 2**63: TF Serving's versions are int64

MODEL_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
LABEL_RULE = "lower-case letters, digits, '_' or '-', starting with a letter"
VERSION_RULE = "a positive integer of at most 18 digits, without leading zeros"


def matches(pattern: str, text: object) -> bool:
    return isinstance(text, str) and re.fullmatch(pattern, text, flags=re.ASCII) is not None


def validate_model_name(name: str) -> str:
    if not matches(MODEL_PATTERN, name):
        raise InvalidInput(f"Model names are {MODEL_RULE}. Received: {_short(name)}")
    return name


def validate_label(label: str) -> str:
    if not matches(LABEL_PATTERN, label):
        raise InvalidInput(f"Labels are {LABEL_RULE}. Received: {_short(label)}")
    return label


def parse_version(text: str | None) -> int | None:
    """A version as written in a URL or on a command line, or ``None`` if absent."""
    if text is None:
        return None
    if not matches(VERSION_PATTERN, text):
        raise InvalidInput(f"Version must be {VERSION_RULE}. Received: {_short(text)}")
    return int(text)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
