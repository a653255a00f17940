"""Closed-loop HTTP load: ``concurrency`` clients, each sending its next request when the last one
is answered, until ``max_requests`` answers or ``max_seconds`` — whichever comes first.

The same generator (aiohttp, pre-encoded bodies, keep-alive connections) drives every contender.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]
    instances: int  # instances per request (samples/s = requests/s x instances)


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    instances_per_s: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


async def _run(request: Request, concurrency: int, max_requests: int, max_seconds: float,
               warmup: int) -> LoadResult:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def send() -> None:
            t0 = time.perf_counter()
            try:
                async with session.post(request.url, data=request.body, headers=request.headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {body[:200]!r}")
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            latencies.append(time.perf_counter() - t0)

        for _ in range(warmup):  # connections open, caches warm; not counted
            await send()
        latencies.clear()
        errors.clear()
        deadline = time.perf_counter() + max_seconds
        started = time.perf_counter()

        async def client() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                await send()

        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    done = len(latencies)
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return LoadResult(
        concurrency=concurrency, requests=done, errors=len(errors), seconds=round(seconds, 3),
        requests_per_s=round(done / seconds, 1), instances_per_s=round(done * request.instances / seconds, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 2), p99_ms=round(float(np.percentile(ms, 99)), 2),
        first_error=errors[0] if errors else "",
    )


def closed_loop(request: Request, concurrency: int, *, max_requests: int, max_seconds: float,
                warmup: int = 20) -> LoadResult:
    """Drive one contender at one concurrency; bounded by ``max_requests`` and ``max_seconds``."""
    return asyncio.run(_run(request, concurrency, max_requests, max_seconds, warmup))
