"""The registry's records as typed models: a version's metadata (``metadata.json``) and one entry of a
model's label history (``labels.json``).

A document is validated when it is published and parsed once when a version is read; code reads it
by attribute. Reading is lenient where history requires it: documents written by earlier versions of
this code, by imports (which record no training) and by users (who add keys of their own, such as
``allowed_ops``) all load, so nearly every field is optional. Writing gives back exactly the keys the
writer set, ``null`` included, and no others (:meth:`VersionMetadata.to_json`): the same JSON as the
dicts these models replace.

Every record keeps the keys it does not declare (``extra="allow"``) and writes them back: a publisher
may record keys of its own (``maas models show`` prints them), the training report's metric names
come from the task and the template, the recorded parameters' from
:class:`maas.training.config.TrainConfig`, and a document rewritten by this code (``labels.json`` on
every label change) must not lose what another writer put there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maas.errors import InvalidInput
from maas.signature import Signature


class _Record(BaseModel):
    """A record read from, and written to, JSON. Keys it does not declare are kept and written back:
    documents on storage may come from other writers (publishers' own keys, older or newer versions
    of this code), and rewriting one (``labels.json`` on every label change) must not lose them."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    def to_json(self, **exclude: Any) -> dict[str, Any]:
        """The JSON document: the keys the writer set (``null`` included), nothing more."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, **exclude)



# ---- evaluation ----------------------------------------------------------------------------------


class ClassScores(_Record):
    """One class's figures on the test split."""

    precision: float
    recall: float
    f1: float
    support: int


class Baseline(_Record):
    """What a model must beat: the training split's majority class, or for regression its mean."""

    predict: str  # "majority class" | "training mean"
    class_name: str | None = Field(default=None, alias="class")
    value: float | None = None
    accuracy: float | None = None
    f1_macro: float | None = None
    mse: float | None = None
    mae: float | None = None
    r2: float | None = None


class Metrics(_Record):
    """Held-out metrics: a trained version's on its test split, or those given at import (any names)."""

    accuracy: float | None = None
    precision_macro: float | None = None
    recall_macro: float | None = None
    f1_macro: float | None = None
    mse: float | None = None
    mae: float | None = None
    r2: float | None = None
    num_examples: int | None = None
    per_class: dict[str, ClassScores] | None = None
    confusion_matrix: list[list[int]] | None = None
    baseline: Baseline | None = None


class CrossValidation(_Record):
    """``--cv``: each fold's metrics, and their mean and standard deviation."""

    folds: int
    summary: dict[str, dict[str, float]]
    per_fold: list[dict[str, Any]]


# ---- training ------------------------------------------------------------------------------------


class TrialRecord(_Record):
    """One ``--tune`` trial."""

    trial_id: str
    params: dict[str, float]
    epochs: int  # epochs it trained
    best_val_loss: float | None
    stopped_by: str  # "completed", "early stopping", "ASHA" or "error"
    test_metrics: dict[str, float]


class SchedulerRecord(_Record):
    """The ASHA scheduler's settings of a ``--tune`` search."""

    name: str
    metric: str
    mode: str
    time_attr: str
    grace_period: int
    reduction_factor: int
    max_t: int | None


class TuningRecord(_Record):
    """A ``--tune`` search: its scheduler, space, every trial and the one published."""

    scheduler: SchedulerRecord
    space: list[str]
    trials: list[TrialRecord]
    best_trial: str
    best_params: dict[str, float]
    experiment: str


class ValidationRecord(_Record):
    """The validation split held out of the training split, and early stopping on it."""

    fraction: float
    rows: int
    patience: int
    curve: list[dict[str, int | float]]  # per epoch: epoch, val_loss, val_accuracy | val_mae
    epoch_kept: int
    epochs_run: int
    stopped_early: bool


class TrainingRecord(_Record):
    """The final training report (the task's training metric, ``val_*`` and ``best_*`` figures are kept
    under their own names), the epochs trained and the validation split."""

    epoch: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    samples_per_second: float | None = None
    weights_sha256: str | None = None
    num_workers: int | None = None
    resumed_from_epoch: int | None = None  # 0 for a fresh run
    epochs_trained: int | None = None
    epoch_history: list[int] | None = None
    validation: ValidationRecord | None = None


class TrainingParameters(_Record):
    """The training settings recorded (named as :class:`maas.training.config.TrainConfig` names them)
    and the model builder's hyperparameters."""

    hyperparameters: dict[str, Any] | None = None


# ---- data ----------------------------------------------------------------------------------------


class DataRecord(_Record):
    """The data a version was trained on."""

    train: str | None = None
    test: str | None = None
    format: str | None = None  # "parquet", "csv", "images"...
    source: str | None = None
    train_rows: int | None = None
    test_rows: int | None = None
    fingerprint: str | None = None  # SHA-256 over every data file's name and bytes


class DataStatistics(_Record):
    """Cleaning and normalization statistics of the training split (see
    :class:`maas.templates.base.FeatureStats`)."""

    mean: list[float]
    std: list[float]
    count: int
    label_mean: float | None = None
    label_std: float | None = None
    bin_shares: list[list[float]] | None = None  # per feature, its share in each drift bin (maas.drift.Z_EDGES)


class Preprocessing(_Record):
    """How rows became the model's input: the columns, in order, one instance's shape, the statistics."""

    feature_columns: list[str] | None = None
    item_shape: list[int] | None = None
    training_split_stats: DataStatistics | None = None


class RayRun(_Record):
    """Where the training ran on Ray."""

    job_id: str | None = None
    submission_id: str | None = None  # the ``ray job submit`` id, when submitted
    run_name: str | None = None  # with --tune: the Tune experiment's
    checkpoint: str | None = None
    tensorboard: str | None = None
    worker_nodes: list[str] | None = None  # each training worker's Ray node id, by rank


# ---- the version ---------------------------------------------------------------------------------


class VersionMetadata(_Record):
    """A version's ``metadata.json``. Only ``signature`` is required; ``model``, ``version`` and
    ``created_at`` are set by :meth:`maas.registry.Registry.publish`. A trained version records its
    template, evaluation, training and data; an imported one its format, source and digest."""

    signature: Signature
    model: str | None = None
    version: int | None = None
    created_at: str | None = None
    template: str | None = None
    task: str | None = None  # "classification" | "regression"
    classes: list[str] | None = None
    metrics: Metrics | None = None
    cross_validation: CrossValidation | None = None
    tuning: TuningRecord | None = None
    training: TrainingRecord | None = None
    params: TrainingParameters | None = None
    data: DataRecord | None = None
    preprocessing: Preprocessing | None = None
    ray: RayRun | None = None
    libraries: dict[str, str] | None = None  # name: version, of the libraries that made it
    # An imported version (``maas models import``, :meth:`Registry.publish_keras`):
    imported: bool | None = None
    format: str | None = None  # "keras", "h5", "saved_model" or "keras_model"
    source: str | None = None
    source_signature: str | None = None  # the SavedModel signature chosen at import
    sha256: str | None = None
    # Set by a user: graph ops serving refuses unless listed here (see maas.serving.graph_policy).
    allowed_ops: list[str] | None = None


class LabelEvent(_Record):
    """One change of a label, as ``labels.json``'s history and ``maas models history`` show it: the
    label pointed at ``version`` (``None``: removed) with ``weight``, having pointed at ``previous``."""

    at: str
    label: str
    version: int | None
    weight: float | None
    previous: int | None
    reason: str | None = None  # why it was removed, when not by hand (an auto-rollback, a delete)


def valid_metadata(metadata: VersionMetadata | Mapping[str, Any]) -> VersionMetadata:
    """``metadata`` as the typed record, or :class:`InvalidInput` naming each problem."""
    if isinstance(metadata, VersionMetadata):
        return metadata
    try:
        return VersionMetadata.model_validate(metadata)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"Invalid version metadata: {problems}") from None
