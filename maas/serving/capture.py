"""Request capture: a sampled share of a model's predictions, written as Parquet on the registry's
storage for retraining and audits. Off by default, per model.

A model is captured at the share ``maas models capture NAME --sample S`` recorded in the registry
(``<model>/capture.json``, seen by the replicas within ``registry_refresh_s``), else at the Serve
config's ``args.capture.models.NAME.sample``. For each captured prediction the replica keeps its
inputs, outputs, version, label, protocol, latency, time and request id (never keys or headers) in a
bounded buffer (:class:`CaptureBuffer`); a background task (:class:`CaptureWriter`) flushes it by size
and by time, in a thread, never on a request's path. When the storage is slow or down, what could not
be written goes back to the buffer, and past its bounds the oldest records are dropped and counted
(``maas_capture_dropped_total``): predictions are never affected.

The files, one row per instance, are partitioned as Hive does, which Ray Data and pyarrow read as
they are (``ray.data.read_parquet(<registry>/_captures/model=digits)``)::

    <registry>/_captures/model=<model>/version=<v>/day=<YYYY-MM-DD>/<UTC time>-<replica>-<n>.parquet
      request_id, instance, time, label, protocol, latency_ms,   # the prediction
      <input name>...,                                            # each input, one instance's values (flat);
                                                                  # input_<name> where the name is taken
      output_<output name>...                                     # each output, the same

Captured inputs are user data: they are kept where the registry is, readable by whoever reads it,
until ``maas captures clean --keep-days N`` removes the older days.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt

from maas.errors import StorageUnavailable
from maas.registry import Registry
from maas.storage import join_uri, write_parquet_atomic

logger = logging.getLogger("ray.serve")
CAPTURES_DIR = "_captures"  # beside the models: a model's name never starts with "_"


class ModelCapture(BaseModel):
    model_config = {"extra": "forbid"}

    sample: float = Field(ge=0.0, le=1.0, description="Share of the model's predictions captured.")


class CapturePolicy(BaseModel):
    """``args.capture`` in the Serve config."""

    model_config = {"extra": "forbid"}

    models: dict[str, ModelCapture] = Field(
        default_factory=dict, description="Models captured, and at what share (maas models capture NAME --sample "
                                          "S overrides it); none by default.")
    max_buffered_bytes: PositiveInt = Field(
        default=64 * 1024 * 1024, description="Captured records one replica holds before writing; beyond, the "
                                              "oldest are dropped (maas_capture_dropped_total).")
    flush_records: PositiveInt = Field(default=2000, description="A flush starts once this many records wait.")
    flush_every_s: PositiveFloat = Field(default=10.0, description="... or this long after the last one.")
    write_timeout_s: PositiveFloat = Field(
        default=30.0, description="A write not done by then counts as failed: its records wait for the next.")


@dataclass(frozen=True)
class CaptureRecord:
    """One captured prediction: the request's own input arrays (not copied), and outputs of its own
    (the data plane copies them out of their batch's)."""

    model: str
    version: int
    label: str
    protocol: str
    latency_ms: float
    time: float  # UNIX seconds
    request_id: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.inputs.values(), *self.outputs.values())) + 256

    @property
    def day(self) -> str:
        return dt.datetime.fromtimestamp(self.time, dt.UTC).strftime("%Y-%m-%d")


class CaptureBuffer:
    """Records waiting to be written, at most ``max_bytes``; past it the oldest are dropped and
    reported to ``on_drop(model, n)``."""

    def __init__(self, max_bytes: int, on_drop: Callable[[str, int], None]) -> None:
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._records: deque[CaptureRecord] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: CaptureRecord) -> None:
        self._records.append(record)
        self.bytes += record.nbytes
        self._bound()

    def take(self, n: int) -> list[CaptureRecord]:
        taken = [self._records.popleft() for _ in range(min(n, len(self._records)))]
        self.bytes -= sum(r.nbytes for r in taken)
        return taken

    def put_back(self, records: list[CaptureRecord]) -> None:
        """Records a write failed to store, back at the front (they are the oldest)."""
        self._records.extendleft(reversed(records))
        self.bytes += sum(r.nbytes for r in records)
        self._bound()

    def _bound(self) -> None:
        dropped: dict[str, int] = {}
        while self.bytes > self.max_bytes and len(self._records) > 1:
            oldest = self._records.popleft()
            self.bytes -= oldest.nbytes
            dropped[oldest.model] = dropped.get(oldest.model, 0) + 1
        for model, n in dropped.items():
            self._on_drop(model, n)


def to_table(records: list[CaptureRecord]) -> pa.Table:
    """One Parquet table of ``records`` (alike in their inputs' and outputs' names and dtypes): a row per
    instance, each input and output flattened to one list of that instance's values."""
    sizes = [int(next(iter(r.inputs.values())).shape[0]) for r in records]

    def repeat(values: Iterable[object], dtype: pa.DataType) -> pa.Array:
        return pa.array([v for v, n in zip(values, sizes, strict=True) for _ in range(n)], dtype)

    columns: dict[str, pa.Array] = {
        "request_id": repeat((r.request_id for r in records), pa.string()),
        "instance": pa.array([i for n in sizes for i in range(n)], pa.int32()),
        "time": repeat((dt.datetime.fromtimestamp(r.time, dt.UTC) for r in records), pa.timestamp("ms", tz="UTC")),
        "label": repeat((r.label for r in records), pa.string()),
        "protocol": repeat((r.protocol for r in records), pa.string()),
        "latency_ms": repeat((r.latency_ms for r in records), pa.float64()),
    }
    for part in ("inputs", "outputs"):
        for name in getattr(records[0], part):
            arrays = [getattr(r, part)[name] for r in records]
            flat = np.concatenate([a.reshape(a.shape[0], -1) for a in arrays])
            offsets = pa.array(np.arange(flat.shape[0] + 1) * flat.shape[1], pa.int32())
            # Variable-size lists: files of one partition may hold other lengths (a -1 dimension).
            values = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)))
            columns[column_name(name, part == "outputs")] = values
    return pa.table(columns)


RESERVED = frozenset({"request_id", "instance", "time", "label", "protocol", "latency_ms",  # the record's own
                      "model", "version", "day"})  # the Hive partitions'


def column_name(name: str, output: bool) -> str:
    """An input keeps its name (so that training reads it as it is), unless the record's own columns,
    the partitions or the outputs' prefix take it: then ``input_<name>``. An output is ``output_<name>``."""
    if output:
        return f"output_{name}"
    return f"input_{name}" if name in RESERVED or name.startswith(("output_", "input_")) else name


def _schema_key(record: CaptureRecord) -> tuple[object, ...]:
    """Records that can share a file: one model, version and day, the same inputs and outputs."""
    def shape(arrays: dict[str, np.ndarray]) -> tuple[object, ...]:
        return tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(arrays.items()))

    return record.model, record.version, record.day, shape(record.inputs), shape(record.outputs)


def partition_uri(registry_uri: str, model: str, version: int, day: str) -> str:
    return join_uri(registry_uri, CAPTURES_DIR, f"model={model}", f"version={version}", f"day={day}")


class CaptureWriter:
    """The replica's buffer and the background task that writes it to the registry's storage."""

    def __init__(self, registry_uri: str, policy: CapturePolicy, *, replica: str,
                 on_written: Callable[[str, int], None] = lambda model, rows: None,
                 on_drop: Callable[[str, int], None] = lambda model, n: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self._registry_uri = registry_uri
        self._registry = Registry(registry_uri)
        self._replica = "".join(c for c in replica if c.isalnum())[-16:] or "replica"
        self._on_written = on_written
        self.buffer = CaptureBuffer(policy.max_buffered_bytes, on_drop)
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # One thread of its own: a write hung on the storage never takes a thread that loads or
        # forward passes need, and no second write starts while one still runs (timed out or not).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="maas-capture")
        self._writing: asyncio.Future[None] | None = None
        self._files = 0
        self.failures = 0  # writes that failed in a row (the back-off)

    def offer(self, record: CaptureRecord) -> None:
        """Buffer one record (on the request path: no I/O here)."""
        self.buffer.add(record)
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self.buffer) >= self.policy.flush_records and not self.failures:
            self._wake.set()  # after a failure only the back-off wakes the writer

    async def _run(self) -> None:
        while not self._closing:
            wait_s = self.policy.flush_every_s if not self.failures else min(30.0, 2.0 ** min(self.failures, 5))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug here must not end capture for the replica's life
                logger.exception("capture: flushing failed")
                self.failures += 1

    async def close(self) -> None:
        """Stop the background task once its flush is done, then write what waits (the replica
        shutting down)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> None:
        """Write what waits, a file per model, version, day and schema; a group that fails goes back
        with the groups after it. A write that timed out may still land: rows are written at least
        once, and ``(request_id, instance)`` identifies them."""
        if self._writing is not None and not self._writing.done():
            return  # the last write still runs (hung storage): its records wait in the buffer meanwhile
        while len(self.buffer):
            groups: dict[tuple[object, ...], list[CaptureRecord]] = {}
            for record in self.buffer.take(self.policy.flush_records):
                groups.setdefault(_schema_key(record), []).append(record)
            pending = list(groups.values())
            try:
                while pending:
                    self._writing = asyncio.get_running_loop().run_in_executor(self._thread, self._write, pending[0])
                    await asyncio.wait_for(asyncio.shield(self._writing), self.policy.write_timeout_s)
                    pending.pop(0)
                    self.failures = 0
            except BaseException as exc:  # the storage failed, or the replica stops: nothing taken is lost
                self.buffer.put_back(sorted((r for group in pending for r in group), key=lambda r: r.time))
                if not isinstance(exc, (OSError, TimeoutError, pa.ArrowException, StorageUnavailable)):
                    raise
                self.failures += 1
                logger.warning("capture: writing to the registry's storage failed (%s); %d records wait for the "
                               "next try", type(exc).__name__, len(self.buffer))
                return

    def _write(self, group: list[CaptureRecord]) -> None:
        first = group[0]
        # A root gone (an unmounted disk, a deleted prefix) is an outage: checked first for a clear error,
        # and never created again, even when it vanishes between the check and the write.
        self._registry.check_reachable()
        self._files += 1
        stamp = dt.datetime.fromtimestamp(self._clock(), dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{self._replica}-{self._files}-{uuid.uuid4().hex[:6]}.parquet"
        table = to_table(group)
        write_parquet_atomic(table, join_uri(partition_uri(self._registry_uri, first.model, first.version, first.day),
                                             name), root_uri=self._registry_uri)
        self._on_written(first.model, table.num_rows)

