"""Large bodies must not stall a replica: while clients post 16 MB JSON requests, the health check
and small predictions on the same replica keep their latency.

    python -m benchmarks.big_bodies                 # 4 clients x 16 MB, 30 s (make bench-big-bodies)
    python -m benchmarks.big_bodies --seconds 10 --big-clients 2

The service is this project as users run it (`maas cluster up`, the Serve config with one replica
pinned, so that every probe lands on the replica that decodes the big bodies), serving the MLP of the
serving benchmark. Measured in one run: the probes' latencies idle (the baseline), then while the big
clients post, each in a process of its own, back to back. Targets: p99 of the health check and of
small predictions under 50 ms while the big bodies are decoded (issue 14), and the ratio to the idle
p99 in the same run. Writes benchmarks/results/big_bodies.json and .md. The same run then measures the baseline: the
service redeployed with ``offload_bytes`` past any body, so that bodies are decoded on the replica's
event loop, as before the codec process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine
from benchmarks.models import MODELS, publish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET_P99_MS = 50.0
logger = logging.getLogger("benchmarks")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.big_bodies", description=__doc__.splitlines()[0])
    parser.add_argument("--big-clients", type=int, default=4)
    parser.add_argument("--body-mb", type=float, default=16.0, help="size of each big JSON body (default: 16)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default: 30)")
    parser.add_argument("--probe-hz", type=float, default=20.0, help="probes per second, each kind (default: 20)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.big_clients < 1 or args.body_mb <= 0 or args.seconds <= 0 or args.probe_hz <= 0:
        parser.error("every option must be positive")
    return args


def big_body(mb: float) -> tuple[bytes, int]:
    """A TF Serving :predict body of about ``mb`` MB for the MLP (784 float features per instance)."""
    model = MODELS["mlp"]
    one = len(json.dumps(model.sample(1).tolist()[0])) + 1
    n = int(mb * 1e6 // one)
    body = json.dumps({"instances": model.sample(n, seed=1).tolist()}).encode()
    return body, n


def _post_big(url: str, body: bytes, key: str, until: float, results: multiprocessing.Queue) -> None:
    """One big client: posts ``body`` back to back until ``until``; reports (status, seconds) of each."""
    host = url.removeprefix("http://")
    outcomes = []
    conn = http.client.HTTPConnection(host, timeout=120)
    while time.time() < until:
        started = time.perf_counter()
        try:
            conn.request("POST", f"/v1/models/{MODELS['mlp'].name}:predict", body=body,
                         headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
            response = conn.getresponse()
            response.read()
            outcomes.append((response.status, time.perf_counter() - started))
        except OSError as exc:
            outcomes.append((repr(exc), time.perf_counter() - started))
            conn.close()
            conn = http.client.HTTPConnection(host, timeout=120)
    results.put(outcomes)


def probe(url: str, key: str, seconds: float, hz: float) -> dict[str, dict]:
    """Alternate a health check and a one-instance prediction at ``hz`` each for ``seconds``; every
    outcome is kept (status or exception) and latencies summarized per kind."""
    host = url.removeprefix("http://")
    small = json.dumps({"instances": MODELS["mlp"].sample(1).tolist()}).encode()
    calls = {
        "health": ("GET", "/v2/health/live", None, {}),
        "small_predict": ("POST", f"/v1/models/{MODELS['mlp'].name}:predict", small,
                          {"content-type": "application/json", "authorization": f"Bearer {key}"}),
    }
    conns = {kind: http.client.HTTPConnection(host, timeout=30) for kind in calls}
    latencies: dict[str, list[float]] = {kind: [] for kind in calls}
    outcomes: dict[str, dict[str, int]] = {kind: {} for kind in calls}
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        for kind, (method, path, body, headers) in calls.items():
            started = time.perf_counter()
            try:
                conns[kind].request(method, path, body=body, headers=headers)
                response = conns[kind].getresponse()
                response.read()
                outcome = str(response.status)
            except OSError as exc:
                outcome = type(exc).__name__
                conns[kind].close()
                conns[kind] = http.client.HTTPConnection(host, timeout=30)
            latencies[kind].append((time.perf_counter() - started) * 1000)
            outcomes[kind][outcome] = outcomes[kind].get(outcome, 0) + 1
        next_at += 1.0 / hz
        time.sleep(max(0.0, next_at - time.monotonic()))
    return {kind: {"n": len(ms), "outcomes": outcomes[kind], "p50_ms": round(float(np.percentile(ms, 50)), 1),
                   "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(max(ms), 1)}
            for kind, ms in latencies.items()}


def run(args: argparse.Namespace) -> dict:
    from maas import deploy, local_cluster, settings
    from maas.auth import KeyStore
    from maas.registry import Registry

    if local_cluster.local_state().running:
        raise RuntimeError("a Ray cluster already runs on this machine: stop it (`make stop`) first")
    work = args.out / ".work"
    registry = Registry(str(work / "registry"))
    publish(MODELS["mlp"], registry, work)
    body, instances = big_body(args.body_mb)
    local_cluster.up()
    try:
        key = KeyStore(registry.uri).create("benchmark")[0]
        config = deploy.load_serve_config(registry=registry.uri)
        server = config["applications"][0]["deployments"][0]
        server["autoscaling_config"].update(min_replicas=1, max_replicas=1)  # every probe on the decoding replica
        deploy.deploy(config, timeout_s=600)
        url = f"http://127.0.0.1:{settings.SERVE_PORT}"
        probe(url, key, 3.0, args.probe_hz)  # warm: the model loaded, connections open
        logger.info("idle probes, %gs", args.seconds)
        idle = probe(url, key, args.seconds, args.probe_hz)
        loaded, big = _under_big_bodies(url, key, body, instances, args)
        # The same run's baseline: every body decoded on the replica's event loop (as in 6c14451).
        config["applications"][0]["args"].setdefault("limits", {})["offload_bytes"] = 1 << 30
        deploy.deploy(config, timeout_s=600)
        probe(url, key, 3.0, args.probe_hz)
        inline, inline_big = _under_big_bodies(url, key, body, instances, args)
    finally:
        local_cluster.down()
    return {
        "machine": describe_machine(),
        "settings": {"big_clients": args.big_clients, "body_bytes": len(body), "instances": instances,
                     "seconds": args.seconds, "probe_hz": args.probe_hz},
        "idle": idle, "under_big_bodies": loaded, "big_requests": _summary(big),
        "baseline_decoded_on_the_loop": {"under_big_bodies": inline, "big_requests": _summary(inline_big)},
    }


def _under_big_bodies(url: str, key: str, body: bytes, instances: int,
                      args: argparse.Namespace) -> tuple[dict, list]:
    """Probe while ``args.big_clients`` processes post ``body`` back to back."""
    logger.info("probes while %d clients post %.1f MB bodies (%d instances), %gs", args.big_clients,
                len(body) / 1e6, instances, args.seconds)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    until = time.time() + args.seconds + 2
    clients = [context.Process(target=_post_big, args=(url, body, key, until, queue)) for _ in range(args.big_clients)]
    for c in clients:
        c.start()
    time.sleep(1.0)  # every big client has a body on the wire
    probes = probe(url, key, args.seconds, args.probe_hz)
    big = [outcome for _ in clients for outcome in queue.get(timeout=600)]
    for c in clients:
        c.join(timeout=60)
    return probes, big


def _summary(big: list) -> dict:
    ok = [s for status, s in big if status == 200]
    outcomes: dict[str, int] = {}
    for status, _ in big:
        outcomes[str(status)] = outcomes.get(str(status), 0) + 1
    return {"n": len(big), "outcomes": outcomes, "p50_s": round(float(np.percentile(ok, 50)), 2) if ok else None}


def markdown(results: dict) -> str:
    s = results["settings"]
    baseline = results["baseline_decoded_on_the_loop"]["under_big_bodies"]
    lines = [f"# Big bodies: {s['big_clients']} clients posting {s['body_bytes'] / 1e6:.1f} MB JSON "
             f"({s['instances']} instances) for {s['seconds']:g} s", "",
             "| probe | idle p50 / p99 ms | under big bodies p50 / p99 / max ms | same run, decoded on the loop "
             "p50 / p99 / max ms | target p99 < 50 ms |", "|---|---|---|---|---|"]
    for kind, loaded in results["under_big_bodies"].items():
        idle, inline = results["idle"][kind], baseline[kind]
        met = "**yes**" if loaded["p99_ms"] < TARGET_P99_MS and set(loaded["outcomes"]) == {"200"} else "**no**"
        lines.append(f"| {kind} | {idle['p50_ms']} / {idle['p99_ms']} | {loaded['p50_ms']} / {loaded['p99_ms']} / "
                     f"{loaded['max_ms']} | {inline['p50_ms']} / {inline['p99_ms']} / {inline['max_ms']} | {met} |")
    big, inline_big = results["big_requests"], results["baseline_decoded_on_the_loop"]["big_requests"]
    lines += ["", f"Big requests answered: {big['outcomes']} (p50 {big['p50_s']} s each); decoded on the loop: "
                  f"{inline_big['outcomes']} (p50 {inline_big['p50_s']} s). Probe outcomes under load: "
                  f"{ {k: v['outcomes'] for k, v in results['under_big_bodies'].items()} }.",
              "", f"Machine: {results['machine']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "big_bodies.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (args.out / "big_bodies.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
