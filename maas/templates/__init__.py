"""Model templates: one file per use case, each a model builder plus the data it trains on.

A template is looked up by name (``--template``). Importing this package imports no TensorFlow;
builders import Keras when called.
"""

from __future__ import annotations

from maas.errors import InvalidInput
from maas.templates.base import DataInfo, DataSplits, FeatureStats, Template
from maas.templates.digits import DIGITS
from maas.templates.images import IMAGE_CNN
from maas.templates.maintenance import MAINTENANCE, MAINTENANCE_REGRESSION
from maas.templates.sports import SPORTS_FRAMES, SPORTS_SEQUENCE
from maas.templates.tabular import TABULAR_MLP

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (DIGITS, TABULAR_MLP, IMAGE_CNN, SPORTS_FRAMES, SPORTS_SEQUENCE, MAINTENANCE, MAINTENANCE_REGRESSION)
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise InvalidInput(f"Unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from None


__all__ = ["TEMPLATES", "DataInfo", "DataSplits", "FeatureStats", "Template", "get_template"]
