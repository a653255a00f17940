"""The typed configuration of one training job, validated once at the edge.

Every setting is declared once, here: its type, default, bounds and description, and beside it
what the command line and the published version need to know (:class:`Setting`). The settings
come in the groups Ray Train uses: :class:`Scaling` (its ``ScalingConfig``), :class:`Run`
(``RunConfig``), :class:`Dataset` (the data and ``DataConfig``) and :class:`Hyperparameters`
(the ``train_loop_config``). :class:`TrainConfig` is all four together, read
and built flat (``config.epochs``, ``TrainConfig(epochs=3)``); ``python -m jobs.train``'s options
are generated from it (:mod:`maas.training.arguments`), and a version records its
:meth:`TrainConfig.recorded_params`.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from maas import settings
from maas.errors import ConfigError
from maas.names import validate_model_name
from maas.templates import TEMPLATES, get_template

# How Ray places the training workers: PACK (fewest nodes) or SPREAD / STRICT_SPREAD (across nodes).
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
PLACEMENT_STRATEGIES: tuple[str, ...] = get_args(PlacementStrategy)
DEFAULT_TUNE_VALIDATION_FRACTION = 0.2  # what --tune holds out when --validation-fraction is not given


@dataclass(frozen=True)
class Setting:
    """What a setting declares beside its type, default, bounds and description: the one line it
    fails with, how it reads on the command line where that is not plain ``--name VALUE``, and
    whether a published version records it."""

    invalid: str = ""  # the error when the value is outside its bounds ("epochs must be at least 1")
    flag: str | None = ""  # "": --<name-with-dashes>; None: no option of its own
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # the option's argparse type, where not the field's own
    choices: tuple[str, ...] | None = None  # the option's choices, where the type does not list them
    # The parsed option as settings, where it is not {name: value} (--num-workers MIN-MAX, --resume RUN)
    to_settings: Callable[[Any], dict[str, Any]] | None = None
    given_only: bool = False  # the option's default is "not given" (None), not the field's default
    recorded: bool = True  # False: run-only (names, places, how to run), not among a version's params


def setting_of(field: FieldInfo) -> Setting:
    """The :class:`Setting` a field declares (a plain one where it declares none)."""
    return next((m for m in field.metadata if isinstance(m, Setting)), Setting())


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


def _num_workers_text(text: str) -> int | str:
    """``N`` stays an int (what callers of the parsed arguments read); ``MIN-MAX`` and anything else
    stays text, which :func:`parse_num_workers` checks, so that a bad value fails in one line."""
    return int(text) if text.isascii() and text.isdigit() else text


def _worker_range(value: int | str) -> dict[str, Any]:
    low, high = parse_num_workers(value)
    return {"min_workers": low, "num_workers": high}


def _resume_run(run_name: str) -> dict[str, Any]:
    return {"run_name": run_name, "resume": True}


def _zero_or_at_least_two(folds: int) -> int:
    if folds != 0 and folds < 2:
        raise ValueError("cv folds must be at least 2 (or 0: none)")
    return folds


def _a_template(name: str) -> str:
    get_template(name)  # raises on an unknown name
    return name


def _spaces() -> str:
    """Each template's tuning space, for the description of ``tune``."""
    return "; ".join(f"{t.name}: " + ", ".join(hp.describe().split(":")[0] for hp in t.tuning_space)
                     for t in TEMPLATES.values())


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Scaling(_Group):
    """How many workers, and what each holds (Ray Train's ScalingConfig)."""

    num_workers: Annotated[int, Setting(
        invalid="num_workers must be at least 1", metavar="N|MIN-MAX", parse=_num_workers_text,
        to_settings=_worker_range)] = Field(
        2, ge=1, strict=True,
        description="Ray Train workers: N, or MIN-MAX to start with as many as fit now, at least MIN")
    min_workers: Annotated[int | None, Setting(flag=None)] = Field(
        None, strict=True,
        description="the fewest workers to start with (MIN of --num-workers MIN-MAX); None: num_workers, "
                    "a fixed size")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: Annotated[float, Setting(invalid="cpus_per_worker must be positive")] = Field(
        1.0, gt=0, description="CPUs reserved per worker")
    placement_strategy: Annotated[PlacementStrategy, Setting(
        invalid=f"placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}")] = Field(
        "PACK", description="where Ray puts the workers: PACK (fewest nodes) or SPREAD/STRICT_SPREAD (across "
                            "nodes)")
    # Also bounds how long Ray Train retries a worker group that cannot be placed (it would otherwise
    # retry forever).
    wait_for_resources: Annotated[float, Setting(
        invalid="wait_for_resources must be 0 or more seconds", metavar="SECONDS", recorded=False)] = Field(
        30.0, ge=0, allow_inf_nan=False,
        description="how long to wait for the workers to fit before failing with what holds the cluster; "
                    "raise it on an autoscaling cluster, where nodes join later")


class Run(_Group):
    """What the run is called, where it keeps its state and its result, how it survives failures
    (Ray Train's RunConfig)."""

    model_name: Annotated[str | None, Setting(recorded=False)] = Field(
        None, description="name to publish under (default: the template's name)")
    run_name: Annotated[str | None, Setting(recorded=False)] = Field(
        None, description="Ray Train run name (default: <model>-<UTC time>)")
    resume: Annotated[bool, Setting(metavar="RUN_NAME", parse=str, to_settings=_resume_run, given_only=True,
                                    recorded=False)] = Field(
        False, description="continue a stopped or failed run from its last checkpoint (same storage path)")
    registry: Annotated[str, Setting(recorded=False)] = Field(
        default_factory=settings.default_registry_uri, description="registry URI")
    storage_path: Annotated[str, Setting(recorded=False)] = Field(
        default_factory=settings.default_runs_uri, description="Ray Train storage for runs and checkpoints")
    max_failures: Annotated[int, Setting(invalid="max_failures must be -1 (forever) or more")] = Field(
        2, ge=-1, description="worker failures to recover from")


class Dataset(_Group):
    """What is trained on and how it is split: the template, the data set, the held-out parts
    (with Ray Train's DataConfig)."""

    template: Annotated[str, AfterValidator(_a_template), Setting(choices=tuple(sorted(TEMPLATES)),
                                                                  recorded=False)] = Field(
        "digits", description="use case to train")
    data: Annotated[str | None, Setting(metavar="URI", recorded=False)] = Field(
        None, description="your data set on any pyarrow.fs URI (local, s3://, gs://): train.parquet + test.parquet, "
                          "train.csv + test.csv, or image folders train/<class>/ + test/<class>/, matching the "
                          "template's schema (default: the template's built-in data set)")
    data_dir: Annotated[str, Setting(metavar="URI", recorded=False)] = Field(
        default_factory=settings.default_data_dir,
        description="where built-in data sets are staged; shared storage on a multi-node cluster")
    validation_fraction: Annotated[float, Setting(
        invalid="validation_fraction must be from 0 (none) to below 0.5", metavar="F")] = Field(
        0.0, ge=0, lt=0.5,
        description="hold out this share of the training split (stratified by class, seeded; never the test "
                    "split) and report its loss and metric every epoch; 0: none")
    cv_folds: Annotated[int, AfterValidator(_zero_or_at_least_two), Setting(
        invalid="cv folds must be at least 2 (or 0: none)", flag="--cv", metavar="K")] = Field(
        0, description="K-fold cross-validation on the training split first, folds as parallel Ray Train runs; "
                       "mean and std per metric go into the published version's metadata; 0: none")


class Hyperparameters(_Group):
    """How each worker trains: epochs, batches, the optimizer, the model's settings and the search
    over them (what Ray Train hands the loop as train_loop_config)."""

    epochs: Annotated[int | None, Setting(invalid="epochs must be at least 1")] = Field(
        None, ge=1, description="epochs to train (default: the template's)")
    batch_size: Annotated[int | None, Setting(invalid="batch_size must be at least 1")] = Field(
        None, ge=1, description="per-worker batch size (default: the template's)")
    learning_rate: Annotated[float | None, Setting(invalid="learning_rate must be in (0, 10)")] = Field(
        None, gt=0, lt=10, description="the optimizer's learning rate (default: the template's)")
    seed: int = Field(0, description="random seed")
    mixed_precision: bool | None = Field(
        None, description="float16 compute with float32 weights (default: on with --use-gpu)")
    early_stopping_patience: Annotated[int, Setting(
        invalid="early_stopping_patience must be 0 (off) or more epochs", metavar="P")] = Field(
        0, ge=0, strict=True,
        description="stop once the validation loss has not improved for P epochs and publish the best epoch's "
                    "weights (needs --validation-fraction); 0: off")
    # The template's builder settings (width, depth, dropout...; its search_space), the rest at the
    # template's defaults once validated.
    hyperparameters: Annotated[dict[str, float | int], Setting(flag=None)] = Field(
        default_factory=dict, description="the template's builder settings (its search space)")
    tune: Annotated[bool, Setting(recorded=False)] = Field(
        False, description="search the template's space with Ray Tune, each trial a Ray Train run, ASHA stopping "
                           "weak trials early on the validation loss; the best trial is published, every trial's "
                           "settings and result go into its metadata. Spaces: " + _spaces())
    trials: Annotated[int, Setting(invalid="trials must be at least 1", metavar="N")] = Field(
        4, ge=1, strict=True, description="trials of a --tune search")
    max_concurrent: Annotated[int, Setting(invalid="max_concurrent must be 0 (as many as fit) or more",
                                           metavar="K")] = Field(
        0, ge=0, strict=True, description="trials at once; 0: as many as fit side by side")


# The groups in the order the command line's help lists them.
GROUPS: tuple[type[_Group], ...] = (Dataset, Scaling, Hyperparameters, Run)


class TrainConfig(Run, Hyperparameters, Scaling, Dataset):
    """Every setting of a training job, the groups' fields side by side; built flat
    (``TrainConfig(epochs=3)``). Validation fills in what depends on other settings (the template's
    epochs, batch size, learning rate and builder settings; the run name...), so that everything
    downstream reads concrete values. A bad value raises :class:`ConfigError` in one line."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _one_line(exc) from None

    @model_validator(mode="after")
    def _check_together(self) -> TrainConfig:
        """The checks that read several settings, then the filled-in defaults."""
        template = get_template(self.template)
        if self.min_workers is None:
            self._fill(min_workers=self.num_workers)
        _check(self.min_workers is not None and 1 <= self.min_workers <= self.num_workers,
               f"min_workers must be from 1 to num_workers ({self.num_workers})", self.min_workers)
        _check(not self.early_stopping_patience or self.validation_fraction > 0,
               "early stopping watches a validation split: give --validation-fraction too",
               self.validation_fraction)
        hyperparameters = template.hyperparameters(self.hyperparameters)  # raises outside the space
        _check(not (self.tune and self.cv_folds), "--tune and --cv do not combine: tune first, then "
               "cross-validate the best trial's settings", self.cv_folds)
        if self.tune and not self.validation_fraction:  # trials are judged on a validation split
            self._fill(validation_fraction=DEFAULT_TUNE_VALIDATION_FRACTION)
        _check(not self.resume or self.run_name is not None, "resume needs the run name to continue", self.run_name)
        model_name = validate_model_name(self.model_name or template.name)
        self._fill(epochs=self.epochs or template.default_epochs,
                   batch_size=self.batch_size or template.default_batch_size,
                   learning_rate=self.learning_rate or template.default_learning_rate,
                   mixed_precision=self.use_gpu if self.mixed_precision is None else self.mixed_precision,
                   hyperparameters=hyperparameters, model_name=model_name)
        if self.run_name is None:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
            self._fill(run_name=f"{model_name}-{stamp}")
        return self

    def _fill(self, **values: Any) -> None:
        """Set validated settings on this frozen model, during validation only."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def worker_range(self) -> tuple[int, int]:
        """``(min_workers, num_workers)``: the fewest workers a run starts with and the most."""
        return (self.min_workers if self.min_workers is not None else self.num_workers), self.num_workers

    def recorded_params(self) -> dict[str, Any]:
        """The settings a published version records as its ``params``: every setting but the run-only
        ones (names, places, how to run), the builder settings complete."""
        return {name: value for name, value in self.to_dict().items()
                if setting_of(type(self).model_fields[name]).recorded}

    def replace(self, **changes: Any) -> TrainConfig:
        """This config with ``changes``, validated again."""
        return type(self)(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)


def _one_line(exc: ValidationError) -> Exception:
    """The first of pydantic's errors as the line the setting declares (``epochs must be at least 1.
    Received: 0``); an unknown setting as the ``TypeError`` a misspelt keyword argument raises."""
    error = exc.errors()[0]
    name = str(error["loc"][0])
    field = TrainConfig.model_fields.get(name)
    if field is None:
        return TypeError(f"TrainConfig got an unexpected keyword argument {name!r}")
    message = setting_of(field).invalid or f"{name}: {error['msg']}"
    return ConfigError(f"{message}. Received: {error['input']!r}")


def _check(ok: bool, message: str, received: Any) -> None:
    if not ok:
        raise ConfigError(f"{message}. Received: {received!r}")
