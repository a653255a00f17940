"""Batch inference benchmark: rows/s of `python -m jobs.predict`'s job (maas.batch) on an MLP over the
real digits and on the image CNN over an Animal-MNIST image folder, against the in-process ceiling
measured in the same run.

    python -m benchmarks.batch_inference [--mlp-rows 2000000] [--images 10000]

The ceiling is ``cores x`` the throughput of the same SavedModel called in one process, with
TensorFlow on one thread (what one core gives: each scoring actor holds one CPU and one thread), at
the same batch size, on inputs already in memory, after its first call (loading and tracing excluded).
The job is judged on the same footing: rows / seconds from the first batch's start to the last batch's
end over all actors, with reading, decoding, the driver and writing competing for the same cores. Its
end-to-end figure (rows / wall time of the whole Ray Data run: actors starting, TensorFlow importing,
the model loading included) is reported beside it. Writes benchmarks/results/batch_inference.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine
from benchmarks.report import Target, _targets_md

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.7
logger = logging.getLogger("benchmarks")


def ceiling(path: str, input_name: str, x: np.ndarray, seconds: float = 5.0) -> float:
    """Rows/s of the SavedModel's serving function called directly on ``x`` (one batch), in this process."""
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    batch = tf.constant(x)
    fn(**{input_name: batch})  # trace and allocate
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for value in fn(**{input_name: batch}).values():
            value.numpy()
        n += 1
    return n * len(x) / elapsed


def _publish(registry, template_name: str, info, work: Path, name: str, data_format: str) -> str:
    """Export the template's model (untrained weights: speed does not depend on them) and publish it
    with the metadata a training run records; return the version's local path."""
    import keras

    from maas.serving.artifact_cache import ArtifactCache
    from maas.templates import get_template
    from maas.training.export import export_saved_model

    template = get_template(template_name)
    keras.utils.set_random_seed(0)
    signature = export_saved_model(template.build_model(info), template, info, str(work / name))
    version = registry.publish(name, str(work / name), {
        "template": template_name, "task": template.task, "classes": list(info.class_names),
        "signature": signature.to_dict(), "data": {"format": data_format},
        "preprocessing": {"feature_columns": list(info.feature_columns), "item_shape": list(info.item_shape)},
        "purpose": "benchmark"})
    return ArtifactCache(registry).local_path(name, version.version)


def digits_parquet(folder: Path, rows: int, files: int) -> np.ndarray:
    """The real digits (1,797 x 64 pixels) repeated to ``rows`` rows, as ``files`` Parquet files of a
    list column ``features``; returns one copy of the digits."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    from maas.templates.sources import list_column

    digits = load_digits().data.astype(np.float32)
    x = np.resize(digits, (rows, digits.shape[1]))
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(x, files)):
        pq.write_table(pa.table({"features": list_column(part)}), folder / f"part-{i:03d}.parquet",
                       row_group_size=65536)
    return digits


def animal_folder(folder: Path, count: int) -> np.ndarray:
    """``count`` real Animal-MNIST silhouettes (28x28 grayscale PNG, repeated past 10,000) in one
    folder per class."""
    from PIL import Image

    from maas.templates.images import read_animal_mnist

    images, labels = read_animal_mnist()
    for i in range(count):
        target = folder / f"animal_{labels[i % len(labels)]}" / f"{i:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i % len(images)]).save(target)
    return images


def job(model: str, data: Path, out: Path, registry: str, batch_size: int) -> dict:
    from maas.batch import predict_dataset

    report = predict_dataset(model, str(data), str(out), registry=registry, batch_size=batch_size)
    return report.to_dict()


def run(args: argparse.Namespace, work: Path) -> dict:
    from maas.registry import Registry
    from maas.templates import DataInfo, DataSplits, FeatureStats

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]  # other work on the machine makes every figure lower: recorded beside them
    registry = Registry(str(work / "registry"))
    logger.info("staging %d digits rows and %d images", args.mlp_rows, args.images)
    digits = digits_parquet(work / "digits", args.mlp_rows, files=8)
    images = animal_folder(work / "animals", args.images)
    mlp_info = DataInfo(DataSplits("", ""), item_shape=(64,), class_names=tuple(str(k) for k in range(10)),
                        stats=FeatureStats(mean=tuple(digits.mean(0).tolist()),
                                           std=tuple(np.maximum(digits.std(0), 1e-6)), count=len(digits)))
    cnn_info = DataInfo(DataSplits("", ""), item_shape=(128, 128, 3),
                        class_names=tuple(f"animal_{k}" for k in range(10)))
    paths = {"mlp": _publish(registry, "tabular_mlp", mlp_info, work / "export", "bench-batch-mlp", "parquet"),
             "cnn": _publish(registry, "image_cnn", cnn_info, work / "export", "bench-batch-cnn", "images")}
    # What the job feeds the models: digits rows, and silhouettes decoded to RGB and resized as the reader does.
    from PIL import Image

    rgb = np.stack([np.asarray(Image.fromarray(im).resize((128, 128), Image.BILINEAR).convert("RGB"))
                    for im in images[: args.cnn_batch]])
    inputs = {"mlp": ("features", np.resize(digits, (args.mlp_batch, 64))), "cnn": ("image", rgb)}
    single = {}
    for key, (name, x) in inputs.items():
        logger.info("in-process ceiling of %s at batch %d (one thread)", key, len(x))
        single[key] = ceiling(paths[key], name, x)

    import ray

    ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    runs = []
    try:
        for key, model, data, batch in (("mlp", "bench-batch-mlp", work / "digits", args.mlp_batch),
                                        ("cnn", "bench-batch-cnn", work / "animals", args.cnn_batch)):
            logger.info("batch job on %s", key)
            report = job(model, data, work / f"out-{key}", registry.uri, batch)
            top = cores * single[key]
            runs.append({"model": key, "template": "tabular_mlp" if key == "mlp" else "image_cnn",
                         "data": "digits, Parquet (list column)" if key == "mlp"
                                 else "Animal-MNIST PNG folder, 28x28 -> 128x128x3",
                         "rows": report["rows"], "batch_size": batch, "wall_s": report["wall_s"],
                         "rows_per_s": report["rows_per_s"], "scoring_s": report["scoring_s"],
                         "scoring_rows_per_s": report["scoring_rows_per_s"],
                         "single_process_rows_per_s": round(single[key], 1), "cores": cores,
                         "ceiling_rows_per_s": round(top, 1), "ratio": round(report["scoring_rows_per_s"] / top, 3),
                         "end_to_end_ratio": round(report["rows_per_s"] / top, 3), "actors": report["actors"]})
    finally:
        ray.shutdown()
    return {"machine": describe_machine(), "load_average_at_start": load, "target_ratio": TARGET, "runs": runs}


def markdown(results: dict) -> str:
    m = results["machine"]
    head = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Ray {m['ray']}, TensorFlow "
            f"{m['tensorflow']}; load average {results['load_average_at_start']:.1f} at the start. Ceiling: cores x "
            "the SavedModel called in one process on one thread, same batch size, inputs in memory, after its "
            "first call. Job: rows from the first batch's start to the last one's end (reading, decoding and "
            "writing beside it); end to end: the whole run, start-up included.")
    columns = ("| model | data | rows | batch | 1 process rows/s | ceiling rows/s | job rows/s, first to last batch "
               "| job / ceiling | job rows/s end to end (wall s) | end to end / ceiling |")
    lines = [head, "", columns,
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['model']} ({r['template']}) | {r['data']} | {r['rows']:,} | {r['batch_size']} | "
                     f"{r['single_process_rows_per_s']:,.0f} | {r['ceiling_rows_per_s']:,.0f} | "
                     f"{r['scoring_rows_per_s']:,.0f} | {r['ratio']:.0%} | "
                     f"{r['rows_per_s']:,.0f} ({r['wall_s']:.1f}) | "
                     f"{r['end_to_end_ratio']:.0%} |")
    lines += ["", "Per actor, rows/s while scoring (conversion and model call, per batch):", ""]
    for r in results["runs"]:
        lines.append(f"- {r['model']}: " + ", ".join(f"{a['rows']:,} rows at {a['rows_per_s']:,.0f} rows/s "
                                                     f"(loaded in {a['load_s']:.1f} s)" for a in r["actors"]))
    targets = [Target(f"{r['model']}: batch job >= {results['target_ratio']:.0%} of the in-process ceiling",
                      f"{r['ratio']:.0%} ({r['scoring_rows_per_s']:,.0f} of {r['ceiling_rows_per_s']:,.0f} rows/s)",
                      r["ratio"] >= results["target_ratio"]) for r in results["runs"]]
    return "\n".join([*lines, "", *_targets_md(targets)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_inference", description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-rows", type=int, default=2_000_000)
    parser.add_argument("--mlp-batch", type=int, default=8192)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--cnn-batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Before TensorFlow runs anything in this process: the ceiling is one thread's.
    from maas.batch import limit_threads

    limit_threads(1)
    work = Path(tempfile.mkdtemp(prefix="maas-bench-batch-"))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_inference.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "batch_inference.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
