"""The data plane: what a request to a model means, whatever protocol carried it.

It resolves a version or label, chooses between stable and canary for routed requests (and falls
back to the default version when the canary fails), checks the request against the chosen version's
signature (through the protocol's decoder), predicts within the request's deadline, authorizes API
keys, and reports the service's status. It is a plain class: its storage view and its model host
are injected, so every case here is a unit test with small fakes (``tests/unit/``); the Serve wiring
(:mod:`maas.serving.app`) gives it the real ones.

A version switch never sends a request to a cold version while a warm one can answer it: when a
label (or the latest version) moves, or a canary share appears, to a version this replica has not
loaded, the replica starts loading it in the background and answers with the version it has been
answering with until the new one is loaded and warmed, as TF Serving does. A version that fails to
load leaves the label's traffic where it was; a canary that fails to load is tried (and judged).

A canary is judged only on its own faults: its load failing, its model failing on input that the
default version answers, or its own forward pass outlasting the deadline. Overload (503), storage
outages, client errors and inputs that fail every version never count against it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from maas.auth import ApiKey, authorize, key_id
from maas.drift import DriftMonitor
from maas.errors import InferenceError, MaasError, ModelUnavailable, RequestTimeout, Unauthorized
from maas.records import LabelEvent, VersionMetadata
from maas.registry import Label
from maas.serving.attribution import Attributions, ExplainArgs, baseline_inputs, check_differentiable
from maas.serving.canary import CanaryMonitor, Destination, choose_destination
from maas.serving.capture import CaptureRecord, CaptureWriter
from maas.serving.shadow import SHADOW_LABEL, ShadowFigures, ShadowMonitor, ShadowPolicy, compare
from maas.serving.stats import RecentRequests, RequestInfo, latency_percentile
from maas.serving.status import (
    FeatureDriftStatus,
    LabelRoute,
    LoadState,
    ModelServiceStatus,
    ServiceStatus,
    ShadowStatus,
    VersionDriftStatus,
)
from maas.signature import Signature

logger = logging.getLogger("ray.serve")
D = TypeVar("D")
MISSING_KEY = ("API key required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' (create one with "
               "`maas keys create`)")
CANARY_FAULTS = (InferenceError, ModelUnavailable)  # failures that are the canary version's own


class ServingStorage(Protocol):
    """What the data plane reads of storage, the registry's models and the API keys' records
    (:class:`maas.serving.storage_cache.StorageCache`)."""

    async def resolve(self, model: str, version: int | None, label: str | None) -> int: ...
    async def labels(self, model: str) -> dict[str, Label]: ...
    async def capture_sample(self, model: str) -> float | None: ...
    async def versions(self, model: str) -> list[int]: ...
    async def signature(self, model: str, version: int) -> Signature: ...
    async def metadata(self, model: str, version: int) -> VersionMetadata: ...
    async def models(self) -> list[str]: ...
    async def label_history(self, model: str) -> list[LabelEvent]: ...
    async def check_reachable(self) -> None: ...
    async def api_key(self, key_id: str) -> ApiKey | None: ...
    async def retire_canary(self, model: str, version: int, reason: str) -> bool: ...


@dataclass
class PassTicket:
    """Filled in by the model host: when the forward pass holding this request began (``None`` while
    it waits for a batch or for its version to load)."""

    pass_started: float | None = None


class Predictor(Protocol):
    """The model host: predictions, batched with others, on loaded versions."""

    async def predict(self, model: str, version: int, inputs: dict[str, np.ndarray],
                      ticket: PassTicket) -> dict[str, np.ndarray]: ...

    async def explain(self, model: str, version: int, inputs: dict[str, np.ndarray],
                      baseline: dict[str, np.ndarray], *, steps: int, output: str,
                      target: int | None) -> Attributions: ...

    def load_state(self, model: str, version: int) -> LoadState: ...

    def start_load(self, model: str, version: int) -> None:
        """Load and warm ``version`` in the background (no-op when loaded or loading)."""

    async def predict_alone(self, model: str, version: int,
                            inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One prediction outside the shared batcher (a shadow's)."""


class DataPlane:
    def __init__(self, storage: ServingStorage, host: Predictor, *, canary: CanaryMonitor, key_secret: bytes | None,
                 recent: RecentRequests, request_timeout_s: float, replica: str | None = None,
                 deployments: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 on_canary_fallback: Callable[[str, int], None] = lambda model, version: None,
                 drift: DriftMonitor | None = None, shadow: ShadowPolicy | None = None,
                 on_shadow: Callable[[str, int, str, ShadowFigures], None] = lambda model, version, outcome, f: None,
                 capture: CaptureWriter | None = None, draw: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._storage = storage
        self._host = host
        self._canary = canary
        self._key_secret = key_secret  # None: auth off
        self._recent = recent
        self._timeout_s = request_timeout_s
        self._replica = replica
        self._deployments = deployments
        self._on_canary_fallback = on_canary_fallback
        self._drift = drift
        self._shadow_policy = shadow or ShadowPolicy()
        self._shadows = ShadowMonitor()
        self._shadows_running = 0
        self._on_shadow = on_shadow
        self._draw = draw
        self._capture = capture
        self._last_after_answer_error = -math.inf
        self._clock = clock
        self._background: set[asyncio.Task[None]] = set()
        self._answering: dict[tuple[str, str], int] = {}  # (model, label or "" when routed): last version used

    # ---- access ----------------------------------------------------------------------------------

    async def authenticate(self, key: str | None) -> ApiKey | None:
        """The record of the caller's key (401 for none, an unknown, forged or revoked one); ``None``
        when auth is off. The key's scope is checked against the model once the path is (403)."""
        if self._key_secret is None:
            return None
        if key is None:
            raise Unauthorized(MISSING_KEY)
        kid = key_id(key)
        record = None if kid is None else await self._storage.api_key(kid)
        return authorize(record, key, None, secret=self._key_secret)

    # ---- reading ---------------------------------------------------------------------------------

    async def ready(self) -> None:
        """Raises :class:`maas.errors.StorageUnavailable` when the registry's storage cannot be reached."""
        await self._storage.check_reachable()

    async def versions(self, model: str) -> list[int]:
        return await self._storage.versions(model)

    async def resolve(self, model: str, version: int | None, label: str | None) -> int:
        return await self._storage.resolve(model, version, label)

    async def signature(self, model: str, version: int) -> Signature:
        return await self._storage.signature(model, version)

    # ---- predicting ------------------------------------------------------------------------------

    async def infer(self, model: str, version: int | None, label: str | None,
                    decode: Callable[[Signature], Awaitable[D]], inputs_of: Callable[[D], dict[str, np.ndarray]],
                    info: RequestInfo) -> tuple[int, D, dict[str, np.ndarray]]:
        """:meth:`_infer`; then the answered inputs are taken into the version's drift statistics and,
        for a routed request, a shadow's share starts its shadow prediction in the background."""
        started = self._clock()
        answered, decoded, outputs, labels = await self._infer(model, version, label, decode, inputs_of, info)
        try:  # what follows the answer never changes it
            inputs = inputs_of(decoded)
            if self._drift is not None:
                await self._observe_drift(self._drift, model, answered, inputs)
            latency_ms = (self._clock() - started) * 1000.0
            if version is None and label is None:
                self._start_shadow(model, labels.get(SHADOW_LABEL), answered, inputs, outputs, latency_ms)
            if self._capture is not None:
                await self._offer_capture(self._capture, model, answered, inputs, outputs, latency_ms, info)
        except Exception as exc:  # a bug in drift, shadow or capture: logged, the answer stands
            now = self._clock()
            if now - self._last_after_answer_error >= 60.0:
                self._last_after_answer_error = now
                logger.exception("after answering %s version %d: %s (logged once a minute)", model, answered,
                                 type(exc).__name__)
        return answered, decoded, outputs

    async def _offer_capture(self, capture: CaptureWriter, model: str, version: int, inputs: dict[str, np.ndarray],
                             outputs: dict[str, np.ndarray], latency_ms: float, info: RequestInfo) -> None:
        """A share of the model's predictions goes to the capture buffer (its writes are the writer's
        background work): ``maas models capture``'s share, else the Serve config's."""
        try:
            sample = await self._storage.capture_sample(model)
        except MaasError:  # storage unreachable and nothing cached: the Serve config's share
            sample = None
        if sample is None:
            configured = capture.policy.models.get(model)
            sample = configured.sample if configured is not None else 0.0
        if sample > 0.0 and self._draw() < sample:
            # Outputs are views of their batch's outputs: copied, so that a record holds its own values only.
            capture.offer(CaptureRecord(model, version, info.label, info.protocol, round(latency_ms, 3), time.time(),
                                        info.request_id or uuid.uuid4().hex, inputs,
                                        {k: np.array(v, copy=True) for k, v in outputs.items()}))

    def _start_shadow(self, model: str, shadow: Label | None, answered: int, inputs: dict[str, np.ndarray],
                      answer: dict[str, np.ndarray], answer_ms: float) -> None:
        """The shadow label's share of routed requests also goes to its version, after the answer and
        without delaying it; at most ``max_concurrent`` at once per replica (a slot is held until the
        shadow's work ends, even past its deadline), the others skipped and counted."""
        if shadow is None or shadow.weight <= 0.0 or shadow.version == answered:
            if shadow is None:
                self._shadows.forget(model)
            return
        if self._draw() >= shadow.weight:
            return
        figures = self._shadows.figures(model, shadow.version, shadow.id)
        state = self._host.load_state(model, shadow.version)
        if state != "ready":  # never loaded on a request's account: loaded in the background, meanwhile skipped
            outcome = "error" if state == "failed" else "skipped"  # a version that fails to load is the shadow's fault
            if state == "failed":
                figures.errors += 1
            else:
                figures.skipped += 1
                self._host.start_load(model, shadow.version)
            self._on_shadow(model, shadow.version, outcome, figures)
            return
        if self._shadows_running >= self._shadow_policy.max_concurrent:
            figures.skipped += 1
            self._on_shadow(model, shadow.version, "skipped", figures)
            return
        self._shadows_running += 1
        work = asyncio.ensure_future(self._host.predict_alone(model, shadow.version, inputs))
        work.add_done_callback(self._shadow_done)
        task = asyncio.get_running_loop().create_task(self._judge_shadow(model, work, figures, answer, answer_ms))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _shadow_done(self, work: asyncio.Future[dict[str, np.ndarray]]) -> None:
        self._shadows_running -= 1
        if not work.cancelled():
            work.exception()  # read here too: a shadow past its deadline is not awaited by anyone

    async def _judge_shadow(self, model: str, work: asyncio.Future[dict[str, np.ndarray]], figures: ShadowFigures,
                            answer: dict[str, np.ndarray], answer_ms: float) -> None:
        started = self._clock()
        done, _ = await asyncio.wait({work}, timeout=self._timeout_s)
        found = compare(answer, work.result()) if done and work.exception() is None else None
        if found is None:  # failed, past the request timeout, or no output in common
            figures.errors += 1
            self._on_shadow(model, figures.version, "error", figures)
            return
        value, classification = found
        n = int(next(iter(answer.values())).shape[0])
        figures.compared += 1
        figures.instances += n
        figures.classification = classification
        if classification:
            figures.agreeing += value * n
        else:
            figures.abs_diff += value * n
        figures.shadow_ms.append((self._clock() - started) * 1000.0)
        figures.answer_ms.append(answer_ms)
        self._on_shadow(model, figures.version, "compared", figures)

    async def _observe_drift(self, drift: DriftMonitor, model: str, version: int,
                             inputs: dict[str, np.ndarray]) -> None:
        """A version is watched from its first answer on, with its metadata's training statistics (read
        with its signature, already cached); a model of several inputs has no per-feature statistics."""
        if not drift.knows(model, version):
            try:
                metadata = await self._storage.metadata(model, version)
            except MaasError:  # storage unreachable now: the next answer tries again
                return
            pre = metadata.preprocessing
            stats = pre.training_split_stats if pre is not None else None
            names = (pre.feature_columns or []) if pre is not None else []
            try:
                drift.watch(model, version, None if stats is None else stats.mean,
                            None if stats is None else stats.std, None if stats is None else stats.bin_shares, names)
            except ValueError:  # statistics of another shape than declared (a hand-written record): not watched
                drift.watch(model, version, None, None, None, names)
        if len(inputs) == 1:
            drift.observe(model, version, next(iter(inputs.values())))

    async def _infer(self, model: str, version: int | None, label: str | None,
                     decode: Callable[[Signature], Awaitable[D]], inputs_of: Callable[[D], dict[str, np.ndarray]],
                     info: RequestInfo) -> tuple[int, D, dict[str, np.ndarray], dict[str, Label]]:
        """Choose the version, decode (check against its signature) and predict within the request
        timeout, whatever the client asks (Serve's ``x-request-timeout-seconds: 0`` turns Serve's own off).

        A request naming neither version nor label is routed: the canary's share goes to the canary.
        A routed request that fails on the canary by the canary's own fault is answered by the default
        version when both have the same signature, and the failure counts against the canary."""
        deadline = self._clock() + self._timeout_s
        what = f"{model} version {version or label or ''}".rstrip()
        try:
            default = await self._within(self._storage.resolve(model, version, label), deadline, what)
        except MaasError as exc:
            if exc.http_status == 404:  # a label removed: a label of that name later starts afresh
                self._answering.pop((model, label or ""), None)
            raise
        if version is None:
            default = self._warm_first(model, label or "", default)
        routed = version is None and label is None
        labels = await self._within(self._storage.labels(model), deadline, what) if routed else {}
        destination = choose_destination(labels, default) if routed else Destination(default)
        if destination.canary and self._host.load_state(model, destination.version) in ("absent", "loading") \
                and self._host.load_state(model, default) == "ready":
            self._host.start_load(model, destination.version)  # its share goes to it once it is warm
            destination = Destination(default)
        default_label = "stable" if "stable" in labels else "latest"
        info.model, info.version, info.replica = model, destination.version, self._replica
        info.label = ("canary" if destination.canary else default_label) if routed else (label or "none")
        what = f"{model} version {destination.version}"
        signature = await self._within(self._storage.signature(model, destination.version), deadline, what)
        decoded = await self._within(decode(signature), deadline, what)
        inputs = inputs_of(decoded)
        if not destination.canary:
            return destination.version, decoded, await self._predict(model, destination.version, inputs,
                                                                     deadline), labels
        canary_label = labels["canary"]
        ticket = PassTicket()
        started = self._clock()
        try:
            outputs = await self._predict(model, destination.version, inputs, deadline, ticket)
        except RequestTimeout:
            if self._own_slowness(ticket, started):
                self._judge(model, destination.version, canary_label, ok=False, latency_s=self._clock() - started)
            raise
        except CANARY_FAULTS as exc:
            latency_s = self._clock() - started
            if await self._within(self._storage.signature(model, default), deadline, what) != signature:
                self._judge(model, destination.version, canary_label, ok=False, latency_s=latency_s)
                raise
            logger.warning("canary %s version %d failed (%s); answered by version %d",
                           model, destination.version, type(exc).__name__, default)
            self._on_canary_fallback(model, destination.version)
            info.version, info.label = default, default_label
            # If the default version fails on this input too, that is the input's fault: not judged.
            outputs = await self._predict(model, default, inputs, deadline)
            self._judge(model, destination.version, canary_label, ok=False, latency_s=latency_s)
            return default, decoded, outputs, labels
        self._judge(model, destination.version, canary_label, ok=True, latency_s=self._clock() - started)
        return destination.version, decoded, outputs, labels

    async def explain(self, model: str, version: int | None, label: str | None,
                      decode: Callable[[Signature], Awaitable[ExplainArgs]],
                      info: RequestInfo) -> tuple[int, ExplainArgs, Attributions]:
        """Integrated gradients for the decoded instances, on the version asked for (a routed request:
        the default version; a canary is never explained), within the request timeout. A version with
        inputs that are not floating point, or a baseline its metadata cannot give, is a 400 before
        any work is done."""
        deadline = self._clock() + self._timeout_s
        what = f"{model} version {version or label or ''}".rstrip()
        answered = await self._within(self._storage.resolve(model, version, label), deadline, what)
        labels = {} if version is not None or label is not None else \
            await self._within(self._storage.labels(model), deadline, what)
        info.model, info.version, info.replica = model, answered, self._replica
        info.label = label or ("stable" if "stable" in labels else "latest" if version is None else "none")
        what = f"{model} version {answered}"
        signature = await self._within(self._storage.signature(model, answered), deadline, what)
        check_differentiable(model, answered, signature)
        args = await self._within(decode(signature), deadline, what)
        stats = None
        if args.baseline == "training_mean":
            metadata = await self._within(self._storage.metadata(model, answered), deadline, what)
            recorded = metadata.preprocessing.training_split_stats if metadata.preprocessing else None
            stats = None if recorded is None else recorded.mean
        baseline = baseline_inputs(args.baseline, args.inputs, stats, what)
        found = await self._within(self._host.explain(model, answered, args.inputs, baseline, steps=args.steps,
                                                      output=args.output, target=args.target), deadline, what)
        return answered, args, found

    def _warm_first(self, model: str, asked: str, wanted: int) -> int:
        """The version to answer requests that ask for ``asked`` (a label, or ``""`` for routed
        requests) with: ``wanted``, unless it is not loaded here yet while the version these requests
        were answered with last is; then that one, with ``wanted`` loading in the background. A
        ``wanted`` that failed to load keeps them on the version they had."""
        previous = self._answering.get((model, asked))
        if previous is not None and previous != wanted and self._host.load_state(model, wanted) != "ready" \
                and self._host.load_state(model, previous) == "ready":
            self._host.start_load(model, wanted)
            return previous
        self._answering[(model, asked)] = wanted
        return wanted

    async def _predict(self, model: str, version: int, inputs: dict[str, np.ndarray], deadline: float,
                       ticket: PassTicket | None = None) -> dict[str, np.ndarray]:
        """One prediction, batched with the others that reach this replica meanwhile."""
        return await self._within(self._host.predict(model, version, inputs, ticket or PassTicket()), deadline,
                                  f"{model} version {version}")

    async def _within(self, work: Awaitable[D], deadline: float, what: str) -> D:
        remaining = deadline - self._clock()
        try:
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(work, timeout=remaining)
        except TimeoutError:
            if asyncio.iscoroutine(work):
                work.close()  # never awaited: no "coroutine was never awaited" warning
            raise RequestTimeout(f"{what} did not answer within {self._timeout_s:g}s") from None

    def _own_slowness(self, ticket: PassTicket, started: float) -> bool:
        """A timed-out canary request counts against the canary only if its own forward pass ran for
        most of the time it had; one that waited in a queue or for a load timed out for other reasons."""
        if ticket.pass_started is None:
            return False
        return self._clock() - ticket.pass_started >= 0.5 * (self._clock() - started)

    def _judge(self, model: str, version: int, label: Label, *, ok: bool, latency_s: float) -> None:
        reason = self._canary.record(model, version, ok=ok, latency_s=latency_s, generation=label.id)
        if reason is not None:
            task = asyncio.get_running_loop().create_task(self._retire_canary(model, version, label, reason))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _retire_canary(self, model: str, version: int, label: Label, reason: str) -> None:
        try:
            retired = await self._storage.retire_canary(model, version, f"auto-rollback: {reason}")
        except Exception as exc:  # noqa: BLE001 (a background task: whatever failed, judge again on the next breach)
            logger.warning("auto-rollback of %s canary version %d failed (%s); will retry", model, version,
                           type(exc).__name__)
            self._canary.reopen(model, version, label.id)
            return
        if retired:
            logger.warning("auto-rollback: %s canary version %d retired, traffic back to the default version: %s",
                           model, version, reason)

    # ---- the service's status ---------------------------------------------------------------------

    def _shadow_status(self, model: str, label: Label | None) -> ShadowStatus | None:
        if label is None:
            return None
        figures = self._shadows.current(model)
        if figures is None or figures.label_id != label.id:
            figures = ShadowFigures(label.version, label.id)
        return ShadowStatus(
            version=label.version, weight=label.weight, state=self._host.load_state(model, label.version),
            running=self._shadows_running, compared=figures.compared, errors=figures.errors,
            skipped=figures.skipped, instances=figures.instances,
            agreement=None if figures.agreement is None else round(figures.agreement, 4),
            mean_abs_diff=None if figures.mean_abs_diff is None else round(figures.mean_abs_diff, 6),
            shadow_p50_ms=latency_percentile(figures.shadow_ms, 50),
            shadow_p99_ms=latency_percentile(figures.shadow_ms, 99),
            answer_p50_ms=latency_percentile(figures.answer_ms, 50),
            answer_p99_ms=latency_percentile(figures.answer_ms, 99))

    def _drift_status(self, model: str) -> dict[str, VersionDriftStatus]:
        reports = self._drift.reports(model) if self._drift is not None else []
        return {str(r.version): VersionDriftStatus(
            instances=round(r.instances, 1), flagged=r.flagged,
            features={f.feature: FeatureDriftStatus(mean_shift=round(f.mean_shift, 4),
                                                    psi=None if f.psi is None else round(f.psi, 4), flagged=f.flagged)
                      for f in r.features}) for r in reports}

    async def service_status(self, key: ApiKey | None) -> ServiceStatus:
        """``GET /maas/v1/status``: the models the key may call, with their versions, labels, last label
        change (automatic rollbacks say why) and recent requests; the deployments' replica counts.
        Read concurrently, within the request timeout."""
        deadline = self._clock() + self._timeout_s

        async def model(name: str) -> ModelServiceStatus:
            labels, history, versions = await asyncio.gather(
                self._storage.labels(name), self._storage.label_history(name), self._storage.versions(name))
            return ModelServiceStatus(
                versions=versions,
                labels={k: LabelRoute(version=v.version, weight=v.weight) for k, v in labels.items()},
                last_label_change=history[-1] if history else None, recent=self._recent.summary(name),
                drift=self._drift_status(name), shadow=self._shadow_status(name, labels.get(SHADOW_LABEL)))

        async def status() -> ServiceStatus:
            names = [n for n in await self._storage.models() if key is None or key.allows(n)]
            models = await asyncio.gather(*(model(n) for n in names))
            deployments = await self._deployments() if self._deployments is not None else {}
            return ServiceStatus(models=dict(zip(names, models, strict=True)),
                                 deployments=deployments, replica=self._replica)  # validated here

        return await self._within(status(), deadline, "the service's status")
