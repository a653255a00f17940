"""One way to turn a storage URI (a local path, ``file://``, ``s3://``, ``gs://``...) into a
``pyarrow.fs`` file system and a path on it. The registry, Ray Train's ``storage_path`` and the
templates' data all go through :func:`resolve_uri`, so they reach the same storage the same way.

S3-compatible stores other than AWS (MinIO, Ceph, a local test server) are reached the way every
AWS SDK does it: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (for example
``http://minio.internal:9000``), with credentials from the usual chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, or the instance's role). ``pyarrow`` itself does not read
those endpoint variables, so they are applied here. A URI's own ``?endpoint_override=…`` query wins.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

if TYPE_CHECKING:
    import pyarrow as pa

S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


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
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file, or the whole new one: a local file is written
    beside and renamed; an object PUT is atomic by itself."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    target = f"{path}.{uuid.uuid4().hex}.tmp" if isinstance(fs, pafs.LocalFileSystem) else path
    with fs.open_output_stream(target) as f:
        f.write(data)
    if target != path:
        fs.move(target, path)


def write_parquet_atomic(table: "pa.Table", uri: str) -> None:
    """Write ``table`` so that readers see the whole file or none: a local file is written beside
    and renamed; an object PUT is atomic by itself."""
    import pyarrow.parquet as pq

    fs, path = resolve_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def s3_endpoint() -> str | None:
    for name in S3_ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _s3_at(endpoint: str) -> pafs.S3FileSystem:
    url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme, region=region)
