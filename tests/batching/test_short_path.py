"""The lone request's short path: the loop waits for the worker itself, and the hang guard still
answers a stuck backend."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlserve.batching import dynamic
from mlserve.batching.dynamic import PROBE_EVERY, SHORT_WAIT_S, BatchStats, DynamicBatcher
from mlserve.batching.guard import GuardedInfer
from mlserve.errors import ModelHung
from mlserve.spec import BatchingSpec


class BlockingBackend:
    """y = 2x; a row of negative numbers blocks until released (a stuck engine)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.num_batches = 0

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.num_batches += 1
        if np.any(inputs["x"] < 0):
            self.release.wait(30)
        return {"y": inputs["x"] * 2}


def _batcher(backend: BlockingBackend, stats: list[BatchStats], hang_timeout_s: float = 60.0) -> DynamicBatcher:
    guard = GuardedInfer(backend, "stuck/1", hang_timeout_s=hang_timeout_s)
    batcher = DynamicBatcher(guard, BatchingSpec(max_batch_size=8), "stuck/1", observer=stats.append)
    batcher.start()
    return batcher


def _row(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), value, dtype=np.float32)}


def test_a_lone_request_takes_the_short_path_and_concurrent_ones_still_batch():
    async def main():
        stats: list[BatchStats] = []
        batcher = _batcher(BlockingBackend(), stats)
        lone = await batcher.submit(_row(1.0), 1)
        together = await asyncio.gather(*(batcher.submit(_row(float(i)), 1) for i in range(5)))
        await batcher.stop()
        return stats, lone, together

    stats, lone, together = asyncio.run(main())
    np.testing.assert_array_equal(lone["y"], np.full((1, 3), 2.0, dtype=np.float32))
    assert [(s.num_requests, s.is_short) for s in stats] == [(1, True), (5, False)]
    for i, out in enumerate(together):
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2.0 * i, dtype=np.float32))


def test_the_hang_guard_fires_on_a_stuck_backend_taken_by_the_short_path():
    backend = BlockingBackend()

    async def main():
        stats: list[BatchStats] = []
        batcher = _batcher(backend, stats, hang_timeout_s=0.3)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        with pytest.raises(ModelHung, match="did not finish a batch within 0.3 s"):
            await batcher.submit(_row(-1.0), 1)
        elapsed = time.monotonic() - started
        ticks_during_hang = ticks
        after = await batcher.submit(_row(4.0), 1)  # a fresh worker serves the next one
        ticker.cancel()
        backend.release.set()
        await batcher.stop()
        return stats, elapsed, ticks_during_hang, after

    try:
        stats, elapsed, ticks, after = asyncio.run(main())
    finally:
        backend.release.set()
    assert 0.25 <= elapsed < 2.0, elapsed
    assert ticks >= 5, "the loop was blocked while the stuck batch ran, not only for the short wait"
    assert [(s.is_short, s.failed) for s in stats[:1]] == [(True, True)]
    assert [s.failed for s in stats] == [True, False]
    np.testing.assert_array_equal(after["y"], np.full((1, 3), 8.0, dtype=np.float32))
    assert SHORT_WAIT_S < 0.3


def test_a_caller_cancelled_mid_batch_does_not_hand_its_busy_worker_to_the_next_batch():
    backend = BlockingBackend()

    async def main():
        guard = GuardedInfer(backend, "stuck/1")
        stuck = asyncio.create_task(guard.run(_row(-1.0)))
        while backend.num_batches == 0:
            await asyncio.sleep(0.005)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        # The cancelled batch still runs on its thread: the next one must get another worker, not
        # queue behind it.
        return await asyncio.wait_for(guard.run(_row(2.0)), 5)

    try:
        out = asyncio.run(main())
    finally:
        backend.release.set()
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 4.0, dtype=np.float32))



class ArrivingBackend:
    """y = 2x; a row of x > 100, while it computes, has a request of x - 1 submitted to the batcher
    and waits until it is queued (a request that reaches the loop while a batch runs)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batcher: DynamicBatcher | None = None
        self.arrivals: list[asyncio.Task] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        value = float(inputs["x"][0, 0])
        if value > 100 and self.loop is not None:
            asyncio.run_coroutine_threadsafe(self._arrive(value - 1), self.loop).result(10)
        return {"y": inputs["x"] * 2}

    async def _arrive(self, value: float) -> None:
        assert self.batcher is not None
        self.arrivals.append(asyncio.create_task(self.batcher.submit(_row(value), 1)))
        while not self.batcher.num_queued:
            await asyncio.sleep(0)


def test_requests_arriving_while_a_probe_runs_turn_the_short_path_off_until_a_batch_runs_alone(monkeypatch):
    """Lone requests one after another take the short path, except every PROBE_EVERY-th, which runs
    with the loop free. A request arriving during such a run switches the short path off: the next
    batch runs with the loop free too, and so on while requests keep arriving (here 102 brings 101,
    which brings 100); after a batch during which none arrived, lone requests take the short path
    again. The short path's bound is raised to 1 s here: the arriving batches wait for the loop to
    queue their arrival, which on a busy machine takes long enough to make lone rows look slow (the
    other reason the short path stays off)."""
    monkeypatch.setattr(dynamic, "SHORT_WAIT_S", 1.0)

    async def main():
        stats: list[BatchStats] = []
        backend = ArrivingBackend()
        guard = GuardedInfer(backend, "arriving/1", hang_timeout_s=60)
        batcher = DynamicBatcher(guard, BatchingSpec(max_batch_size=8), "arriving/1", observer=stats.append)
        batcher.start()
        backend.loop, backend.batcher = asyncio.get_running_loop(), batcher
        answers = [await batcher.submit(_row(1.0), 1) for _ in range(PROBE_EVERY - 1)]
        answers.append(await batcher.submit(_row(102.0), 1))  # the probe
        while len(backend.arrivals) < 2 or not all(t.done() for t in backend.arrivals):
            await asyncio.sleep(0.001)
        answers += [t.result() for t in backend.arrivals]
        answers.append(await batcher.submit(_row(1.0), 1))
        await batcher.stop()
        return stats, answers

    stats, answers = asyncio.run(main())
    assert [(s.num_requests, s.is_short) for s in stats] == (
        [(1, True)] * (PROBE_EVERY - 1) + [(1, False)] * 3 + [(1, True)])
    assert [float(a["y"][0, 0]) for a in answers] == [2.0] * (PROBE_EVERY - 1) + [204.0, 202.0, 200.0, 2.0]
