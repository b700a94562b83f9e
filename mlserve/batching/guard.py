"""Fault isolation around a backend's infer: hang deadlines with worker replacement, and batches
split in halves when they run out of memory.

The batcher awaits `GuardedInfer.run(inputs)` on the event loop: the batch runs on one of the
guard's own daemon threads, which hands the result back with a single `call_soon_threadsafe` (one
thread hop per batch). A lone request may take a shorter way back (`run(inputs, wait_s)`): the loop
thread waits for the worker itself, for at most `wait_s`, on a lock the worker releases, so the
answer needs no wake-up of the loop, no future and no timer; past `wait_s` the batch continues as
any other (the worker wakes the loop, the watchdog counts the hang deadline from the start). The
cost is the loop being blocked for at most `wait_s` while one row computes; the batcher asks for it
only when nothing else is queued. A backend whose run another thread can stop (ONNX Runtime on the
CPU) takes a shorter way still: the loop thread runs the lone batch itself, on a leash
(batching/leash.py), and a run past the leash is stopped and handed to a worker as above. A
watchdog timer on the loop fires after `hang_timeout_s`: the thread that did not come back is
abandoned (Python cannot kill it), a fresh one takes the next batch, and the requests get
`ModelHung` (504). An abandoned thread that later finishes exits; while `max_hung` are
still stuck the model answers at once with an error instead of stacking threads. Calling the guard
directly (`guard(inputs)`) runs the same way from a plain thread, for tools and tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

import numpy as np

from mlserve.batching.leash import LEASH
from mlserve.engine.base import StoppableInfer
from mlserve.errors import InferenceFailed, MlserveError, ModelHung
from mlserve.spec import ModelConfig

log = logging.getLogger("mlserve.guard")

Tensors = dict[str, np.ndarray]
Done = Callable[[Tensors | None, BaseException | None], None]
"""Called on the worker thread with (outputs, None) or (None, error) when a job ends."""
DEFAULT_HANG_TIMEOUT_S = 60.0
"""How long one batch may run before its worker counts as hung (model.toml `hang_timeout_us`)."""
IDLE_EXIT_S = 30.0
HUNG_THREAD_PREFIX = "mlserve-hung-"
_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate",
                "bad_alloc", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or an allocator failure as engines word it."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _OOM_MARKERS)


class _Worker:
    """One daemon thread running jobs from its own queue; exits when idle or once abandoned."""

    def __init__(self, pool: GuardedInfer) -> None:
        self._pool = pool
        self._jobs: queue.SimpleQueue[tuple[Callable[[Tensors], Tensors], Tensors, Done]] = queue.SimpleQueue()
        self.is_abandoned = False
        self._thread = threading.Thread(target=self._loop, name=f"mlserve-guard-{pool.label}", daemon=True)
        self._thread.start()

    def rename(self, name: str) -> None:
        self._thread.name = name

    def submit(self, fn: Callable[[Tensors], Tensors], inputs: Tensors, done: Done) -> None:
        self._jobs.put((fn, inputs, done))

    def _loop(self) -> None:
        if self._pool.nice:
            lower_thread_priority(self._pool.nice, self._pool.label)
        while True:
            try:
                fn, inputs, done = self._jobs.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                if self._pool.retire_idle(self):
                    return
                continue
            try:
                result = fn(inputs)
            except BaseException as exc:  # the model's failure belongs to its caller
                done(None, exc)
            else:
                done(result, None)
            if self.is_abandoned:
                self._pool.hung_worker_finished()
                return


class GuardedInfer:
    """Callable in place of `backend.infer`: failures name the model, hangs replace the worker,
    out-of-memory batches are retried as halves down to one row."""

    def __init__(
        self, infer: Callable[[Tensors], Tensors], label: str, hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S,
        can_split: bool = True, max_hung: int = 4, nice: int = 0, one_thread: bool = False,
        stoppable: StoppableInfer | None = None,
    ) -> None:
        self._infer = infer
        self._stoppable = stoppable
        """The backend's infer a watchdog can stop: lone batches run on the loop's thread (batching/leash.py)."""
        self.nice = nice
        """Each worker thread raises its own nice value by this much (Linux; 0: left as the process's)."""
        self._one_thread = one_thread
        self._sole: _Worker | None = None
        """With `one_thread`, the worker every batch goes to, queued behind the one it runs."""
        self.label = label
        self.hang_timeout_s = hang_timeout_s
        self._can_split = can_split
        self._max_hung = max_hung
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self.num_hung = 0
        self.num_splits = 0

    @classmethod
    def for_model(cls, infer: Callable[[Tensors], Tensors], config: ModelConfig, label: str,
                  nice: int = 0, one_thread: bool = False, stoppable: StoppableInfer | None = None) -> GuardedInfer:
        """Hang deadline from model.toml's `hang_timeout_us` when set; batches split only when batching."""
        timeout_us = config.hang_timeout_us
        hang_timeout_s = timeout_us / 1e6 if timeout_us is not None else DEFAULT_HANG_TIMEOUT_S
        return cls(infer, label, hang_timeout_s, can_split=config.batching.max_batch_size > 0, nice=nice,
                   one_thread=one_thread, stoppable=stoppable)

    def __call__(self, inputs: Tensors) -> Tensors:
        """Run one batch from a plain thread, waiting at most the hang deadline."""
        worker = self._checkout()
        future: Future = Future()
        worker.submit(self._compute, inputs, lambda result, error: _settle_sync(future, result, error))
        try:
            result = future.result(timeout=self.hang_timeout_s)
        except FutureTimeout:
            self._abandon(worker)
            raise self._hung_error() from None
        self._release(worker)
        return result

    async def run(self, inputs: Tensors, wait_s: float = 0.0) -> Tensors:
        """Run one batch from the event loop: the worker thread computes and wakes the loop once; with
        `wait_s`, the loop first waits that long for the answer itself (the short path)."""
        stoppable = self._stoppable
        if wait_s > 0 and stoppable is not None and not self.num_hung:  # a model with a hung worker stays off the loop
            outputs = self._run_leashed(stoppable, inputs)
            if outputs is not None:
                return outputs
            wait_s = 0.0  # stopped on the leash: a worker runs it, under the hang deadline
        loop = asyncio.get_running_loop()
        worker = self._checkout()
        handoff = _Handoff()
        started = time.monotonic()
        worker.submit(self._compute, inputs, handoff.done)
        if wait_s > 0 and handoff.wait(min(wait_s, self.hang_timeout_s)):
            self._release(worker)
            return handoff.outcome()
        future = handoff.to_future(loop)
        remaining = self.hang_timeout_s - (time.monotonic() - started)
        watchdog = loop.call_later(max(remaining, 0.0), self._on_hang, worker, future)
        try:
            return await future
        finally:
            watchdog.cancel()
            if not worker.is_abandoned:  # a caller cancelled mid-batch gets its worker back once it is done
                handoff.when_done(lambda: self._release(worker))

    def _run_leashed(self, stoppable: StoppableInfer, inputs: Tensors) -> Tensors | None:
        """On the calling (loop) thread, the GIL released while the engine computes; None when the
        leash stopped it or it ran out of memory (the worker path then runs it, splitting if needed)."""
        try:
            outputs = LEASH.run(stoppable, inputs)
        except MlserveError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                return None
            raise InferenceFailed(f"model {self.label} failed: {type(exc).__name__}: {exc}") from exc
        if outputs is None:
            log.info("model %s: a lone batch ran past %.0f ms on the loop's thread; it runs again on a worker",
                     self.label, LEASH.limit_s * 1e3)
        return outputs

    def _on_hang(self, worker: _Worker, future: asyncio.Future) -> None:
        if not future.done():
            self._abandon(worker)
            future.set_exception(self._hung_error())

    def _hung_error(self) -> ModelHung:
        return ModelHung(
            f"model {self.label} did not finish a batch within {self.hang_timeout_s:g} s; its worker was replaced"
        )

    def _compute(self, inputs: Tensors) -> Tensors:
        """On the worker thread: the model's own failures become InferenceFailed naming the model."""
        try:
            return self._run_splitting(inputs)
        except MlserveError:
            raise
        except Exception as exc:
            raise InferenceFailed(f"model {self.label} failed: {type(exc).__name__}: {exc}") from exc

    def _run_splitting(self, inputs: Tensors) -> Tensors:
        try:
            return self._infer(inputs)
        except MlserveError:
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            rows = _num_rows(inputs)
            if not self._can_split or rows < 2:
                raise InferenceFailed(f"model {self.label} ran out of memory on a batch of {rows} row(s): {exc}") from exc
            self.num_splits += 1
            log.warning("model %s ran out of memory on %d rows; retrying as two halves", self.label, rows)
        half = rows // 2
        first = self._run_splitting({k: v[:half] for k, v in inputs.items()})
        second = self._run_splitting({k: v[half:] for k, v in inputs.items()})
        return {name: np.concatenate([first[name], second[name]], axis=0) for name in first}

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if worker not in self._idle:
                self._idle.append(worker)

    def _checkout(self) -> _Worker:
        with self._lock:
            if self.num_hung >= self._max_hung:
                raise InferenceFailed(f"model {self.label} has {self.num_hung} hung workers; not running more batches")
            if self._idle:
                return self._idle.pop()
            if self._sole is not None and not self._sole.is_abandoned:
                return self._sole
            worker = _Worker(self)
            if self._one_thread:
                self._sole = worker
            return worker

    def _abandon(self, worker: _Worker) -> None:
        with self._lock:
            if worker.is_abandoned:  # another batch queued behind the same hung batch (one_thread)
                return
            worker.is_abandoned = True
            worker.rename(f"{HUNG_THREAD_PREFIX}{self.label}")
            self.num_hung += 1
        log.error("model %s hung past %.3g s; worker abandoned and replaced", self.label, self.hang_timeout_s)

    def hung_worker_finished(self) -> None:
        with self._lock:
            self.num_hung -= 1

    def retire_idle(self, worker: _Worker) -> bool:
        """Called by an idle worker: leave the pool unless a job was just handed to it."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                if worker is self._sole:
                    self._sole = None
                return True
            return False


class _Handoff:
    """One batch's answer on its way from the worker thread: taken by a loop thread waiting on a lock
    (the short path), or, once the loop stopped waiting, sent to the loop with one wake-up."""

    __slots__ = ("_signal", "_mutex", "_result", "_error", "_is_done", "_loop", "_future", "_after")

    def __init__(self) -> None:
        self._signal = threading.Lock()
        self._signal.acquire()
        self._mutex = threading.Lock()
        self._result: Tensors | None = None
        self._error: BaseException | None = None
        self._is_done = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future | None = None
        self._after: Callable[[], None] | None = None

    def done(self, result: Tensors | None, error: BaseException | None) -> None:
        """On the worker thread."""
        with self._mutex:
            self._result, self._error, self._is_done = result, error, True
            loop, future, after = self._loop, self._future, self._after
        if after is not None:
            after()
        if future is None:
            self._signal.release()
            return
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)  # type: ignore[union-attr]
        except RuntimeError:  # the loop closed while an abandoned batch was still running
            pass

    def when_done(self, action: Callable[[], None]) -> None:
        """Run `action` now if the job ended, else on the worker thread when it does."""
        with self._mutex:
            if not self._is_done:
                self._after = action
                return
        action()

    def wait(self, seconds: float) -> bool:
        """On the loop thread, the GIL released: whether the answer came within `seconds`."""
        return self._signal.acquire(timeout=seconds)

    def outcome(self) -> Tensors:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def to_future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """From now on the answer goes to a future on `loop` (at once, if it already came)."""
        future = loop.create_future()
        with self._mutex:
            if self._is_done:
                _settle(future, self._result, self._error)
            else:
                self._loop, self._future = loop, future
        return future


def _settle(future: asyncio.Future, result: Tensors | None, error: BaseException | None) -> None:
    """On the loop: a batch's future gets its outcome unless the watchdog already answered it."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _settle_sync(future: Future, result: Tensors | None, error: BaseException | None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def lower_thread_priority(increment: int, label: str) -> None:
    """Raise the calling thread's own nice value (Linux schedules threads apart; elsewhere the call
    would reach the whole process, so it is not made). Raising it needs no privilege."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:
        log.warning("model %s: could not lower the priority of a background worker: %s", label, exc)


def num_hung_threads() -> int:
    """Abandoned workers still running; a process exiting with any must not wait on them."""
    return sum(1 for t in threading.enumerate() if t.name.startswith(HUNG_THREAD_PREFIX) and t.is_alive())


def _num_rows(inputs: Tensors) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
