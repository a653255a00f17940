"""Registry: layout, atomic publish, never-rewritten versions, labels. No Ray needed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from maas.errors import InvalidInput, LabelNotFound, ModelNotFound, VersionNotFound
from maas.registry import Registry
from maas.signature import Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
    outputs=(TensorSpec("probabilities", "float32", (-1, 10)),),
)


def _meta(**extra):
    return {"signature": SIG.to_dict(), "metrics": {"accuracy": 0.9}, **extra}


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
    # No staging leftovers beside the versions.
    assert sorted(p.name for p in (tmp_path / "reg" / "digits").iterdir()) == ["1"]


def test_versions_increase_and_are_never_rewritten(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(str(tmp_path))
    first = reg.publish("m", str(tiny_saved_model), _meta(run="a"))
    second = reg.publish("m", str(tiny_saved_model), _meta(run="b"))
    assert (first.version, second.version) == (1, 2)
    assert reg.get("m", 1).metadata["run"] == "a"
    assert reg.versions("m") == [1, 2]
    assert reg.latest("m") == 2


def test_half_written_version_is_invisible_and_its_number_not_reused(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.publish("m", str(tiny_saved_model), _meta())
    # A publisher that died after copying files but before its metadata (object-store style).
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "saved_model.pb").write_bytes(b"partial")
    assert reg.versions("m") == [1]
    assert reg.publish("m", str(tiny_saved_model), _meta()).version == 3


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(str(tmp_path))
    results: list[int] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            results.append(Registry(str(tmp_path)).publish("m", str(tiny_saved_model), _meta()).version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert reg.versions("m") == [1, 2, 3, 4, 5, 6]


def test_labels_promote_and_rollback(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(str(tmp_path))
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
    assert (tmp_path / "m" / "labels.json").is_file()


def test_lookup_errors_name_the_problem(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(str(tmp_path))
    with pytest.raises(ModelNotFound, match="'nope' not found"):
        reg.resolve("nope")
    reg.publish("m", str(tiny_saved_model), _meta())
    with pytest.raises(VersionNotFound, match="no version 9"):
        reg.resolve("m", version=9)
    with pytest.raises(LabelNotFound, match="no label 'canary'"):
        reg.resolve("m", label="canary")
    with pytest.raises(InvalidInput, match="no earlier stable version"):
        reg.rollback("m")
    with pytest.raises(InvalidInput, match="Received: '../evil'"):
        reg.publish("../evil", str(tiny_saved_model), _meta())
    with pytest.raises(InvalidInput, match=r"weight .* Received: 1.5"):
        reg.set_label("m", "canary", 1, weight=1.5)
    with pytest.raises(InvalidInput, match="no saved_model.pb"):
        reg.publish("m", str(tmp_path), _meta())
    assert reg.models() == ["m"]


def test_file_uri_works_like_a_path(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(f"file://{tmp_path}")
    assert reg.publish("m", str(tiny_saved_model), _meta()).version == 1
    assert Registry(str(tmp_path)).versions("m") == [1]
