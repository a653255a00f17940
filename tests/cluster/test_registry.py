"""Registry: layout, atomic publish, never-rewritten versions, labels. No Ray needed.

Tests that take ``root`` run twice: on local disk and on S3 (a real moto server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from pyarrow.fs import FileSelector, FileType, LocalFileSystem

from maas.errors import InvalidInput, LabelNotFound, ModelNotFound, RegistryConflict, VersionNotFound
from maas.registry import Registry
from maas.registry_clean import clean
from maas.serving.artifact_cache import ArtifactCache
from maas.signature import Signature, TensorSpec
from maas.storage import join_uri, resolve_uri

SIG = Signature(
    inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
    outputs=(TensorSpec("probabilities", "float32", (-1, 10)),),
)


def _meta(**extra):
    return {"signature": SIG.to_dict(), "metrics": {"accuracy": 0.9}, **extra}


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry root URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "registry")
    return join_uri(request.getfixturevalue("s3_server").new_bucket(), "registry")


def _write(uri: str, data: bytes) -> None:
    fs, path = resolve_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def test_publish_lays_out_tf_serving_base_path(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(str(tmp_path / "reg"))
    v = reg.publish("digits", str(tiny_saved_model), _meta())
    assert v.version == 1
    version_dir = tmp_path / "reg" / "digits" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert meta["version"] == 1 and meta["model"] == "digits" and meta["created_at"]
    assert reg.get("digits", 1).signature == SIG
    # No staging leftovers beside the versions, or anywhere.
    assert sorted(p.name for p in (tmp_path / "reg" / "digits").iterdir()) == ["1"]
    assert list((tmp_path / "reg" / ".staging").iterdir()) == []


def test_versions_increase_and_are_never_rewritten(root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    first = reg.publish("m", str(tiny_saved_model), _meta(run="a"))
    second = reg.publish("m", str(tiny_saved_model), _meta(run="b"))
    assert (first.version, second.version) == (1, 2)
    assert reg.get("m", 1).metadata.to_json()["run"] == "a"
    assert reg.versions("m") == [1, 2]
    assert reg.latest("m") == 2


def test_half_written_version_is_invisible_and_its_number_not_reused(root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    reg.publish("m", str(tiny_saved_model), _meta())
    # A publisher that died after copying files but before its metadata (object-store style).
    _write(join_uri(root, "m", "2", "saved_model.pb"), b"partial")
    assert reg.versions("m") == [1]
    assert reg.publish("m", str(tiny_saved_model), _meta()).version == 3


def test_concurrent_publishers_get_distinct_versions_and_readers_never_see_half_a_one(
    root: str, tiny_saved_model: Path
) -> None:
    reg = Registry(root)
    fs, base = resolve_uri(root)
    expected_files = sorted(
        [str(p.relative_to(tiny_saved_model)) for p in tiny_saved_model.rglob("*") if p.is_file()] + ["metadata.json"]
    )
    results: dict[int, int] = {}
    errors: list[BaseException] = []
    publishing = threading.Event()
    publishing.set()
    seen: list[tuple[int, list[str]]] = []

    def publish(i: int) -> None:
        try:
            results[i] = Registry(root).publish("m", str(tiny_saved_model), _meta(publisher=i)).version
        except BaseException as exc:  # noqa: BLE001 (a thread's failure, reported below)  # pragma: no cover
            errors.append(exc)

    def read() -> None:  # bounded: stops with the publishers, or after 60 s
        deadline = time.monotonic() + 60
        reader = Registry(root)
        try:
            while publishing.is_set() and time.monotonic() < deadline:
                for v in reader.versions("m"):
                    infos = fs.get_file_info(FileSelector(f"{base}/m/{v}", recursive=True))
                    seen.append((v, sorted(i.path.split(f"/m/{v}/", 1)[1] for i in infos if i.type == FileType.File)))
        except BaseException as exc:  # noqa: BLE001 (a reader must never fail while publishers work: reported below)
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    publishers = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    for t in readers + publishers:
        t.start()
    for t in publishers:
        t.join(timeout=120)
    publishing.clear()
    for t in readers:
        t.join(timeout=70)
    assert not errors
    local = isinstance(fs, LocalFileSystem)
    versions = sorted(results.values())
    assert len(set(versions)) == 6 and reg.versions("m") == versions
    if local:  # an atomic rename hands out numbers without gaps
        assert versions == [1, 2, 3, 4, 5, 6]
    else:  # claims under contention may skip a number (all its claimants withdrew), never share one
        assert versions[0] >= 1
    # Each version holds exactly one publisher's artifact and metadata, never a mix.
    for i, v in results.items():
        assert reg.get("m", v).metadata.to_json()["publisher"] == i
    # Every version a reader could list was already complete.
    assert seen, "the readers listed no version while publishing went on"
    incomplete = [(v, files) for v, files in seen if files != expected_files]
    assert not incomplete, incomplete[:3]
    if not local:  # object store: exactly one claim per published version; losers withdrew theirs
        claims = fs.get_file_info(FileSelector(f"{base}/m/.claims"))
        assert sorted(int(c.base_name.split(".")[0]) for c in claims) == versions


def test_labels_promote_and_rollback(root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    for _ in range(3):
        reg.publish("m", str(tiny_saved_model), _meta())
    assert reg.default_version("m") == 3  # no stable label: latest
    reg.promote("m", 1)
    assert reg.default_version("m") == 1
    reg.set_label("m", "canary", 2, weight=0.1)
    assert reg.labels("m")["canary"].weight == pytest.approx(0.1)
    assert reg.resolve("m", label="canary") == 2
    reg.promote("m", 2)  # promoting the canary's version retires the canary
    assert "canary" not in reg.labels("m")
    assert reg.rollback("m").version == 1
    assert reg.default_version("m") == 1
    fs, base = resolve_uri(root)
    assert fs.get_file_info(f"{base}/m/labels.json").is_file
    assert Registry(root).labels("m")["stable"].version == 1  # a fresh reader sees the same labels


def test_retiring_a_canary_leaves_a_newer_canary_alone_and_records_why(root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    for _ in range(3):
        reg.publish("m", str(tiny_saved_model), _meta())
    reg.set_label("m", "canary", 2, weight=0.2)
    assert reg.retire_canary("m", 2, "error rate 50% exceeds 5%")
    assert "canary" not in reg.labels("m")
    assert reg.label_history("m")[-1].to_json() == {**reg.label_history("m")[-1].to_json(), "label": "canary",
                                          "version": None, "previous": 2, "reason": "error rate 50% exceeds 5%"}
    reg.set_label("m", "canary", 3, weight=0.2)
    assert not reg.retire_canary("m", 2, "a late verdict on version 2")  # an operator moved on meanwhile
    assert reg.labels("m")["canary"].version == 3


def test_lookup_errors_name_the_problem(root: str, tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    with pytest.raises(ModelNotFound, match="'nope' not found"):
        reg.resolve("nope")
    reg.publish("m", str(tiny_saved_model), _meta())
    with pytest.raises(VersionNotFound, match="no version 9"):
        reg.resolve("m", version=9)
    with pytest.raises(LabelNotFound, match="no label 'canary'"):
        reg.resolve("m", label="canary")
    with pytest.raises(InvalidInput, match="no earlier stable version"):
        reg.rollback("m")
    with pytest.raises(InvalidInput, match=r"Received: '\.\./evil'"):
        reg.publish("../evil", str(tiny_saved_model), _meta())
    with pytest.raises(InvalidInput, match=r"weight .* Received: 1.5"):
        reg.set_label("m", "canary", 1, weight=1.5)
    with pytest.raises(InvalidInput, match=r"no saved_model\.pb"):
        reg.publish("m", str(tmp_path), _meta())
    assert reg.models() == ["m"]


def test_file_uri_works_like_a_path(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(f"file://{tmp_path}")
    assert reg.publish("m", str(tiny_saved_model), _meta()).version == 1
    assert Registry(str(tmp_path)).versions("m") == [1]


def test_remote_versions_are_downloaded_once_and_load_in_tensorflow(
    s3_server, tiny_saved_model: Path, maas_home: Path
) -> None:
    import tensorflow as tf

    root = join_uri(s3_server.new_bucket(), "registry")
    reg = Registry(root)
    reg.publish("m", str(tiny_saved_model), _meta())
    local = Path(ArtifactCache(reg).local_path("m", 1))
    assert local.is_relative_to(maas_home / "cache") and (local / "metadata.json").is_file()
    assert ArtifactCache(reg).local_path("m", 1) == str(local)
    fn = tf.saved_model.load(str(local)).signatures["serving_default"]
    assert fn(pixels=tf.zeros((2, 8, 8)))["probabilities"].shape == (2, 10)


def test_concurrent_label_changes_are_never_lost(root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    reg.publish("m", str(tiny_saved_model), _meta())
    errors: list[BaseException] = []

    def label(i: int) -> None:
        try:
            Registry(root).set_label("m", f"team-{i}", 1, weight=i / 10)
        except BaseException as exc:  # noqa: BLE001 (a thread's failure, reported below)  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=label, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    labels = reg.labels("m")
    assert sorted(labels) == [f"team-{i}" for i in range(8)]  # every change kept, none overwritten
    assert len(reg.label_history("m")) == 8


def test_a_live_writers_lock_times_out_and_a_dead_ones_goes_stale(
    tmp_path: Path, tiny_saved_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import maas.storage

    reg = Registry(str(tmp_path))
    reg.publish("m", str(tiny_saved_model), _meta())
    lock = tmp_path / "m" / ".locks" / "labels" / "another-writer"
    lock.parent.mkdir(parents=True)
    lock.write_text("held")
    monkeypatch.setattr(maas.storage, "LOCK_TIMEOUT_S", 0.5)
    with pytest.raises(RegistryConflict, match="labels stayed locked by another writer"):
        reg.promote("m", 1)
    assert "stable" not in reg.labels("m")
    long_ago = time.time() - 600  # the writer died ten minutes ago
    os.utime(lock, (long_ago, long_ago))
    assert reg.promote("m", 1).version == 1
    assert sorted(p.name for p in lock.parent.iterdir()) == ["another-writer"]  # ours was released


def test_check_reachable_fails_when_storage_cannot_be_reached_or_the_root_is_gone(
    root: str, tiny_saved_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maas.errors import StorageUnavailable

    with pytest.raises(StorageUnavailable, match="does not exist"):  # a root that is not there: an outage
        Registry(root).check_reachable()
    Registry(root).publish("m", str(tiny_saved_model), _meta())
    Registry(root).check_reachable()
    from support import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(StorageUnavailable, match="unreachable"):
        Registry("s3://no-such-bucket/registry").check_reachable()


def test_lock_staleness_is_judged_by_the_storages_clock_not_this_machines(
    root: str, tiny_saved_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6c14451 compared this machine's clock with the lock's modification time: an hour ahead, every
    live lock looked stale (two writers at once); behind, a dead holder's lock blocked label changes."""
    import maas.storage

    reg = Registry(root)
    reg.publish("m", str(tiny_saved_model), _meta())
    lock = join_uri(root, "m", ".locks", "labels", "another-writer")
    monkeypatch.setattr(maas.storage, "LOCK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(maas.storage, "LOCK_STALE_S", 2.0)
    real = time.time
    for skew in (3600.0, -3600.0):
        _write(lock, b"held")  # a live holder's lock, dated now by the storage
        monkeypatch.setattr(maas.storage.time, "time", lambda skew=skew: real() + skew)
        with pytest.raises(RegistryConflict, match="stayed locked"):
            reg.promote("m", 1)
    monkeypatch.setattr(maas.storage.time, "time", real)
    time.sleep(2.5)  # by the storage's clock, the holder has been gone longer than LOCK_STALE_S
    assert reg.promote("m", 1).version == 1


def test_a_lock_dated_in_the_future_does_not_block_label_changes(
    tmp_path: Path, tiny_saved_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import maas.storage

    reg = Registry(str(tmp_path))
    reg.publish("m", str(tiny_saved_model), _meta())
    lock = tmp_path / "m" / ".locks" / "labels" / "skewed-writer"
    lock.parent.mkdir(parents=True)
    lock.write_text("held")
    tomorrow = time.time() + 86_400  # written by a machine whose clock is a day ahead (or forged)
    os.utime(lock, (tomorrow, tomorrow))
    monkeypatch.setattr(maas.storage, "LOCK_TIMEOUT_S", 0.5)
    assert reg.promote("m", 1).version == 1  # 6c14451: blocked for as long as the date is ahead


def test_delete_removes_a_version_for_good_and_never_reuses_its_number(root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    for _ in range(3):
        reg.publish("digits", str(tiny_saved_model), _meta())
    deletion = reg.delete("digits", 3)
    assert deletion.version == 3 and deletion.labels_removed == ()
    assert reg.versions("digits") == [1, 2]
    with pytest.raises(VersionNotFound):
        reg.get("digits", 3)
    with pytest.raises(VersionNotFound):
        reg.delete("digits", 3)
    assert reg.publish("digits", str(tiny_saved_model), _meta()).version == 4  # 3 stays taken
    fs, path = resolve_uri(root)
    assert fs.get_file_info(f"{path}/digits/3").type == FileType.NotFound  # no files left behind
    assert clean(reg, older_than_s=0, dry_run=True).leftovers == ()


def test_a_labelled_version_is_refused_unless_forced_and_force_moves_no_label(
        root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    for _ in range(3):
        reg.publish("digits", str(tiny_saved_model), _meta())
    reg.promote("digits", 1)
    reg.promote("digits", 2)
    reg.set_label("digits", "canary", 3, weight=0.1)
    with pytest.raises(RegistryConflict, match="labelled canary"):
        reg.delete("digits", 3)
    assert reg.versions("digits") == [1, 2, 3]
    assert reg.delete("digits", 3, force=True).labels_removed == ("canary",)
    assert set(reg.labels("digits")) == {"stable"} and reg.labels("digits")["stable"].version == 2
    assert reg.label_history("digits")[-1].reason == "version 3 deleted"
    reg.delete("digits", 1)  # stable's previous version: a rollback to it is refused, not dangling
    with pytest.raises(InvalidInput, match="deleted"):
        reg.rollback("digits")
    with pytest.raises(VersionNotFound):
        reg.set_label("digits", "canary", 1)


def test_a_version_copied_out_of_another_registry_is_published_with_its_own_metadata(
        root: str, tiny_saved_model: Path, tmp_path: Path) -> None:
    """A source folder holding a ``metadata.json`` (a version of another registry): on an object store
    that file would make the folder a version before its other files are copied."""
    import shutil

    copied = tmp_path / "copied"
    shutil.copytree(tiny_saved_model, copied)
    (copied / "metadata.json").write_text(json.dumps({"model": "elsewhere", "version": 9, "signature": {}}))
    reg = Registry(root)
    version = reg.publish("digits", str(copied), _meta(source="another registry"))
    assert reg.get("digits", version.version).metadata.to_json()["source"] == "another registry"
    assert reg.get("digits", version.version).metadata.to_json()["version"] == 1


def test_a_publish_racing_a_delete_never_brings_the_deleted_number_back(
        tmp_path: Path, tiny_saved_model: Path) -> None:
    """On a local disk a publisher that chose number N before N was deleted finds the folder gone at its
    rename: it must not land there, but take the next number."""
    reg = Registry(str(tmp_path / "reg"))
    reg.publish("digits", str(tiny_saved_model), _meta())
    reg.publish("digits", str(tiny_saved_model), _meta())
    taken, calls = reg._all_version_dirs, []

    def stale(model: str) -> list[int]:  # its first look predates version 2's deletion
        calls.append(model)
        return [1] if len(calls) == 1 else taken(model)

    reg.delete("digits", 2)
    reg._all_version_dirs = stale  # type: ignore[method-assign]
    assert reg.publish("digits", str(tiny_saved_model), _meta()).version == 3
    assert reg.versions("digits") == [1, 3]


def test_gc_keeps_the_newest_and_every_labelled_version(root: str, tiny_saved_model: Path) -> None:
    reg = Registry(root)
    for _ in range(5):
        reg.publish("digits", str(tiny_saved_model), _meta())
    reg.promote("digits", 1)
    plan = reg.gc_plan("digits", keep=2)
    assert (plan.delete, plan.newest, plan.labelled) == ((2, 3), (4, 5), (1,))
    assert reg.versions("digits") == [1, 2, 3, 4, 5]  # a plan deletes nothing
    assert reg.gc("digits", keep=2).delete == (2, 3)
    assert reg.versions("digits") == [1, 4, 5]
    assert reg.gc("digits", keep=0).delete == (4, 5)
    assert reg.versions("digits") == [1]
    reg.remove_label("digits", "stable")
    for _ in range(2):
        reg.publish("digits", str(tiny_saved_model), _meta())
    assert reg.gc("digits", keep=0).delete == (1, 6)  # never the latest while no stable label routes traffic
    assert reg.versions("digits") == [7]
    with pytest.raises(InvalidInput):
        reg.gc_plan("digits", keep=-1)
    with pytest.raises(ModelNotFound):
        reg.gc_plan("nothing", keep=1)
