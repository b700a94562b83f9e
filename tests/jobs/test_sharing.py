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
    """Returns its input; remembers each batch's values; `gate` holds a batch until set; `on_batch`
    (when set) is called on the worker thread as each batch starts; a row of value `fail_on` fails
    its batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.on_batch = None
        self.fail_on: int | None = None

    def __call__(self, inputs):
        self.entered.set()
        if self.on_batch is not None:
            self.on_batch()
        self.gate.wait(10)
        values = inputs["x"][:, 0].astype(int).tolist()
        self.batches.append(values)
        if self.fail_on in values:
            raise ValueError(f"row {self.fail_on}")
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


async def behind_a_running_batch(model: HeldModel, batcher: DynamicBatcher, live: list[tuple[int, int]]):
    """Live request A (value 1) running, held by the model, and `live` requests ((value, rows) each)
    queued behind it; returns A's task and theirs."""
    first = asyncio.create_task(batcher.submit(rows(1), 1))
    await asyncio.to_thread(model.entered.wait, 10)
    queued = [asyncio.create_task(batcher.submit(rows(value, count), count)) for value, count in live]
    await until(lambda: batcher.num_queued == len(live))
    return first, queued


def test_live_requests_go_first_and_the_job_fills_the_spare_rows_of_a_short_batch():
    """max_batch_size 8: while live traffic is about, a batch carrying job rows holds at most 8 // 2 = 4
    rows, so live B's batch takes three job rows, and the rest of the job runs as a short batch."""
    async def main():
        model, batcher, job = setup()
        live_a = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.entered.wait, 10)  # A is running, the model holds it
        job_task = asyncio.create_task(job({"x": np.arange(10, 15, dtype=np.float32)[:, None]}, 5))
        await until(lambda: batcher.num_background == 5)
        live_b = asyncio.create_task(batcher.submit(rows(2), 1))
        await until(lambda: batcher.num_queued == 1)
        model.gate.set()
        await asyncio.gather(live_a, live_b)
        out = await job_task
        await batcher.stop()
        return model.batches, out

    batches, out = asyncio.run(main())
    assert batches == [[1], [2, 10, 11, 12], [13, 14]]
    assert out["y"][:, 0].tolist() == [10, 11, 12, 13, 14]  # one answer, its slices joined in row order


def test_a_job_gets_its_floor_share_of_batches_that_live_requests_would_fill():
    """Live requests enough for three full batches wait; the job still gets ceil(0.1 x 8) = 1 row in
    the first batch after the running one, and its status says live load holds it back."""
    async def main():
        model, batcher, job = setup()
        first, live = await behind_a_running_batch(model, batcher, [(2, 1)] * 24)
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


def test_every_batch_carries_job_rows_while_live_load_leaves_room():
    """The guarantee at part load: one live row arrives during every batch (a steady live load that
    leaves room), and the job's whole chunk waits queued; every batch then carries live rows first and
    job rows in the rest of a short batch (4 of 8 rows here), so the job is never left out of a batch
    live rows do not fill, and no batch is longer than a short one."""
    async def main():
        model, batcher, job = setup()
        loop = asyncio.get_running_loop()
        live: list[asyncio.Future] = []
        model.on_batch = lambda: loop.call_soon_threadsafe(
            lambda: live.append(asyncio.ensure_future(batcher.submit(rows(1), 1))))
        first = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.entered.wait, 10)
        chunk = [{"x": np.full((4, 1), 10 + i, np.float32)} for i in range(3)]  # three batches of 4 rows
        answers = asyncio.create_task(job.batches(chunk))
        await until(lambda: batcher.num_background == 12)
        model.gate.set()
        out = await answers
        model.on_batch = None  # a submit already scheduled runs before the batch that scheduled it returns
        await batcher.drain()
        await asyncio.gather(first, *live)
        await batcher.stop()
        return model.batches, out

    batches, out = asyncio.run(main())
    with_job = [b for b in batches if any(v >= 10 for v in b)]
    assert with_job == batches[1:len(with_job) + 1]  # from the batch after the first, each takes job rows
    assert all(b[0] == 1 and len(b) == 4 for b in with_job)  # one live row first, three job rows beside it
    assert [v for b in with_job for v in b[1:]] == [10] * 4 + [11] * 4 + [12] * 4  # in order, none skipped
    assert [a["y"][:, 0].tolist() for a in out] == [[10] * 4, [11] * 4, [12] * 4]


def test_a_batch_that_fails_answers_only_its_own_job_batch_with_the_error():
    """A chunk's batches queued at once: the failing one comes back as its exception (the run then
    splits it), the others with their outputs."""
    async def main():
        model, batcher, job = setup()
        model.gate.set()
        model.fail_on = 5
        chunk = [{"x": np.full((8, 1), v, np.float32)} for v in (4, 5, 6)]
        out = await job.batches(chunk)
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert out[0]["y"][:, 0].tolist() == [4] * 8
    assert isinstance(out[1], Exception) and "row 5" in str(out[1])
    assert out[2]["y"][:, 0].tolist() == [6] * 8


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
    """Live requests of max_batch_size rows each cannot leave the held row free: the held row is owed,
    and as it is every job row waiting, it is due at once: the batch after the running one is the
    job's row alone, and the live requests run after it, whole."""
    async def main():
        model, batcher, job = setup()
        first, live = await behind_a_running_batch(model, batcher, [(2, 8)] * 3)
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


def test_floor_rows_that_full_live_requests_leave_no_room_for_are_owed_and_run_as_one_short_batch():
    """Live requests of max_batch_size (8) rows leave the held row (ceil(0.1 x 8) = 1) no room: each
    live batch formed below the floor owes it, and once a short batch (8 // 2 = 4) is owed, four job
    rows run together; no batch mixes them."""
    async def main():
        model, batcher, job = setup()
        first, live = await behind_a_running_batch(model, batcher, [(2, 8)] * 12)
        job_task = asyncio.create_task(job.batches(
            [{"x": np.arange(start, min(start + 8, 120), dtype=np.float32)[:, None]} for start in (100, 108, 116)]))
        await until(lambda: batcher.num_background == 20)
        model.gate.set()
        await asyncio.gather(first, *live)
        status = job.status()
        out = await job_task
        await batcher.stop()
        return model.batches, status, out

    batches, status, out = asyncio.run(main())
    assert batches[1:5] == [[2] * 8] * 3 + [[100, 101, 102, 103]]
    last_live = max(i for i, b in enumerate(batches) if b == [2] * 8)
    job_batches = [b for b in batches[:last_live] if min(b) >= 100]
    assert len(job_batches) >= 2 and all(len(b) == 4 for b in job_batches)
    assert all(set(b) in ({1}, {2}) or min(b) >= 100 for b in batches)
    assert status == WAITING_FOR_LIVE
    assert [v for o in out for v in o["y"][:, 0].tolist()] == list(range(100, 120))
