"""Model templates: one file per use case, each a model builder plus the data it trains on.

A template is looked up by name (``--template``). Importing this package imports no TensorFlow;
builders import Keras when called.
"""

from __future__ import annotations

from maas.errors import InvalidInput
from maas.templates.base import DataSplits, Template
from maas.templates.digits import DIGITS

TEMPLATES: dict[str, Template] = {t.name: t for t in (DIGITS,)}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise InvalidInput(f"Unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from None


__all__ = ["DataSplits", "TEMPLATES", "Template", "get_template"]
