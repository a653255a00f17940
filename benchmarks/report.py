"""Result files -> Markdown tables, PNG plots and the issue's targets, each judged met or not.

    python -m benchmarks.report            # re-render benchmarks/results/*.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    text: str
    measured: str
    met: bool | None  # None: a figure it needs is missing


def _row(rows: list[dict], contender: str, scenario: str, concurrency: int) -> dict | None:
    model, payload = scenario.split(":")
    return next((r for r in rows if r["contender"] == contender and r["model"] == model
                 and r["payload"] == payload and r["concurrency"] == concurrency), None)


def serving_targets(results: dict) -> list[Target]:
    rows = results["serving"]
    targets = []
    ours, fastapi, bento = (_row(rows, c, "mlp:json1", 32) for c in ("maas", "fastapi", "bentoml"))
    if ours and fastapi:
        ratio = ours["requests_per_s"] / fastapi["requests_per_s"]
        targets.append(Target("MLP, JSON, 1 instance, 32 clients: >= 1.5x FastAPI throughput",
                              f"{ratio:.2f}x ({ours['requests_per_s']:.0f} vs {fastapi['requests_per_s']:.0f} req/s)",
                              ratio >= 1.5))
        targets.append(Target("... with p99 no worse than FastAPI's",
                              f"{ours['p99_ms']:.1f} vs {fastapi['p99_ms']:.1f} ms",
                              ours["p99_ms"] <= fastapi["p99_ms"]))
    else:
        targets.append(Target("MLP, JSON, 1 instance, 32 clients: >= 1.5x FastAPI throughput", "not measured", None))
    if ours and bento:
        ratio = ours["requests_per_s"] / bento["requests_per_s"]
        targets.append(Target("MLP, JSON, 1 instance, 32 clients: >= 3x BentoML throughput",
                              f"{ratio:.2f}x ({ours['requests_per_s']:.0f} vs {bento['requests_per_s']:.0f} req/s)",
                              ratio >= 3))
    else:
        targets.append(Target("MLP, JSON, 1 instance, 32 clients: >= 3x BentoML throughput", "not measured", None))
    binary, cnn_json = _row(rows, "maas", "cnn:binary", 32), _row(rows, "fastapi", "cnn:json1", 32)
    if binary and cnn_json:
        ratio = binary["requests_per_s"] / cnn_json["requests_per_s"]
        targets.append(Target("CNN, binary tensors, 32 clients: >= 10x FastAPI's JSON throughput",
                              f"{ratio:.1f}x ({binary['requests_per_s']:.0f} vs "
                              f"{cnn_json['requests_per_s']:.0f} req/s)",
                              ratio >= 10))
    ceiling = results.get("in_process", {}).get("cnn", {})
    ceiling32 = ceiling.get("32") or ceiling.get(32)
    if binary and ceiling32:
        share = binary["instances_per_s"] / ceiling32
        targets.append(Target("CNN, binary tensors, 32 clients: >= 60% of the in-process ceiling at batch 32",
                              f"{share:.0%} ({binary['instances_per_s']:.0f} of {ceiling32:.0f} images/s)",
                              share >= 0.6))
    targets.append(_ratio_target("CNN image over gRPC, 32 clients: >= 1.2x the REST binary tensor throughput",
                                 _row(rows, "maas", "cnn:grpc1", 32), binary, 1.2))
    targets.append(_ratio_target("MLP, 1 instance over gRPC, 32 clients: >= REST JSON throughput",
                                 _row(rows, "maas", "mlp:grpc1", 32), ours, 1.0))
    one, hand = _row(rows, "maas", "mlp:json1", 1), _row(rows, "fastapi", "mlp:json1", 1)
    if one and hand:
        gap = one["p50_ms"] - hand["p50_ms"]
        targets.append(Target("p50 at concurrency 1 within 2 ms of the hand-written server",
                              f"{one['p50_ms']:.2f} vs {hand['p50_ms']:.2f} ms ({gap:+.2f} ms)", gap <= 2.0))
    return targets


def _ratio_target(text: str, ours: dict | None, theirs: dict | None, at_least: float) -> Target:
    """``ours`` against ``theirs`` in throughput, with both p50 and p99 beside the ratio."""
    if not ours or not theirs:
        return Target(text, "not measured", None)
    ratio = ours["requests_per_s"] / theirs["requests_per_s"]
    return Target(text, f"{ratio:.2f}x ({ours['requests_per_s']:.0f} vs {theirs['requests_per_s']:.0f} req/s; "
                        f"p50 {ours['p50_ms']:.1f} vs {theirs['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} vs "
                        f"{theirs['p99_ms']:.1f} ms)", ratio >= at_least)


def _targets_md(targets: list[Target]) -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.text} | {t.measured} | {'yes' if t.met else 'no' if t.met is False else '-'} |")
    return lines


def serving_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPUs: {', '.join(m['gpus']) or 'none'}; "
             f"Ray {m['ray']}, TensorFlow {m['tensorflow']}, Python {m['python']}. Closed loop, at most "
             f"{results['settings']['max_requests']} requests or {results['settings']['max_seconds']:g} s "
             "per cell.", ""]
    rows = results["serving"]
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    scenarios = list(dict.fromkeys(f"{r['model']}:{r['payload']}" for r in rows))
    concurrency = results["settings"]["concurrency"]
    lines += ["| model:payload | clients | " + " | ".join(f"{c} req/s (p50 / p99 ms)" for c in contenders) + " |",
              "|---|---|" + "---|" * len(contenders)]
    for scenario in scenarios:
        for c in concurrency:
            cells = []
            for contender in contenders:
                r = _row(rows, contender, scenario, c)
                cells.append("-" if r is None else f"{r['requests_per_s']:.0f} ({r['p50_ms']:.1f} / {r['p99_ms']:.1f})"
                             + (f" {r['errors']} errors" if r["errors"] else ""))
            lines.append(f"| {scenario} | {c} | " + " | ".join(cells) + " |")
    if results.get("in_process"):
        lines += ["", "In-process ceiling (the SavedModel called directly, no HTTP), samples/s:", "",
                  "| model | batch 1 | batch 8 | batch 32 | batch 128 |", "|---|---|---|---|---|"]
        for model, by_batch in results["in_process"].items():
            lines.append(f"| {model} | " + " | ".join(f"{v:.0f}" for v in by_batch.values()) + " |")
    starts = {r["contender"]: r["startup_s"] for r in rows}
    lines += ["", "Start-up to listening (s): " + ", ".join(f"{c} {s}" for c, s in starts.items())]
    firsts = {(r["contender"], f"{r['model']}:{r['payload']}"): r["first_request_s"]
              for r in rows if r.get("first_request_s") is not None}
    if firsts:
        lines += ["First answer of each model after start-up, load and warm-up included (s): "
                  + ", ".join(f"{c} {m} {s}" for (c, m), s in firsts.items())]
    settles = [f"{r['contender']} {r['model']}:{r['payload']} c={r['concurrency']} {r['settle_s']}"
               for r in rows if r.get("settle_s")]
    if settles:
        lines += ["Autoscaling to the replicas a concurrency needs, under that load, before it was measured (s): "
                  + ", ".join(settles)]
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"Not measured: {name} ({reason})")
    lines += ["", *_targets_md(serving_targets(results))]
    return "\n".join(lines) + "\n"


def serving_plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["serving"]
    scenarios = list(dict.fromkeys(f"{r['model']}:{r['payload']}" for r in rows))
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    colors = {c: f"C{i}" for i, c in enumerate(contenders)}  # one colour per contender in every panel
    written = []
    for metric, ylabel, name in (("requests_per_s", "requests/s", "throughput"),
                                 ("p50_ms", "p50 latency (ms)", "latency_p50"),
                                 ("p99_ms", "p99 latency (ms)", "latency_p99")):
        fig, axes = plt.subplots(1, len(scenarios), figsize=(4 * len(scenarios), 3.4), squeeze=False)
        for ax, scenario in zip(axes[0], scenarios, strict=True):
            for contender in contenders:
                points = [(r["concurrency"], r[metric]) for r in rows
                          if r["contender"] == contender and f"{r['model']}:{r['payload']}" == scenario]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=contender, color=colors[contender])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(scenario)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
        axes[0][0].legend(fontsize="small")
        fig.tight_layout()
        path = out / f"serving_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write_serving(results: dict, out: Path) -> str:
    text = serving_markdown(results)
    (out / "serving.md").write_text(text)
    serving_plots(results, out)
    return text


def training_markdown(results: dict) -> str:
    lines = ["| trainer | workers | samples/s | seconds to accuracy "
             f"{results['target_accuracy']:.2f} | final accuracy |", "|---|---|---|---|---|"]
    for r in results["runs"]:
        reached = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        lines.append(f"| {r['trainer']} | {r['workers']} | {r['samples_per_s']:.0f} | {reached} | "
                     f"{r['accuracy']:.3f} |")
    by = {(r["trainer"], r["workers"]): r for r in results["runs"]}
    keras1, ray1, ray2 = by.get(("keras fit", 1)), by.get(("ray train", 1)), by.get(("ray train", 2))
    targets = []
    if keras1 and ray1:
        share = ray1["samples_per_s"] / keras1["samples_per_s"]
        targets.append(Target("Ray Train, 1 worker, within 15% of plain Keras fit samples/s",
                              f"{share:.0%} of Keras", share >= 0.85))
    if ray1 and ray2:
        ratio = ray2["samples_per_s"] / ray1["samples_per_s"]
        targets.append(Target("Ray Train, 2 workers on 2 cores no slower than 1", f"{ratio:.2f}x", ratio >= 1.0))
    return "\n".join([*lines, "", *_targets_md(targets)]) + "\n"


def main() -> None:
    for name, render in (("serving", write_serving), ("training", None)):
        path = RESULTS / f"{name}.json"
        if path.exists():
            results = json.loads(path.read_text())
            if render is None:
                text = training_markdown(results)
                (RESULTS / "training.md").write_text(text)
            else:
                text = render(results, RESULTS)
            print(text)


if __name__ == "__main__":
    main()
