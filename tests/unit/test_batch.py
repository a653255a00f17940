"""Batch inference without Ray: the request's checks, the data's checks against a version (signature
and template recipe), the row identifiers, rows -> model inputs (the same transformation as training's
``Template.features``) and model outputs -> output rows, and the one line a bad job fails with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from maas.batch import (
    ActorFigures,
    BatchReport,
    BatchRequest,
    ModelInput,
    OutputPlan,
    ReadUnit,
    Recipe,
    Tally,
    data_format,
    domain_error,
    group_units,
    list_values,
    output_table,
    parquet_units,
    parse_concurrency,
    plan_image_input,
    plan_outputs,
    plan_table_inputs,
    pool_size,
    prepare,
    read_table_units,
    relative_path,
    row_offsets,
    table_inputs,
    tensor_array,
)
from maas.errors import ConfigError, InvalidInput
from maas.jobs.predict import main as predict_main
from maas.registry import Registry
from maas.signature import Signature, TensorSpec
from maas.storage import resolve_uri
from maas.templates import DataInfo, DataSplits, get_template
from maas.training.resources import NodeFree

DIGITS = Signature(inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
                   outputs=(TensorSpec("probabilities", "float32", (-1, 10)),))
TABULAR = Signature(inputs=(TensorSpec("features", "float32", (-1, 3)),),
                    outputs=(TensorSpec("probabilities", "float32", (-1, 2)),))
IMAGES = Signature(inputs=(TensorSpec("image", "uint8", (-1, 16, 12, 3)),),
                   outputs=(TensorSpec("probabilities", "float32", (-1, 2)),))
DIGITS_RECIPE = Recipe(template="digits", task="classification", classes=tuple("0123456789"), data_format="parquet")
TABULAR_RECIPE = Recipe(template="tabular_mlp", task="classification", classes=("no", "yes"),
                        feature_columns=("speed", "heart_rate", "cadence"), data_format="csv")


def _pixels(n: int, size: int = 64, seed: int = 0) -> pa.Array:
    values = np.random.default_rng(seed).integers(0, 17, (n, size)).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), size)


# ---- the request -----------------------------------------------------------------------------------

def test_concurrency_is_n_or_a_range_and_says_what_it_received() -> None:
    assert parse_concurrency("4") == (4, 4) and parse_concurrency(" 1-4 ") == (1, 4)
    for bad, message in [("0", r"1 <= MIN <= MAX. Received: '0'"), ("4-1", r"Received: '4-1'"),
                         ("two", r"N or MIN-MAX .*Received: 'two'"), ("²", "Received")]:
        with pytest.raises(ConfigError, match=message):
            parse_concurrency(bad)


def test_a_request_is_checked_once_and_holds_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    request = BatchRequest(model="m", data="in.parquet", out="s3://bucket/out", registry="reg")
    assert request.data == str(tmp_path / "in.parquet") and request.registry == str(tmp_path / "reg")
    assert request.out == "s3://bucket/out"
    with pytest.raises(ConfigError, match=r"batch size must be at least 1\. Received: 0"):
        BatchRequest(model="m", data="d", out="o", batch_size=0)
    with pytest.raises(ConfigError, match="not both"):
        BatchRequest(model="m", data="d", out="o", version=1, label="stable")


# ---- the data's format and schema against the version ----------------------------------------------

def test_the_format_comes_from_the_files_and_hidden_files_do_not_count() -> None:
    assert data_format(["a/_SUCCESS", "a/.part.crc", "a/part-0.parquet"], "a") == "parquet"
    assert data_format(["cat/1.PNG", "dog/2.jpeg", "notes.txt"], "a") == "images"
    with pytest.raises(InvalidInput, match="data a is not a data set: no Parquet, CSV or image files there"):
        data_format(["notes.txt", ".hidden.parquet"], "a")
    with pytest.raises(InvalidInput, match="mixes csv and parquet files"):
        data_format(["x.csv", "y.parquet"], "a")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"image": pa.array([1.0])}, "no column 'pixels' (the model takes a column 'pixels' of 8x8 numbers per row)"),
        ({"pixels": pa.array([["a"] * 64])}, "column 'pixels' is list<item: string>, expected a list of 8x8 numbers"),
        ({"pixels": _pixels(1, 63)}, "column 'pixels' holds 63 numbers per row, expected 8x8 numbers per row"),
        ({"pixels": pa.array(["x"])}, "column 'pixels' is string, expected a list of 8x8 numbers per row"),
    ],
)
def test_a_column_that_cannot_form_the_input_is_named(columns: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        plan_table_inputs(DIGITS, DIGITS_RECIPE, pa.table(columns).schema)
    assert str(caught.value) == message or message in str(caught.value), str(caught.value)


def test_a_templates_feature_columns_are_checked_by_name_and_type() -> None:
    schema = pa.schema([("speed", pa.float64()), ("cadence", pa.string()), ("id", pa.int64())])
    with pytest.raises(InvalidInput) as caught:
        plan_table_inputs(TABULAR, TABULAR_RECIPE, schema)
    assert str(caught.value) == ("no column 'heart_rate'; column 'cadence' is string, expected numbers "
                                 "(the model takes numeric columns speed, heart_rate, cadence)")
    ok = pa.schema([("cadence", pa.int64()), ("heart_rate", pa.float32()), ("speed", pa.float64())])
    plan = plan_table_inputs(TABULAR, TABULAR_RECIPE, ok)
    assert plan == (ModelInput("features", "float32", (3,), ("speed", "heart_rate", "cadence"), stacked=True),)


def test_nested_lists_and_free_dimensions() -> None:
    sequence = Signature(inputs=(TensorSpec("series", "float32", (-1, 4, 2)),), outputs=DIGITS.outputs)
    nested = pa.schema([("series", pa.list_(pa.list_(pa.float32(), 2)))])
    assert plan_table_inputs(sequence, Recipe(), nested)[0].columns == ("series",)
    wrong = pa.schema([("series", pa.list_(pa.list_(pa.float32(), 3)))])
    with pytest.raises(InvalidInput, match="holds 3 numbers per row, expected 4x2"):
        plan_table_inputs(sequence, Recipe(), wrong)
    free = Signature(inputs=(TensorSpec("series", "float32", (-1, -1, 2)),), outputs=DIGITS.outputs)
    with pytest.raises(InvalidInput, match=r"input 'series' has a free dimension \[-1, -1, 2\]"):
        plan_table_inputs(free, Recipe(), nested)


def test_images_are_resized_only_for_versions_trained_from_an_image_folder() -> None:
    trained = plan_image_input(IMAGES, Recipe(template="image_cnn", data_format="images"), ("cat/1.png", 28, 28))
    assert (trained.size, trained.mode, trained.resize) == ((16, 12), "RGB", True)
    plain = plan_image_input(IMAGES, Recipe(), ("cat/1.png", 12, 16))
    assert not plain.resize
    with pytest.raises(InvalidInput, match=r"image cat/1.png is 28x28; the model takes 12x16 images"):
        plan_image_input(IMAGES, Recipe(), ("cat/1.png", 28, 28))
    with pytest.raises(InvalidInput, match=r"input 'pixels' of shape \[-1, 8, 8, 2\] is not an image"):
        plan_image_input(Signature((TensorSpec("pixels", "uint8", (-1, 8, 8, 2)),), DIGITS.outputs), Recipe(),
                         ("a.png", 8, 8))


def test_classifiers_get_the_top_class_and_its_name_and_names_never_clash() -> None:
    plan = plan_outputs(DIGITS, DIGITS_RECIPE, "row")
    assert plan.columns == ("row", "probabilities", "class", "class_name")
    assert plan_outputs(DIGITS, Recipe(task="classification"), "id").columns == ("id", "probabilities", "class")
    assert plan_outputs(DIGITS, Recipe(), "id").columns == ("id", "probabilities")
    clashing = Signature(inputs=DIGITS.inputs, outputs=(TensorSpec("row", "float32", (-1,)),))
    with pytest.raises(InvalidInput, match=r"output column names clash: \['row'\]"):
        plan_outputs(clashing, Recipe(), "row")


# ---- row identifiers ---------------------------------------------------------------------------------

def test_row_positions_come_from_the_counts_of_the_files_before() -> None:
    assert row_offsets([3, 5, 2]) == [0, 3, 8] and row_offsets([]) == []
    units = parquet_units("b.parquet", 100, [10, 0, 5])
    assert units == [ReadUnit("b.parquet", 100, 10, (0,)), ReadUnit("b.parquet", 110, 5, (2,))]


@pytest.mark.parametrize("tasks", [1, 2, 3, 7, 50])
def test_units_are_grouped_in_order_into_at_most_the_tasks_asked_for(tasks: int) -> None:
    units = [ReadUnit(f"f{i}", i * 10, n) for i, n in enumerate([10, 10, 1, 30, 5, 10, 10])]
    groups = group_units(units, tasks)
    assert [u for g in groups for u in g] == units and len(groups) <= tasks and all(groups)
    unknown = [ReadUnit(f"f{i}.csv", 0, None) for i in range(4)]
    assert [u for g in group_units(unknown, tasks) for u in g] == unknown


def test_image_paths_are_relative_to_the_data_folder() -> None:
    assert relative_path("bucket/set/cat/1.png", "bucket/set") == "cat/1.png"
    assert relative_path("/data/set/dog/a/2.png", "/data/set/") == "dog/a/2.png"


def _job(tmp_path: Path, path: Path, signature: Signature = DIGITS, **metadata):
    registry = Registry(str(tmp_path / "registry"))
    artifact = tmp_path / "artifact"
    artifact.mkdir(exist_ok=True)
    (artifact / "saved_model.pb").write_bytes(b"placeholder")  # prepare() never loads the model
    registry.publish("m", str(artifact), {"signature": signature.to_dict(), **metadata})
    out = tmp_path / f"out-{path.name}"
    return prepare(BatchRequest(model="m", data=str(path), out=str(out), registry=registry.uri))


def _read(job) -> pa.Table:
    fs, _ = resolve_uri(job.data.uri)
    tables = list(read_table_units(fs, job.data.format, job.units, job.read_columns, dict(job.csv_types),
                                   job.outputs.id_column == "row", chunk_rows=3))
    return pa.concat_tables(tables)


def test_parquet_rows_are_numbered_across_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    pixels = _pixels(17)
    # Written out of name order, with several row groups: positions follow the names.
    pq.write_table(pa.table({"pixels": pixels.slice(5, 12)}), folder / "part-1.parquet", row_group_size=4)
    pq.write_table(pa.table({"pixels": pixels.slice(0, 5)}), folder / "part-0.parquet", row_group_size=2)
    (folder / "_SUCCESS").write_text("")
    job = _job(tmp_path, folder, template="digits", task="classification")
    assert job.rows == 17 and job.outputs.id_column == "row" and [u.rows for u in job.units] == [2, 2, 1, 4, 4, 4]
    table = _read(job)
    assert table.column("row").to_pylist() == list(range(17))
    np.testing.assert_array_equal(np.stack(table.column("pixels").to_numpy(zero_copy_only=False)),
                                  np.stack(pixels.to_numpy(zero_copy_only=False)))


def test_csv_rows_are_numbered_across_files_and_an_id_column_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    rows = {"speed": [1.0, 2.0, 3.0, 4.0, 5.0], "heart_rate": [120, None, 130, 140, 150], "cadence": [80] * 5}
    full = pa.table(rows)
    pacsv.write_csv(full.slice(0, 2), folder / "a.csv")
    pacsv.write_csv(full.slice(2), folder / "b.csv")
    meta = {"template": "tabular_mlp", "task": "classification", "classes": ["no", "yes"],
            "preprocessing": {"feature_columns": ["speed", "heart_rate", "cadence"], "item_shape": [3]}}
    job = _job(tmp_path, folder, TABULAR, **meta)
    assert [u.start_row for u in job.units] == [0, 2] and job.read_columns == ("speed", "heart_rate", "cadence")
    table = _read(job)
    assert table.column("row").to_pylist() == [0, 1, 2, 3, 4]
    assert np.isnan(table_inputs(table, job.inputs)["features"][1, 1])  # missing stays missing: the model fills it
    with_ids = tmp_path / "with_ids.csv"
    pacsv.write_csv(full.append_column("id", pa.array(["u1", "u2", "u3", "u4", "u5"])), with_ids)
    job = _job(tmp_path, with_ids, TABULAR, **meta)
    assert job.outputs.id_column == "id" and _read(job).column("id").to_pylist() == ["u1", "u2", "u3", "u4", "u5"]


# ---- rows -> model inputs: the same transformation as training ----------------------------------------

def test_rows_become_the_input_exactly_as_template_features_makes_it() -> None:
    digits = get_template("digits")
    info = DataInfo(DataSplits("", ""), item_shape=(8, 8), class_names=digits.class_names)
    table = pa.table({"pixels": _pixels(5), "label": pa.array([0, 1, 2, 3, 4])})
    batch = {"pixels": np.stack(table.column("pixels").to_numpy(zero_copy_only=False)), "label": np.arange(5)}
    got = table_inputs(table, plan_table_inputs(DIGITS, DIGITS_RECIPE, table.schema))["pixels"]
    np.testing.assert_array_equal(got, digits.features(batch, info))
    assert got.dtype == np.float32 and got.shape == (5, 8, 8)

    tabular = get_template("tabular_mlp")
    info = DataInfo(DataSplits("", ""), item_shape=(3,), class_names=("no", "yes"),
                    feature_columns=TABULAR_RECIPE.feature_columns)
    table = pa.table({"cadence": pa.array([80, 81], pa.int32()), "speed": [1.5, np.nan],
                      "heart_rate": pa.array([120.0, 121.0], pa.float32())})
    batch = {name: table.column(name).to_numpy() for name in table.column_names}
    got = table_inputs(table, plan_table_inputs(TABULAR, TABULAR_RECIPE, table.schema))["features"]
    np.testing.assert_array_equal(got, tabular.features(batch, info))


def test_a_short_row_fails_with_its_identifier_instead_of_shifting_the_rows_after_it() -> None:
    ids = pa.chunked_array([pa.array([10, 11, 12])])
    column = pa.array([[1.0] * 4, [2.0] * 3, [3.0] * 4])
    with pytest.raises(InvalidInput, match=r"row 11: column 'x' holds 3 numbers where the model takes 2x2"):
        list_values(column, (2, 2), "x", ids)
    with pytest.raises(InvalidInput, match=r"row 12: column 'x' has no value"):
        list_values(pa.array([[1.0] * 4, [2.0] * 4, None]), (2, 2), "x", ids)
    nested = pa.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    np.testing.assert_array_equal(list_values(nested, (2, 2), "x"), np.arange(1, 9).reshape(2, 2, 2))


# ---- model outputs -> output rows --------------------------------------------------------------------

def test_outputs_become_plain_parquet_columns_with_the_top_class_and_its_name() -> None:
    probabilities = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    plan = OutputPlan("row", ("probabilities",), "probabilities", ("no", "yes"))
    table = output_table(pa.array([4, 5, 6]), {"probabilities": probabilities}, plan)
    assert table.column_names == ["row", "probabilities", "class", "class_name"]
    assert table.column("class").to_pylist() == [1, 0, 1]
    assert table.column("class_name").to_pylist() == ["yes", "no", "yes"]
    assert table.schema.field("probabilities").type == pa.list_(pa.float32(), 2)
    cube = tensor_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    assert cube.type == pa.list_(pa.list_(pa.float32(), 4), 3) and cube[1][2].as_py() == [20, 21, 22, 23]
    assert tensor_array(np.array([1.5, 2.5])).to_pylist() == [1.5, 2.5]


# ---- the job's checks, before Ray: one line each ---------------------------------------------------------

def test_a_missing_column_an_empty_set_and_a_used_out_folder_fail_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": pa.array([1.0])}), bad)
    with pytest.raises(InvalidInput) as caught:
        _job(tmp_path, bad, template="digits")
    assert str(caught.value) == (f"data {bad} does not fit m version 1: no column 'pixels' "
                                 "(the model takes a column 'pixels' of 8x8 numbers per row)")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"pixels": _pixels(0)}), empty)
    with pytest.raises(InvalidInput, match=f"data {empty} has no rows"):
        _job(tmp_path, empty)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"pixels": _pixels(3)}), good)
    (tmp_path / "out-good.parquet").mkdir()
    (tmp_path / "out-good.parquet" / "old.parquet").write_bytes(b"")
    with pytest.raises(InvalidInput, match="already holds files: give a new or empty folder"):
        _job(tmp_path, good)
    with pytest.raises(InvalidInput, match="is inside --data"):
        prepare(BatchRequest(model="m", data=str(tmp_path), out=str(tmp_path / "scores"),
                             registry=str(tmp_path / "registry")))
    with pytest.raises(InvalidInput, match="does not exist"):
        _job(tmp_path, tmp_path / "nowhere")


def test_an_image_folder_of_the_wrong_size_fails_before_anything_runs(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "cat" / "1.png")
    with pytest.raises(InvalidInput, match=r"image cat/1.png is 20x20; the model takes 12x16 images"):
        _job(tmp_path, folder, IMAGES)
    job = _job(tmp_path, folder, IMAGES, template="image_cnn", task="classification", data={"format": "images"})
    assert job.rows == 1 and job.image is not None and job.image.resize and job.outputs.id_column == "path"
    (folder / "ant").mkdir()
    (folder / "ant" / "0.png").write_text("not a png")  # the first in name order
    with pytest.raises(InvalidInput, match=r"image ant/0\.png cannot be read"):
        _job(tmp_path, folder, IMAGES)


def test_the_entry_point_fails_in_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    data = tmp_path / "notes"
    data.mkdir()
    (data / "readme.txt").write_text("hello")
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "saved_model.pb").write_bytes(b"placeholder")
    Registry(str(tmp_path / "registry")).publish("m", str(artifact), {"signature": DIGITS.to_dict()})
    for argv, message in [
        (["--model", "m"], f"error: data {data} is not a data set: no Parquet, CSV or image files there"),
        (["--model", "m", "--concurrency", "0"], "error: concurrency needs 1 <= MIN <= MAX. Received: '0'"),
        (["--model", "nope"], "error: Model 'nope' not found"),
    ]:
        with pytest.raises(SystemExit) as exited:
            predict_main([*argv, "--data", str(data), "--out", str(tmp_path / "out"),
                          "--registry", str(tmp_path / "registry")])
        assert exited.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [message]


# ---- the pool, errors from the actors, the figures ---------------------------------------------------------

def test_the_pool_takes_the_free_cpus_or_fails_in_one_line() -> None:
    nodes = [NodeFree("a", 2, 1.5), NodeFree("b", 2, 2.0), NodeFree("c", 2, 0.0)]
    assert pool_size(None, nodes, use_gpu=False) == (3, 3)
    assert pool_size((1, 8), nodes, use_gpu=False) == (1, 8)
    with pytest.raises(InvalidInput) as caught:
        pool_size((4, 4), nodes, use_gpu=False)
    assert str(caught.value) == ("--concurrency 4: 4 actors of 1 CPU do not fit now, 3 do: 3.5 of 6 CPU free "
                                 "(largest node 2); use --concurrency 1-4 to start with what fits")
    with pytest.raises(InvalidInput, match=r"no scoring actor of 1 GPU fits now: .*the cluster has 0 GPU"):
        pool_size(None, nodes, use_gpu=True)


def test_an_actors_error_is_found_inside_the_wrappers_ray_data_adds() -> None:
    class Wrapper(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("wrapped")
            self.cause = cause

    original = InvalidInput("row 3: column 'x' has no value\nFailed to apply UDF transform after 1/1 attempts.")
    try:
        try:
            raise Wrapper(original)
        except Wrapper as inner:
            raise RuntimeError("the dataset failed") from inner
    except RuntimeError as outer:
        assert domain_error(outer) is original and str(original) == "row 3: column 'x' has no value"
    assert domain_error(ValueError("other")) is None


def test_the_tally_keeps_each_actors_latest_total_and_the_report_prints_it() -> None:
    tally = Tally()
    tally.report(ActorFigures("a1", "n1", 100, 0.5, 2.0, 10.0, 10.5))
    tally.report(ActorFigures("a1", "n1", 300, 1.5, 2.0, 10.0, 11.5))
    tally.report(ActorFigures("a1", "n1", 100, 0.5, 2.0, 10.0, 10.5))  # late: an older total
    tally.report(ActorFigures("a2", "n2", 200, 0.25, 1.0, 10.5, 11.0))
    figures = tally.figures()
    assert [f.rows for f in figures] == [300, 200] and figures[1].rows_per_s == 800
    report = BatchReport("digits", 3, "s3://b/d", "parquet", "s3://b/o", 500, 2.0, 1024, (2, 2), False, tuple(figures))
    assert report.scoring_s == 1.5 and report.scoring_rows_per_s == pytest.approx(333.3, abs=0.1)
    body = json.loads(report.json_line())
    assert body["rows_per_s"] == 250 and body["actors"][0]["rows_per_s"] == 200 and body["concurrency"] == [2, 2]
    assert body["scoring_rows_per_s"] == 333.3
    lines = report.lines()
    assert lines[0].startswith("Scored 500 rows of s3://b/d (parquet) with digits version 3: 2.0 s, 250 rows/s "
                               "(333 rows/s from the first batch to the last)")
    assert lines[1] == "2 actors (pool 2, 1 CPU each) on 2 nodes, batch size 1024:" and len(lines) == 4
