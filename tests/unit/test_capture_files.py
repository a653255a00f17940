"""Request capture without a cluster: the records' Parquet layout, the bounded buffer that drops the
oldest, the writer when the storage is gone and back, capture through HTTP and the data plane, and
the `maas models capture` / `maas captures` commands over real files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from maas.captures import clean, partitions
from maas.cli import main
from maas.serving.capture import CaptureBuffer, CapturePolicy, CaptureRecord, CaptureWriter, ModelCapture, to_table

PREDICT = "/v1/models/digits:predict"


def _record(n: int = 2, version: int = 1, at: float = 1_796_000_000.0, request_id: str = "r") -> CaptureRecord:
    x = np.arange(n * 64, dtype=np.float32).reshape(n, 8, 8)
    return CaptureRecord("digits", version, "stable", "tfserving", 1.5, at, request_id, {"pixels": x},
                         {"probabilities": np.full((n, 10), 0.1, np.float32)})


def _read(root: Path, model: str = "digits") -> list[dict]:
    dataset = ds.dataset(str(root / "_captures" / f"model={model}"), format="parquet", partitioning="hive")
    return sorted(dataset.to_table().to_pylist(), key=lambda r: (r["request_id"], r["instance"]))


def test_a_record_is_a_row_per_instance_with_each_input_and_output_flat() -> None:
    table = to_table([_record(2, request_id="a"), _record(1, request_id="b")])
    assert table.column_names == ["request_id", "instance", "time", "label", "protocol", "latency_ms", "pixels",
                                  "output_probabilities"]
    assert table.num_rows == 3 and table.column("request_id").to_pylist() == ["a", "a", "b"]
    assert table.column("instance").to_pylist() == [0, 1, 0]
    assert str(table.column("pixels").type) == "list<item: float>" and len(table.column("pixels")[0]) == 64
    assert len(table.column("output_probabilities")[2]) == 10
    assert table.column("pixels")[1].as_py() == list(range(64, 128))


def test_inputs_named_like_the_records_own_columns_are_prefixed_and_lengths_may_vary(tmp_path: Path) -> None:
    def series(t: int, request_id: str) -> CaptureRecord:
        return CaptureRecord("seq", 1, "latest", "v2", 1.0, 1_796_000_000.0, request_id,
                             {"time": np.ones((1, t, 2), np.float32), "version": np.zeros((1, 3), np.float32)},
                             {"label": np.zeros((1, 4), np.float32)})

    root = tmp_path / "registry"
    root.mkdir()
    writer = CaptureWriter(str(root), CapturePolicy(), replica="r")
    loop = asyncio.new_event_loop()
    try:
        writer.buffer.add(series(5, "a"))
        writer.buffer.add(series(9, "b"))  # another length: another file, the same partition
        loop.run_until_complete(writer.flush())
    finally:
        loop.close()
    rows = _read(root, "seq")
    assert [len(r["input_time"]) for r in rows] == [10, 18]  # and the record's own time stays its own
    assert {"input_time", "input_version", "output_label", "time", "version", "label"} <= set(rows[0])
    assert rows[0]["label"] == "latest" and rows[0]["version"] == 1


def test_the_buffer_drops_its_oldest_records_past_its_bound_and_counts_them() -> None:
    dropped: list[tuple[str, int]] = []
    one = _record().nbytes
    buffer = CaptureBuffer(3 * one, lambda model, n: dropped.append((model, n)))
    for i in range(5):
        buffer.add(_record(request_id=str(i)))
    assert len(buffer) == 3 and dropped == [("digits", 1), ("digits", 1)]
    taken = buffer.take(2)
    assert [r.request_id for r in taken] == ["2", "3"]
    buffer.add(_record(request_id="5"))
    buffer.add(_record(request_id="6"))
    buffer.put_back(taken)  # a failed write: back at the front, and past the bound the oldest go
    assert [r.request_id for r in buffer.take(10)] == ["4", "5", "6"] and dropped[-1] == ("digits", 2)


def test_the_writer_keeps_what_it_could_not_write_and_writes_it_once_the_storage_is_back(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    written: list[int] = []
    writer = CaptureWriter(str(root), CapturePolicy(), replica="replica-1",
                           on_written=lambda model, rows: written.append(rows))
    loop = asyncio.new_event_loop()
    try:
        for i in range(3):
            writer.buffer.add(_record(request_id=str(i)))
        away = root.rename(tmp_path / "unmounted")
        loop.run_until_complete(writer.flush())
        assert not root.exists() and len(writer.buffer) == 3 and writer.failures == 1  # never recreated
        away.rename(root)
        writer.buffer.add(_record(version=2, at=1_796_100_000.0, request_id="3"))  # another version, another day
        loop.run_until_complete(writer.flush())
    finally:
        loop.close()
    assert len(writer.buffer) == 0 and writer.failures == 0 and sum(written) == 8
    rows = _read(root)
    assert [(r["request_id"], r["instance"], r["version"]) for r in rows] == [
        ("0", 0, 1), ("0", 1, 1), ("1", 0, 1), ("1", 1, 1), ("2", 0, 1), ("2", 1, 1), ("3", 0, 2), ("3", 1, 2)]
    assert {r["day"] for r in rows} == {"2026-11-30", "2026-12-01"}
    assert [(p.version, p.day, p.rows) for p in partitions(str(root))] == [(1, "2026-11-30", 6), (2, "2026-12-01", 2)]


def test_a_root_that_vanishes_after_the_check_is_not_created_again(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    writer = CaptureWriter(str(root), CapturePolicy(), replica="r")
    monkeypatch.setattr(writer._registry, "check_reachable", lambda: None)  # the root was there when checked
    writer.buffer.add(_record(request_id="0"))
    away = root.rename(tmp_path / "unmounted")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(writer.flush())
    finally:
        loop.close()
    assert not root.exists() and len(writer.buffer) == 1 and writer.failures == 1
    assert not list(away.rglob("*.parquet"))


def test_predictions_are_captured_through_http_with_the_clients_request_id(make_stack) -> None:
    stack = make_stack(capture=CapturePolicy(models={"digits": ModelCapture(sample=1.0)}))
    body = json.dumps({"instances": [np.ones((8, 8)).tolist()] * 3}).encode()
    assert stack.call("POST", PREDICT, body, {"x-request-id": "order-17"}).status == 200
    assert stack.call("POST", PREDICT, body, {"x-request-id": "bad id\n"}).status == 200  # not a token: one is made
    assert stack.call("POST", "/v1/models/digits:predict", b"{}").status == 400  # refused: nothing captured
    stack.run(stack.plane._capture.flush())
    rows = _read(stack.root)
    assert len(rows) == 6 and {r["request_id"] for r in rows[:3]} | {r["request_id"] for r in rows[3:]} >= {"order-17"}
    made = {r["request_id"] for r in rows} - {"order-17"}
    assert len(made) == 1 and len(next(iter(made))) == 32
    first = next(r for r in rows if r["request_id"] == "order-17")
    assert first["label"] == "latest" and first["protocol"] == "tfserving" and first["version"] == 1
    assert first["pixels"] == [1.0] * 64 and len(first["output_probabilities"]) == 10
    assert not {"authorization", "key", "x-request-id", "headers"} & set(first)  # never keys or headers


def test_the_registrys_share_overrides_the_serve_configs(make_stack) -> None:
    stack = make_stack(capture=CapturePolicy(models={"digits": ModelCapture(sample=1.0)}), draw=lambda: 0.5)
    stack.registry.set_capture_sample("digits", 0.25)  # below the draw: not captured
    body = json.dumps({"instances": [np.ones((8, 8)).tolist()]}).encode()
    assert stack.call("POST", PREDICT, body).status == 200
    stack.run(stack.plane._capture.flush())
    assert not (stack.root / "_captures").exists()
    stack.registry.set_capture_sample("digits", None)  # back to the Serve config's 1.0
    stack.clock.now += 10
    assert stack.call("POST", PREDICT, body).status == 200
    stack.run(stack.plane._capture.flush())
    assert len(_read(stack.root)) == 1


def test_the_capture_commands_set_list_show_and_clean_by_day(make_stack, capsys) -> None:
    stack = make_stack()
    registry = str(stack.root)
    assert main(["models", "--registry", registry, "capture", "digits", "--sample", "0.05"]) == 0
    assert stack.registry.capture_sample("digits") == 0.05
    for argv, message in [(["digits", "--sample", "1.5"], "A capture sample is a share of predictions in [0, 1]"),
                          (["nope", "--sample", "0.5"], "nope")]:
        with pytest.raises(SystemExit) as caught:
            main(["models", "--registry", registry, "capture", *argv])
        assert caught.value.code == 2 and message in capsys.readouterr().err
    today = dt.datetime.now(dt.UTC)
    writer = CaptureWriter(registry, CapturePolicy(), replica="r")
    loop = asyncio.new_event_loop()
    for days_ago in (5, 1, 0):  # written in this order: a file per day
        writer.buffer.add(_record(at=(today - dt.timedelta(days=days_ago)).timestamp(), request_id=f"d{days_ago}"))
        loop.run_until_complete(writer.flush())
    loop.close()
    capsys.readouterr()
    assert main(["captures", "--registry", registry, "list"]) == 0
    assert capsys.readouterr().out.count("\t2 rows") == 3
    assert main(["captures", "--registry", registry, "show", "digits", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits: 6 rows in 3 files, versions [1]") and "d0[1]" in out and "d5" not in out
    with pytest.raises(SystemExit) as caught:
        main(["captures", "--registry", registry, "show", "digits", "--limit", "0"])
    assert caught.value.code == 2 and "--limit must be at least 1" in capsys.readouterr().err
    day = Path(registry) / "_captures" / "model=digits" / "version=1" / f"day={today:%Y-%m-%d}"
    (day / "torn.parquet").write_bytes(b"not parquet")  # a torn file is skipped, with a warning
    assert main(["captures", "--registry", registry, "show", "digits"]) == 0 and "d0[1]" in capsys.readouterr().out
    assert main(["captures", "--registry", registry, "clean", "--keep-days", "2"]) == 0
    assert "would delete digits version 1" in capsys.readouterr().out and len(partitions(registry)) == 3
    assert main(["captures", "--registry", registry, "clean", "--keep-days", "2", "--yes"]) == 0
    assert [p.day for p in partitions(registry)] == sorted((today - dt.timedelta(days=d)).strftime("%Y-%m-%d")
                                                          for d in (0, 1))
    assert clean(registry, 2) == []
    with pytest.raises(Exception, match="at least 1"):
        clean(registry, 0)


def test_captures_show_spans_the_days_of_every_version(tmp_path: Path, capsys) -> None:
    registry = str(tmp_path / "registry")
    Path(registry).mkdir()
    today = dt.datetime.now(dt.UTC)
    early = today - dt.timedelta(days=3)
    writer = CaptureWriter(registry, CapturePolicy(), replica="r")
    loop = asyncio.new_event_loop()
    try:  # version 1 captured today only, version 2 three days ago
        for version, at in ((1, today), (2, early)):
            writer.buffer.add(_record(version=version, at=at.timestamp(), request_id=f"v{version}"))
            loop.run_until_complete(writer.flush())
    finally:
        loop.close()
    assert main(["captures", "--registry", registry, "show", "digits"]) == 0
    assert f"versions [1, 2], days {early:%Y-%m-%d} to {today:%Y-%m-%d}" in capsys.readouterr().out
