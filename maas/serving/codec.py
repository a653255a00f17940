"""A process of its own for decoding and encoding a replica's large bodies.

orjson and numpy hold the GIL while they parse or convert: a 16 MB JSON body takes a few hundred
milliseconds of it, in the replica's event loop or in any thread of its process, and every other
request on that replica would wait (1.1 s for a health check, measured). So bodies past
``limits.offload_bytes`` go to a Ray actor on the same node, one per replica: the replica's loop
awaits the result and goes on answering meanwhile. Arrays come back through Ray's object store
without a copy. The actor has no CPU reservation (it works while its replica waits), dies with its
replica, and is restarted by Ray if it dies alone (the calls in flight then get 503).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from maas.errors import MaasError, ServerBusy

T = TypeVar("T")


@dataclass(frozen=True)
class _Refused:
    """A request's own fault, handed back as a value: Ray would log a raised one with its traceback,
    and the client's text with it."""

    error: MaasError


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class BodyCodec:
    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except MaasError as exc:
            return _Refused(exc)

    def ready(self) -> bool:
        return True


class CodecOffload:
    """``await offload(fn, *args)``: ``fn(*args)`` computed in this replica's :class:`BodyCodec`."""

    def __init__(self) -> None:
        node = ray.get_runtime_context().get_node_id()
        # mypy keeps a decorated class's own type; at run time BodyCodec is Ray's ActorClass.
        self._actor = BodyCodec.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        ray.get(self._actor.ready.remote(), timeout=timeout_s)

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            result: T | _Refused = await self._actor.run.remote(fn, *args)
        except ray.exceptions.RayActorError:
            raise ServerBusy("The replica's codec process restarted; retry") from None
        if isinstance(result, _Refused):
            raise result.error
        return result
