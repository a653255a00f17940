"""A read-through cache of what the request path reads from storage, which keeps serving through
storage outages: the registry's models (versions, labels, metadata) and the API keys' records (kept
under the registry's root). One cache holds both, so that they share one view of whether the storage
is reachable, one pool of reader threads and one bound on their size.

Version metadata never changes once published, so it (parsed once, its signature with it) is cached for good;
which versions exist, where labels point and which API keys exist are re-read at most every ``ttl_s``
seconds, so a promote, rollback or revocation reaches serving within that time without a redeploy.

**Storage outages.** When the storage cannot be reached (an ``OSError`` from ``pyarrow.fs``, or a
registry root that has vanished, as an unmounted volume does), the last value read is served for
``stale_s`` seconds more: loaded versions keep answering routed and pinned requests with their last
known labels, and known keys keep working. Past that, or for what was never read, the answer is
:class:`~maas.errors.StorageUnavailable` (503 with ``Retry-After``), never a 404 or a 401 that the
outage would otherwise fake.

**Keys.** Which key ids exist is one listing per ``ttl_s``; a key id outside it costs no storage read
at all, so a flood of random ids neither reaches the storage nor evicts anything. Records of real
keys (a handful) are cached like labels.

The methods are coroutines: a hit answers at once, a miss reads the registry in a worker thread of
the cache's own (so that a slow or dead store never blocks the replica's event loop, nor the threads
its forward passes run in), and concurrent misses of one entry share a single read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple, cast

from maas.auth import ApiKey, KeyStore
from maas.errors import LabelNotFound, ModelNotFound, StorageUnavailable, VersionNotFound
from maas.records import LabelEvent, VersionMetadata
from maas.registry import Label, ModelVersion, Registry, resolve_version
from maas.signature import Signature

logger = logging.getLogger("ray.serve")
T = TypeVar("T")
Args = TypeVarTuple("Args")
_Key = tuple[str, ...]  # ("models",), ("versions", model), ("api_key", key_id)...
_NOT_FOUND = (ModelNotFound, VersionNotFound, LabelNotFound)
_RELIST_S = 1.0  # an unknown key id, model, version or label re-reads its listing at most this often
_REVALIDATE_WAIT_S = 0.25  # how long a request waits for a refresh before it is answered from the cache
_READ_WAIT_S = 5.0  # a read with nothing cached to fall back on: past this, the storage counts as unreachable
_MAX_ENTRIES = 20_000
_MAX_READS = 64  # reads of entries with nothing cached, in flight at once; beyond, 503 at once
_MAX_READS_WHILE_DOWN = 8  # the same, while the storage is known to be down


def _consume_exception(future: asyncio.Future[Any]) -> None:
    """A background refresh nobody awaits any more may fail: its error is handled (logged as an
    outage) and must not be reported as "never retrieved"."""
    if not future.cancelled():
        future.exception()


@dataclass
class _Entry:
    """A cached value; its type is what its key's load returns (so it is cast back to that when read)."""

    at: float
    value: Any


class StorageCache:
    """The registry's models and the API keys' records, as serving reads them (see the module docstring)."""

    def __init__(self, registry: Registry, *, ttl_s: float, stale_s: float, keys: KeyStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._keys = keys or KeyStore(registry.uri)
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._clock = clock
        self._metadata: dict[tuple[str, int], ModelVersion] = {}
        self._short: dict[_Key, _Entry] = {}
        self._reading: dict[_Key, asyncio.Future[Any]] = {}  # misses being read: later ones wait for the same read
        self._generation: dict[_Key, int] = {}  # bumped when an entry is invalidated: older reads are dropped
        self._unreachable_since: float | None = None
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="registry")

    # ---- what serving asks -----------------------------------------------------------------------

    async def check_reachable(self) -> None:
        """Raises :class:`StorageUnavailable` when the registry's storage cannot be reached (looked at
        at most every ``ttl_s``; not served stale: readiness is about now)."""
        await self._cached(("reachable",), self._registry.check_reachable, stale_ok=False)

    async def models(self) -> list[str]:
        return await self._cached(("models",), self._registry.models)

    async def label_history(self, model: str) -> list[LabelEvent]:
        return await self._cached(("history", model), lambda: self._registry.label_history(model))

    async def versions(self, model: str) -> list[int]:
        """Published versions (a model published a moment ago is looked for again at most once a second)."""
        load = lambda: self._registry.versions(model)  # noqa: E731
        versions = await self._cached(("versions", model), load)
        if not versions:
            versions = await self._recheck(("versions", model), load) or versions
        if not versions:
            self._refuse_while_unreachable(model)
            raise ModelNotFound(model)
        return versions

    async def resolve(self, model: str, version: int | None, label: str | None) -> int:
        """From the cached versions and labels (what a loaded version needs to keep answering in an
        outage); a version or label missing from them is looked for again at most once a second. A
        miss while the storage is unreachable is a 503: the copy may be out of date."""
        try:
            return resolve_version(model, await self.versions(model), await self.labels(model),
                                   version=version, label=label)
        except _NOT_FOUND:
            self._refuse_while_unreachable(model)
            versions = await self._recheck(("versions", model), lambda: self._registry.versions(model))
            labels = await self._recheck(("labels", model), lambda: self._registry.labels(model))
            if versions is None and labels is None:
                raise
            return resolve_version(model, versions or await self.versions(model),
                                   labels if labels is not None else await self.labels(model),
                                   version=version, label=label)

    async def capture_sample(self, model: str) -> float | None:
        """``maas models capture``'s share for ``model`` (``None``: not set), seen within ``ttl_s``."""
        return await self._cached(("capture", model), lambda: self._registry.capture_sample(model))

    async def labels(self, model: str) -> dict[str, Label]:
        return await self._cached(("labels", model), lambda: self._registry.labels(model))

    async def api_key(self, key_id: str) -> ApiKey | None:
        """The stored record of an API key (``None`` if unknown); a revocation is seen within ``ttl_s``.

        An id not among the listed ones costs no storage read of its own: the listing is refreshed in
        the background at most once a second (so a key just created works within a second), whatever
        the number of ids, and the known ids keep being answered from the current listing meanwhile."""
        ids = await self._cached(("key_ids",), self._keys.ids)
        if key_id not in ids:
            ids = await self._recheck(("key_ids",), self._keys.ids) or ids
        if key_id not in ids:
            if self._unreachable_since is not None:  # perhaps a key made since the listing was read
                raise StorageUnavailable("Model storage is unreachable and this replica's list of API keys "
                                         "may be out of date; retry later")
            return None
        return await self._cached(("api_key", key_id), lambda: self._keys.get(key_id))

    async def retire_canary(self, model: str, version: int, reason: str) -> bool:
        """:meth:`Registry.retire_canary`, then forget what is cached of the model's labels."""
        retired = await self._in_thread(self._registry.retire_canary, model, version, reason)
        for key in [k for k in (*self._short, *self._reading) if len(k) > 1 and k[1] == model]:
            self._short.pop(key, None)
            self._reading.pop(key, None)  # a read under way began before the change: not to be cached
            self._generation[key] = self._generation.get(key, 0) + 1
        return retired

    async def get(self, model: str, version: int) -> ModelVersion:
        key = (model, version)
        if key not in self._metadata:
            try:
                self._metadata[key] = await asyncio.wait_for(
                    self._in_thread(self._read, lambda: self._registry.get(model, version)), _READ_WAIT_S)
            except (TimeoutError, OSError, StorageUnavailable) as exc:
                raise self._outage(exc) from None
        return self._metadata[key]

    async def metadata(self, model: str, version: int) -> VersionMetadata:
        """The version's metadata (read once: a version never changes)."""
        return (await self.get(model, version)).metadata

    async def signature(self, model: str, version: int) -> Signature:
        """The version's signature (parsed with its metadata, once)."""
        return (await self.get(model, version)).signature

    # ---- the cache -------------------------------------------------------------------------------

    async def _cached(self, key: _Key, load: Callable[[], T], *, stale_ok: bool = True) -> T:
        """The entry ``key``: fresh from the cache, or read. While a value may still be served
        (``stale_ok``, within ``stale_s`` past its ``ttl_s``), a read that fails or is slow (past
        ``_REVALIDATE_WAIT_S``: a storage timing out, an SDK retrying) does not hold the request up: the
        known value answers, and the read goes on and refreshes the cache when it ends."""
        now = self._clock()
        hit = self._short.get(key)
        if hit is not None and now - hit.at < self._ttl_s:
            return cast(T, hit.value)
        stale = hit if stale_ok and hit is not None and now - hit.at < self._ttl_s + self._stale_s else None
        servable = stale is not None
        if stale is not None and key in self._reading:  # a refresh already under way, and slow: don't wait again
            return cast(T, stale.value)
        if not servable and key not in self._reading and len(self._reading) >= (
                _MAX_READS if self._unreachable_since is None else _MAX_READS_WHILE_DOWN):
            raise self._outage(None)  # enough reads under way: no queue of them grows
        read = self._shared_read(key, load)
        # With nothing to fall back on, wait for the read, but only briefly while the storage is known to
        # be down (the read goes on, and tells when it is back).
        wait = _REVALIDATE_WAIT_S if servable or self._unreachable_since is not None else _READ_WAIT_S
        try:
            return await asyncio.wait_for(asyncio.shield(read), wait)
        except (TimeoutError, OSError, StorageUnavailable) as exc:
            if stale is not None:
                return cast(T, stale.value)
            raise self._outage(exc) from None

    def _shared_read(self, key: _Key, load: Callable[[], T]) -> asyncio.Future[T]:
        """One read of ``key`` at a time (later misses wait for the same one); a successful read is
        cached when it ends, whether or not anyone still waits for it."""
        reading = self._reading.get(key)
        if reading is None:
            generation = self._generation.get(key, 0)

            async def read() -> T:
                try:
                    value = await self._in_thread(self._read, load)
                except (OSError, StorageUnavailable) as exc:
                    self._outage(exc)
                    raise
                finally:
                    if self._reading.get(key) is reading:
                        del self._reading[key]
                self._reachable()
                if self._generation.get(key, 0) != generation:
                    return value  # invalidated while it ran (a retired canary): answer, don't cache
                self._short[key] = _Entry(self._clock(), value)  # errors (404s) are not cached
                if len(self._short) > _MAX_ENTRIES:
                    self._prune()
                return value

            reading = self._reading[key] = asyncio.ensure_future(read())
            reading.add_done_callback(_consume_exception)
        return reading

    async def _in_thread(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _reachable(self) -> None:
        if self._unreachable_since is not None:
            logger.warning("registry storage reachable again after %.1fs", self._clock() - self._unreachable_since)
            self._unreachable_since = None

    def _prune(self) -> None:
        """Keep the cache bounded (clients choose the model names they ask for): drop what can no
        longer be served, then, if need be, the older half of the rest; the key entries stay."""
        now = self._clock()
        keep = {k: e for k, e in self._short.items() if now - e.at < self._ttl_s + self._stale_s}
        if len(keep) > _MAX_ENTRIES // 2:
            keys = {k: e for k, e in keep.items() if k[0] in ("key_ids", "api_key")}
            rest = sorted((e.at, k) for k, e in keep.items() if k not in keys)
            keep = {**keys, **{k: keep[k] for _, k in rest[len(rest) // 2:]}}
        self._short = keep

    async def _recheck(self, key: _Key, load: Callable[[], T]) -> T | None:
        """After a miss in the entry ``key`` (an unknown key id, model, version or label): refresh it if
        it was read more than ``_RELIST_S`` ago, in the background and shared, without evicting it (the
        others keep being answered from it); the fresh value if it comes within ``_REVALIDATE_WAIT_S``,
        else ``None``."""
        entry = self._short.get(key)
        if entry is None or self._unreachable_since is not None or self._clock() - entry.at < _RELIST_S:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(self._shared_read(key, load)), _REVALIDATE_WAIT_S)
        except (TimeoutError, OSError, StorageUnavailable):
            return None

    def _refuse_while_unreachable(self, model: str) -> None:
        if self._unreachable_since is not None:
            raise StorageUnavailable(f"Model storage is unreachable and this replica's copy of {model}'s "
                                     "versions and labels may be out of date; retry later")

    def _read(self, load: Callable[[], T]) -> T:
        """``load()``, in a worker thread. An empty or not-found answer is believed only once the registry's
        root is confirmed to be there: on a vanished root (an unmounted volume, a deleted prefix) every
        listing is empty and every file missing, which is an outage, not "no labels" or "unknown key"."""
        try:
            value = load()
        except _NOT_FOUND:
            self._registry.check_reachable()
            raise
        if value is None or (isinstance(value, (list, dict, set, frozenset)) and not value):
            self._registry.check_reachable()
        return value

    def _outage(self, exc: BaseException | None) -> StorageUnavailable:
        """Note that the storage is unreachable (logged once per outage); the error for the request.
        ``exc`` is ``None`` when the request is refused without a read (too many under way)."""
        if exc is None:
            return StorageUnavailable("Too many registry reads are under way on this replica; retry later")
        cause = "no answer in time" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
        if self._unreachable_since is None:
            self._unreachable_since = self._clock()
            logger.warning("registry storage unreachable (%s); serving what is cached for up to %gs", cause,
                           self._stale_s)
        return StorageUnavailable(f"Model storage is unreachable ({cause}) and this replica has no fresh enough "
                                  "copy of what the request needs; retry later")
