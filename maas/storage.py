"""One way to turn a storage URI (a local path, ``file://``, ``s3://``, ``gs://``...) into a
``pyarrow.fs`` file system and a path on it. The registry, Ray Train's ``storage_path`` and the
templates' data all go through :func:`resolve_uri`, so they reach the same storage the same way.

S3-compatible stores other than AWS (MinIO, Ceph, a local test server) are reached the way every
AWS SDK does it: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (for example
``http://minio.internal:9000``), with credentials from the usual chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, or the instance's role). ``pyarrow`` itself does not read
those endpoint variables, so they are applied here. A URI's own ``?endpoint_override=…`` query wins.

It also holds the few primitives that make concurrent writers safe on any of those storages, local
disks and object stores alike (the registry, the API keys and the templates' data are built on them):
one :func:`write_atomic`, one :func:`utc_now` for the dates written, a listing that rides out a local
race (:func:`list_dir`), claims written and judged the same way everywhere (:func:`put_claim`,
:func:`try_claim`) and the lock made of them (:func:`locked`). An object store has no rename and no
exclusive create, but S3 and GCS list what was written before: a claimant that lists no rival beside
its own claim owns what it claimed, and two claimants never both do.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from maas.errors import RegistryConflict

if TYPE_CHECKING:
    import pyarrow as pa

S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
LIST_ATTEMPTS = 5
LOCK_TIMEOUT_S = 30.0
LOCK_STALE_S = 120.0  # a label change takes milliseconds; older claims are a dead holder's


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for ``uri``; a plain path is taken as a local, absolute one."""
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    parts = urlsplit(uri)
    endpoint = s3_endpoint()
    if parts.scheme == "s3" and endpoint and "endpoint_override" not in parse_qs(parts.query):
        return _s3_at(endpoint), f"{parts.netloc}{parts.path}".rstrip("/") or parts.netloc
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/") or "/"


def join_uri(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended to its path (a query string, if any, stays at the end)."""
    if "://" not in base:
        return str(Path(base).expanduser().resolve().joinpath(*parts))
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


def uri_exists(uri: str) -> bool:
    fs, path = resolve_uri(uri)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def utc_now() -> str:
    """Now, in UTC, to the second, as ISO 8601: the date every record and claim is written with."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` as it goes, for files whose atomicity comes from elsewhere (written
    into a folder renamed into place later, an object PUT, a claim nobody reads the content of)."""
    with fs.open_output_stream(path) as f:
        f.write(data)


def create_dirs_below(fs: pafs.FileSystem, root: str, folder: str) -> None:
    """Create ``folder`` and the folders between it and ``root``, never ``root`` itself: on a local
    disk one level at a time, so a root that vanished (an unmounted volume) raises FileNotFoundError
    instead of being created again on the disk beneath (where nobody would read what lands there)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(folder, recursive=True)
        return
    relative = PurePosixPath(folder).relative_to(root)  # ValueError: a folder outside the root
    level = PurePosixPath(root)
    for part in relative.parts:
        level = level / part
        fs.create_dir(str(level), recursive=False)


def write_atomic(fs: pafs.FileSystem, path: str, content: bytes | Callable[[str], None], *,
                 temp_path: str | None = None, create_parent: bool = True, root: str | None = None) -> None:
    """Write ``content`` so that readers see the old file, or the whole new one: on a local disk it is
    written to ``temp_path`` (by default beside ``path``, ``<path>.<random>.tmp``) and renamed onto
    ``path``; an object PUT is atomic by itself, so there it is written to ``path`` directly.

    ``content`` is the bytes, or a function that writes the file at the path it is given on ``fs``
    (a Parquet writer). ``create_parent`` creates ``path``'s folder first; with ``root``, only the
    folders below that existing root (see :func:`create_dirs_below`)."""
    if create_parent:
        parent = path.rsplit("/", 1)[0]
        if root is None:
            fs.create_dir(parent, recursive=True)
        else:
            create_dirs_below(fs, root, parent)
    local = isinstance(fs, pafs.LocalFileSystem)
    target = (temp_path or f"{path}.{uuid.uuid4().hex}.tmp") if local else path
    if isinstance(content, bytes):
        write_file(fs, target, content)
    else:
        content(target)
    if target != path:
        fs.move(target, path)


def write_parquet_atomic(table: pa.Table, uri: str, *, root_uri: str | None = None) -> None:
    """Write ``table`` so that readers see the whole file or none (see :func:`write_atomic`); with
    ``root_uri``, a folder that must exist already, above ``uri``'s."""
    import pyarrow.parquet as pq

    fs, path = resolve_uri(uri)
    root = None if root_uri is None else resolve_uri(root_uri)[1]
    write_atomic(fs, path, lambda target: pq.write_table(table, target, filesystem=fs), root=root)


def list_dir(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The entries of a folder; none if it does not exist.

    pyarrow's local listing can fail with ENOENT on a folder that exists while another process
    creates it and moves entries in (a first publish); such a listing is retried, briefly.
    """
    for attempt in range(LIST_ATTEMPTS):
        try:
            infos: list[pafs.FileInfo] = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            return infos
        except FileNotFoundError:
            if attempt + 1 == LIST_ATTEMPTS:
                raise
            time.sleep(0.002 * 2**attempt)
    raise AssertionError("unreachable")


def files_size(infos: Iterable[pafs.FileInfo]) -> int:
    """The bytes of the files among ``infos`` (folders count none)."""
    return sum(info.size or 0 for info in infos if info.type == pafs.FileType.File)


def put_claim(fs: pafs.FileSystem, folder: str, name: str) -> None:
    """Write the claim ``folder/name`` (dated by its content and by the storage's clock) and keep it,
    whatever else is there."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(folder, recursive=True)
    write_file(fs, f"{folder}/{name}", utc_now().encode())


def try_claim(fs: pafs.FileSystem, folder: str, name: str, *,
              rival: Callable[[pafs.FileInfo, float | None], bool]) -> bool:
    """Write the claim ``folder/name``; keep it if no rival claim is listed beside it, else
    withdraw it. With consistent listing (local disks, S3, GCS) two claimants never both keep theirs.

    ``rival(info, now)`` judges each other claim; ``now`` is the storage's own clock (the
    modification time the storage gave the claim just written), or ``None`` if it keeps none."""
    put_claim(fs, folder, name)
    path = f"{folder}/{name}"
    listed = list_dir(fs, folder)
    mine = next((i for i in listed if i.base_name == name), None)
    now = mine.mtime.timestamp() if mine is not None and mine.mtime is not None else None
    if any(rival(info, now) for info in listed if info.base_name != name):
        fs.delete_file(path)
        return False
    return True


@contextmanager
def locked(fs: pafs.FileSystem, folder: str, *, what: str) -> Iterator[None]:
    """Hold the lock ``folder`` (``what`` names it in the error) against every other process, on any
    storage: a claim ``folder/<random>`` that no other live claim stands beside.

    A claim is judged by the storage's clock, never this machine's: one written more than
    ``LOCK_STALE_S`` before this claimant's own (a holder that died) or dated more than that after
    it (a writer whose clock, or forged time, is off) is ignored. A skewed local clock therefore
    neither expires live locks nor keeps dead ones alive.
    """
    name = uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_TIMEOUT_S

    def live(info: pafs.FileInfo, now: float | None) -> bool:
        if info.mtime is None or now is None:
            return True
        return bool(abs(now - info.mtime.timestamp()) < LOCK_STALE_S)

    attempt = 0
    while not try_claim(fs, folder, name, rival=live):
        if time.monotonic() > deadline:
            raise RegistryConflict(f"{what} stayed locked by another writer for {LOCK_TIMEOUT_S:.0f}s")
        attempt += 1
        time.sleep(random.uniform(0.005, 0.02) * min(attempt, 10))
    try:
        yield
    finally:
        fs.delete_file(f"{folder}/{name}")


def s3_endpoint() -> str | None:
    for name in S3_ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _s3_at(endpoint: str) -> pafs.S3FileSystem:
    url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme, region=region)
