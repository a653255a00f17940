"""``maas registry clean``: removing what dead writers left on a registry's storage, and on this
machine's download cache of it. The module docstring of :mod:`maas.registry` says what a writer that
dies can leave, and why readers never look at it; :func:`clean` finds those leftovers and removes
them, judged by age on the storage's own clock, and never a published version or ``labels.json``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import pyarrow.fs as pafs

from maas import storage
from maas.errors import InvalidInput, StorageUnavailable
from maas.formatting import format_age, format_bytes
from maas.names import MODEL_PATTERN, VERSION_PATTERN, matches
from maas.registry import LOCKS_DIR, METADATA_FILE, STAGING_DIR, Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.storage import files_size, list_dir, write_file

_REMOVING = ".removing"  # suffix of a dead writer's folder that clean has taken away from it

LeftoverKind = Literal["staging folder", "staging file", "partial version", "lock claim", "partial download"]
LEFTOVER_KINDS: tuple[LeftoverKind, ...] = get_args(LeftoverKind)


@dataclass(frozen=True)
class Leftover:
    """One thing a dead writer left behind, as :func:`clean` found it."""

    kind: LeftoverKind
    path: str  # on the registry's storage; a partial download's on this machine's disk
    bytes: int  # of the files it held (a claim's or temp file's own size)
    age_s: float | None  # since its newest write, by its storage's clock; None: nothing in it bore a date


@dataclass(frozen=True)
class CleanReport:
    """What :func:`clean` removed (or, with ``dry_run``, would remove), by kind."""

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


def clean(registry: Registry, *, older_than_s: float = 3600.0, dry_run: bool = False) -> CleanReport:
    """Remove what dead writers left: staging folders and temp files, partial versions, stale lock
    claims, and this machine's partial downloads of this registry's versions (see :mod:`maas.registry`).

    Only leftovers whose newest write is at least ``older_than_s`` old count, judged by the storage's
    own clock (the date it gives a probe written now), never by this machine's: a live publisher keeps
    writing, so its work stays younger than the threshold unless it stalls for longer. One that does
    fails rather than publish a version with files missing: on a local disk its staging folder is
    renamed away before it is removed, so its next file cannot be written; on an object store, which
    cannot rename, it finds files missing when it checks before writing ``metadata.json``. (There a
    clean that deletes in the milliseconds between that check and that write can still cost it files:
    keep the threshold well above any stall, as the default hour is, while publishers run.) Lock
    claims count only once ``LOCK_STALE_S`` old as well (every locker ignores them by then), so that a
    live label change is never unlocked.

    A partial version's files go, its number stays taken (its claim is kept, or one is written), so a
    number is never reused for other content. A folder holding ``metadata.json`` (a published version)
    and ``labels.json`` are never removed. ``dry_run`` removes nothing (the clock probe aside).
    """
    if not (math.isfinite(older_than_s) and older_than_s >= 0):
        raise InvalidInput(f"older_than_s must be a finite number of seconds >= 0. Received: {older_than_s}")
    registry.check_reachable()  # a mistyped URI is an error, not an empty registry with nothing to clean
    now = _storage_now(registry)
    found: list[Leftover] = _clean_staging(registry, now, older_than_s, dry_run)
    for model in _model_folders(registry):
        found += _clean_partial_versions(registry, model, now, older_than_s, dry_run)
        found += _clean_lock_claims(registry, model, now, max(older_than_s, storage.LOCK_STALE_S), dry_run)
    found += _clean_downloads(ArtifactCache(registry), older_than_s, dry_run)
    return CleanReport(uri=registry.uri, older_than_s=older_than_s, dry_run=dry_run, leftovers=tuple(found))


def _storage_now(registry: Registry) -> float:
    """The storage's clock: the modification time it gives a probe written now (in ``.staging/``,
    removed at once). A skewed clock on this machine then neither spares a dead writer's leftovers
    nor takes a live one's."""
    fs = registry.filesystem
    folder = f"{registry.root_path}/{STAGING_DIR}"
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(folder, recursive=True)
    probe = f"{folder}/{uuid.uuid4().hex}.clock"
    write_file(fs, probe, b"")
    try:
        info = fs.get_file_info(probe)
    finally:
        fs.delete_file(probe)
    if info.mtime is None:
        raise StorageUnavailable(f"Registry storage {registry.uri} keeps no modification times: cannot judge ages")
    return float(info.mtime.timestamp())


def _model_folders(registry: Registry) -> list[str]:
    """Every model folder, published versions or not (a model whose first publish died has none)."""
    return sorted(i.base_name for i in list_dir(registry.filesystem, registry.root_path)
                  if i.type == pafs.FileType.Directory and matches(MODEL_PATTERN, i.base_name))


def _clean_staging(registry: Registry, now: float, older_than_s: float, dry_run: bool) -> list[Leftover]:
    """``.staging/<uuid>`` folders of publishers that died, ``.staging/<uuid>.json`` label temp files
    of label writers that died (and clock probes of cleaners that did)."""
    fs = registry.filesystem
    found = []
    for info in list_dir(fs, f"{registry.root_path}/{STAGING_DIR}"):
        if info.type == pafs.FileType.Directory:
            contents = _contents(fs, info.path)
            if contents is None:  # renamed into place, or away, while we looked: not a leftover
                continue
            newest = newest_mtime([info, *contents])
            if not is_leftover(newest, now, older_than_s):
                continue
            if not dry_run and not _take_away_and_remove(fs, info.path):
                continue
            found.append(Leftover("staging folder", info.path, files_size(contents), _age(newest, now)))
        elif info.type == pafs.FileType.File:
            newest = newest_mtime([info])
            if not is_leftover(newest, now, older_than_s):
                continue
            if not dry_run and not _delete_file(fs, info.path):
                continue
            found.append(Leftover("staging file", info.path, info.size or 0, _age(newest, now)))
    return found


def _clean_partial_versions(registry: Registry, model: str, now: float, older_than_s: float,
                            dry_run: bool) -> list[Leftover]:
    """Numbered folders without ``metadata.json``: what an object-store publisher that died left (on
    a local disk only a copy by hand makes them). Their age counts the number's claims too, written
    before the first file: a folder of only directory markers is dated by its claim."""
    fs = registry.filesystem
    numbered = [i for i in list_dir(fs, registry.model_path(model))
                if i.type == pafs.FileType.Directory and matches(VERSION_PATTERN, i.base_name)]
    if not numbered:
        return []
    markers = fs.get_file_info([f"{i.path}/{METADATA_FILE}" for i in numbered])
    claims: dict[int, list[pafs.FileInfo]] = {}
    for number, claim in registry.claims(model):
        claims.setdefault(number, []).append(claim)
    found = []
    for folder, marker in zip(numbered, markers, strict=True):
        if marker.type != pafs.FileType.NotFound:  # published (or unreadable): never touched
            continue
        version = int(folder.base_name)
        contents = _contents(fs, folder.path)
        if contents is None:
            continue
        newest = newest_mtime([folder, *contents, *claims.get(version, [])])
        if not is_leftover(newest, now, older_than_s):
            continue
        if not dry_run:
            if not claims.get(version):  # keep the number taken once its folder is gone
                registry.write_claim(model, f"{version}.abandoned-{uuid.uuid4().hex[:8]}")
            if fs.get_file_info(f"{folder.path}/{METADATA_FILE}").type != pafs.FileType.NotFound:
                continue  # its publisher was alive after all, and has just finished it
            fs.delete_dir(folder.path)
        found.append(Leftover("partial version", folder.path, files_size(contents), _age(newest, now)))
    return found


def _clean_lock_claims(registry: Registry, model: str, now: float, older_than_s: float,
                       dry_run: bool) -> list[Leftover]:
    """Lock claims (``.locks/<what>/<uuid>``) of holders that died; every locker ignores them by then."""
    fs = registry.filesystem
    found = []
    for lock in list_dir(fs, f"{registry.model_path(model)}/{LOCKS_DIR}"):
        if lock.type != pafs.FileType.Directory:
            continue
        for claim in list_dir(fs, lock.path):
            newest = newest_mtime([claim])
            if claim.type != pafs.FileType.File or not is_leftover(newest, now, older_than_s):
                continue
            if not dry_run and not _delete_file(fs, claim.path):
                continue
            found.append(Leftover("lock claim", claim.path, claim.size or 0, _age(newest, now)))
    return found


def _clean_downloads(cache: ArtifactCache, older_than_s: float, dry_run: bool) -> list[Leftover]:
    """This machine's ``.<version>.<uuid>`` temp folders of downloads of this registry's versions
    that died (see :meth:`ArtifactCache.local_path`), judged by this machine's clock: the cache is on
    its disk."""
    local = pafs.LocalFileSystem()
    folder = str(cache.folder)
    now = time.time()
    found = []
    for model in local.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
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
            found.append(Leftover("partial download", entry.path, files_size(contents), _age(newest, now)))
    return found


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _contents(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo] | None:
    """Everything under ``folder``; None if it vanished while being listed (renamed, or removed)."""
    try:
        infos: list[pafs.FileInfo] = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
        return infos
    except FileNotFoundError:
        return None


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


def _delete_file(fs: pafs.FileSystem, path: str) -> bool:
    """Delete ``path``; False if it was gone already (released by its holder, or taken by another cleaner)."""
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        return False
    return True
