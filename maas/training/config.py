"""The typed configuration of one training job, validated once at the edge."""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from maas import settings
from maas.errors import ConfigError
from maas.names import validate_model_name
from maas.templates import get_template

# How Ray places the training workers: PACK (fewest nodes) or SPREAD / STRICT_SPREAD (across nodes).
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
PLACEMENT_STRATEGIES: tuple[str, ...] = get_args(PlacementStrategy)
DEFAULT_TUNE_VALIDATION_FRACTION = 0.2  # what --tune holds out when --validation-fraction is not given


@dataclass(frozen=True)
class TrainConfig:
    template: str = "digits"
    num_workers: int = 2  # the most workers (N, or MAX of MIN-MAX)
    min_workers: int | None = None  # the fewest to start with (MIN of MIN-MAX); None: num_workers, a fixed size
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    epochs: int | None = None  # None: the template's default
    batch_size: int | None = None  # per worker; None: the template's default
    learning_rate: float | None = None
    seed: int = 0
    data: str | None = None  # your data set (train/test splits); None: the template's built-in data
    data_dir: str = field(default_factory=settings.default_data_dir)  # where built-in data sets are staged
    registry: str = field(default_factory=settings.default_registry_uri)
    storage_path: str = field(default_factory=settings.default_runs_uri)
    model_name: str | None = None  # None: the template's name
    run_name: str | None = None  # None: "<model>-<UTC time>"; reuse a name to resume that run
    max_failures: int = 2
    placement_strategy: PlacementStrategy = "PACK"
    mixed_precision: bool | None = None  # None: on with GPUs (float16 compute, float32 weights)
    cv_folds: int = 0  # 0: no cross-validation; K >= 2: K folds before the final model
    # Share of the training split held out (stratified, seeded) to watch each epoch; 0: none.
    validation_fraction: float = 0.0
    # Stop once the validation loss has not improved for this many epochs, and publish the best
    # epoch's weights; 0: train every epoch.
    early_stopping_patience: int = 0
    # The template's builder settings (width, depth, dropout...; its search_space), the rest at defaults.
    hyperparameters: dict[str, float] = field(default_factory=dict)
    tune: bool = False  # search the template's tuning space with Ray Tune (ASHA), publish the best trial
    trials: int = 4  # trials of a --tune search
    max_concurrent: int = 0  # trials at once; 0: as many as fit side by side
    resume: bool = False  # continue the existing run ``run_name`` (fail if there is none)
    # Seconds to wait for min_workers to fit before failing with ResourcesUnavailable. Also bounds how
    # long Ray Train retries a worker group that cannot be placed (it would otherwise retry forever).
    wait_for_resources: float = 30.0

    def __post_init__(self) -> None:
        template = get_template(self.template)  # raises on an unknown name
        _check(_is_int(self.num_workers) and self.num_workers >= 1, "num_workers must be at least 1", self.num_workers)
        if self.min_workers is None:
            object.__setattr__(self, "min_workers", self.num_workers)
        _check(_is_int(self.min_workers) and 1 <= self.min_workers <= self.num_workers,
               f"min_workers must be from 1 to num_workers ({self.num_workers})", self.min_workers)
        _check(isinstance(self.wait_for_resources, (int, float)) and 0 <= self.wait_for_resources < math.inf,
               "wait_for_resources must be 0 or more seconds", self.wait_for_resources)
        _check(self.cpus_per_worker > 0, "cpus_per_worker must be positive", self.cpus_per_worker)
        _check(self.epochs is None or self.epochs >= 1, "epochs must be at least 1", self.epochs)
        _check(self.batch_size is None or self.batch_size >= 1, "batch_size must be at least 1", self.batch_size)
        _check(
            self.learning_rate is None or 0 < self.learning_rate < 10,
            "learning_rate must be in (0, 10)",
            self.learning_rate,
        )
        _check(self.placement_strategy in PLACEMENT_STRATEGIES,
               f"placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}", self.placement_strategy)
        _check(self.cv_folds == 0 or self.cv_folds >= 2, "cv folds must be at least 2 (or 0: none)", self.cv_folds)
        _check(isinstance(self.validation_fraction, (int, float)) and 0 <= self.validation_fraction < 0.5,
               "validation_fraction must be from 0 (none) to below 0.5", self.validation_fraction)
        _check(_is_int(self.early_stopping_patience) and self.early_stopping_patience >= 0,
               "early_stopping_patience must be 0 (off) or more epochs", self.early_stopping_patience)
        _check(not self.early_stopping_patience or self.validation_fraction > 0,
               "early stopping watches a validation split: give --validation-fraction too",
               self.validation_fraction)
        template.hyperparameters(self.hyperparameters)  # raises on an unknown name or a value outside the space
        _check(_is_int(self.trials) and self.trials >= 1, "trials must be at least 1", self.trials)
        _check(_is_int(self.max_concurrent) and self.max_concurrent >= 0,
               "max_concurrent must be 0 (as many as fit) or more", self.max_concurrent)
        _check(not (self.tune and self.cv_folds), "--tune and --cv do not combine: tune first, then "
               "cross-validate the best trial's settings", self.cv_folds)
        if self.tune and not self.validation_fraction:  # trials are judged on a validation split
            object.__setattr__(self, "validation_fraction", DEFAULT_TUNE_VALIDATION_FRACTION)
        _check(not self.resume or self.run_name is not None, "resume needs the run name to continue", self.run_name)
        _check(self.max_failures >= -1, "max_failures must be -1 (forever) or more", self.max_failures)
        # Fill template defaults so that everything downstream reads concrete values.
        object.__setattr__(self, "epochs", self.epochs or template.default_epochs)
        object.__setattr__(self, "batch_size", self.batch_size or template.default_batch_size)
        object.__setattr__(self, "learning_rate", self.learning_rate or template.default_learning_rate)
        if self.mixed_precision is None:
            object.__setattr__(self, "mixed_precision", self.use_gpu)
        object.__setattr__(self, "model_name", validate_model_name(self.model_name or template.name))
        if self.run_name is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
            object.__setattr__(self, "run_name", f"{self.model_name}-{stamp}")

    @property
    def worker_range(self) -> tuple[int, int]:
        """``(min_workers, num_workers)``: the fewest workers a run starts with and the most."""
        return (self.min_workers if self.min_workers is not None else self.num_workers), self.num_workers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)


_NUM_WORKERS = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)


def parse_num_workers(value: int | str) -> tuple[int, int]:
    """``--num-workers`` as ``(min_workers, num_workers)``: ``N`` is a fixed size, ``(N, N)``;
    ``MIN-MAX`` starts with as many workers as fit, at least MIN and at most MAX. The counts
    themselves are checked by :class:`TrainConfig`. Raises :class:`ConfigError` on other text."""
    match = _NUM_WORKERS.fullmatch(str(value).strip())
    if match is None:
        raise ConfigError(f"num_workers must be N or MIN-MAX (for example 2 or 1-2). Received: {value!r}")
    low = int(match.group(1))
    if match.group(2) is None:
        return low, low
    high = int(match.group(2))
    _check(1 <= low <= high, "num_workers MIN-MAX needs 1 <= MIN <= MAX", str(value))
    return low, high


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str, received: Any) -> None:
    if not ok:
        raise ConfigError(f"{message}. Received: {received!r}")
