"""What request capture wrote (:mod:`maas.serving.capture`): its partitions listed from the storage
and their rows counted from the Parquet footers (``maas captures list|show``), and retention by day
(``maas captures clean --keep-days N``). No Ray, no TensorFlow."""

from __future__ import annotations

import datetime as dt
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from maas.errors import InvalidInput
from maas.serving.capture import CAPTURES_DIR
from maas.storage import resolve_uri

logger = logging.getLogger(__name__)
_PARTITION = re.compile(r"model=(?P<model>[^/]+)/version=(?P<version>[0-9]+)/day=(?P<day>[0-9]{4}-[0-9]{2}-[0-9]{2})")


@dataclass(frozen=True)
class CapturePartition:
    """One model's captures of one version on one day (UTC)."""

    model: str
    version: int
    day: str
    path: str  # on the registry's file system
    files: tuple[str, ...]
    rows: int


def partitions(registry_uri: str, model: str | None = None) -> list[CapturePartition]:
    """Every capture partition (of ``model``), in model, version and day order."""
    fs, root = resolve_uri(registry_uri)
    base = f"{root}/{CAPTURES_DIR}" + (f"/model={model}" if model else "")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found: dict[str, list[str]] = {}
    for info in infos:
        if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
            found.setdefault(info.path.rsplit("/", 1)[0], []).append(info.path)

    def count(files: list[str]) -> int:
        rows = 0
        for f in files:
            try:
                rows += pq.read_metadata(f, filesystem=fs).num_rows
            except (pa.ArrowException, ValueError) as exc:  # a torn or foreign file: named, not fatal
                logger.warning("captures: %s is not a readable Parquet file (%s)", f, type(exc).__name__)
        return rows

    keys = [(path, _PARTITION.search(path)) for path in found]
    matched = [(path, m) for path, m in keys if m is not None and _is_day(m["day"])]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(matched)))) as pool:
        rows = list(pool.map(lambda item: count(found[item[0]]), matched))
    result = [CapturePartition(m["model"], int(m["version"]), m["day"], path, tuple(sorted(found[path])), n)
              for (path, m), n in zip(matched, rows, strict=True)]
    return sorted(result, key=lambda p: (p.model, p.version, p.day))


def _is_day(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def clean(registry_uri: str, keep_days: int, *, model: str | None = None, today: dt.date | None = None,
          dry_run: bool = False) -> list[CapturePartition]:
    """Remove the partitions of days before the last ``keep_days`` (today, UTC, is one of them);
    return them."""
    if keep_days < 1:
        raise InvalidInput(f"--keep-days must be at least 1 (today). Received: {keep_days}")
    first_kept = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=keep_days - 1)
    old = [p for p in partitions(registry_uri, model) if dt.date.fromisoformat(p.day) < first_kept]
    if not dry_run:
        fs, _ = resolve_uri(registry_uri)
        for partition in old:
            fs.delete_dir(partition.path)
    return old
