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
``.<version>.<uuid>`` temp folder in the download cache. :meth:`Registry.clean` (``maas registry clean``)
removes those, judged by age on the storage's own clock, and never a published version or
``labels.json``. A publisher that only stalled, and finds its folder cleaned away when it resumes, fails
rather than publish the rest: locally its staging folder was renamed away first, so its next write
fails; on an object store it checks that every file it copied is there before writing ``metadata.json``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import random
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, TypeVar, get_args

import pyarrow.fs as pafs
from pydantic import ValidationError

from maas.errors import (ConfigError, InvalidInput, LabelNotFound, ModelNotFound, RegistryConflict,
                         StorageUnavailable, VersionNotFound)
from maas.names import MODEL_PATTERN, VERSION_PATTERN, matches, validate_label, validate_model_name
from maas.settings import maas_home
from maas.records import LabelEvent, Metrics, VersionMetadata
from maas.signature import Signature
from maas.storage import resolve_uri

METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.json"
CLAIMS_DIR = ".claims"
STAGING_DIR = ".staging"
LOCKS_DIR = ".locks"
T = TypeVar("T")
_PUBLISH_ATTEMPTS = 20
_LIST_ATTEMPTS = 5
_LOCK_TIMEOUT_S = 30.0
_LOCK_STALE_S = 120.0  # a label change takes milliseconds; older claims are a dead holder's
_REMOVING = ".removing"  # suffix of a dead writer's folder that clean has taken away from it


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


LeftoverKind = Literal["staging folder", "staging file", "partial version", "lock claim", "partial download"]
LEFTOVER_KINDS: tuple[LeftoverKind, ...] = get_args(LeftoverKind)


@dataclass(frozen=True)
class Leftover:
    """One thing a dead writer left behind, as :meth:`Registry.clean` found it."""

    kind: LeftoverKind
    path: str  # on the registry's storage; a partial download's on this machine's disk
    bytes: int  # of the files it held (a claim's or temp file's own size)
    age_s: float | None  # since its newest write, by its storage's clock; None: nothing in it bore a date


@dataclass(frozen=True)
class CleanReport:
    """What :meth:`Registry.clean` removed (or, with ``dry_run``, would remove), by kind."""

    uri: str
    older_than_s: float
    dry_run: bool
    leftovers: tuple[Leftover, ...] = ()

    def totals(self) -> dict[LeftoverKind, tuple[int, int]]:
        """``{kind: (count, bytes)}`` for each kind found, in :data:`LEFTOVER_KINDS` order."""
        totals: dict[LeftoverKind, tuple[int, int]] = {}
        for kind in LEFTOVER_KINDS:
            found = [item for item in self.leftovers if item.kind == kind]
            if found:
                totals[kind] = (len(found), sum(item.bytes for item in found))
        return totals

    def lines(self) -> list[str]:
        """One line per kind found, then the total: what ``maas registry clean`` prints."""
        scope = f"older than {format_age(self.older_than_s)} in {self.uri}"
        if not self.leftovers:
            return [f"Nothing to clean: no leftovers {scope}"]
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{verb} {_count(n, kind)} ({format_bytes(size)})" for kind, (n, size) in self.totals().items()]
        size = sum(item.bytes for item in self.leftovers)
        lines.append(f"total: {verb} {_count(len(self.leftovers), 'leftover')} ({format_bytes(size)}) {scope}")
        return lines


class Registry:
    """Read and write models under one root URI (a local path, ``file://``, ``s3://``, ``gs://``...)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs, self._root = resolve_uri(uri)
        self._is_local = isinstance(self._fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # ---- reading -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        infos = self._list(self._root)
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory and matches(MODEL_PATTERN, i.base_name)]
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
        model_dir = self._model_dir(model)
        infos = self._list(model_dir)
        candidates = sorted(
            int(i.base_name) for i in infos
            if i.type == pafs.FileType.Directory and matches(VERSION_PATTERN, i.base_name)
        )
        if not candidates:
            return []
        markers = self._fs.get_file_info([f"{model_dir}/{v}/{METADATA_FILE}" for v in candidates])
        return [v for v, m in zip(candidates, markers) if m.type == pafs.FileType.File and v > 0]

    def get(self, model: str, version: int | None = None) -> ModelVersion:
        """A version's metadata; ``version=None`` means the one traffic goes to by default."""
        if version is None:
            version = self.default_version(model)
        path = f"{self._model_dir(model)}/{int(version)}/{METADATA_FILE}"
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

    def local_path(self, model: str, version: int) -> str:
        """A local directory holding the version's SavedModel (downloaded once if the registry is remote)."""
        src = f"{self._model_dir(model)}/{int(version)}"
        if self._is_local:
            return src
        dst = self._cache_dir() / model / str(int(version))
        if not (dst / METADATA_FILE).exists():
            tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                pafs.copy_files(src, str(tmp), source_filesystem=self._fs,
                                destination_filesystem=pafs.LocalFileSystem())
                tmp.rename(dst)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # a failed download leaves nothing behind
                if not (dst / METADATA_FILE).exists():  # else another process finished the same download first
                    raise
        return str(dst)

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
        given = _valid_metadata(metadata)
        model_dir = self._model_dir(model)
        self._fs.create_dir(model_dir, recursive=True)
        for attempt in range(_PUBLISH_ATTEMPTS):
            version = max(self._all_version_dirs(model), default=0) + 1
            full = given.model_copy(update={"model": model, "version": version, "created_at": _now()})
            body = json.dumps(full.to_json(), indent=2, sort_keys=True).encode()
            if self._is_local:
                staging = self._staging_path()
                self._fs.create_dir(staging)  # copy_files creates sub-folders only
                _copy_artifact(src, staging, self._fs)
                self._write_bytes(f"{staging}/{METADATA_FILE}", body)
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
                self._write_bytes(f"{target}/{METADATA_FILE}", body)  # last: the version now exists
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
            self._write_claim(model, f"{number}.deleted")
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
        folder = f"{self._model_dir(model)}/{int(version)}"
        return _size(self._fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True)))

    def _remove_version_files(self, model: str, version: int) -> None:
        folder = f"{self._model_dir(model)}/{version}"
        if self._is_local:
            away = self._staging_path()
            self._fs.move(folder, away)  # atomic: readers see the whole version or none of it
            self._fs.delete_dir(away)
        else:
            self._fs.delete_file(f"{folder}/{METADATA_FILE}")  # first: the folder is no version from now on
            self._fs.delete_dir(folder)

    # ---- maintenance ---------------------------------------------------------------------------

    def clean(self, *, older_than_s: float = 3600.0, dry_run: bool = False) -> CleanReport:
        """Remove what dead writers left: staging folders and temp files, partial versions, stale lock
        claims, and this machine's partial downloads of this registry's versions (see the module docstring).

        Only leftovers whose newest write is at least ``older_than_s`` old count, judged by the storage's
        own clock (the date it gives a probe written now), never by this machine's: a live publisher keeps
        writing, so its work stays younger than the threshold unless it stalls for longer. One that does
        fails rather than publish a version with files missing: on a local disk its staging folder is
        renamed away before it is removed, so its next file cannot be written; on an object store, which
        cannot rename, it finds files missing when it checks before writing ``metadata.json``. (There a
        clean that deletes in the milliseconds between that check and that write can still cost it files:
        keep the threshold well above any stall, as the default hour is, while publishers run.) Lock
        claims count only once ``_LOCK_STALE_S`` old as well (every locker ignores them by then), so that a
        live label change is never unlocked.

        A partial version's files go, its number stays taken (its claim is kept, or one is written), so a
        number is never reused for other content. A folder holding ``metadata.json`` (a published version)
        and ``labels.json`` are never removed. ``dry_run`` removes nothing (the clock probe aside).
        """
        if not (math.isfinite(older_than_s) and older_than_s >= 0):
            raise InvalidInput(f"older_than_s must be a finite number of seconds >= 0. Received: {older_than_s}")
        self.check_reachable()  # a mistyped URI is an error, not an empty registry with nothing to clean
        now = self._storage_now()
        found: list[Leftover] = self._clean_staging(now, older_than_s, dry_run)
        for model in self._model_folders():
            found += self._clean_partial_versions(model, now, older_than_s, dry_run)
            found += self._clean_lock_claims(model, now, max(older_than_s, _LOCK_STALE_S), dry_run)
        found += self._clean_downloads(older_than_s, dry_run)
        return CleanReport(uri=self.uri, older_than_s=older_than_s, dry_run=dry_run, leftovers=tuple(found))

    def _storage_now(self) -> float:
        """The storage's clock: the modification time it gives a probe written now (in ``.staging/``,
        removed at once). A skewed clock on this machine then neither spares a dead writer's leftovers
        nor takes a live one's."""
        folder = f"{self._root}/{STAGING_DIR}"
        if self._is_local:
            self._fs.create_dir(folder, recursive=True)
        probe = f"{folder}/{uuid.uuid4().hex}.clock"
        self._write_bytes(probe, b"")
        try:
            info = self._fs.get_file_info(probe)
        finally:
            self._fs.delete_file(probe)
        if info.mtime is None:
            raise StorageUnavailable(f"Registry storage {self.uri} keeps no modification times: cannot judge ages")
        return info.mtime.timestamp()

    def _model_folders(self) -> list[str]:
        """Every model folder, published versions or not (a model whose first publish died has none)."""
        return sorted(i.base_name for i in self._list(self._root)
                      if i.type == pafs.FileType.Directory and matches(MODEL_PATTERN, i.base_name))

    def _clean_staging(self, now: float, older_than_s: float, dry_run: bool) -> list[Leftover]:
        """``.staging/<uuid>`` folders of publishers that died, ``.staging/<uuid>.json`` label temp files
        of label writers that died (and clock probes of cleaners that did)."""
        found = []
        for info in self._list(f"{self._root}/{STAGING_DIR}"):
            if info.type == pafs.FileType.Directory:
                contents = _contents(self._fs, info.path)
                if contents is None:  # renamed into place, or away, while we looked: not a leftover
                    continue
                newest = newest_mtime([info, *contents])
                if not is_leftover(newest, now, older_than_s):
                    continue
                if not dry_run and not _take_away_and_remove(self._fs, info.path):
                    continue
                found.append(Leftover("staging folder", info.path, _size(contents), _age(newest, now)))
            elif info.type == pafs.FileType.File:
                newest = newest_mtime([info])
                if not is_leftover(newest, now, older_than_s):
                    continue
                if not dry_run and not _delete_file(self._fs, info.path):
                    continue
                found.append(Leftover("staging file", info.path, info.size or 0, _age(newest, now)))
        return found

    def _clean_partial_versions(self, model: str, now: float, older_than_s: float,
                                dry_run: bool) -> list[Leftover]:
        """Numbered folders without ``metadata.json``: what an object-store publisher that died left (on
        a local disk only a copy by hand makes them). Their age counts the number's claims too, written
        before the first file: a folder of only directory markers is dated by its claim."""
        model_dir = self._model_dir(model)
        numbered = [i for i in self._list(model_dir)
                    if i.type == pafs.FileType.Directory and matches(VERSION_PATTERN, i.base_name)]
        if not numbered:
            return []
        markers = self._fs.get_file_info([f"{i.path}/{METADATA_FILE}" for i in numbered])
        claims: dict[int, list[pafs.FileInfo]] = {}
        for number, claim in self._claims(model):
            claims.setdefault(number, []).append(claim)
        found = []
        for folder, marker in zip(numbered, markers, strict=True):
            if marker.type != pafs.FileType.NotFound:  # published (or unreadable): never touched
                continue
            version = int(folder.base_name)
            contents = _contents(self._fs, folder.path)
            if contents is None:
                continue
            newest = newest_mtime([folder, *contents, *claims.get(version, [])])
            if not is_leftover(newest, now, older_than_s):
                continue
            if not dry_run:
                if not claims.get(version):  # keep the number taken once its folder is gone
                    self._write_claim(model, f"{version}.abandoned-{uuid.uuid4().hex[:8]}")
                if self._fs.get_file_info(f"{folder.path}/{METADATA_FILE}").type != pafs.FileType.NotFound:
                    continue  # its publisher was alive after all, and has just finished it
                self._fs.delete_dir(folder.path)
            found.append(Leftover("partial version", folder.path, _size(contents), _age(newest, now)))
        return found

    def _clean_lock_claims(self, model: str, now: float, older_than_s: float, dry_run: bool) -> list[Leftover]:
        """Lock claims (``.locks/<what>/<uuid>``) of holders that died; every locker ignores them by then."""
        found = []
        for lock in self._list(f"{self._model_dir(model)}/{LOCKS_DIR}"):
            if lock.type != pafs.FileType.Directory:
                continue
            for claim in self._list(lock.path):
                newest = newest_mtime([claim])
                if claim.type != pafs.FileType.File or not is_leftover(newest, now, older_than_s):
                    continue
                if not dry_run and not _delete_file(self._fs, claim.path):
                    continue
                found.append(Leftover("lock claim", claim.path, claim.size or 0, _age(newest, now)))
        return found

    def _clean_downloads(self, older_than_s: float, dry_run: bool) -> list[Leftover]:
        """This machine's ``.<version>.<uuid>`` temp folders of downloads of this registry's versions
        that died (see :meth:`local_path`), judged by this machine's clock: the cache is on its disk."""
        local = pafs.LocalFileSystem()
        cache = str(self._cache_dir())
        now = time.time()
        found = []
        for model in local.get_file_info(pafs.FileSelector(cache, allow_not_found=True)):
            if model.type != pafs.FileType.Directory:
                continue
            for entry in local.get_file_info(pafs.FileSelector(model.path, allow_not_found=True)):
                if entry.type != pafs.FileType.Directory or not entry.base_name.startswith("."):
                    continue  # a finished download is named by its version number
                contents = _contents(local, entry.path)
                if contents is None:
                    continue
                newest = newest_mtime([entry, *contents])
                if not is_leftover(newest, now, older_than_s):
                    continue
                if not dry_run and not _take_away_and_remove(local, entry.path):
                    continue
                found.append(Leftover("partial download", entry.path, _size(contents), _age(newest, now)))
        return found

    # ---- internals -----------------------------------------------------------------------------

    def _list(self, path: str) -> list[pafs.FileInfo]:
        """The entries of a folder; none if it does not exist.

        pyarrow's local listing can fail with ENOENT on a folder that exists while another process
        creates it and moves entries in (a first publish); such a listing is retried, briefly.
        """
        for attempt in range(_LIST_ATTEMPTS):
            try:
                return self._fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            except FileNotFoundError:
                if attempt + 1 == _LIST_ATTEMPTS:
                    raise
                time.sleep(0.002 * 2**attempt)
        raise AssertionError("unreachable")

    def _deleted(self, model: str, version: int) -> bool:
        """Whether ``version``'s number carries a deletion's tombstone claim."""
        tombstone = f"{self._model_dir(model)}/{CLAIMS_DIR}/{version}.deleted"
        return self._fs.get_file_info(tombstone).type != pafs.FileType.NotFound

    def _require_version(self, model: str, version: int) -> int:
        versions = self.versions(model)
        if not versions:
            raise ModelNotFound(model)
        if int(version) not in versions:
            raise VersionNotFound(model, version)
        return int(version)

    def _cache_dir(self) -> Path:
        """This machine's download cache of this registry's versions."""
        return maas_home() / "cache" / hashlib.sha256(self.uri.encode()).hexdigest()[:16]

    def _staging_path(self) -> str:
        """A fresh temporary path on the registry's file system, outside every model's folder."""
        self._fs.create_dir(f"{self._root}/{STAGING_DIR}", recursive=True)
        return f"{self._root}/{STAGING_DIR}/{uuid.uuid4().hex}"

    def _model_dir(self, model: str) -> str:
        return f"{self._root}/{validate_model_name(model)}"

    def _all_version_dirs(self, model: str) -> list[int]:
        """Every number taken, committed or not (numbered folders and claims): numbers are never reused.
        Claims count on every storage: on a local disk only :meth:`clean` writes them, to keep the number
        of a partial folder it removed."""
        infos = self._list(self._model_dir(model))
        taken = [int(i.base_name) for i in infos if matches(VERSION_PATTERN, i.base_name)]
        return taken + [version for version, _ in self._claims(model)]

    def _claims(self, model: str) -> list[tuple[int, pafs.FileInfo]]:
        """``(number, claim)`` for each claim ``<model>/.claims/<number>.<token>``."""
        claims = []
        for info in self._list(f"{self._model_dir(model)}/{CLAIMS_DIR}"):
            number, _, token = info.base_name.partition(".")
            if matches(VERSION_PATTERN, number) and token:
                claims.append((int(number), info))
        return claims

    def _claim(self, model: str, version: int) -> bool:
        """Own ``version`` on an object store, or withdraw and return False (see the module docstring)."""
        return self._try_claim(f"{self._model_dir(model)}/{CLAIMS_DIR}", f"{version}.{uuid.uuid4().hex}",
                               rival=lambda info, now: info.base_name.startswith(f"{version}."))

    def _write_claim(self, model: str, name: str) -> None:
        """Write the claim ``<model>/.claims/<name>`` and keep it, whatever else is there."""
        folder = f"{self._model_dir(model)}/{CLAIMS_DIR}"
        if self._is_local:
            self._fs.create_dir(folder, recursive=True)
        self._write_bytes(f"{folder}/{name}", _now().encode())

    def _try_claim(self, folder: str, name: str, *,
                   rival: Callable[[pafs.FileInfo, float | None], bool]) -> bool:
        """Write the claim ``folder/name``; keep it if no rival claim is listed beside it, else
        withdraw it. With consistent listing (local disks, S3, GCS) two claimants never both keep theirs.

        ``rival(info, now)`` judges each other claim; ``now`` is the storage's own clock (the
        modification time the storage gave the claim just written), or ``None`` if it keeps none."""
        if self._is_local:
            self._fs.create_dir(folder, recursive=True)
        path = f"{folder}/{name}"
        self._write_bytes(path, _now().encode())
        listed = self._list(folder)
        mine = next((i for i in listed if i.base_name == name), None)
        now = mine.mtime.timestamp() if mine is not None and mine.mtime is not None else None
        if any(rival(info, now) for info in listed if info.base_name != name):
            self._fs.delete_file(path)
            return False
        return True

    @contextmanager
    def _locked(self, model: str, what: str) -> Iterator[None]:
        """Hold ``what``'s lock for ``model`` against every other process, on any storage.

        A claim is judged by the storage's clock, never this machine's: one written more than
        ``_LOCK_STALE_S`` before this claimant's own (a holder that died) or dated more than that after
        it (a writer whose clock, or forged time, is off) is ignored. A skewed local clock therefore
        neither expires live locks nor keeps dead ones alive.
        """
        folder = f"{self._model_dir(model)}/{LOCKS_DIR}/{what}"
        name = uuid.uuid4().hex
        deadline = time.monotonic() + _LOCK_TIMEOUT_S

        def live(info: pafs.FileInfo, now: float | None) -> bool:
            if info.mtime is None or now is None:
                return True
            return abs(now - info.mtime.timestamp()) < _LOCK_STALE_S

        attempt = 0
        while not self._try_claim(folder, name, rival=live):
            if time.monotonic() > deadline:
                raise RegistryConflict(f"'{model}' {what} stayed locked by another writer for {_LOCK_TIMEOUT_S:.0f}s")
            attempt += 1
            time.sleep(random.uniform(0.005, 0.02) * min(attempt, 10))
        try:
            yield
        finally:
            self._fs.delete_file(f"{folder}/{name}")

    def _update_labels(self, model: str, change: Callable[[_LabelsDoc], T]) -> T:
        """Read, change and write ``labels.json`` under its lock: concurrent changes are never lost."""
        with self._locked(model, "labels"):
            doc = self._read_labels(model)
            result = change(doc)
            self._write_labels(model, doc)
        return result

    def _read_labels(self, model: str) -> _LabelsDoc:
        try:
            with self._fs.open_input_stream(f"{self._model_dir(model)}/{LABELS_FILE}") as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            return _LabelsDoc()
        return _LabelsDoc(
            labels={k: Label(**v) for k, v in raw.get("labels", {}).items()},
            history=[LabelEvent.model_validate(event) for event in raw.get("history", [])],
        )

    def _write_labels(self, model: str, doc: _LabelsDoc) -> None:
        body = {"labels": {k: v.to_dict() for k, v in doc.labels.items()}, "history": [e.to_json() for e in doc.history[-200:]]}
        path = f"{self._model_dir(model)}/{LABELS_FILE}"
        if self._is_local:  # write then rename: readers see the old or the new file, never half of one
            tmp = f"{self._staging_path()}.json"
            self._write_bytes(tmp, json.dumps(body, indent=2).encode())
            self._fs.move(tmp, path)
        else:  # an object PUT is atomic
            self._write_bytes(path, json.dumps(body, indent=2).encode())

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self._fs.open_output_stream(path) as f:
            f.write(data)


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


def newest_mtime(infos: Iterable[pafs.FileInfo]) -> float | None:
    """The latest modification time among ``infos`` (seconds since the epoch), or None if none has one
    (an object store's "folder" has none of its own: it is dated by the objects in it)."""
    dates = [info.mtime.timestamp() for info in infos if info.mtime is not None]
    return max(dates, default=None)


def is_leftover(newest: float | None, now: float, older_than_s: float) -> bool:
    """Whether something last written at ``newest`` counts as a dead writer's, ``now`` and ``newest``
    both by its storage's clock. Something dated after ``now`` is not (a clock can only make it look
    younger, never older); something with no date at all is: on an object store every writer puts a
    dated claim down before anything else, so a folder with nothing dated in it has no live writer."""
    if newest is None:
        return True
    return newest <= now - older_than_s


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _contents(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo] | None:
    """Everything under ``folder``; None if it vanished while being listed (renamed, or removed)."""
    try:
        return fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    except FileNotFoundError:
        return None


def _size(infos: Iterable[pafs.FileInfo]) -> int:
    return sum(info.size or 0 for info in infos if info.type == pafs.FileType.File)


def _age(newest: float | None, now: float) -> float | None:
    return None if newest is None else max(0.0, now - newest)


def _take_away_and_remove(fs: pafs.FileSystem, folder: str) -> bool:
    """Remove a dead writer's folder; False if it was gone already (another cleaner, or its writer).

    On a local disk it is first renamed away: were its writer alive after all, every file it still
    writes, and the rename that would publish it, then fail, instead of landing in a folder whose
    other files were removed. (An object store cannot rename; there the age threshold is the guard.)"""
    if isinstance(fs, pafs.LocalFileSystem) and not folder.endswith(_REMOVING):
        try:
            fs.move(folder, folder + _REMOVING)
        except FileNotFoundError:
            return False
        folder += _REMOVING
    try:
        fs.delete_dir(folder)
    except FileNotFoundError:
        return False
    return True


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


def _delete_file(fs: pafs.FileSystem, path: str) -> bool:
    """Delete ``path``; False if it was gone already (released by its holder, or taken by another cleaner)."""
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        return False
    return True


def _check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise InvalidInput(f"A label's weight is a share of traffic in [0, 1]. Received: {weight}")


def _apply_label(doc: _LabelsDoc, label: str, version: int, weight: float, *, reweigh: bool = False) -> Label:
    """Point ``label`` at ``version``: a new assignment (a new id), or with ``reweigh`` the same one
    with another weight."""
    previous = doc.labels.get(label)
    same = reweigh and previous is not None and previous.version == version
    new = Label(version=version, weight=weight, updated_at=_now(), id=previous.id if same else uuid.uuid4().hex[:12])
    doc.labels[label] = new
    doc.history.append(LabelEvent(at=new.updated_at, label=label, version=version, weight=weight,
                                  previous=previous.version if previous else None))
    return new


def _drop_label(doc: _LabelsDoc, label: str, *, reason: str | None = None) -> None:
    previous = doc.labels.pop(label)
    event = LabelEvent(at=_now(), label=label, version=None, weight=None, previous=previous.version)
    if reason is not None:
        event.reason = reason  # set only when given: a removal by hand has no "reason" key
    doc.history.append(event)


def _valid_metadata(metadata: VersionMetadata | Mapping[str, Any]) -> VersionMetadata:
    """``metadata`` as the typed record, or :class:`InvalidInput` naming each problem."""
    if isinstance(metadata, VersionMetadata):
        return metadata
    try:
        return VersionMetadata.model_validate(metadata)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"Invalid version metadata: {problems}") from None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
