"""Whether a training job's workers can be placed, decided before Ray Train is asked to place them.

Why this exists: Ray Train 2.60 retries a worker group that cannot be placed every
``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s) without limit, silently for the user; and its
elastic policy (``ScalingConfig(num_workers=(min, max))``) sizes the group from the nodes' *total*
resources, so when a Serve replica holds part of a node it asks for more workers than fit, times out
and asks for the same number again, forever. So the driver looks at what is *free*, node by node,
and either starts as many workers as fit (within the range asked for), waits a bounded time, or
fails with one line that says what was asked for, what is free and what holds the rest.

The decisions and the wording are pure functions of plain records (unit-tested without Ray); the
functions at the end (``read_*``, :func:`wait_for_workers`) read the live cluster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from maas.errors import ResourcesUnavailable

# Ray accounts resources in units of 1/10000; below this a difference is rounding, not a resource.
EPSILON = 1e-4
SERVE_REPLICA_PREFIX = "ServeReplica:"  # Ray Serve names a replica's actor class "ServeReplica:<app>:<deployment>"
TRAIN_WORKER_CLASS = "RayTrainWorker"  # Ray Train V2's worker actor
DEFAULT_START_TIMEOUT_S = 60.0  # Ray Train's RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S default


@dataclass(frozen=True)
class WorkerRequest:
    """What one training run asks the cluster for: ``min_workers``..``max_workers`` workers of
    ``cpus`` CPUs (and ``gpus`` GPUs) each, placed by ``strategy`` (Ray's placement group strategy)."""

    min_workers: int
    max_workers: int
    cpus: float
    gpus: float = 0.0
    strategy: str = "PACK"

    @property
    def bundle(self) -> dict[str, float]:
        """One worker's placement group bundle, as Ray Train builds it."""
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}

    def fixed(self, workers: int) -> WorkerRequest:
        """The same request for exactly ``workers`` workers."""
        return WorkerRequest(workers, workers, self.cpus, self.gpus, self.strategy)


@dataclass(frozen=True)
class NodeFree:
    """One alive node: its total and its currently free CPUs and GPUs."""

    node_id: str
    cpu_total: float
    cpu_free: float
    gpu_total: float = 0.0
    gpu_free: float = 0.0


@dataclass(frozen=True)
class Holder:
    """One kind of thing that holds cluster resources ("Serve replicas", "other actors", ...);
    ``names`` are the actor classes behind "other actors"."""

    what: str
    cpus: float
    gpus: float = 0.0
    names: tuple[str, ...] = ()


# ---- decisions (pure) ----------------------------------------------------------------------------


def node_capacity(node: NodeFree, request: WorkerRequest) -> int:
    """How many of ``request``'s workers fit in ``node``'s free resources."""
    fits = [(node.cpu_free + EPSILON) // request.cpus] if request.cpus > 0 else []
    if request.gpus > 0:
        fits.append((node.gpu_free + EPSILON) // request.gpus)
    return int(min(fits)) if fits else request.max_workers


def workers_that_fit(nodes: Iterable[NodeFree], request: WorkerRequest) -> int:
    """The most workers (at most ``request.max_workers``) that can be placed now. A worker needs all
    its resources on one node; PACK and SPREAD are preferences, so any node with room will do;
    STRICT_SPREAD needs a node per worker; STRICT_PACK needs one node for all of them."""
    capacities = [node_capacity(node, request) for node in nodes]
    if request.strategy == "STRICT_SPREAD":
        fit = sum(1 for c in capacities if c >= 1)
    elif request.strategy == "STRICT_PACK":
        fit = max(capacities, default=0)
    else:
        fit = sum(capacities)
    return min(fit, request.max_workers)


def groups_that_fit(nodes: Iterable[NodeFree], request: WorkerRequest, size: int) -> int:
    """How many groups of ``size`` workers fit side by side now (cross-validation folds run in
    parallel): under STRICT_SPREAD a node holds at most one worker of each group."""
    capacities = [node_capacity(node, WorkerRequest(1, size, request.cpus, request.gpus)) for node in nodes]
    if request.strategy == "STRICT_PACK":
        return sum(c // size for c in capacities)
    total = sum(capacities) // size
    if request.strategy != "STRICT_SPREAD":
        return total
    # g groups fit iff the nodes, each giving at most one worker per group, give g * size workers.
    return next((g for g in range(total, 0, -1) if sum(min(c, g) for c in capacities) >= g * size), 0)


def start_retries(wait_s: float, start_timeout_s: float) -> int:
    """Ray Train's ``FailureConfig(controller_failure_limit=…)`` for a run that may wait ``wait_s``.
    Each failed start of the worker group (its placement group not placed) costs ``start_timeout_s``;
    Ray's default limit is none, so a group that cannot be placed is retried forever. Allow as many
    attempts as the wait covers, at least one: no retry with the defaults (30 s within Ray's 60 s
    timeout), 9 with ``--wait-for-resources 600``. Restarts after a worker failure count the same."""
    return max(0, math.ceil(wait_s / start_timeout_s) - 1) if start_timeout_s > 0 else 0


def resource_amount(required: Mapping[str, float], name: str) -> float:
    """How much of ``name`` (CPU, GPU) an actor or task requires. Inside a placement group Ray
    renames the resource ``CPU_group_<pg>`` and, for a given bundle, also ``CPU_group_<i>_<pg>``,
    with the same amount: the amount is the largest of them, never their sum."""
    return max((v for k, v in required.items() if k == name or k.startswith(f"{name}_group_")), default=0.0)


def summarize_holders(
    actors: Iterable[tuple[str, Mapping[str, float]]],
    tasks: Iterable[Mapping[str, float]],
    used_cpus: float,
    used_gpus: float,
) -> tuple[Holder, ...]:
    """Group what holds the cluster's used resources: alive actors by kind (``(class name, required
    resources)``; Serve replicas, Ray Train workers, other actors by class), running tasks, and
    what remains of ``used_*``: placement groups reserving resources no actor or task uses yet."""
    kinds = ("Serve replicas", "Ray Train workers", "other actors", "running tasks")
    cpus = dict.fromkeys(kinds, 0.0)
    gpus = dict.fromkeys(kinds, 0.0)
    names: list[str] = []
    for class_name, required in actors:
        cpu, gpu = resource_amount(required, "CPU"), resource_amount(required, "GPU")
        if cpu < EPSILON and gpu < EPSILON:
            continue
        if class_name.startswith(SERVE_REPLICA_PREFIX):
            kind = "Serve replicas"
        elif class_name == TRAIN_WORKER_CLASS:
            kind = "Ray Train workers"
        else:
            kind = "other actors"
            short = class_name.rsplit(".", 1)[-1]  # Ray names a class by its qualified name: f.<locals>.C
            if short not in names:
                names.append(short)
        cpus[kind] += cpu
        gpus[kind] += gpu
    for required in tasks:
        cpus["running tasks"] += resource_amount(required, "CPU")
        gpus["running tasks"] += resource_amount(required, "GPU")
    holders = [Holder(kind, cpus[kind], gpus[kind], tuple(names) if kind == "other actors" else ())
               for kind in kinds if cpus[kind] >= EPSILON or gpus[kind] >= EPSILON]
    rest_cpu, rest_gpu = used_cpus - sum(cpus.values()), used_gpus - sum(gpus.values())
    if rest_cpu >= EPSILON or rest_gpu >= EPSILON:
        holders.append(Holder("placement groups", max(rest_cpu, 0.0), max(rest_gpu, 0.0)))
    return tuple(holders)


def _num(value: float) -> str:
    return f"{round(value, 4):g}"


def _amount(cpus: float, gpus: float) -> str:
    parts = ([f"{_num(cpus)} CPU"] if cpus >= EPSILON or not gpus else []) + ([f"{_num(gpus)} GPU"] if gpus else [])
    return " + ".join(parts)


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def describe_request(request: WorkerRequest) -> str:
    """``2 workers × 1 CPU``, ``1 worker × (1 CPU + 1 GPU)``, ``at least 2 of 2-4 workers × 1 CPU``."""
    shape = _amount(request.cpus, request.gpus)
    shape = f"({shape})" if request.gpus else shape
    if request.min_workers == request.max_workers:
        return f"{_workers(request.min_workers)} × {shape}"
    return f"at least {request.min_workers} of {request.min_workers}-{request.max_workers} workers × {shape}"


def do_not(request: WorkerRequest) -> str:
    """The verb for :func:`describe_request`'s phrase: ``1 worker … does not``, ``2 workers … do not``."""
    return "does not" if request.min_workers == 1 else "do not"


def describe_free(nodes: Iterable[NodeFree], request: WorkerRequest) -> str:
    """``1.5 of 2 CPU free (largest node 1.5)``, plus the GPUs when the request asks for some."""
    nodes = list(nodes)
    free = (f"{_num(sum(n.cpu_free for n in nodes))} of {_num(sum(n.cpu_total for n in nodes))} CPU free "
            f"(largest node {_num(max((n.cpu_free for n in nodes), default=0.0))})")
    if request.gpus:
        gpu_total = sum(n.gpu_total for n in nodes)
        if gpu_total < EPSILON:
            free += f"; asks for {_num(request.gpus)} GPU per worker; the cluster has 0 GPU"
        else:
            free += f"; {_num(sum(n.gpu_free for n in nodes))} of {_num(gpu_total)} GPU free"
    if request.strategy == "STRICT_SPREAD":
        roomy = sum(1 for n in nodes if node_capacity(n, request) >= 1)
        free += f"; STRICT_SPREAD needs one node per worker, {roomy} of {len(nodes)} have room"
    elif request.strategy == "STRICT_PACK":
        free += "; STRICT_PACK needs one node with room for all of them"
    return free


def describe_holders(holders: Iterable[Holder] | None) -> str:
    """``Serve replicas hold 0.5 CPU, other actors hold 1 CPU (Placeholder)``."""
    if holders is None:
        return "what holds the rest is unknown (Ray's state API did not answer)"
    parts = []
    for h in holders:
        verb = "reserve" if h.what == "placement groups" else "hold"
        named = ", ".join(h.names[:3]) + (f" and {len(h.names) - 3} more" if len(h.names) > 3 else "")
        parts.append(f"{h.what} {verb} {_amount(h.cpus, h.gpus)}" + (f" ({named})" if named else ""))
    return ", ".join(parts) if parts else "nothing else holds any"


def describe_shortfall(request: WorkerRequest, nodes: Iterable[NodeFree], holders: Iterable[Holder] | None,
                       problem: str) -> str:
    """The one line a job that cannot start fails with: what it asked for and ``problem`` (``do not
    fit after waiting 30 s``, see :func:`do_not`), what is free, what holds the rest, and what the
    user can do."""
    nodes = list(nodes)
    holders = None if holders is None else tuple(holders)
    fit = workers_that_fit(nodes, request)
    hints = []
    if 1 <= fit < request.min_workers:
        hints.append(f"use --num-workers {fit}-{request.max_workers} to start with what fits")
    largest = max((n.cpu_total for n in nodes), default=0.0)
    if request.cpus > largest + EPSILON:
        hints.append(f"lower --cpus-per-worker (the largest node has {_num(largest)} CPU)")
    if request.gpus and sum(n.gpu_total for n in nodes) < EPSILON:
        hints.append("drop --use-gpu or add GPU nodes")
    if holders and any(h.what == "Serve replicas" for h in holders):
        hints.append("free CPUs (maas undeploy)")
    if not hints:
        hints.append("add nodes (on an autoscaling cluster, raise --wait-for-resources)")
    advice = ", or ".join(hints)
    return (f"{describe_request(request)} {problem}: {describe_free(nodes, request)}; {describe_holders(holders)}. "
            f"{advice[0].upper()}{advice[1:]}.")


# ---- the live cluster ----------------------------------------------------------------------------


def read_nodes() -> tuple[NodeFree, ...]:
    """Every alive node's total and free CPUs and GPUs. Ray's public API gives free resources only
    for the whole cluster (``ray.available_resources()``), which says nothing about whether one
    worker's CPUs are free on one node; the per-node figures come from Ray's own global state
    (``ray._private.state``, what ``ray.available_resources()`` sums; Ray is pinned to 2.60)."""
    import ray
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        total, avail = node.get("Resources", {}), free.get(node["NodeID"], {})
        nodes.append(NodeFree(node["NodeID"], total.get("CPU", 0.0), avail.get("CPU", 0.0),
                              total.get("GPU", 0.0), avail.get("GPU", 0.0)))
    return tuple(nodes)


def read_holders(nodes: Iterable[NodeFree]) -> tuple[Holder, ...] | None:
    """What holds the used resources, from Ray's state API (alive actors, running tasks); ``None``
    when that API does not answer (a cluster without the dashboard, which serves it)."""
    import ray
    from ray.util.state import list_actors, list_tasks
    from ray.util.state.exception import RayStateApiException

    nodes = list(nodes)
    address = ray.get_runtime_context().gcs_address  # this cluster's, even with others on the machine
    try:
        actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000,
                             timeout=10, raise_on_missing_output=False)
        tasks = list_tasks(address=address, filters=[("state", "=", "RUNNING"), ("type", "=", "NORMAL_TASK")],
                           detail=True, limit=10_000, timeout=10, raise_on_missing_output=False)
    except (RayStateApiException, ConnectionError, OSError):
        return None
    return summarize_holders(
        ((a.class_name or "", a.required_resources or {}) for a in actors),
        (t.required_resources or {} for t in tasks),
        used_cpus=sum(n.cpu_total - n.cpu_free for n in nodes),
        used_gpus=sum(n.gpu_total - n.gpu_free for n in nodes),
    )


def explain(request: WorkerRequest, problem: str) -> str:
    """:func:`describe_shortfall` for the cluster as it is now."""
    nodes = read_nodes()
    return describe_shortfall(request, nodes, read_holders(nodes), problem)


# After a probe placement group is removed, how long its resources may take to show as free again.
_RELEASE_S = 5.0


def wait_for_workers(request: WorkerRequest, wait_s: float, *, say: Callable[[str], None] = print) -> int:
    """The number of workers to start, ``min_workers``..``max_workers``: as many as fit now, else as
    many as fit once ``min_workers`` do, waiting at most about ``wait_s`` seconds (checking every
    second); then :class:`ResourcesUnavailable` with the one-line explanation.

    While it waits it holds a pending placement group of ``min_workers`` bundles: Ray tells exactly
    when such a group can be placed (PACK, STRICT_SPREAD and all), and an autoscaler sees it as
    demand and adds nodes, which a plain poll would never cause. The group is removed before
    training starts, so Ray Train places its own."""
    from ray.util.placement_group import placement_group, remove_placement_group

    deadline = time.monotonic() + wait_s
    nodes = read_nodes()
    fit = workers_that_fit(nodes, request)
    if fit >= request.min_workers:
        return fit
    if wait_s > 0:
        say(f"{describe_request(request)} {do_not(request)} fit now: {describe_free(nodes, request)}; "
            f"waiting up to {_num(wait_s)} s for them (--wait-for-resources)")
    probe = None
    try:
        while time.monotonic() < deadline:
            if probe is None:
                probe = placement_group([request.bundle] * request.min_workers, strategy=request.strategy)
            if not probe.wait(timeout_seconds=1):  # whole seconds only
                continue
            remove_placement_group(probe)  # placed: hand its resources on to Ray Train's own group
            probe = None
            settle_until = time.monotonic() + _RELEASE_S
            while time.monotonic() < settle_until:
                fit = workers_that_fit(read_nodes(), request)
                if fit >= request.min_workers:
                    return fit
                time.sleep(0.2)
    finally:
        if probe is not None:
            remove_placement_group(probe)
    raise ResourcesUnavailable(explain(request, f"{do_not(request)} fit after waiting {_num(wait_s)} s"))
