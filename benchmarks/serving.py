"""Serving benchmark: every contender on 127.0.0.1, the same models and the same closed-loop load.

    python -m benchmarks.serving                          # everything (make bench)
    python -m benchmarks.serving --contenders maas fastapi --scenarios mlp:json1 --concurrency 32

Writes benchmarks/results/serving.json, serving.md and PNG plots, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from benchmarks import report
from benchmarks.contenders import PAYLOADS, BentoML, Contender, FastAPIServer, KServe, Maas, answers, in_process
from benchmarks.loadgen import closed_loop
from benchmarks.machine import describe_machine
from benchmarks.models import MODELS, publish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCENARIOS = ["mlp:json1", "mlp:json32", "cnn:json1", "cnn:binary", "lstm:json1",
             "mlp:grpc1", "mlp:grpc32", "cnn:grpc1", "lstm:grpc1"]
CONTENDERS = {"maas": Maas, "fastapi": FastAPIServer, "bentoml": BentoML, "kserve": KServe}
logger = logging.getLogger("benchmarks")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=SCENARIOS, metavar="MODEL:PAYLOAD",
                        help=f"default: all of {' '.join(SCENARIOS)}")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--max-requests", type=int, default=4000, help="per measurement (default: 4000)")
    parser.add_argument("--max-seconds", type=float, default=5.0, help="per measurement (default: 5)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.max_requests < 1 or args.max_seconds <= 0:
        parser.error("--concurrency, --max-requests and --max-seconds must be positive")
    return args


def run(args: argparse.Namespace) -> dict:
    from maas.registry import Registry

    work = args.out / ".work"
    registry = Registry(str(work / "registry"))
    scenarios = [tuple(s.split(":")) for s in args.scenarios]
    wanted = {MODELS[m] for m, _ in scenarios}
    models = {m: publish(m, registry, work) for m in MODELS.values() if m in wanted}

    results: dict = {"machine": describe_machine(), "settings": {
        "concurrency": args.concurrency, "max_requests": args.max_requests, "max_seconds": args.max_seconds},
        "in_process": {}, "serving": [], "skipped": {}}
    for key, model in MODELS.items():
        if model in models:
            logger.info("in-process ceiling of %s", key)
            results["in_process"][key] = in_process(models[model], model, [1, 8, 32, 128])

    for name in args.contenders:
        cls = CONTENDERS[name]
        if reason := cls.available():
            results["skipped"][name] = reason
            logger.warning("skipping %s: %s", name, reason)
            continue
        contender: Contender = cls(str(work / "registry")) if cls is Maas else cls()
        logger.info("starting %s", name)
        started = time.monotonic()
        try:
            contender.start(models)
            startup_s = round(time.monotonic() - started, 1)
            for model_key, payload in scenarios:
                model = MODELS[model_key]
                request = contender.request(model, payload)
                if request is None:
                    continue
                first = time.monotonic()
                answers(request)  # also the cold start of this model: load and warm-up
                cold_s = round(time.monotonic() - first, 3)
                for concurrency in args.concurrency:
                    settle_s = contender.settle(request, concurrency)
                    result = closed_loop(request, concurrency, max_requests=args.max_requests,
                                         max_seconds=args.max_seconds)
                    row = {"contender": name, "model": model_key, "payload": payload,
                           "instances_per_request": PAYLOADS[payload], "startup_s": startup_s,
                           "first_request_s": cold_s, "settle_s": settle_s,
                           **result.to_dict()}
                    results["serving"].append(row)
                    print(f"{name:8} {model_key}:{payload:7} c={concurrency:<4} {result.requests_per_s:>8.1f} req/s "
                          f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  errors {result.errors}",
                          flush=True)
        except Exception as exc:  # noqa: BLE001 (one contender failing to start must not lose the others' figures)
            results["skipped"][name] = f"{type(exc).__name__}: {exc}"
            logger.error("%s failed: %s", name, exc)
        finally:
            contender.stop()
    return results


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(results, indent=1))
    print(report.write_serving(results, args.out))


if __name__ == "__main__":
    main()
