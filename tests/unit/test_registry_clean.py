"""`maas registry clean`'s pure parts: how old a leftover is judged, --older-than, the printed report."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from pyarrow.fs import FileInfo, FileType

from maas.errors import ConfigError
from maas.formatting import format_age, format_bytes, parse_age
from maas.registry_clean import CleanReport, Leftover, is_leftover, newest_mtime


@pytest.mark.parametrize("text, seconds", [("3600", 3600.0), ("0", 0.0), ("90s", 90.0), ("30m", 1800.0),
                                           ("1h", 3600.0), ("1.5h", 5400.0), ("2d", 172800.0), (" 5m ", 300.0)])
def test_ages_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "1w", "1 hour", "nan", "inf", "1e3", "²"])
def test_other_ages_are_refused_naming_what_was_received(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--older-than takes an age such as 3600, 90s, 30m, 1h or 2d\. "
                                          f"Received: {re.escape(repr(text))}"):
        parse_age(text)


@pytest.mark.parametrize("seconds, text", [(3600, "1h"), (5400, "90m"), (86400, "1d"), (45, "45s"), (0, "0s"),
                                           (1.5, "1.5s")])
def test_ages_print_as_they_are_read(seconds: float, text: str) -> None:
    assert format_age(seconds) == text
    assert parse_age(text) == seconds


def test_sizes_print_in_binary_units() -> None:
    assert [format_bytes(n) for n in (0, 512, 2048, 33 * 2**20, 3 * 2**40)] == [
        "0 B", "512 B", "2.0 KiB", "33.0 MiB", "3072.0 GiB"]


def test_a_leftover_is_judged_by_its_newest_write_on_the_storages_clock() -> None:
    now = 1_000_000.0
    assert is_leftover(now - 3600, now, 3600)  # exactly as old as asked
    assert not is_leftover(now - 3599, now, 3600)  # a live writer's fresh file
    assert is_leftover(now, now, 0)  # 0 takes everything written until now
    assert not is_leftover(now + 86400, now, 0)  # dated in the future (a skewed clock): never taken for dead
    assert is_leftover(None, now, 3600)  # nothing dated in it, not even a claim: no writer


def test_a_folder_is_as_young_as_the_newest_thing_in_it() -> None:
    def at(seconds: float | None, kind: FileType = FileType.File) -> FileInfo:
        mtime = None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)
        return FileInfo("x", kind, mtime=mtime)

    assert newest_mtime([at(None, FileType.Directory), at(10.0), at(30.0), at(20.0)]) == 30.0
    assert newest_mtime([at(None, FileType.Directory)]) is None  # an object store's folder has no date
    assert newest_mtime([]) is None


def test_the_report_has_one_line_per_kind_then_the_total() -> None:
    leftovers = (
        Leftover("partial version", "b/reg/m/2", 3 * 2**20, 5.0),
        Leftover("staging folder", "/r/.staging/a", 2048, 7200.0),
        Leftover("partial version", "b/reg/n/7", 2**20, None),
        Leftover("lock claim", "b/reg/m/.locks/labels/x", 25, 600.0),
    )
    report = CleanReport(uri="s3://b/reg", older_than_s=3600, dry_run=False, leftovers=leftovers)
    assert report.totals() == {"staging folder": (1, 2048), "partial version": (2, 4 * 2**20),
                               "lock claim": (1, 25)}
    assert report.lines() == [
        "removed 1 staging folder (2.0 KiB)",
        "removed 2 partial versions (4.0 MiB)",
        "removed 1 lock claim (25 B)",
        "total: removed 4 leftovers (4.0 MiB) older than 1h in s3://b/reg",
    ]
    dry = CleanReport(uri="s3://b/reg", older_than_s=0, dry_run=True, leftovers=leftovers[:1])
    assert dry.lines() == ["would remove 1 partial version (3.0 MiB)",
                           "total: would remove 1 leftover (3.0 MiB) older than 0s in s3://b/reg"]
    assert CleanReport(uri="/r", older_than_s=1800, dry_run=False).lines() == [
        "Nothing to clean: no leftovers older than 30m in /r"]
