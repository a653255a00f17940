"""The model registry: versioned SavedModels with metadata and labels, on any ``pyarrow.fs`` URI.

Layout (TF Serving can use ``<root>/<model>`` as its base path unchanged)::

    <root>/<model>/<version>/saved_model.pb      # TensorFlow SavedModel
    <root>/<model>/<version>/variables/...
    <root>/<model>/<version>/metadata.json       # written last: a version exists once this exists
    <root>/<model>/labels.json                   # {"labels": {"stable": {...}}, "history": [...]}

Versions are positive integers, allocated in order and never rewritten. Publishing is atomic: on a
local file system the version is assembled in ``<root>/.staging/`` and renamed into place (a rename
onto an existing, non-empty version fails, so two publishers never share a number). Temporary files
never live inside a model's folder, which only ever gains entries: a reader listing it while others
publish never trips over an entry that vanished between listing and looking.

Object stores (S3, GCS) have no rename. There a publisher first claims a number: it writes
``<model>/.claims/<version>.<random>`` and lists the claims for that number; it owns the number only
if its claim is the only one, otherwise it withdraws and tries the next number after a random pause.
With the read-after-write and list-after-write consistency that S3 and GCS guarantee, two publishers
can never both see themselves alone, so no two ever write into the same version. Label changes are
read-modify-writes of ``labels.json`` under a lock taken the same way (``<model>/.locks/labels/``). Under contention a
number can be skipped (when all its claimants withdraw); numbers are never shared or reused. Readers
ignore a version until its ``metadata.json`` exists, and that file is written last, after every other file.

A writer that dies (a SIGKILL, a lost machine) leaves only what readers never look at: on a local file
system a folder under ``<root>/.staging/`` (or a ``.staging/<uuid>.json`` label temp file); on an object
store a numbered folder without ``metadata.json`` (its claim stays, so the number stays taken); a label
lock claim (ignored once stale); and, on the machine that was downloading a version, a
``.<version>.<uuid>`` temp folder in the download cache (:mod:`maas.serving.artifact_cache`).
:func:`maas.registry_clean.clean` (``maas registry clean``) removes those, judged by age on the
storage's own clock, and never a published version or ``labels.json``. A publisher that only stalled,
and finds its folder cleaned away when it resumes, fails rather than publish the rest: locally its
staging folder was renamed away first, so its next write fails; on an object store it checks that
every file it copied is there before writing ``metadata.json``.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs

from maas.errors import (
    InvalidInput,
    LabelNotFound,
    ModelNotFound,
    RegistryConflict,
    StorageUnavailable,
    VersionNotFound,
)
from maas.names import MODEL_PATTERN, VERSION_PATTERN, matches, validate_label, validate_model_name
from maas.records import LabelEvent, Metrics, VersionMetadata, valid_metadata
from maas.signature import Signature
from maas.storage import (
    files_size,
    list_dir,
    locked,
    put_claim,
    resolve_uri,
    try_claim,
    utc_now,
    write_atomic,
    write_file,
)

METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.json"
CAPTURE_FILE = "capture.json"  # {"sample": 0.05, "updated_at": ...}: maas models capture (maas.serving.capture)
CLAIMS_DIR = ".claims"
STAGING_DIR = ".staging"
LOCKS_DIR = ".locks"
T = TypeVar("T")
_PUBLISH_ATTEMPTS = 20


@dataclass(frozen=True)
class ModelVersion:
    """One published version and its metadata, parsed once when read (the signature with it)."""

    model: str
    version: int
    metadata: VersionMetadata

    @property
    def signature(self) -> Signature:
        return self.metadata.signature

    @property
    def metrics(self) -> Metrics:
        return self.metadata.metrics or Metrics()


@dataclass(frozen=True)
class Label:
    version: int
    weight: float = 1.0  # share of traffic for a canary label, in [0, 1]
    updated_at: str = ""
    id: str = ""  # new at every assignment of the label (not at a weight change): what a canary is judged as

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "weight": self.weight, "updated_at": self.updated_at, "id": self.id}


@dataclass
class _LabelsDoc:
    labels: dict[str, Label] = field(default_factory=dict)
    history: list[LabelEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Deletion:
    """What :meth:`Registry.delete` did."""

    model: str
    version: int
    labels_removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetentionPlan:
    """What :meth:`Registry.gc` deletes (or, from :meth:`Registry.gc_plan`, would delete), and why the
    rest stay: the newest ``keep`` and every labelled version."""

    model: str
    keep: int
    delete: tuple[int, ...]
    newest: tuple[int, ...]
    labelled: tuple[int, ...]
    default: int  # where routed traffic goes: never deleted


class Registry:
    """Read and write models under one root URI (a local path, ``file://``, ``s3://``, ``gs://``...)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs, self._root = resolve_uri(uri)
        self._is_local = isinstance(self._fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # ---- where things are (for the artifact cache and ``maas registry clean``) -----------------

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The file system the registry's root is on."""
        return self._fs

    @property
    def root_path(self) -> str:
        """The registry's root, as a path on :attr:`filesystem`."""
        return self._root

    def model_path(self, model: str) -> str:
        """A model's folder on :attr:`filesystem` (the name is checked first)."""
        return f"{self._root}/{validate_model_name(model)}"

    def version_path(self, model: str, version: int) -> str:
        """A version's folder on :attr:`filesystem`: its SavedModel and ``metadata.json``."""
        return f"{self.model_path(model)}/{int(version)}"

    # ---- reading -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        infos = self._list(self._root)
        names = [i.base_name for i in infos
                 if i.type == pafs.FileType.Directory and matches(MODEL_PATTERN, i.base_name)]
        return sorted(n for n in names if self.versions(n))

    def check_reachable(self) -> None:
        """Raises :class:`StorageUnavailable` when the storage cannot be reached or the registry's root
        does not exist: a root never disappears while in use, so a vanished one (an unmounted volume, a
        deleted prefix) is an outage, not an empty registry."""
        try:
            info = self._fs.get_file_info(self._root)
        except OSError as exc:
            raise StorageUnavailable(f"Registry storage {self.uri} is unreachable: {exc}") from None
        if info.type == pafs.FileType.NotFound:
            raise StorageUnavailable(f"Registry root {self.uri} does not exist (or its storage is not mounted)")

    def versions(self, model: str) -> list[int]:
        """Published versions of ``model``, ascending; empty if the model does not exist."""
        model_dir = self.model_path(model)
        infos = self._list(model_dir)
        candidates = sorted(
            int(i.base_name) for i in infos
            if i.type == pafs.FileType.Directory and matches(VERSION_PATTERN, i.base_name)
        )
        if not candidates:
            return []
        markers = self._fs.get_file_info([f"{model_dir}/{v}/{METADATA_FILE}" for v in candidates])
        return [v for v, m in zip(candidates, markers, strict=True) if m.type == pafs.FileType.File and v > 0]

    def get(self, model: str, version: int | None = None) -> ModelVersion:
        """A version's metadata; ``version=None`` means the one traffic goes to by default."""
        if version is None:
            version = self.default_version(model)
        path = f"{self.model_path(model)}/{int(version)}/{METADATA_FILE}"
        try:
            with self._fs.open_input_stream(path) as f:
                raw = f.read()
        except FileNotFoundError:
            if not self.versions(model):
                raise ModelNotFound(model) from None
            raise VersionNotFound(model, version) from None
        return ModelVersion(model=model, version=int(version), metadata=VersionMetadata.model_validate_json(raw))

    def latest(self, model: str) -> int:
        versions = self.versions(model)
        if not versions:
            raise ModelNotFound(model)
        return versions[-1]

    def default_version(self, model: str) -> int:
        """The ``stable`` label if set, else the latest version (what TF Serving serves by default)."""
        labels = self.labels(model)
        if "stable" in labels:
            return labels["stable"].version
        return self.latest(model)

    def resolve(self, model: str, *, version: int | None = None, label: str | None = None) -> int:
        """Turn a request's version or label into a published version number, or raise a 404 error."""
        return resolve_version(model, self.versions(model), self.labels(model), version=version, label=label)

    # ---- publishing ----------------------------------------------------------------------------

    def publish(self, model: str, saved_model_dir: str,
                metadata: VersionMetadata | Mapping[str, Any]) -> ModelVersion:
        """Copy a local SavedModel folder in as the next version; return it with its metadata.

        ``metadata`` (the typed record, or its JSON document) must hold at least ``signature``; a
        document that is not valid :class:`~maas.records.VersionMetadata` is refused
        (:class:`InvalidInput`) before anything is copied.
        """
        validate_model_name(model)
        src = Path(saved_model_dir)
        if not (src / "saved_model.pb").is_file():
            raise InvalidInput(f"Not a SavedModel folder (no saved_model.pb): {saved_model_dir}")
        given = valid_metadata(metadata)
        model_dir = self.model_path(model)
        self._fs.create_dir(model_dir, recursive=True)
        for attempt in range(_PUBLISH_ATTEMPTS):
            version = max(self._all_version_dirs(model), default=0) + 1
            full = given.model_copy(update={"model": model, "version": version, "created_at": utc_now()})
            body = json.dumps(full.to_json(), indent=2, sort_keys=True).encode()
            if self._is_local:
                staging = self._staging_path()
                self._fs.create_dir(staging)  # copy_files creates sub-folders only
                _copy_artifact(src, staging, self._fs)
                write_file(self._fs, f"{staging}/{METADATA_FILE}", body)
                try:
                    self._fs.move(staging, f"{model_dir}/{version}")
                except OSError:  # lost the race for this number: try the next one
                    self._fs.delete_dir(staging)
                    continue
                if self._deleted(model, version):
                    # Deleted while this publisher copied (the rename found the number's folder gone):
                    # a deleted number stays deleted. Readers may have glimpsed it for a moment.
                    self._fs.move(f"{model_dir}/{version}", staging)
                    self._fs.delete_dir(staging)
                    continue
            else:
                if not self._claim(model, version):
                    time.sleep(random.uniform(0.01, 0.05) * (1 + attempt))
                    continue
                target = f"{model_dir}/{version}"
                _copy_artifact(src, target, self._fs)
                self._check_copied(src, target, model, version)
                write_file(self._fs, f"{target}/{METADATA_FILE}", body)  # last: the version now exists
            return ModelVersion(model=model, version=version, metadata=full)
        raise RegistryConflict(f"Could not allocate a version for '{model}' after {_PUBLISH_ATTEMPTS} attempts")

    def publish_keras(self, name: str, model: Any, *, input_shape: Any = None, task: str | None = None,
                      classes: Iterable[str] | None = None, metrics: dict[str, float] | None = None,
                      source: str | None = None) -> ModelVersion:
        """Publish an in-memory Keras model as ``name``'s next version, checked and described as
        ``maas models import`` does a ``.keras`` file (see :mod:`maas.importing`). ``input_shape`` gives
        one instance's sizes where the model leaves them unknown (a dict by input name for several)."""
        # Imported here: TensorFlow and the checks load only when used.
        from maas.importing import publish_keras

        return publish_keras(self, name, model, input_shape=input_shape, task=task,  # type: ignore[arg-type]
                             classes=None if classes is None else tuple(classes), metrics=metrics, source=source)

    def _check_copied(self, src: Path, target: str, model: str, version: int) -> None:
        """Raise unless ``target`` holds every file of ``src`` at its size, before ``metadata.json`` makes
        it a version. An object store cannot rename a folder away from its writer: a publisher stalled for
        longer than a ``clean``'s threshold has its files removed under it, and must then fail, not publish
        what is left (its number stays taken, the rest is the next clean's)."""
        wanted = [info for info in pafs.LocalFileSystem().get_file_info(pafs.FileSelector(str(src), recursive=True))
                  if info.path != str(src / METADATA_FILE)]
        stored = self._fs.get_file_info(pafs.FileSelector(target, recursive=True, allow_not_found=True))
        sizes = {info.path[len(target) + 1:]: info.size for info in stored if info.type == pafs.FileType.File}
        missing = [info.path for info in wanted if info.type == pafs.FileType.File
                   and sizes.get(info.path[len(str(src)) + 1:]) != info.size]
        if missing:
            raise RegistryConflict(f"Version {version} of '{model}' lost {len(missing)} of its files while being "
                                   "written (removed by `maas registry clean` while this publisher stalled?): "
                                   "not published")

    # ---- labels --------------------------------------------------------------------------------

    def labels(self, model: str) -> dict[str, Label]:
        return self._read_labels(model).labels

    def label_history(self, model: str) -> list[LabelEvent]:
        return self._read_labels(model).history

    def set_label(self, model: str, label: str, version: int, *, weight: float = 1.0) -> Label:
        validate_label(label)
        _check_weight(weight)
        # The version is checked under the labels lock: a concurrent delete cannot slip in between.
        return self._update_labels(
            model, lambda doc: _apply_label(doc, label, self._require_version(model, version), float(weight)))

    def set_weight(self, model: str, label: str, weight: float) -> Label:
        """Change a label's share of traffic, keeping its version."""
        _check_weight(weight)

        def reweigh(doc: _LabelsDoc) -> Label:
            if label not in doc.labels:
                raise LabelNotFound(model, label)
            return _apply_label(doc, label, doc.labels[label].version, float(weight), reweigh=True)

        return self._update_labels(model, reweigh)

    def remove_label(self, model: str, label: str) -> None:
        def remove(doc: _LabelsDoc) -> None:
            if label not in doc.labels:
                raise LabelNotFound(model, label)
            _drop_label(doc, label)

        self._update_labels(model, remove)

    # ---- request capture -----------------------------------------------------------------------

    def capture_sample(self, model: str) -> float | None:
        """The share of ``model``'s predictions captured, as ``maas models capture`` set it (``None``:
        not set here, the Serve config decides)."""
        try:
            with self._fs.open_input_stream(f"{self.model_path(model)}/{CAPTURE_FILE}") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            sample = float(json.loads(raw)["sample"])
        except (ValueError, KeyError, TypeError):  # not one of ours (hand-edited): as if unset
            return None
        return sample if 0.0 <= sample <= 1.0 else None

    def set_capture_sample(self, model: str, sample: float | None) -> None:
        """Capture that share of ``model``'s predictions (0: none); ``None`` leaves it to the Serve config."""
        if not self.versions(model):
            raise ModelNotFound(model)
        path = f"{self.model_path(model)}/{CAPTURE_FILE}"
        if sample is None:
            if self._fs.get_file_info(path).type == pafs.FileType.File:
                self._fs.delete_file(path)
            return
        if not 0.0 <= sample <= 1.0:
            raise InvalidInput(f"A capture sample is a share of predictions in [0, 1]. Received: {sample}")
        write_atomic(self._fs, path, json.dumps({"sample": sample, "updated_at": utc_now()}).encode())

    def promote(self, model: str, version: int | None = None) -> Label:
        """Point ``stable`` at ``version`` (default: the latest); a canary on that version is retired."""
        def promote(doc: _LabelsDoc) -> Label:
            chosen = self.latest(model) if version is None else self._require_version(model, version)
            stable = _apply_label(doc, "stable", chosen, 1.0)
            canary = doc.labels.get("canary")
            if canary is not None and canary.version == chosen:
                _drop_label(doc, "canary")
            return stable

        return self._update_labels(model, promote)

    def retire_canary(self, model: str, version: int, reason: str) -> bool:
        """Remove the ``canary`` label if it still points at ``version`` (automatic rollback), with
        ``reason`` in the label history. False if the canary was changed meanwhile, and is left alone."""

        def retire(doc: _LabelsDoc) -> bool:
            canary = doc.labels.get("canary")
            if canary is None or canary.version != version:
                return False
            _drop_label(doc, "canary", reason=reason)
            return True

        return self._update_labels(model, retire)

    def rollback(self, model: str) -> Label:
        """Point ``stable`` back at the version it held before its latest change."""

        def rollback(doc: _LabelsDoc) -> Label:
            changes = [e for e in doc.history if e.label == "stable"]
            if not changes or changes[-1].previous is None:
                raise InvalidInput(f"Model '{model}' has no earlier stable version to roll back to")
            previous = changes[-1].previous
            if previous not in self.versions(model):
                raise InvalidInput(f"Model '{model}' cannot roll back to version {previous}: it was deleted")
            return _apply_label(doc, "stable", previous, 1.0)

        return self._update_labels(model, rollback)

    # ---- retention -----------------------------------------------------------------------------

    def delete(self, model: str, version: int, *, force: bool = False) -> Deletion:
        """Delete a published version. Refused (:class:`RegistryConflict`) while a label points at it;
        with ``force`` those labels are removed (recorded in the label history), never moved to another
        version. Its number stays taken for ever: a tombstone claim ``.claims/<version>.deleted`` is
        written first, so a later publish never reuses it.

        Readers see the version vanish at once: on a local disk its folder is renamed away into
        ``.staging/`` before its files go; on an object store its ``metadata.json`` (what makes a folder
        a version) is deleted first. A delete that dies midway leaves only what ``clean`` removes.
        Serving stops routing to it within ``registry_refresh_s``; requests already running finish on
        the copy the replica holds in memory."""
        with self._locked(model, "labels"):
            number = self._require_version(model, version)
            doc = self._read_labels(model)
            pointing = sorted(name for name, label in doc.labels.items() if label.version == number)
            if pointing and not force:
                raise RegistryConflict(
                    f"Version {number} of '{model}' is labelled {', '.join(pointing)}: move or remove the "
                    "label first, or delete with --force (which removes the label and moves nothing)")
            for name in pointing:
                _drop_label(doc, name, reason=f"version {number} deleted")
            if pointing:
                self._write_labels(model, doc)
            self.write_claim(model, f"{number}.deleted")
            self._remove_version_files(model, number)
        return Deletion(model=model, version=number, labels_removed=tuple(pointing))

    def gc_plan(self, model: str, *, keep: int) -> RetentionPlan:
        """Which versions ``gc`` would delete: all but the newest ``keep``, never a labelled one, and never
        the one routed traffic goes to (the ``stable`` label's, else the latest), even with ``keep`` 0."""
        if keep < 0:
            raise InvalidInput(f"--keep must be 0 or more versions. Received: {keep}")
        versions = self.versions(model)
        if not versions:
            raise ModelNotFound(model)
        labels = self.labels(model)
        labelled = {label.version for label in labels.values()}
        default = labels["stable"].version if "stable" in labels else versions[-1]
        newest = set(versions[-keep:]) if keep else set()
        doomed = tuple(v for v in versions if v not in newest and v not in labelled and v != default)
        return RetentionPlan(model=model, keep=keep, delete=doomed, newest=tuple(sorted(newest)),
                             labelled=tuple(sorted(labelled & set(versions))), default=default)

    def gc(self, model: str, *, keep: int) -> RetentionPlan:
        """Delete what :meth:`gc_plan` lists. A version labelled meanwhile is skipped, not deleted."""
        plan = self.gc_plan(model, keep=keep)
        deleted = []
        for number in plan.delete:
            try:
                self.delete(model, number)
            except (RegistryConflict, VersionNotFound):  # labelled or deleted since the plan: left alone
                continue
            deleted.append(number)
        return replace(plan, delete=tuple(deleted))

    def version_bytes(self, model: str, version: int) -> int:
        """The size of a version's files on the registry's storage."""
        folder = self.version_path(model, version)
        return files_size(self._fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True)))

    def _remove_version_files(self, model: str, version: int) -> None:
        folder = self.version_path(model, version)
        if self._is_local:
            away = self._staging_path()
            self._fs.move(folder, away)  # atomic: readers see the whole version or none of it
            self._fs.delete_dir(away)
        else:
            self._fs.delete_file(f"{folder}/{METADATA_FILE}")  # first: the folder is no version from now on
            self._fs.delete_dir(folder)

    # ---- internals -----------------------------------------------------------------------------

    def _list(self, path: str) -> list[pafs.FileInfo]:
        return list_dir(self._fs, path)

    def _deleted(self, model: str, version: int) -> bool:
        """Whether ``version``'s number carries a deletion's tombstone claim."""
        tombstone = f"{self.model_path(model)}/{CLAIMS_DIR}/{version}.deleted"
        return bool(self._fs.get_file_info(tombstone).type != pafs.FileType.NotFound)

    def _require_version(self, model: str, version: int) -> int:
        versions = self.versions(model)
        if not versions:
            raise ModelNotFound(model)
        if int(version) not in versions:
            raise VersionNotFound(model, version)
        return int(version)

    def _staging_path(self) -> str:
        """A fresh temporary path on the registry's file system, outside every model's folder."""
        self._fs.create_dir(f"{self._root}/{STAGING_DIR}", recursive=True)
        return f"{self._root}/{STAGING_DIR}/{uuid.uuid4().hex}"

    def _all_version_dirs(self, model: str) -> list[int]:
        """Every number taken, committed or not (numbered folders and claims): numbers are never reused.
        Claims count on every storage: on a local disk only ``maas registry clean`` writes them, to keep
        the number of a partial folder it removed."""
        infos = self._list(self.model_path(model))
        taken = [int(i.base_name) for i in infos if matches(VERSION_PATTERN, i.base_name)]
        return taken + [version for version, _ in self.claims(model)]

    def claims(self, model: str) -> list[tuple[int, pafs.FileInfo]]:
        """``(number, claim)`` for each claim ``<model>/.claims/<number>.<token>``."""
        claims = []
        for info in self._list(f"{self.model_path(model)}/{CLAIMS_DIR}"):
            number, _, token = info.base_name.partition(".")
            if matches(VERSION_PATTERN, number) and token:
                claims.append((int(number), info))
        return claims

    def _claim(self, model: str, version: int) -> bool:
        """Own ``version`` on an object store, or withdraw and return False (see the module docstring)."""
        return try_claim(self._fs, f"{self.model_path(model)}/{CLAIMS_DIR}", f"{version}.{uuid.uuid4().hex}",
                         rival=lambda info, now: info.base_name.startswith(f"{version}."))

    def write_claim(self, model: str, name: str) -> None:
        """Write the claim ``<model>/.claims/<name>`` and keep it, whatever else is there: a number
        taken for good (a deletion's tombstone, or a partial version's that ``clean`` removed)."""
        put_claim(self._fs, f"{self.model_path(model)}/{CLAIMS_DIR}", name)

    def _locked(self, model: str, what: str) -> AbstractContextManager[None]:
        """Hold ``what``'s lock for ``model`` against every other process (see :func:`maas.storage.locked`)."""
        return locked(self._fs, f"{self.model_path(model)}/{LOCKS_DIR}/{what}", what=f"'{model}' {what}")

    def _update_labels(self, model: str, change: Callable[[_LabelsDoc], T]) -> T:
        """Read, change and write ``labels.json`` under its lock: concurrent changes are never lost."""
        with self._locked(model, "labels"):
            doc = self._read_labels(model)
            result = change(doc)
            self._write_labels(model, doc)
        return result

    def _read_labels(self, model: str) -> _LabelsDoc:
        try:
            with self._fs.open_input_stream(f"{self.model_path(model)}/{LABELS_FILE}") as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            return _LabelsDoc()
        return _LabelsDoc(
            labels={k: Label(**v) for k, v in raw.get("labels", {}).items()},
            history=[LabelEvent.model_validate(event) for event in raw.get("history", [])],
        )

    def _write_labels(self, model: str, doc: _LabelsDoc) -> None:
        body = {"labels": {k: v.to_dict() for k, v in doc.labels.items()},
                "history": [e.to_json() for e in doc.history[-200:]]}
        path = f"{self.model_path(model)}/{LABELS_FILE}"
        # Locally the temporary file is written in .staging/, outside the model's folder (which only
        # ever gains entries): readers see the old or the new file, never half of one.
        temp = f"{self._staging_path()}.json" if self._is_local else None
        write_atomic(self._fs, path, json.dumps(body, indent=2).encode(), temp_path=temp, create_parent=False)


def resolve_version(model: str, versions: list[int], labels: dict[str, Label], *, version: int | None,
                    label: str | None) -> int:
    """A request's version or label as a published version of ``model`` (``versions`` ascending), or the
    404 error naming what is missing. Without either, the ``stable`` label's version, else the latest."""
    if version is not None and label is not None:
        raise InvalidInput("Give a version or a label, not both")
    if not versions:
        raise ModelNotFound(model)
    if label is not None:
        if label not in labels:
            raise LabelNotFound(model, label)
        return labels[label].version
    if version is None:
        return labels["stable"].version if "stable" in labels else versions[-1]
    if int(version) not in versions:
        raise VersionNotFound(model, version)
    return int(version)


def _copy_artifact(src: Path, target: str, fs: pafs.FileSystem) -> None:
    """Copy a SavedModel folder to ``target`` on ``fs``, all but a ``metadata.json`` of its own (a
    version copied out of another registry carries one): on an object store that file is what makes a
    folder a version, and it must be this publisher's, written last."""
    local = pafs.LocalFileSystem()
    for entry in sorted(src.iterdir()):
        if entry.name == METADATA_FILE:
            continue
        if entry.is_dir():
            if isinstance(fs, pafs.LocalFileSystem):
                fs.create_dir(f"{target}/{entry.name}", recursive=True)  # copy_files creates sub-folders only
            pafs.copy_files(str(entry), f"{target}/{entry.name}", source_filesystem=local, destination_filesystem=fs)
        else:
            with entry.open("rb") as f, fs.open_output_stream(f"{target}/{entry.name}") as out:
                shutil.copyfileobj(f, out, 1 << 20)


def _check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise InvalidInput(f"A label's weight is a share of traffic in [0, 1]. Received: {weight}")


def _apply_label(doc: _LabelsDoc, label: str, version: int, weight: float, *, reweigh: bool = False) -> Label:
    """Point ``label`` at ``version``: a new assignment (a new id), or with ``reweigh`` the same one
    with another weight."""
    previous = doc.labels.get(label)
    kept = previous if reweigh and previous is not None and previous.version == version else None
    new = Label(version=version, weight=weight, updated_at=utc_now(),
                id=kept.id if kept is not None else uuid.uuid4().hex[:12])
    doc.labels[label] = new
    doc.history.append(LabelEvent(at=new.updated_at, label=label, version=version, weight=weight,
                                  previous=previous.version if previous else None))
    return new


def _drop_label(doc: _LabelsDoc, label: str, *, reason: str | None = None) -> None:
    previous = doc.labels.pop(label)
    event = LabelEvent(at=utc_now(), label=label, version=None, weight=None, previous=previous.version)
    if reason is not None:
        event.reason = reason  # set only when given: a removal by hand has no "reason" key
    doc.history.append(event)
