"""What a job shows of its rows in one process: a queued job that starts over shows none of the rows
an earlier job left in the checkpoint beside the same output, and a finished job keeps showing its
own rows after a later job overwrote that output."""

from __future__ import annotations

import asyncio

import numpy as np

from mlserve.config import JobsConfig
from mlserve.jobs.manager import JobManager, Target
from mlserve.spec import ModelInfo, TensorSpec
from tests.jobs.helpers import write_jsonl

INFO = ModelInfo("test", (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),), 4)


def _rows(num: int) -> np.ndarray:
    return np.arange(num * 4, dtype=np.float32).reshape(num, 4)


def test_a_job_that_starts_over_or_finished_shows_its_own_rows_not_the_checkpoint_left_beside_its_output(tmp_path):
    write_jsonl(tmp_path / "first.jsonl", _rows(24))
    write_jsonl(tmp_path / "second.jsonl", _rows(16))
    gate = asyncio.Event()

    async def resolve(model: str, version: int | None, priority: int | None) -> Target:
        async def infer(inputs, num_rows):
            if model == "held":
                await gate.wait()
            return {"y": inputs["x"] * 2}
        return Target(1, INFO, infer)

    async def until(check):
        while not check():
            await asyncio.sleep(0.01)

    async def scenario():
        jobs = JobManager(JobsConfig(allowed_dir=str(tmp_path), chunk_rows=8, max_running=1), resolve, None)
        await jobs.start()
        try:
            first = await jobs.submit({"model": "m", "input": "first.jsonl", "output": "out.jsonl"})
            await until(lambda: jobs.view(first)["state"] == "done")
            assert jobs.view(first)["rows_done"] == 24

            held = await jobs.submit({"model": "held", "input": "second.jsonl", "output": "held.jsonl"})
            await until(lambda: jobs.view(held)["state"] == "running")
            second = await jobs.submit({"model": "m", "input": "second.jsonl", "output": "out.jsonl",
                                        "overwrite": True})
            queued = jobs.view(second)
            assert queued["state"] == "queued" and queued["rows_done"] == 0, queued  # not the first job's 24

            gate.set()
            await until(lambda: jobs.view(second)["state"] == "done")
            assert jobs.view(second)["rows_done"] == 16
            assert jobs.view(first)["rows_done"] == 24  # its own rows, not those of the checkpoint now there
        finally:
            await jobs.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
