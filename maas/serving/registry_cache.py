"""A read-through cache over the registry for the request path.

Version metadata never changes once published, so it is cached for good; which versions exist and
where labels point is re-read at most every ``ttl_s`` seconds, so a promote or rollback reaches
serving within that time without a redeploy.

The methods are coroutines: a hit answers at once, a miss reads the registry in a worker thread, so
that a slow store (S3, GCS) never blocks the ingress's event loop and the requests it is serving.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, TypeVar

from maas.auth import ApiKey, KeyStore
from maas.errors import ModelNotFound
from maas.registry import Label, ModelVersion, Registry

T = TypeVar("T")
_MAX_SHORT_ENTRIES = 10_000  # look-ups of unknown key ids are cached too: bound what strangers can add


class RegistryCache:
    def __init__(self, registry: Registry, ttl_s: float) -> None:
        self._registry = registry
        self._keys = KeyStore(registry.uri)
        self._ttl_s = ttl_s
        self._metadata: dict[tuple[str, int], ModelVersion] = {}
        self._short: dict[tuple, tuple[float, object]] = {}

    async def check_reachable(self) -> None:
        """Raises ``OSError`` when the registry's storage cannot be reached (checked at most every ``ttl_s``)."""
        await self._cached(("reachable",), self._registry.check_reachable)

    async def models(self) -> list[str]:
        return await self._cached(("models",), self._registry.models)

    async def label_history(self, model: str) -> list[dict]:
        return await self._cached(("history", model), lambda: self._registry.label_history(model))

    async def versions(self, model: str) -> list[int]:
        versions = await self._cached(("versions", model), lambda: self._registry.versions(model))
        if not versions:
            raise ModelNotFound(model)
        return versions

    async def resolve(self, model: str, version: int | None, label: str | None) -> int:
        return await self._cached(
            ("resolve", model, version, label),
            lambda: self._registry.resolve(model, version=version, label=label),
        )

    async def labels(self, model: str) -> dict[str, Label]:
        return await self._cached(("labels", model), lambda: self._registry.labels(model))

    async def api_key(self, key_id: str) -> ApiKey | None:
        """The stored record of an API key (``None`` if unknown); a revocation is seen within ``ttl_s``."""
        return await self._cached(("api_key", key_id), lambda: self._keys.get(key_id))

    async def retire_canary(self, model: str, version: int, reason: str) -> bool:
        """:meth:`Registry.retire_canary`, then forget what is cached of the model's labels."""
        retired = await asyncio.to_thread(self._registry.retire_canary, model, version, reason)
        self._short = {k: v for k, v in self._short.items() if not (len(k) > 1 and k[1] == model)}
        return retired

    async def get(self, model: str, version: int) -> ModelVersion:
        key = (model, version)
        if key not in self._metadata:
            self._metadata[key] = await asyncio.to_thread(self._registry.get, model, version)
        return self._metadata[key]

    async def _cached(self, key: tuple, load: Callable[[], T]) -> T:
        now = time.monotonic()
        hit = self._short.get(key)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]  # type: ignore[return-value]
        value = await asyncio.to_thread(load)  # errors (404s) are not cached: a model published later is found
        if len(self._short) >= _MAX_SHORT_ENTRIES:
            self._short = {k: v for k, v in self._short.items() if now - v[0] < self._ttl_s}
            if len(self._short) >= _MAX_SHORT_ENTRIES:
                self._short.clear()
        self._short[key] = (now, value)
        return value
