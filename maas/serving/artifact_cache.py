"""This machine's copies of registry versions, for loading them: TensorFlow loads a SavedModel from a
local folder, so a version on an object store is downloaded once per machine and kept, under
``<maas home>/cache/<hash of the registry URI>/<model>/<version>``. A version on a local registry is
loaded where it is. The model host and batch inference load versions through here.

A download is written to a ``.<version>.<random>`` folder beside its place and renamed into it when
whole, so a loader never sees half a version; a downloader that dies leaves only that temporary folder,
which ``maas registry clean`` removes (:mod:`maas.registry_clean`).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from maas.registry import METADATA_FILE, Registry
from maas.settings import maas_home


class ArtifactCache:
    """The downloads of one registry's versions on this machine."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @property
    def folder(self) -> Path:
        """This machine's download cache of this registry's versions."""
        return maas_home() / "cache" / hashlib.sha256(self.registry.uri.encode()).hexdigest()[:16]

    def local_path(self, model: str, version: int) -> str:
        """A local directory holding the version's SavedModel (downloaded once if the registry is remote)."""
        fs = self.registry.filesystem
        src = self.registry.version_path(model, version)
        if isinstance(fs, pafs.LocalFileSystem):
            return src
        dst = self.folder / model / str(int(version))
        if not (dst / METADATA_FILE).exists():
            tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                pafs.copy_files(src, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
                tmp.rename(dst)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # a failed download leaves nothing behind
                if not (dst / METADATA_FILE).exists():  # else another process finished the same download first
                    raise
        return str(dst)
