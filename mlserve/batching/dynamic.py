"""Dynamic batching for request/response models: queue, group rows, run off the loop, split back."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from mlserve.errors import InferenceFailed, InvalidInput, Overloaded
from mlserve.registry.spec import BatchingSpec

Tensors = dict[str, np.ndarray]


class InferFn(Protocol):
    def __call__(self, inputs: Tensors) -> Tensors: ...


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one executed batch looked like; handed to the observer after it ran."""

    num_requests: int
    num_rows: int
    queue_s: tuple[float, ...]
    compute_s: float
    failed: bool


@dataclass(slots=True)
class _Pending:
    inputs: Tensors
    num_rows: int
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Owns one version's queue and its worker tasks; each batch runs on the version's executor.

    A batch closes when it is full, when the engine is free and only one request waits (a lone
    request never waits out the delay), or when the oldest waiting request's delay is up.
    """

    def __init__(
        self,
        infer: InferFn,
        spec: BatchingSpec,
        name: str,
        instances: int = 1,
        observer: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._infer = infer
        self._spec = spec
        self._instances = instances
        self._observer = observer
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"mlserve-{name}")
        self._pending: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._num_running = 0
        self._idle: asyncio.Event | None = None

    @property
    def num_queued(self) -> int:
        return len(self._pending)

    @property
    def num_in_flight(self) -> int:
        return len(self._pending) + self._num_running

    def start(self) -> None:
        """Create the loop-bound objects and workers; call from inside the running loop."""
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._instances)]

    async def submit(self, inputs: Tensors, num_rows: int) -> Tensors:
        """Queue one request's tensors (all with `num_rows` leading rows when batching) and await its outputs."""
        batching = self._spec.max_batch_size > 0
        if batching and num_rows > self._spec.max_batch_size:
            raise InvalidInput(
                f"request has {num_rows} rows, more than this model's max_batch_size {self._spec.max_batch_size}"
            )
        if len(self._pending) >= self._spec.max_queue_size:
            raise Overloaded(f"queue is full ({self._spec.max_queue_size} requests waiting)")
        assert self._arrived is not None and self._idle is not None, "submit before start"
        item = _Pending(inputs, num_rows, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._idle.clear()
        self._arrived.set()
        return await item.future

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        assert self._idle is not None, "drain before start"
        while self._pending or self._num_running:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self) -> None:
        """Drain, then stop the workers and the executor."""
        if self._idle is not None:
            await self.drain()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._executor.shutdown(wait=False)

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            self._num_running += 1
            try:
                await self._run(batch)
            finally:
                self._num_running -= 1
                if not self._pending and not self._num_running:
                    self._idle.set()

    async def _next_batch(self) -> list[_Pending]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        if self._spec.max_batch_size == 0 or len(self._pending) == 1:
            return [self._pending.popleft()]
        deadline = self._pending[0].enqueued_at + self._spec.max_queue_delay_us / 1e6
        while self._queued_rows() < self._spec.max_batch_size and not self._at_preferred_size():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self._take_rows(self._spec.max_batch_size)

    def _queued_rows(self) -> int:
        return sum(p.num_rows for p in self._pending)

    def _at_preferred_size(self) -> bool:
        return self._queued_rows() in self._spec.preferred_batch_sizes

    def _take_rows(self, limit: int) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._pending and rows + self._pending[0].num_rows <= limit:
            item = self._pending.popleft()
            if item.future.cancelled():
                continue
            batch.append(item)
            rows += item.num_rows
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.cancelled()]
        if not batch:
            return
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        failed = False
        try:
            merged = batch[0].inputs if len(batch) == 1 else _concat([p.inputs for p in batch])
            outputs = await loop.run_in_executor(self._executor, self._infer, merged)
            self._deliver(batch, outputs)
        except Exception as exc:
            failed = True
            error = exc if isinstance(exc, InferenceFailed) else InferenceFailed(f"{type(exc).__name__}: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        if self._observer is not None:
            self._observer(
                BatchStats(
                    num_requests=len(batch),
                    num_rows=sum(p.num_rows for p in batch),
                    queue_s=tuple(started - p.enqueued_at for p in batch),
                    compute_s=time.monotonic() - started,
                    failed=failed,
                )
            )

    def _deliver(self, batch: list[_Pending], outputs: Tensors) -> None:
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        total = sum(p.num_rows for p in batch)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise InferenceFailed(f"output {name!r} has {array.shape[:1]} rows for a batch of {total}")
        start = 0
        for item in batch:
            end = start + item.num_rows
            if not item.future.done():
                item.future.set_result({name: array[start:end] for name, array in outputs.items()})
            start = end


def _concat(requests: list[Tensors]) -> Tensors:
    """One contiguous array per input, rows in request order."""
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}
