"""Python client for the service's protocols, numpy in and numpy out: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio). Both speak the TF Serving REST API (``predict``, ``status``,
``metadata``), KServe V1's ``explain`` and the KServe V2 protocol (``infer``, with binary tensors on
request, ``model_metadata``, ``ready``...), send the API key, and raise :class:`HTTPError` with the
server's message on an error.

    from maas.client import Client
    client = Client("http://127.0.0.1:8000", api_key="maas_...")   # defaults: MAAS_SERVE_URL, MAAS_API_KEY
    probabilities = client.predict("digits", images)                # TF Serving :predict, row format
    outputs = client.infer("digits", {"pixels": images}, binary=True)  # V2 infer, binary tensors both ways
    why = client.explain("digits", images[:2])                      # :explain, integrated gradients

Both classes build requests and read answers with the same functions below; they differ only in
how bytes travel (``http.client`` keep-alive connections per thread, or one ``aiohttp`` session).

Every call they make is idempotent (a prediction changes nothing on the server), so both retry a
call whose connection was lost or that was answered 503 (a replica restarting or full), with
exponential backoff and jitter, honouring ``Retry-After``, within :class:`RetryPolicy`'s bound.
Each retry is counted in ``client.retries`` (by reason), never hidden: ``RetryPolicy(attempts=1)``
turns retrying off.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from maas import settings
from maas.serving.protocol import ROUTES
from maas.serving.protocol.service import STATUS_PATH
from maas.signature import numpy_dtype, v2_tensor

V2_HEADER_LENGTH = "inference-header-content-length"
JSON = {"content-type": "application/json"}


class HTTPError(Exception):
    """The service answered with an error status; ``message`` is its JSON ``error``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Reply:
    """One raw answer: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self) -> Reply:
        if self.status >= 400:
            try:
                message = json.loads(self.body).get("error", "")
            except (ValueError, AttributeError):
                message = self.body.decode(errors="replace")
            raise HTTPError(self.status, message or self.body.decode(errors="replace"), self.headers)
        return self


@dataclass(frozen=True)
class Call:
    """One request, built once and sent by either client."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


# ---- requests and answers, shared by both clients ------------------------------------------------


def _path(protocol: str, kind: str, **params: Any) -> str:
    """A route's path from the service's own route table (the one the server matches against)."""
    given = {k: v for k, v in params.items() if v is not None}
    return ROUTES.route(protocol, kind, with_params=given).path(**given)


def tf_model_path(model: str, version: int | None = None, label: str | None = None) -> str:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    return _path("tfserving", "status", model=model, version=version, label=label)


def predict_path(model: str, version: int | None = None, label: str | None = None) -> str:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    return _path("tfserving", "predict", model=model, version=version, label=label)


def v2_model_path(model: str, version: int | None = None) -> str:
    return _path("v2", "model_metadata", model=model, version=version)


def predict_call(model: str, instances: Any, version: int | None, label: str | None) -> Call:
    if isinstance(instances, np.ndarray):
        instances = instances.tolist()
    body = json.dumps({"instances": instances}, separators=(",", ":")).encode()
    return Call("POST", predict_path(model, version, label), body, JSON)


def explain_call(model: str, instances: Any, version: int | None, label: str | None, *, baseline: str | None,
                 steps: int | None, output: str | None, target: int | None) -> Call:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    if isinstance(instances, np.ndarray):
        instances = instances.tolist()
    options = {"baseline": baseline, "steps": steps, "output": output, "target": target}
    body = {"instances": instances, **{k: v for k, v in options.items() if v is not None}}
    path = _path("explain", "explain", model=model, version=version, label=label)
    return Call("POST", path, json.dumps(body, separators=(",", ":")).encode(), JSON)


def explain_result(reply: Reply) -> dict[str, Any]:
    """The ``:explain`` answer, each explanation's ``attributions`` as an array (a dict of arrays by
    input name for a model of several inputs)."""
    document: dict[str, Any] = reply.raise_for_status().json()
    for item in document["explanations"]:
        found = item["attributions"]
        item["attributions"] = ({k: np.asarray(v, np.float32) for k, v in found.items()} if isinstance(found, dict)
                                else np.asarray(found, np.float32))
    return document


def predict_result(reply: Reply) -> np.ndarray:
    return np.asarray(reply.raise_for_status().json()["predictions"])


def infer_call(model: str, inputs: Mapping[str, np.ndarray], version: int | None, *, binary: bool,
               outputs: list[str] | None, request_id: str | None) -> Call:
    """A V2 ``infer`` request: JSON ``data``, or (``binary``) raw little-endian tensors after the JSON,
    with binary outputs asked for too (the binary tensor data extension)."""
    tensors, blobs = [], []
    for name, value in inputs.items():
        tensor, raw = v2_tensor(name, value, binary)
        tensors.append(tensor)
        if raw is not None:
            blobs.append(raw)
    doc: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    elif binary:
        doc["parameters"] = {"binary_data_output": True}
    head = json.dumps(doc, separators=(",", ":")).encode()
    path = _path("v2", "infer", model=model, version=version)
    if not binary:
        return Call("POST", path, head, JSON)
    headers = {"content-type": "application/octet-stream", V2_HEADER_LENGTH: str(len(head))}
    return Call("POST", path, head + b"".join(blobs), headers)


def infer_result(reply: Reply) -> dict[str, np.ndarray]:
    """The outputs of a V2 ``infer`` answer, JSON or binary, as arrays of their V2 datatypes."""
    reply.raise_for_status()
    length = reply.headers.get(V2_HEADER_LENGTH)
    head, binary = (reply.body, b"") if length is None else (reply.body[: int(length)], reply.body[int(length):])
    outputs, offset = {}, 0
    for tensor in json.loads(head)["outputs"]:
        dtype = numpy_dtype(tensor["datatype"])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=size // dtype.itemsize, offset=offset)
            offset += size
        else:
            array = np.asarray(tensor["data"], dtype=dtype)
        outputs[tensor["name"]] = array.astype(dtype, copy=False).reshape(tensor["shape"])
    return outputs


def json_result(reply: Reply) -> dict[str, Any]:
    """The JSON object of a successful answer (every JSON answer of this service is an object)."""
    doc: dict[str, Any] = reply.raise_for_status().json()
    return doc


# ---- retries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is tried again: its connection lost (refused, reset, closed before an answer) or an
    answer whose status is in ``statuses`` *and* that says when to come back (``Retry-After``: a full
    replica, a storage outage; a 503 without it, such as a version that cannot load, will not clear
    by retrying). At most ``attempts`` tries in all, waiting ``backoff_s`` doubled after each try (at
    most ``max_backoff_s``, with full jitter), or the server's ``Retry-After`` spread by up to half
    again (so that clients turned away together do not all come back at once), capped the same. A
    timed-out call is never retried: it may still be running, and a retry would double the load that
    made it slow. Health probes (``live``, ``ready``, ``model_ready``) are never retried: they report."""

    attempts: int = 4
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    statuses: frozenset[int] = frozenset({503})

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"RetryPolicy needs attempts >= 1 and non-negative waits: {self}")

    def wait_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None and retry_after.strip().isascii() and retry_after.strip().isdigit():
            return min(float(retry_after.strip()) * random.uniform(1.0, 1.5), self.max_backoff_s)
        return random.uniform(0, min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))

    def retries_answer(self, reply: Reply) -> bool:
        return reply.status in self.statuses and "retry-after" in reply.headers


NO_RETRY = RetryPolicy(attempts=1)
CONNECTION_LOST = "connection"  # the reason counted in ``retries`` for a lost connection


class _Retries:
    """Counts a client's retries by reason (``"connection"``, or the status as text), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] += 1


# ---- the two clients -------------------------------------------------------------------------------


class _Base:
    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.base_url = (base_url or settings.serve_url()).rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry
        self._retries = _Retries()
        key = api_key if api_key is not None else settings.api_key()
        self._auth = {"authorization": f"Bearer {key}"} if key else {}

    @property
    def retries(self) -> Counter[str]:
        """Retries so far, by reason: ``"connection"`` for a lost connection, ``"503"`` for that status."""
        return Counter(self._retries.counts)

    def _retry_wait(self, policy: RetryPolicy, attempt: int, reason: str,
                    retry_after: str | None = None) -> float | None:
        """Seconds to wait before trying again after ``attempt`` failed for ``reason``, counted;
        ``None`` when the policy's attempts are spent."""
        if attempt >= policy.attempts:
            return None
        self._retries.add(reason)
        return policy.wait_s(attempt, retry_after)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _headers(self, call: Call, extra: Mapping[str, str] | None) -> dict[str, str]:
        return {**self._auth, **call.headers, **(extra or {})}


class Client(_Base):
    """Blocking client; one keep-alive connection per thread, so one client may serve many threads."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry)
        parts = urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path
        self._local = threading.local()

    # TF Serving REST API
    def predict(self, model: str, instances: Any, *, version: int | None = None,
                label: str | None = None) -> np.ndarray:
        """Row-format ``:predict``; the ``predictions`` as an array."""
        return predict_result(self.send(predict_call(model, instances, version, label)))

    def explain(self, model: str, instances: Any, *, version: int | None = None, label: str | None = None,
                baseline: str | None = None, steps: int | None = None, output: str | None = None,
                target: int | None = None) -> dict[str, Any]:
        """KServe V1 ``:explain``: ``predictions`` and, per instance, integrated-gradients
        ``attributions`` against ``baseline`` (``"zeros"``, the default, or ``"training_mean"``)."""
        return explain_result(self.send(explain_call(model, instances, version, label, baseline=baseline, steps=steps,
                                                     output=output, target=target)))

    def status(self, model: str, *, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        return json_result(self.send(Call("GET", tf_model_path(model, version, label))))

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        path = _path("tfserving", "metadata", model=model, version=version, label=label)
        return json_result(self.send(Call("GET", path)))

    # KServe V2
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: int | None = None, binary: bool = False,
              outputs: list[str] | None = None, request_id: str | None = None) -> dict[str, np.ndarray]:
        return infer_result(self.send(infer_call(model, inputs, version, binary=binary, outputs=outputs,
                                                 request_id=request_id)))

    def model_metadata(self, model: str, *, version: int | None = None) -> dict[str, Any]:
        return json_result(self.send(Call("GET", v2_model_path(model, version))))

    def model_ready(self, model: str, *, version: int | None = None) -> bool:
        return self.send(Call("GET", _path("v2", "model_ready", model=model, version=version)),
                         retry=NO_RETRY).status == 200

    def live(self) -> bool:
        return self.send(Call("GET", _path("v2", "live")), retry=NO_RETRY).status == 200

    def ready(self) -> bool:
        return self.send(Call("GET", _path("v2", "ready")), retry=NO_RETRY).status == 200

    # this service
    def service_status(self) -> dict[str, Any]:
        """``GET /maas/v1/status``: per-model versions, labels, replicas and recent error rates."""
        return json_result(self.send(Call("GET", STATUS_PATH)))

    def send(self, call: Call, headers: Mapping[str, str] | None = None, *, retry: RetryPolicy | None = None) -> Reply:
        """Send one request and return the answer, error statuses included (no exception for those),
        retried as ``retry`` (default :attr:`retry`) says (a server closing an idle keep-alive
        connection is one such lost connection, and counted like the others)."""
        policy = retry or self.retry
        all_headers = self._headers(call, headers)
        attempt = 0
        while True:
            attempt += 1
            conn = self._connection()
            try:
                conn.request(call.method, self._prefix + call.path, body=call.body, headers=all_headers)
                resp = conn.getresponse()
                body = resp.read()
            except ConnectionError:  # refused, reset, or closed before an answer (RemoteDisconnected)
                self.close()
                wait = self._retry_wait(policy, attempt, CONNECTION_LOST)
                if wait is None:
                    raise
                time.sleep(wait)
                continue
            except Exception:
                self.close()
                raise
            if resp.will_close:
                self.close()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
            wait = self._retry_wait(policy, attempt, str(reply.status), reply.headers.get("retry-after")) \
                if policy.retries_answer(reply) else None
            if wait is None:
                return reply
            time.sleep(wait)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._netloc, timeout=self.timeout_s)
        return conn


class AsyncClient(_Base):
    """asyncio client over one ``aiohttp`` session; use ``async with AsyncClient(...) as client``."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry)
        self._session: Any = None

    async def predict(self, model: str, instances: Any, *, version: int | None = None,
                      label: str | None = None) -> np.ndarray:
        return predict_result(await self.send(predict_call(model, instances, version, label)))

    async def explain(self, model: str, instances: Any, *, version: int | None = None, label: str | None = None,
                      baseline: str | None = None, steps: int | None = None, output: str | None = None,
                      target: int | None = None) -> dict[str, Any]:
        return explain_result(await self.send(explain_call(model, instances, version, label, baseline=baseline,
                                                           steps=steps, output=output, target=target)))

    async def status(self, model: str, *, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        return json_result(await self.send(Call("GET", tf_model_path(model, version, label))))

    async def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        path = _path("tfserving", "metadata", model=model, version=version, label=label)
        return json_result(await self.send(Call("GET", path)))

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: int | None = None,
                    binary: bool = False, outputs: list[str] | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        return infer_result(await self.send(infer_call(model, inputs, version, binary=binary, outputs=outputs,
                                                       request_id=request_id)))

    async def model_metadata(self, model: str, *, version: int | None = None) -> dict[str, Any]:
        return json_result(await self.send(Call("GET", v2_model_path(model, version))))

    async def model_ready(self, model: str, *, version: int | None = None) -> bool:
        return (await self.send(Call("GET", _path("v2", "model_ready", model=model, version=version)),
                                retry=NO_RETRY)).status == 200

    async def live(self) -> bool:
        return (await self.send(Call("GET", _path("v2", "live")), retry=NO_RETRY)).status == 200

    async def ready(self) -> bool:
        return (await self.send(Call("GET", _path("v2", "ready")), retry=NO_RETRY)).status == 200

    async def service_status(self) -> dict[str, Any]:
        return json_result(await self.send(Call("GET", STATUS_PATH)))

    async def send(self, call: Call, headers: Mapping[str, str] | None = None, *,
                   retry: RetryPolicy | None = None) -> Reply:
        import aiohttp

        policy = retry or self.retry
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
            # aiohttp retries a GET once, unseen, when the server drops the connection; the retries
            # here are counted instead (the flag aiohttp's own test client turns off; no public one).
            if not hasattr(self._session, "_retry_connection"):
                raise RuntimeError("this aiohttp has no _retry_connection: its own retries would go uncounted")
            self._session._retry_connection = False
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session.request(call.method, self.base_url + call.path, data=call.body,
                                                 headers=self._headers(call, headers)) as resp:
                    reply = Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())
            except (aiohttp.ServerTimeoutError, aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch,
                    aiohttp.ClientConnectorDNSError):  # a timeout, or what trying again will not mend
                raise
            except aiohttp.ClientConnectionError:  # refused, reset, or closed before an answer
                wait = self._retry_wait(policy, attempt, CONNECTION_LOST)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            wait = self._retry_wait(policy, attempt, str(reply.status), reply.headers.get("retry-after")) \
                if policy.retries_answer(reply) else None
            if wait is None:
                return reply
            await asyncio.sleep(wait)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
