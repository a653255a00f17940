"""Publishing survives a crash: a publisher (or a downloader) SIGKILLed halfway through writing a version
leaves nothing a reader sees, its number is never reused for other content, and `maas registry clean`
removes what it left, never a published version. Real processes and real storage: local disk, and S3
(a real moto server on 127.0.0.1). No Ray, no TensorFlow.

Tests that take ``root`` run twice: on local disk and on S3."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyarrow.fs import FileSelector, FileSystem, FileType, LocalFileSystem

import maas.storage
from maas.registry import Registry
from maas.registry_clean import clean
from maas.serving.artifact_cache import ArtifactCache
from maas.signature import Signature, TensorSpec
from maas.storage import join_uri, resolve_uri

MAAS = str(Path(sys.executable).with_name("maas"))
SIG = Signature(inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
                outputs=(TensorSpec("probabilities", "float32", (-1, 10)),))
# The publisher: the library's own publish, in a process of its own that the test kills.
PUBLISH = ("import json, sys; from maas.registry import Registry; "
           "print(Registry(sys.argv[1]).publish(sys.argv[2], sys.argv[3], json.loads(sys.argv[4])).version)")
DOWNLOAD = ("import sys; from maas.registry import Registry; from maas.serving.artifact_cache import ArtifactCache; "
            "print(ArtifactCache(Registry(sys.argv[1])).local_path('m', 1))")
# Big enough that the copy lasts long enough to be killed halfway: about 0.2 s on a local disk (many
# small files), a few seconds to the S3 test server (each object a request).
BIG = {"local": (2000, 8 << 10, 8 << 20), "s3": (80, 64 << 10, 4 << 20)}  # files, bytes each, variables bytes


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path, maas_home: Path) -> str:
    """A fresh, empty registry root URI on each backend (MAAS_HOME exported for the processes)."""
    if request.param == "local":
        return str(tmp_path / "registry")
    return join_uri(request.getfixturevalue("s3_server").new_bucket(), "registry")


def _meta(run: str) -> dict[str, object]:
    return {"signature": SIG.to_dict(), "metrics": {"accuracy": 0.9}, "run": run}


def _fake_saved_model(path: Path, run: str, files: int = 3, file_bytes: int = 1024,
                      variables_bytes: int = 4096) -> Path:
    """A folder shaped like a SavedModel (publish checks only saved_model.pb), its bytes unique to ``run``."""
    (path / "variables").mkdir(parents=True)
    (path / "assets").mkdir()
    (path / "saved_model.pb").write_bytes(f"graph of {run}".encode())
    (path / "variables" / "variables.index").write_bytes(f"index of {run}".encode())
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(variables_bytes))
    for i in range(files):
        (path / "assets" / f"shard-{i:05d}").write_bytes(os.urandom(file_bytes))
    return path


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def _published_files(src: Path) -> list[str]:
    """The files a version of ``src`` holds: its own and metadata.json."""
    return sorted([*_files(src), "metadata.json"])


def _stored_files(fs: FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(FileSelector(folder, recursive=True, allow_not_found=True))
    return sorted(i.path[len(folder) + 1:] for i in infos if i.type == FileType.File)


@dataclass
class Reader:
    """A thread that lists and reads every version while the test goes on, as serving does: it records
    which content (``run``) each number showed, and any version it saw incomplete or unreadable."""

    root: str
    expected: dict[str, list[str]]  # run -> the files its version must hold
    seen: dict[int, set[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Reader:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _read(self) -> None:
        reg = Registry(self.root)
        fs, base = resolve_uri(self.root)
        while not self._stop.is_set():
            try:
                for v in reg.versions("m"):
                    run = reg.get("m", v).metadata.to_json()["run"]
                    self.seen.setdefault(v, set()).add(run)
                    files = _stored_files(fs, f"{base}/m/{v}")
                    if files != self.expected.get(run):
                        self.problems.append(f"version {v} ({run}) listed with {len(files)} files")
                    self.reads += 1
            except Exception as exc:  # noqa: BLE001 (a reader must never fail while a publisher dies: a problem)
                self.problems.append(repr(exc))
            time.sleep(0.005)


@dataclass(frozen=True)
class Crash:
    """What a killed publisher left: the partial folder on the storage, and the files in it."""

    folder: str
    files: list[str]
    bytes: int
    published: list[int]  # versions published meanwhile by attempts that finished before they were killed


def _partial_write(fs: FileSystem, base: str, local: bool, published: set[int]) -> str | None:
    """The folder a publisher is writing now, once it holds a file: a staging folder on a local disk,
    an unpublished numbered folder on an object store."""
    if local:
        staging = Path(base) / ".staging"
        for folder in staging.iterdir() if staging.is_dir() else ():
            try:
                if folder.is_dir() and any(os.scandir(folder / "assets")):
                    return str(folder)
            except FileNotFoundError:  # not copied there yet, or renamed into place meanwhile
                continue
        return None
    for info in fs.get_file_info(FileSelector(f"{base}/m", recursive=True, allow_not_found=True)):
        number = info.path[len(base) + 3:].split("/", 1)[0]
        if info.type == FileType.File and "/assets/" in info.path and number.isdigit() and int(number) not in published:
            return f"{base}/m/{number}"
    return None


@dataclass
class Halfway:
    """A publisher caught halfway: its process, still running, and the folder it is writing."""

    proc: subprocess.Popen[str]
    folder: str
    published: list[int]  # versions published meanwhile by attempts that finished before they were caught


def _publisher_halfway(root: str, src: Path, run: str, published: set[int]) -> Halfway:
    """Start a publisher of ``src`` and return once part of its copy is visible on the storage. An
    attempt that finishes before it is caught (a fast disk) is an ordinary version: try again."""
    fs, base = resolve_uri(root)
    local = isinstance(fs, LocalFileSystem)
    done: list[int] = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", PUBLISH, root, "m", str(src), json.dumps(_meta(run))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            folder = _partial_write(fs, base, local, published | set(done))
            if folder is not None:
                return Halfway(proc, folder, done)
            time.sleep(0.001 if local else 0.02)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        done.append(int(out.strip()))
    raise AssertionError(f"three publishers of {src} finished before they could be caught halfway")


def _kill_publisher_halfway(root: str, src: Path, run: str, published: set[int]) -> Crash:
    """SIGKILL a publisher of ``src`` halfway through its copy; what it left."""
    fs, _ = resolve_uri(root)
    halfway = _publisher_halfway(root, src, run, published)
    halfway.proc.send_signal(signal.SIGKILL)
    halfway.proc.wait(timeout=10)
    assert halfway.proc.returncode == -signal.SIGKILL
    infos = fs.get_file_info(FileSelector(halfway.folder, recursive=True))
    files = sorted(i.path[len(halfway.folder) + 1:] for i in infos if i.type == FileType.File)
    return Crash(halfway.folder, files, sum(i.size for i in infos if i.type == FileType.File), halfway.published)


def _clean(root: str, *args: str) -> list[str]:
    proc = subprocess.run([MAAS, "registry", "clean", "--registry", root, *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_publisher_killed_mid_write_leaves_nothing_a_reader_sees_and_clean_removes_it(
    root: str, tmp_path: Path
) -> None:
    fs, base = resolve_uri(root)
    local = isinstance(fs, LocalFileSystem)
    files, file_bytes, variables_bytes = BIG["local" if local else "s3"]
    before = _fake_saved_model(tmp_path / "before", "before")
    big = _fake_saved_model(tmp_path / "big", "big", files, file_bytes, variables_bytes)
    after = _fake_saved_model(tmp_path / "after", "after")
    later = _fake_saved_model(tmp_path / "later", "later")
    expected = {run: _published_files(path) for run, path in
                [("before", before), ("big", big), ("after", after), ("later", later)]}
    reg = Registry(root)
    assert reg.publish("m", str(before), _meta("before")).version == 1
    reg.promote("m", 1)

    with Reader(root, expected) as reader:
        crash = _kill_publisher_halfway(root, big, "big", {1})
        published = [1, *crash.published]
        # What the killed publisher left: part of its files, never metadata.json, and not where readers look.
        assert 0 < len(crash.files) <= len(expected["big"]) - 1 and "metadata.json" not in crash.files
        if local:
            assert crash.folder.startswith(f"{base}/.staging/")
        else:
            partial = int(crash.folder.rsplit("/", 1)[1])
            assert partial == max(published) + 1
            claims = [c.base_name for c in fs.get_file_info(FileSelector(f"{base}/m/.claims"))]
            assert [c for c in claims if c.startswith(f"{partial}.")], claims  # its number is taken
        assert reg.versions("m") == published

        # A new publish of other content gets a number no other content ever showed.
        v_after = reg.publish("m", str(after), _meta("after")).version
        assert v_after not in reader.seen or reader.seen[v_after] == {"after"}
        if not local:
            assert v_after > partial
        published.append(v_after)

        print(f"\n{'local' if local else 's3'}: killed publisher left {crash.folder} with {len(crash.files)} of "
              f"{len(expected['big']) - 1} files, {crash.bytes} bytes")
        dry = _clean(root, "--older-than", "0", "--dry-run")
        assert fs.get_file_info(crash.folder).type == FileType.Directory  # a dry run removes nothing
        lines = _clean(root, "--older-than", "0")
        assert lines == [line.replace("would remove", "removed") for line in dry]
        kind = "staging folder" if local else "partial version"
        assert re.fullmatch(rf"removed 1 {kind} \(.+\)", lines[0]), lines
        assert lines[-1].startswith("total: removed 1 leftover (") and lines[-1].endswith(f"older than 0s in {root}")
        assert len(lines) == 2, lines
        assert fs.get_file_info(crash.folder).type == FileType.NotFound

        # Numbers stay taken after clean: on S3 the dead publisher's claim is kept.
        v_later = reg.publish("m", str(later), _meta("later")).version
        assert v_later == v_after + 1
        published.append(v_later)
        assert _clean(root, "--older-than", "0") == [f"Nothing to clean: no leftovers older than 0s in {root}"]
        time.sleep(0.05)  # one more round of reads on the final state

    assert not reader.problems, reader.problems[:5]
    assert reader.reads > 0
    assert reg.versions("m") == published
    for v in published:  # every published version intact and readable, each one content only
        run = reg.get("m", v).metadata.to_json()["run"]
        assert _stored_files(fs, f"{base}/m/{v}") == expected[run]
        assert reader.seen.get(v, {run}) == {run}
    assert set(reader.seen) <= set(published)  # the killed publisher's version was never seen
    assert reg.labels("m")["stable"].version == 1
    assert fs.get_file_info(f"{base}/m/labels.json").type == FileType.File


def test_a_publisher_stalled_while_clean_takes_its_folder_fails_and_never_publishes_half(
    root: str, tmp_path: Path
) -> None:
    """A publisher that stalls (SIGSTOP: swapped out, a slow disk) for longer than --older-than looks
    dead, and clean takes its folder. When it wakes up it fails instead of publishing what is left: on a
    local disk the staging folder was renamed away before it was removed, so its next file cannot be
    written; on S3 it finds files missing when it checks, before metadata.json."""
    fs, base = resolve_uri(root)
    local = isinstance(fs, LocalFileSystem)
    files, file_bytes, variables_bytes = BIG["local" if local else "s3"]
    big = _fake_saved_model(tmp_path / "big", "big", files, file_bytes, variables_bytes)
    reg = Registry(root)
    with Reader(root, {"big": _published_files(big)}) as reader:
        halfway = _publisher_halfway(root, big, "big", set())
        halfway.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05 if local else 0.5)  # its writes in flight land, older than the clean's clock probe
        report = clean(reg, older_than_s=0)
        halfway.proc.send_signal(signal.SIGCONT)
        _, err = halfway.proc.communicate(timeout=60)
        kind = "staging folder" if local else "partial version"
        assert [(item.kind, item.path) for item in report.leftovers] == [(kind, halfway.folder)]
        assert halfway.proc.returncode == 1, err
        assert ("FileNotFoundError" if local else "RegistryConflict: Version 1 of 'm' lost") in err, err
        print("\nthe stalled publisher, woken up: " + err.strip().splitlines()[-1])
        assert reg.versions("m") == halfway.published  # nothing from the publisher that was cut short
        if not local:  # what it wrote after waking up is a partial version again, for the next clean
            assert [item.kind for item in clean(reg, older_than_s=0).leftovers] == ["partial version"]
    assert not reader.problems, reader.problems[:5]
    assert clean(reg, older_than_s=0).leftovers == ()
    if local:
        assert list((Path(base) / ".staging").iterdir()) == []


def test_a_downloader_killed_mid_copy_leaves_only_a_temp_folder_that_clean_removes(
    s3_server, tmp_path: Path, maas_home: Path
) -> None:
    root = join_uri(s3_server.new_bucket(), "registry")
    reg = Registry(root)
    src = _fake_saved_model(tmp_path / "model", "v1", files=40, file_bytes=64 << 10, variables_bytes=1 << 20)
    reg.publish("m", str(src), _meta("v1"))
    cache = ArtifactCache(reg).folder / "m"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", DOWNLOAD, root], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        temp = None
        while temp is None and proc.poll() is None and time.monotonic() < deadline:
            temp = next((p for p in cache.glob(".1.*") if (p / "assets").is_dir() and any((p / "assets").iterdir())),
                        None)
            time.sleep(0.005)
        if temp is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            break
        assert proc.communicate(timeout=30)[0].strip() == str(cache / "1")
        shutil.rmtree(cache / "1")  # it finished before it was killed: try again
    else:
        raise AssertionError("three downloads finished before they could be killed")
    left = _files(temp)
    assert 0 < len(left) < len(_files(src)) + 1 and not (cache / "1").exists()
    print(f"\nkilled downloader left {temp.name} with {len(left)} of {len(_files(src)) + 1} files")

    local = Path(ArtifactCache(reg).local_path("m", 1))  # the next load downloads it whole, beside the leftover
    assert _files(local) == _published_files(src)
    lines = _clean(root, "--older-than", "0")
    assert re.fullmatch(r"removed 1 partial download \(.+\)", lines[0]) and len(lines) == 2, lines
    assert not temp.exists() and sorted(p.name for p in cache.iterdir()) == ["1"]
    assert _files(local) == _published_files(src)
    assert _clean(root, "--older-than", "0") == [f"Nothing to clean: no leftovers older than 0s in {root}"]


def _write(fs: FileSystem, path: str, data: bytes) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def test_clean_takes_only_old_leftovers_and_keeps_every_number_taken(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, base = resolve_uri(root)
    src = _fake_saved_model(tmp_path / "model", "v")
    reg = Registry(root)
    reg.publish("m", str(src), _meta("v"))
    reg.promote("m", 1)
    # A dead writer's leftovers: a numbered folder without metadata.json (the highest number, and no
    # claim for it), a label temp file, a label-lock claim.
    _write(fs, f"{base}/m/2/saved_model.pb", b"partial")
    _write(fs, f"{base}/m/2/variables/variables.index", b"partial")
    _write(fs, f"{base}/.staging/0123abcd.json", b"{}")
    _write(fs, f"{base}/m/.locks/labels/dead-holder", b"held")

    assert clean(reg).leftovers == ()  # all of it is younger than the default hour
    dry = clean(reg, older_than_s=0, dry_run=True)
    assert sorted(item.kind for item in dry.leftovers) == ["partial version", "staging file"]  # the lock: < 2 min
    assert fs.get_file_info(f"{base}/m/2/saved_model.pb").type == FileType.File

    monkeypatch.setattr(maas.storage, "LOCK_STALE_S", 1.0)
    time.sleep(1.1)  # S3 dates objects to the second
    report = clean(reg, older_than_s=0)
    assert sorted((item.kind, item.bytes) for item in report.leftovers) == [
        ("lock claim", 4), ("partial version", 14), ("staging file", 2)]
    assert fs.get_file_info(f"{base}/m/2").type == FileType.NotFound
    assert _stored_files(fs, f"{base}/m/.locks") == []
    assert reg.versions("m") == [1] and reg.labels("m")["stable"].version == 1
    assert _stored_files(fs, f"{base}/m/1") == _published_files(src)
    assert reg.publish("m", str(src), _meta("v")).version == 3  # 2 stays taken though its folder is gone
    assert clean(reg, older_than_s=0).leftovers == ()


def test_clean_refuses_a_bad_age_or_a_missing_registry_in_one_line(tmp_path: Path) -> None:
    bad_age = "error: --older-than takes an age such as 3600, 90s, 30m, 1h or 2d. Received: 'soon'"
    missing = (["--registry", str(tmp_path / "nope")], "does not exist")
    for args, message in [(["--older-than", "soon"], bad_age), missing]:
        proc = subprocess.run([MAAS, "registry", "clean", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for verb in (["registry"], ["registry", "clean"]):
        proc = subprocess.run([MAAS, *verb, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: maas registry" in proc.stdout
