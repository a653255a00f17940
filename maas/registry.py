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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pyarrow.fs as pafs

from maas.errors import (InvalidInput, LabelNotFound, ModelNotFound, RegistryConflict, StorageUnavailable,
                         VersionNotFound)
from maas.names import MODEL_PATTERN, VERSION_PATTERN, matches, validate_label, validate_model_name
from maas.settings import maas_home
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


@dataclass(frozen=True)
class ModelVersion:
    """One published version and its metadata."""

    model: str
    version: int
    metadata: dict[str, Any]

    @property
    def signature(self) -> Signature:
        return Signature.from_dict(self.metadata["signature"])

    @property
    def metrics(self) -> dict[str, Any]:
        return self.metadata.get("metrics", {})


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
    history: list[dict[str, Any]] = field(default_factory=list)


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
                metadata = json.loads(f.read())
        except FileNotFoundError:
            if not self.versions(model):
                raise ModelNotFound(model) from None
            raise VersionNotFound(model, version) from None
        return ModelVersion(model=model, version=int(version), metadata=metadata)

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
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        dst = maas_home() / "cache" / key / model / str(int(version))
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

    def publish(self, model: str, saved_model_dir: str, metadata: dict[str, Any]) -> ModelVersion:
        """Copy a local SavedModel folder in as the next version; return it with its metadata.

        ``metadata`` must hold at least ``signature`` (see :class:`maas.signature.Signature`).
        """
        validate_model_name(model)
        src = Path(saved_model_dir)
        if not (src / "saved_model.pb").is_file():
            raise InvalidInput(f"Not a SavedModel folder (no saved_model.pb): {saved_model_dir}")
        Signature.from_dict(metadata["signature"])  # fail before copying anything
        local = pafs.LocalFileSystem()
        model_dir = self._model_dir(model)
        self._fs.create_dir(model_dir, recursive=True)
        for attempt in range(_PUBLISH_ATTEMPTS):
            version = max(self._all_version_dirs(model), default=0) + 1
            full = dict(metadata)
            full.update(
                model=model,
                version=version,
                created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            )
            body = json.dumps(full, indent=2, sort_keys=True).encode()
            if self._is_local:
                staging = self._staging_path()
                self._fs.create_dir(staging)  # copy_files creates sub-folders only
                pafs.copy_files(str(src), staging, source_filesystem=local, destination_filesystem=self._fs)
                self._write_bytes(f"{staging}/{METADATA_FILE}", body)
                try:
                    self._fs.move(staging, f"{model_dir}/{version}")
                except OSError:  # lost the race for this number: try the next one
                    self._fs.delete_dir(staging)
                    continue
            else:
                if not self._claim(model, version):
                    time.sleep(random.uniform(0.01, 0.05) * (1 + attempt))
                    continue
                target = f"{model_dir}/{version}"
                pafs.copy_files(str(src), target, source_filesystem=local, destination_filesystem=self._fs)
                self._write_bytes(f"{target}/{METADATA_FILE}", body)  # last: the version now exists
            return ModelVersion(model=model, version=version, metadata=full)
        raise RegistryConflict(f"Could not allocate a version for '{model}' after {_PUBLISH_ATTEMPTS} attempts")

    # ---- labels --------------------------------------------------------------------------------

    def labels(self, model: str) -> dict[str, Label]:
        return self._read_labels(model).labels

    def label_history(self, model: str) -> list[dict[str, Any]]:
        return self._read_labels(model).history

    def set_label(self, model: str, label: str, version: int, *, weight: float = 1.0) -> Label:
        validate_label(label)
        _check_weight(weight)
        version = self._require_version(model, version)
        return self._update_labels(model, lambda doc: _apply_label(doc, label, version, float(weight)))

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
        version = self.latest(model) if version is None else self._require_version(model, version)

        def promote(doc: _LabelsDoc) -> Label:
            stable = _apply_label(doc, "stable", version, 1.0)
            canary = doc.labels.get("canary")
            if canary is not None and canary.version == version:
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
            changes = [e for e in doc.history if e["label"] == "stable"]
            if not changes or changes[-1]["previous"] is None:
                raise InvalidInput(f"Model '{model}' has no earlier stable version to roll back to")
            return _apply_label(doc, "stable", int(changes[-1]["previous"]), 1.0)

        return self._update_labels(model, rollback)

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

    def _model_dir(self, model: str) -> str:
        return f"{self._root}/{validate_model_name(model)}"

    def _all_version_dirs(self, model: str) -> list[int]:
        """Every number taken, committed or not (numbered folders and claims): numbers are never reused."""
        infos = self._list(self._model_dir(model))
        taken = [int(i.base_name) for i in infos if matches(VERSION_PATTERN, i.base_name)]
        if not self._is_local:
            taken += [version for version, _ in self._claims(model)]
        return taken

    def _claims(self, model: str) -> list[tuple[int, str]]:
        claims = []
        for info in self._list(f"{self._model_dir(model)}/{CLAIMS_DIR}"):
            number, _, token = info.base_name.partition(".")
            if matches(VERSION_PATTERN, number) and token:
                claims.append((int(number), token))
        return claims

    def _claim(self, model: str, version: int) -> bool:
        """Own ``version`` on an object store, or withdraw and return False (see the module docstring)."""
        return self._try_claim(f"{self._model_dir(model)}/{CLAIMS_DIR}", f"{version}.{uuid.uuid4().hex}",
                               rival=lambda info, now: info.base_name.startswith(f"{version}."))

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
            history=list(raw.get("history", [])),
        )

    def _write_labels(self, model: str, doc: _LabelsDoc) -> None:
        body = {"labels": {k: v.to_dict() for k, v in doc.labels.items()}, "history": doc.history[-200:]}
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
    doc.history.append({"at": new.updated_at, "label": label, "version": version, "weight": weight,
                        "previous": previous.version if previous else None})
    return new


def _drop_label(doc: _LabelsDoc, label: str, *, reason: str | None = None) -> None:
    previous = doc.labels.pop(label)
    event: dict[str, Any] = {"at": _now(), "label": label, "version": None, "weight": None,
                             "previous": previous.version}
    if reason is not None:
        event["reason"] = reason
    doc.history.append(event)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
