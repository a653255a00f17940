"""Where a request's CPU goes, REST against gRPC: the service as users run it (the Maas contender), the
MLP with one instance a request, 32 closed-loop clients; CPU seconds of each kind of process (Serve
replicas, HAProxy, the head's Serve proxy, the codec actors, the load generator itself) read from
/proc around each measurement, divided by the requests answered.

    python -m benchmarks.cpu_per_request          # writes benchmarks/results/cpu_per_request.json
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

from benchmarks.contenders import Maas
from benchmarks.loadgen import closed_loop
from benchmarks.models import MODELS, publish

RESULTS = Path(__file__).resolve().parent / "results"
_KINDS = {"ServeReplica": "replica", "haproxy": "haproxy", "BodyCodec": "codec", "ProxyActor": "proxy"}


def _cpu_by_process() -> dict[str, tuple[str, float]]:
    """pid -> (kind, CPU seconds so far) for the service's processes."""
    tick, found = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = next((k for marker, k in _KINDS.items() if marker in cmd), None)
        if kind:
            found[pid] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    return found


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    from maas.registry import Registry

    work = RESULTS / ".work"
    model = MODELS["mlp"]
    contender = Maas(str(work / "registry"))
    contender.start({model: publish(model, Registry(str(work / "registry")), work)})
    rows = []
    try:
        for payload in ("json1", "grpc1", "json1", "grpc1"):  # twice each, interleaved
            request = contender.request(model, payload)
            closed_loop(request, 32, max_requests=500, max_seconds=10)  # warm, and scaled as it will be
            before, own = _cpu_by_process(), _own_cpu()
            result = closed_loop(request, 32, max_requests=3000, max_seconds=30, warmup=0)
            after, own = _cpu_by_process(), _own_cpu() - own
            spent: dict[str, float] = {}
            for pid, (kind, cpu) in after.items():
                spent[kind] = spent.get(kind, 0.0) + cpu - before.get(pid, (kind, cpu))[1]
            n = max(result.requests, 1)
            row = {"payload": payload, "requests_per_s": result.requests_per_s, "errors": result.errors,
                   "cpu_ms_per_request": {k: round(v / n * 1000, 2) for k, v in sorted(spent.items())},
                   "load_generator_cpu_ms_per_request": round(own / n * 1000, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        contender.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu_per_request.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
