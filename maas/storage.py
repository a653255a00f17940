"""One way to turn a storage URI (a local path, ``file://``, ``s3://``, ``gs://``...) into a
``pyarrow.fs`` file system and a path on it."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for ``uri``; a plain path is taken as a local, absolute one."""
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/") or "/"
