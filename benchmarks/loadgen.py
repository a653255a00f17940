"""Closed-loop load: ``concurrency`` clients, each sending its next request when the last one is
answered, until ``max_requests`` answers or ``max_seconds`` — whichever comes first.

The same generator drives every contender: over HTTP with aiohttp (pre-encoded bodies, keep-alive
connections), over gRPC with ``grpc.aio`` (pre-serialized messages, one HTTP/2 channel per 16 clients,
as a client multiplexes its calls), counting every outcome the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Request:
    url: str  # for gRPC: host:port
    body: bytes  # for gRPC: the serialized request message
    headers: dict[str, str]  # for gRPC: the call's metadata
    instances: int  # instances per request (samples/s = requests/s x instances)
    grpc_method: str = ""  # a gRPC call's path (/package.Service/Method); empty: HTTP POST to url


CLIENTS_PER_CHANNEL = 16


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


async def _measure(senders: list[Callable[[], Awaitable[str | None]]], concurrency: int, max_requests: int,
                   max_seconds: float, warmup: int, latencies: list[float], errors: list[str]) -> float:
    """Run ``concurrency`` closed-loop clients, client ``i`` sending with ``senders[i % len(senders)]``
    (each answers ``None`` or the error it met); the seconds the measured part took."""
    issued = 0

    async def send(sender: Callable[[], Awaitable[str | None]]) -> None:
        t0 = time.perf_counter()
        error = await sender()
        if error is None:
            latencies.append(time.perf_counter() - t0)
        else:
            errors.append(error)

    for i in range(warmup):  # connections open, caches warm; not counted
        await send(senders[i % len(senders)])
    latencies.clear()
    errors.clear()
    deadline = time.perf_counter() + max_seconds
    started = time.perf_counter()

    async def client(sender: Callable[[], Awaitable[str | None]]) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            await send(sender)

    await asyncio.gather(*(client(senders[i % len(senders)]) for i in range(concurrency)))
    return time.perf_counter() - started


async def _run_http(request: Request, concurrency: int, max_requests: int, max_seconds: float, warmup: int,
                    latencies: list[float], errors: list[str]) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def post() -> str | None:
            try:
                async with session.post(request.url, data=request.body, headers=request.headers) as resp:
                    body = await resp.read()
                    return None if resp.status == 200 else f"HTTP {resp.status}: {body[:200]!r}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                return f"{type(exc).__name__}: {exc}"

        return await _measure([post], concurrency, max_requests, max_seconds, warmup, latencies, errors)


async def _run_grpc(request: Request, concurrency: int, max_requests: int, max_seconds: float, warmup: int,
                    latencies: list[float], errors: list[str]) -> float:
    import grpc

    channels = [grpc.aio.insecure_channel(request.url) for _ in range(-(-concurrency // CLIENTS_PER_CHANNEL))]
    metadata = tuple(request.headers.items())
    try:
        def caller(channel: grpc.aio.Channel) -> Callable[[], Awaitable[str | None]]:
            call = channel.unary_unary(request.grpc_method)  # bytes in, bytes out: nothing re-encoded per call

            async def unary() -> str | None:
                try:
                    await call(request.body, metadata=metadata, timeout=60)
                    return None
                except grpc.RpcError as exc:
                    return f"{exc.code().name}: {(exc.details() or '')[:200]}"

            return unary

        return await _measure([caller(c) for c in channels], concurrency, max_requests, max_seconds, warmup,
                              latencies, errors)
    finally:
        for channel in channels:
            await channel.close()


async def _run(request: Request, concurrency: int, max_requests: int, max_seconds: float,
               warmup: int) -> LoadResult:
    latencies: list[float] = []
    errors: list[str] = []
    run = _run_grpc if request.grpc_method else _run_http
    seconds = await run(request, concurrency, max_requests, max_seconds, warmup, latencies, errors)
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
