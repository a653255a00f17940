"""Training benchmark: the digits template (real data) trained by Ray Train with 1 and 2 workers and
by plain single-process Keras ``fit``, same model, data, batch size and epochs, in one run.

    python -m benchmarks.training [--epochs 8] [--target-accuracy 0.95]

Samples/s is the last epoch's (steady state: tracing and start-up are behind it). Seconds to
accuracy is the whole run — start-up, training, held-out evaluation — when its model reaches the
target accuracy on the held-out split, else none. Writes benchmarks/results/training.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks import report
from benchmarks.machine import describe_machine

if TYPE_CHECKING:
    from maas.training.config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
logger = logging.getLogger("benchmarks")


def keras_fit(config: TrainConfig, target: float) -> dict:
    import keras

    from maas.templates import get_template
    from maas.training.data import check_data, split_arrays

    started = time.perf_counter()
    template = get_template(config.template)
    info = check_data(config)
    x, y = split_arrays(template, info, "train")
    x_test, y_test = split_arrays(template, info, "test")
    keras.utils.set_random_seed(config.seed)
    model = template.build_model(info)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    epoch_s: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=config.batch_size, epochs=config.epochs, shuffle=True, verbose=0, callbacks=[Timer()])
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    seconds = time.perf_counter() - started
    return {"trainer": "keras fit", "workers": 1, "samples_per_s": len(x) / epoch_s[-1], "accuracy": accuracy,
            "seconds": round(seconds, 1), "seconds_to_target": seconds if accuracy >= target else None}


def ray_train(config: TrainConfig, target: float) -> dict:
    from maas.training.driver import run_training

    started = time.perf_counter()
    outcome = run_training(config)
    seconds = time.perf_counter() - started
    accuracy = float(outcome.metrics["accuracy"])
    training = outcome.version.metadata.training
    return {"trainer": "ray train", "workers": config.num_workers, "samples_per_s": training.samples_per_second,
            "accuracy": accuracy, "seconds": round(seconds, 1),
            "seconds_to_target": seconds if accuracy >= target else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import ray

    from maas import local_cluster
    from maas.training.config import TrainConfig

    if local_cluster.local_state().running:
        raise SystemExit("error: a Ray cluster already runs on this machine: stop it (`make stop`) first")
    work = Path(tempfile.mkdtemp(prefix="maas-bench-train-"))
    ray.init(num_cpus=2, logging_level="WARNING")  # the dashboard too: Ray Train polls the state API
    runs = []
    try:
        base = dict(template="digits", epochs=args.epochs, registry=str(work / "registry"),
                    storage_path=str(work / "runs"), data_dir=str(work / "data"))
        logger.info("plain Keras fit")
        runs.append(keras_fit(TrainConfig(**base, num_workers=1, model_name="bench-keras"), args.target_accuracy))
        for workers in (1, 2):
            logger.info("Ray Train, %d worker(s)", workers)
            runs.append(ray_train(TrainConfig(**base, num_workers=workers, model_name=f"bench-ray-{workers}"),
                                  args.target_accuracy))
    finally:
        ray.shutdown()
    results = {"machine": describe_machine(), "template": "digits", "epochs": args.epochs,
               "target_accuracy": args.target_accuracy, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(results, indent=1))
    text = report.training_markdown(results)
    (args.out / "training.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
