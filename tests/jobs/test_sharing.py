"""How an in-server job shares a version's batcher with live requests (jobs/sharing.BackgroundRows
and the rule in batching/share.py), on a real DynamicBatcher with a plain function as the model."""

from __future__ import annotations

import asyncio
import threading
import numpy as np
import pytest

from mlserve.batching.dynamic import DynamicBatcher
from mlserve.errors import ModelNotReady
from mlserve.registry.served import ServedVersion, VersionState
from mlserve.spec import BatchingSpec
from mlserve.jobs.sharing import WAITING_FOR_LIVE, BackgroundRows


class HeldModel:
    """Returns its input; remembers each batch's values; `gate` holds a batch until set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, inputs):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(inputs["x"][:, 0].astype(int).tolist())
        return {"y": inputs["x"]}


def rows(value: int, count: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((count, 1), value, np.float32)}


def setup(state: VersionState = VersionState.READY) -> tuple[HeldModel, DynamicBatcher, BackgroundRows]:
    model = HeldModel()
    batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=8, max_queue_delay_us=0), "t")
    batcher.start()
    return model, batcher, BackgroundRows(ServedVersion("m", 1, state), batcher)


async def until(condition) -> None:
    """Let the loop run until `condition()` holds (bounded by the test's timeout)."""
    while not condition():
        await asyncio.sleep(0.001)


def test_live_requests_go_first_and_the_job_fills_the_spare_rows_of_their_batch():
    async def main():
        model, batcher, job = setup()
        live_a = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.entered.wait, 10)  # A is running, the model holds it
        job_task = asyncio.create_task(job(rows(9, 4), 4))
        await until(lambda: batcher.num_background == 4)  # the job's batch, in pieces of one row
        live_b = asyncio.create_task(batcher.submit(rows(2), 1))
        await until(lambda: batcher.num_queued == 1)
        model.gate.set()
        await asyncio.gather(live_a, live_b)
        out = await job_task
        await batcher.stop()
        return model.batches, out

    batches, out = asyncio.run(main())
    assert batches == [[1], [2, 9, 9, 9, 9]]
    assert out["y"][:, 0].tolist() == [9, 9, 9, 9]


def test_a_job_gets_its_floor_share_of_batches_that_live_requests_would_fill():
    """Live requests enough for three full batches wait; the job still gets ceil(0.1 x 8) = 1 row in
    the first batch after the running one, and its status says live load holds it back."""
    async def main():
        model, batcher, job = setup()
        first = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.entered.wait, 10)
        live = [asyncio.create_task(batcher.submit(rows(2), 1)) for _ in range(24)]
        await until(lambda: batcher.num_queued == 24)
        job_task = asyncio.create_task(job(rows(9, 1), 1))
        await until(lambda: batcher.num_background == 1)
        model.gate.set()
        await job_task
        status = job.status()
        await asyncio.gather(first, *live)
        await batcher.stop()
        return model.batches, status

    batches, status = asyncio.run(main())
    assert batches[0] == [1]
    assert sorted(batches[1]) == [2] * 7 + [9]
    assert status == WAITING_FOR_LIVE
    assert sum(len(b) for b in batches) == 26


def test_a_job_alone_runs_at_once_and_says_nothing_of_waiting():
    async def main():
        model, batcher, job = setup()
        model.gate.set()
        out = await job(rows(9, 8), 8)
        status = job.status()
        await batcher.stop()
        return model.batches, out, status

    batches, out, status = asyncio.run(main())
    assert sum(batches, []) == [9] * 8
    assert out["y"].shape == (8, 1)
    assert status == ""


def test_a_version_that_stopped_serving_stops_the_job():
    async def main():
        _, batcher, job = setup(VersionState.UNLOADING)
        try:
            await job(rows(1), 1)
        finally:
            await batcher.stop()

    with pytest.raises(ModelNotReady, match="version 1 is unloading"):
        asyncio.run(main())


def test_the_floor_holds_when_each_live_request_fills_a_batch_on_its_own():
    """Live requests of max_batch_size rows each cannot leave the held row free: the batch after the
    running one is the job's held rows alone, and the live requests run after it, whole."""
    async def main():
        model, batcher, job = setup()
        first = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.entered.wait, 10)
        live = [asyncio.create_task(batcher.submit(rows(2, 8), 8)) for _ in range(3)]
        await until(lambda: batcher.num_queued == 3)
        job_task = asyncio.create_task(job(rows(9, 1), 1))
        await until(lambda: batcher.num_background == 1)
        model.gate.set()
        await job_task
        status = job.status()
        await asyncio.gather(first, *live)
        await batcher.stop()
        return model.batches, status

    batches, status = asyncio.run(main())
    assert batches == [[1], [9], [2] * 8, [2] * 8, [2] * 8]
    assert status == WAITING_FOR_LIVE
