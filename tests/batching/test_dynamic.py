"""DynamicBatcher as a pure core: a fake engine in its worker thread, the batcher on a real loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlserve.batching.dynamic import DynamicBatcher, SchedulePolicy
from mlserve.errors import InferenceFailed, InvalidInput, Overloaded, RequestTimeout
from mlserve.spec import BatchingSpec


class FakeEngine:
    """y = 3x + 1 per row; records each batch; `gate` holds a batch until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self._hold_first = hold_first
        if not hold_first:
            self.gate.set()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        self.started.set()
        if self._hold_first and len(self.batches) == 1:
            self.gate.wait(10)
        if np.any(x < -1e6):
            raise ValueError("poisoned row")
        return {"y": x * 3 + 1}


def _row(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 2), value, dtype=np.float32)}


async def _started(batcher: DynamicBatcher, engine: FakeEngine, spec_value: float = -1.0) -> asyncio.Task:
    """Submit one request and wait until the engine holds it: the engine is now busy."""
    task = asyncio.create_task(batcher.submit(_row(spec_value), 1))
    while not engine.started.is_set():
        await asyncio.sleep(0.001)
    return task


def _run(coro):
    return asyncio.run(coro)


def _batcher(engine, instances: int = 1, **spec) -> DynamicBatcher:
    batcher = DynamicBatcher(engine, BatchingSpec(**spec), "test", instances=instances)
    batcher.start()
    return batcher


def test_a_lone_request_does_not_wait_out_the_delay():
    async def main():
        batcher = _batcher(FakeEngine(), max_queue_delay_us=2_000_000)
        started = time.monotonic()
        out = await batcher.submit(_row(2.0), 1)
        elapsed = time.monotonic() - started
        await batcher.stop()
        return out, elapsed

    out, elapsed = _run(main())
    np.testing.assert_array_equal(out["y"], np.full((1, 2), 7.0, dtype=np.float32))
    assert elapsed < 0.5, f"a lone request took {elapsed:.3f} s with a 2 s delay"


def test_requests_arriving_while_the_engine_is_busy_form_one_batch():
    async def main():
        engine = FakeEngine(hold_first=True)
        batcher = _batcher(engine, max_batch_size=64)
        first = await _started(batcher, engine)
        rest = [asyncio.create_task(batcher.submit(_row(float(i)), 1)) for i in range(10)]
        await asyncio.sleep(0.05)
        engine.gate.set()
        outs = await asyncio.gather(first, *rest)
        await batcher.stop()
        return engine, outs

    engine, outs = _run(main())
    assert [len(b) for b in engine.batches] == [1, 10]
    for i, out in enumerate(outs[1:]):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 3.0 * i + 1, dtype=np.float32))


def test_the_delay_is_timed_from_the_oldest_waiting_request():
    async def main():
        engine = FakeEngine(hold_first=True)
        # A 2 s delay with the second request 1 s in: a loaded machine may stall the loop for most of
        # a second without the two requests missing each other or the two timings overlapping.
        batcher = _batcher(engine, instances=2, max_batch_size=8, max_queue_delay_us=2_000_000)
        busy = await _started(batcher, engine)
        t0 = time.monotonic()
        oldest = asyncio.create_task(batcher.submit(_row(1.0), 1))
        await asyncio.sleep(1.0)
        t1 = time.monotonic()
        await batcher.submit(_row(2.0), 1)
        newest_wait, oldest_wait = time.monotonic() - t1, (await oldest, time.monotonic() - t0)[1]
        engine.gate.set()
        await busy
        await batcher.stop()
        return engine, oldest_wait, newest_wait

    engine, oldest_wait, newest_wait = _run(main())
    assert [len(b) for b in engine.batches] == [1, 2], "the second instance should wait for company while one is busy"
    assert oldest_wait >= 1.98, f"closed after {oldest_wait:.3f} s, before the oldest request's 2 s delay"
    assert newest_wait < 1.5, f"the newest request waited {newest_wait:.3f} s: the delay restarted on its arrival"


def test_a_preferred_size_closes_the_batch_when_nothing_else_waits():
    async def main():
        engine = FakeEngine(hold_first=True)
        batcher = _batcher(engine, instances=2, max_batch_size=8, max_queue_delay_us=5_000_000,
                           preferred_batch_sizes=(2,))
        busy = await _started(batcher, engine)
        started = time.monotonic()
        await asyncio.gather(batcher.submit(_row(1.0), 1), batcher.submit(_row(2.0), 1))
        elapsed = time.monotonic() - started
        engine.gate.set()
        await busy
        await batcher.stop()
        return engine, elapsed

    engine, elapsed = _run(main())
    assert [len(b) for b in engine.batches] == [1, 2]
    assert elapsed < 1.0


def test_priorities_order_the_queue():
    async def main():
        engine = FakeEngine(hold_first=True)
        batcher = _batcher(engine, max_batch_size=1, priority_levels=3)
        busy = await _started(batcher, engine)
        order = [(30.0, 3), (20.0, 2), (10.0, 1), (31.0, 3), (11.0, None), (12.0, 1)]
        tasks = [asyncio.create_task(batcher.submit(_row(v), 1, SchedulePolicy(priority=p))) for v, p in order]
        await asyncio.sleep(0.02)
        engine.gate.set()
        await asyncio.gather(busy, *tasks)
        await batcher.stop()
        return [float(b[0, 0]) for b in engine.batches[1:]]

    # Level 1 first, FIFO within a level; no priority means the lowest level (3).
    assert _run(main()) == [10.0, 12.0, 20.0, 30.0, 31.0, 11.0]


def test_a_request_past_its_deadline_leaves_the_queue_with_a_timeout():
    async def main():
        engine = FakeEngine(hold_first=True)
        batcher = _batcher(engine, max_batch_size=4, timeout_us=5_000_000)
        busy = await _started(batcher, engine)
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="timeout"):
            await batcher.submit(_row(1.0), 1, SchedulePolicy(timeout_us=50_000))
        shortened = time.monotonic() - started
        queued_after = batcher.num_queued
        engine.gate.set()
        await busy
        await batcher.stop()
        return engine, shortened, queued_after

    engine, shortened, queued_after = _run(main())
    assert 0.04 <= shortened < 1.0
    assert queued_after == 0
    assert len(engine.batches) == 1, "a timed-out request must never reach the engine"


def test_a_request_cannot_lengthen_the_model_timeout():
    async def main():
        engine = FakeEngine(hold_first=True)
        batcher = _batcher(engine, timeout_us=50_000)
        busy = await _started(batcher, engine)
        with pytest.raises(RequestTimeout):
            await batcher.submit(_row(1.0), 1, SchedulePolicy(timeout_us=60_000_000))
        engine.gate.set()
        await busy
        await batcher.stop()

    _run(main())


def test_a_full_queue_refuses_at_once_with_a_retry_hint():
    async def main():
        engine = FakeEngine(hold_first=True)
        batcher = _batcher(engine, max_batch_size=1, max_queue_size=2)
        busy = await _started(batcher, engine)
        waiting = [asyncio.create_task(batcher.submit(_row(1.0), 1)) for _ in range(2)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(_row(1.0), 1)
        elapsed = time.monotonic() - started
        engine.gate.set()
        await asyncio.gather(busy, *waiting)
        await batcher.stop()
        return refused.value, elapsed

    refused, elapsed = _run(main())
    assert refused.retry_after_s >= 1.0 and elapsed < 0.1


def test_each_request_gets_exactly_its_own_rows_under_concurrency():
    rng = np.random.default_rng(0)
    requests = [rng.standard_normal((int(rng.integers(1, 8)), 2)).astype(np.float32) for _ in range(300)]

    async def main():
        engine = FakeEngine()
        batcher = _batcher(engine, max_batch_size=16, instances=2)
        outs = await asyncio.gather(*(batcher.submit({"x": x}, len(x)) for x in requests))
        await batcher.stop()
        return engine, outs

    engine, outs = _run(main())
    for x, out in zip(requests, outs):
        np.testing.assert_array_equal(out["y"], x * 3 + 1)
    assert max(len(b) for b in engine.batches) > 1 and all(len(b) <= 16 for b in engine.batches)


def test_a_failed_batch_fails_every_request_in_it_and_bad_priorities_are_refused():
    async def main():
        engine = FakeEngine(hold_first=True)
        batcher = _batcher(engine, max_batch_size=8, priority_levels=2)
        busy = await _started(batcher, engine)
        with pytest.raises(InvalidInput, match="priority"):
            await batcher.submit(_row(1.0), 1, SchedulePolicy(priority=3))
        tasks = [asyncio.create_task(batcher.submit(_row(v), 1)) for v in (1.0, -1e7)]
        await asyncio.sleep(0.01)
        engine.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await busy
        await batcher.stop()
        return results

    results = _run(main())
    assert all(isinstance(r, InferenceFailed) and "poisoned" in str(r) for r in results)


@pytest.mark.parametrize("quiet_turns, batches", [(1, [1, 1]), (5, [2])])
def test_a_front_whose_requests_come_turns_apart_asks_for_quiet_turns_and_they_batch(quiet_turns, batches):
    """gRPC's requests reach the loop one completion at a time, a turn or more apart: with one quiet
    turn the first runs alone; with the turns its front asks for, the second joins its batch."""

    async def main():
        engine = FakeEngine()
        batcher = _batcher(engine, max_batch_size=64, max_queue_delay_us=2_000_000)
        policy = SchedulePolicy(quiet_turns=quiet_turns)

        async def later():
            for _ in range(3):  # three turns of the loop after the first
                await asyncio.sleep(0)
            return await batcher.submit(_row(2.0), 1, policy)

        outs = await asyncio.gather(batcher.submit(_row(1.0), 1, policy), later())
        await batcher.stop()
        return engine, outs

    engine, outs = _run(main())
    assert [len(b) for b in engine.batches] == batches
    np.testing.assert_array_equal(outs[1]["y"], np.full((1, 2), 7.0, dtype=np.float32))


def test_quiet_turns_do_not_hold_a_lone_request_to_the_delay():
    async def main():
        batcher = _batcher(FakeEngine(), max_batch_size=64, max_queue_delay_us=2_000_000)
        started = time.monotonic()
        await batcher.submit(_row(2.0), 1, SchedulePolicy(quiet_turns=5))
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    elapsed = _run(main())
    assert elapsed < 0.5, f"a lone request took {elapsed:.3f} s with a 2 s delay"
