"""How an in-server job shares a version's batcher with live requests (jobs/sharing.LiveFirst),
on a real DynamicBatcher with a plain function as the model."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlserve.batching.dynamic import DynamicBatcher, SchedulePolicy
from mlserve.errors import ModelNotReady
from mlserve.registry.served import ServedVersion, VersionState
from mlserve.spec import BatchingSpec
from mlserve.jobs.sharing import LiveFirst


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


def setup(state: VersionState = VersionState.READY) -> tuple[HeldModel, DynamicBatcher, LiveFirst]:
    model = HeldModel()
    batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=8, max_queue_delay_us=0), "t")
    batcher.start()
    served = ServedVersion("m", 1, state, batcher=batcher)
    return model, batcher, LiveFirst(served, SchedulePolicy(priority=1))


def test_live_requests_queued_behind_a_running_batch_go_before_the_job():
    """One priority level (the default): a plain submit would put the job's rows ahead of B."""
    async def main():
        model, batcher, job = setup()
        live_a = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.entered.wait, 10)  # A is running, the model holds it
        job_task = asyncio.create_task(job(rows(9, 4), 4))
        live_b = asyncio.create_task(batcher.submit(rows(2), 1))
        await asyncio.sleep(0)
        model.gate.set()
        await asyncio.gather(live_a, live_b)
        out = await job_task
        await batcher.stop()
        return model.batches, out

    batches, out = asyncio.run(main())
    assert batches == [[1], [2], [9, 9, 9, 9]]
    assert out["y"][:, 0].tolist() == [9, 9, 9, 9]


def test_a_job_is_not_starved_by_a_version_that_never_goes_idle():
    async def main():
        model, batcher, job = setup()
        live = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.entered.wait, 10)
        job_task = asyncio.create_task(job(rows(9), 1))
        deadline = time.monotonic() + 10
        while batcher.num_queued == 0:  # the job gives up waiting (bounded) and queues
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        model.gate.set()
        await asyncio.gather(live, job_task)
        await batcher.stop()
        return model.batches

    assert asyncio.run(main()) == [[1], [9]]


def test_a_version_that_stopped_serving_stops_the_job():
    async def main():
        _, batcher, job = setup(VersionState.UNLOADING)
        try:
            await job(rows(1), 1)
        finally:
            await batcher.stop()

    with pytest.raises(ModelNotReady, match="version 1 is unloading"):
        asyncio.run(main())
