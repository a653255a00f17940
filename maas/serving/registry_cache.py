"""A read-through cache over the registry for the request path.

Version metadata never changes once published, so it is cached for good; which versions exist and
where labels point is re-read at most every ``ttl_s`` seconds, so a promote or rollback reaches
serving within that time without a redeploy.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from maas.errors import ModelNotFound
from maas.registry import ModelVersion, Registry

T = TypeVar("T")


class RegistryCache:
    def __init__(self, registry: Registry, ttl_s: float) -> None:
        self._registry = registry
        self._ttl_s = ttl_s
        self._metadata: dict[tuple[str, int], ModelVersion] = {}
        self._short: dict[tuple, tuple[float, object]] = {}

    def versions(self, model: str) -> list[int]:
        versions = self._cached(("versions", model), lambda: self._registry.versions(model))
        if not versions:
            raise ModelNotFound(model)
        return versions

    def resolve(self, model: str, version: int | None, label: str | None) -> int:
        return self._cached(
            ("resolve", model, version, label),
            lambda: self._registry.resolve(model, version=version, label=label),
        )

    def get(self, model: str, version: int) -> ModelVersion:
        key = (model, version)
        if key not in self._metadata:
            self._metadata[key] = self._registry.get(model, version)
        return self._metadata[key]

    def _cached(self, key: tuple, load: Callable[[], T]) -> T:
        now = time.monotonic()
        hit = self._short.get(key)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]  # type: ignore[return-value]
        value = load()  # errors (404s) are not cached: a model published a moment later is found
        self._short[key] = (now, value)
        return value
