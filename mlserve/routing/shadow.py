"""Shadow traffic: a copy of a request goes to another version after the primary has answered; the
shadow's outputs are only compared with the primary's, never returned.

The primary never waits on the shadow: jobs go into a bounded queue with put_nowait (a full queue
drops the copy and counts it), and one worker drains it, so shadow load on the engines is at most
one request at a time per server. That worker calls the shadow version's engine on a thread of its
own at the lowest CPU priority (nice 19 on Linux), so when cores are scarce the primary's engine
threads run first; it bypasses the version's batcher, whose queue belongs to real traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger("mlserve.routing")

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One copied request: where it goes, its inputs, and the primary's answer to compare with."""

    model: str
    version: int
    inputs: Tensors
    primary: Tensors
    infer: Callable[[Tensors], Tensors]
    """The shadow version's engine call; runs on the shadow thread."""


@dataclass(slots=True)
class ShadowStats:
    """Running comparison of one shadow version with the primary."""

    num_compared: int = 0
    num_dropped: int = 0
    num_failed: int = 0
    num_rows: int = 0
    num_rows_agreeing: int = 0
    abs_diff_sum: float = 0.0
    num_values: int = 0

    @property
    def agreement(self) -> float | None:
        return self.num_rows_agreeing / self.num_rows if self.num_rows else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.num_values if self.num_values else None

    def to_dict(self) -> dict:
        return {
            "compared": self.num_compared, "dropped": self.num_dropped, "failed": self.num_failed,
            "agreement": self.agreement, "mean_abs_diff": self.mean_abs_diff,
        }


def _row_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: the same arg-max for score vectors, the same values (to float tolerance) otherwise."""
    rows = a.shape[0] if a.ndim else 1
    a2, b2 = a.reshape(rows, -1), b.reshape(rows, -1)
    if a2.dtype.kind == "f" and a2.shape[1] > 1:
        return a2.argmax(axis=1) == b2.argmax(axis=1)
    if a2.dtype.kind in "fc":
        return np.isclose(a2, b2, rtol=1e-4, atol=1e-6).all(axis=1)
    return (a2 == b2).all(axis=1)


def compare_outputs(stats: ShadowStats, primary: Tensors, shadow: Tensors) -> None:
    """Fold one answer pair into the stats, over the outputs both have with the same shape."""
    agree: np.ndarray | None = None
    for name, a in primary.items():
        b = shadow.get(name)
        if b is None or b.shape != a.shape:
            agree = np.zeros(a.shape[0] if a.ndim else 1, dtype=bool)
            continue
        row_agree = _row_agreement(a, b)
        agree = row_agree if agree is None else agree & row_agree
        if a.dtype.kind in "biuf":
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            stats.abs_diff_sum += float(diff.sum())
            stats.num_values += diff.size
    stats.num_compared += 1
    if agree is not None:
        stats.num_rows += agree.size
        stats.num_rows_agreeing += int(agree.sum())


def _lower_priority() -> None:
    """Thread initializer: on Linux a thread's nice value is its own (setpriority on its thread id)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class ShadowRunner:
    """Owns the bounded queue of shadow jobs, the worker task that drains it and its low-priority thread."""

    def __init__(self, max_queue: int, on_done: Callable[[ShadowJob, Tensors | None], None]) -> None:
        self._max_queue = max_queue
        self._on_done = on_done
        self._queue: asyncio.Queue[ShadowJob] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def offer(self, job: ShadowJob) -> bool:
        """Queue a copy if there is room; never waits. False means it was dropped."""
        if self._queue is None:
            self._queue = asyncio.Queue(self._max_queue)
            self._executor = ThreadPoolExecutor(1, "mlserve-shadow", initializer=_lower_priority)
            self._worker = asyncio.get_running_loop().create_task(self._run())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            return False
        return True

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            try:
                outputs = await loop.run_in_executor(self._executor, job.infer, job.inputs)
            except Exception as exc:  # the shadow's failure is only counted, never raised
                log.debug("shadow %s/%d failed: %s", job.model, job.version, exc)
                outputs = None
            self._on_done(job, outputs)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
