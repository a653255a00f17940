"""What request capture and a shadow version cost the service: one maas service (`maas cluster up`,
the Serve config as committed) answering the MLP one instance per request at 32 clients, with capture
off, at 5% and at 100% of predictions, and with a shadow at 20% of routed requests, each switched on
through the registry as users do (`maas models capture`, `maas models label ... shadow`), no redeploy.

    python -m benchmarks.observability          # make bench-observability

The cells are measured in rounds, each round every cell once in turn, so that the machine's drift
spreads over all of them; each cell's figure is its median over the rounds, and its cost is the ratio
of its throughput to the capture-off cell's. Writes benchmarks/results/observability.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from benchmarks.contenders import Maas, answers
from benchmarks.loadgen import closed_loop
from benchmarks.machine import describe_machine
from benchmarks.models import MODELS, publish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CELLS = ("off", "capture 5%", "capture 100%", "shadow 20%")
logger = logging.getLogger("benchmarks")


def _switch(registry, model: str, cell: str) -> None:
    registry.set_capture_sample(model, {"capture 5%": 0.05, "capture 100%": 1.0}.get(cell, 0.0))
    if cell == "shadow 20%":
        registry.set_label(model, "shadow", 2, weight=0.2)
    elif "shadow" in registry.labels(model):
        registry.remove_label(model, "shadow")


def run(args: argparse.Namespace) -> dict:
    from maas.registry import Registry

    work = args.out / ".work" / "observability"
    registry = Registry(str(work / "registry"))
    model = MODELS["mlp"]
    path = publish(model, registry, work)
    if registry.latest(model.name) < 2:  # the shadow: the same network as another version
        registry.publish(model.name, str(path), registry.get(model.name, 1).metadata)
    registry.promote(model.name, 1)
    maas = Maas(registry.uri)
    figures: dict[str, list[dict]] = {cell: [] for cell in CELLS}
    try:
        maas.start({model: path})
        request = maas.request(model, "json1")
        assert request is not None
        answers(request)
        maas.settle(request, args.concurrency)
        for round_ in range(args.rounds):
            for cell in CELLS:
                _switch(registry, model.name, cell)
                time.sleep(3.0)  # registry_refresh_s (2 s): every replica sees the switch
                closed_loop(request, args.concurrency, max_requests=100_000, max_seconds=1.0, warmup=0)
                result = closed_loop(request, args.concurrency, max_requests=args.max_requests,
                                     max_seconds=args.max_seconds)
                figures[cell].append(result.to_dict())
                print(f"round {round_ + 1} {cell:13} {result.requests_per_s:8.1f} req/s  p50 {result.p50_ms:6.1f} ms  "
                      f"p99 {result.p99_ms:6.1f} ms  errors {result.errors}", flush=True)
        _switch(registry, model.name, "off")
    finally:
        maas.stop()
    summary = {cell: {"requests_per_s": statistics.median(r["requests_per_s"] for r in rows),
                      "p50_ms": statistics.median(r["p50_ms"] for r in rows),
                      "p99_ms": statistics.median(r["p99_ms"] for r in rows),
                      "errors": sum(r["errors"] for r in rows)} for cell, rows in figures.items()}
    base = summary["off"]["requests_per_s"]
    for cell in CELLS:
        summary[cell]["throughput_ratio"] = round(summary[cell]["requests_per_s"] / base, 3)
    return {"machine": describe_machine(), "settings": {"model": "mlp", "payload": "json1",
                                                        "concurrency": args.concurrency, "rounds": args.rounds,
                                                        "max_seconds": args.max_seconds},
            "cells": summary, "rounds": figures}


def write_markdown(results: dict, out: Path) -> str:
    lines = ["| cell | req/s | throughput vs off | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for cell, f in results["cells"].items():
        lines.append(f"| {cell} | {f['requests_per_s']:.1f} | {f['throughput_ratio']:.3f} | {f['p50_ms']:.1f} | "
                     f"{f['p99_ms']:.1f} | {f['errors']} |")
    text = "\n".join(lines) + "\n"
    (out / "observability.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.observability", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "observability.json").write_text(json.dumps(results, indent=1))
    print(write_markdown(results, args.out))


if __name__ == "__main__":
    main()
