"""BatchRun with several batches in flight (the offline command's engine queue): every row once, in
order, failed batches split down to their bad rows, and a run stopped mid-chunk resumes exactly."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from mlserve.errors import ModelNotReady
from mlserve.jobs.checkpoint import checkpoint_path, load_checkpoint
from mlserve.jobs.formats import open_writer
from mlserve.jobs.runner import BatchRun, JobPlan, RowFormats
from mlserve.spec import ModelInfo, TensorSpec

INFO = ModelInfo("test", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 1)),), 8)


class Engine:
    """y = x0 + 10 * x1 on its own thread, one batch at a time; rows with x0 < 0 make a batch fail;
    `stop_at_row` makes the whole model go away once a batch reaches that row."""

    def __init__(self, stop_at_row: int | None = None) -> None:
        self.stop_at_row = stop_at_row
        self.in_flight = self.most_in_flight = self.calls = 0
        self.lock = asyncio.Lock()

    def compute(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if (x[:, 0] < 0).any():
            raise ValueError("negative row")
        return {"y": (x[:, :1] + 10 * x[:, 1:])}

    async def __call__(self, inputs, num_rows):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async with self.lock:  # one batch on the engine at a time, like the offline executor
                x = inputs["x"]
                if self.stop_at_row is not None and (x[:, 1] >= self.stop_at_row).any():
                    raise ModelNotReady("model went away")
                return await asyncio.to_thread(self.compute, x)
        finally:
            self.in_flight -= 1

    async def batches(self, batches):
        """All of a chunk's batches in one call, as the offline engine thread runs them."""
        self.calls += 1

        def run():
            answers = []
            for inputs in batches:
                x = inputs["x"]
                try:
                    if self.stop_at_row is not None and (x[:, 1] >= self.stop_at_row).any():
                        raise ModelNotReady("model went away")
                    answers.append(self.compute(x))
                except Exception as exc:
                    answers.append(exc)
            return answers

        return await asyncio.to_thread(run)


def _input(path, num_rows: int, bad: tuple[int, ...] = ()) -> np.ndarray:
    x = np.stack([np.ones(num_rows), np.arange(num_rows)], axis=1).astype(np.float32)
    x[list(bad), 0] = -1
    np.savez(path, x=x)
    return x


async def _run(plan: JobPlan, engine: Engine, depth: int, overwrite: bool = False):
    """depth 0: every batch of a chunk in one call to `infer_batches`."""
    run = BatchRun(plan, engine, depth=max(depth, 1), infer_batches=engine.batches if depth == 0 else None)
    try:
        await asyncio.to_thread(run.prepare, overwrite)
        return await run.run()
    finally:
        run.close()


@pytest.mark.parametrize("depth", [1, 3, 100, 0])
def test_batches_in_flight_answer_every_row_once_in_order(tmp_path, depth):
    bad = (5, 17, 18, 63, 64, 199)
    x = _input(tmp_path / "in.npz", 200, bad)
    plan = JobPlan("m", 1, INFO, tmp_path / "in.npz", tmp_path / "out.npz", chunk_rows=48)
    engine = Engine()
    checkpoint = asyncio.run(_run(plan, engine, depth))
    assert (checkpoint.rows_done, checkpoint.rows_ok, checkpoint.rows_failed) == (200, 194, 6)
    if depth:
        assert engine.most_in_flight == min(depth, 48 // 8)
    else:  # one call a chunk (the short first chunk, a batch, then 48-row chunks); halves one by one
        assert (engine.calls, engine.most_in_flight) == (1 + -(-192 // 48), 1)
    with np.load(tmp_path / "out.npz") as out:
        good = [r for r in range(200) if r not in bad]
        assert out["row"].tolist() == good
        assert np.array_equal(out["y"][:, 0], 1 + 10 * x[good, 1])
    failed = [orjson.loads(line) for line in (tmp_path / "out.npz.errors.jsonl").read_bytes().splitlines()]
    assert [f["row"] for f in failed] == list(bad)
    assert all("negative row" in f["error"] for f in failed)


@pytest.mark.parametrize("depth", [3, 0])
def test_a_model_that_goes_away_mid_chunk_stops_the_run_and_a_resume_writes_every_row_once(tmp_path, depth):
    x = _input(tmp_path / "in.npz", 100)
    plan = JobPlan("m", 1, INFO, tmp_path / "in.npz", tmp_path / "out.npz", chunk_rows=32)
    with pytest.raises(ModelNotReady):
        asyncio.run(_run(plan, Engine(stop_at_row=70), depth=depth))
    assert not (tmp_path / "out.npz").exists()
    checkpoint = asyncio.run(_run(plan, Engine(), depth=depth))
    assert (checkpoint.rows_done, checkpoint.rows_ok, checkpoint.rows_failed) == (100, 100, 0)
    with np.load(tmp_path / "out.npz") as out:
        assert out["row"].tolist() == list(range(100))
        assert np.array_equal(out["y"][:, 0], 1 + 10 * x[:, 1])


class _CrashOnFinish:
    """The real .npz writer, except that finish() dies as a crash would (after the last chunk's sync)."""

    def __init__(self, path, specs):
        self._writer = open_writer(path, specs)

    def finish(self):
        raise SystemExit("crash")

    def __getattr__(self, name):
        return getattr(self._writer, name)


def test_a_crash_between_the_last_chunk_and_the_done_checkpoint_resumes_with_every_row_once(tmp_path):
    """The last chunk saves no checkpoint of its own: the checkpoint still names the chunk before it,
    its synced rows are cut back on resume and answered again, once."""
    x = _input(tmp_path / "in.npz", 100, bad=(90,))
    plan = JobPlan("m", 1, INFO, tmp_path / "in.npz", tmp_path / "out.npz", chunk_rows=32)
    run = BatchRun(plan, Engine(), RowFormats(open_writer=_CrashOnFinish), depth=3)
    run.prepare()
    with pytest.raises(SystemExit):
        asyncio.run(run.run())
    run.close()
    stored = load_checkpoint(checkpoint_path(plan.output))
    assert (stored.rows_done, stored.state) == (72, "running")  # chunks of 8 (the short first one), 32, 32, 28
    checkpoint = asyncio.run(_run(plan, Engine(), depth=3))
    assert (checkpoint.rows_done, checkpoint.rows_ok, checkpoint.rows_failed) == (100, 99, 1)
    with np.load(tmp_path / "out.npz") as out:
        good = [r for r in range(100) if r != 90]
        assert out["row"].tolist() == good
        assert np.array_equal(out["y"][:, 0], 1 + 10 * x[good, 1])
    failed = [orjson.loads(line) for line in (tmp_path / "out.npz.errors.jsonl").read_bytes().splitlines()]
    assert [f["row"] for f in failed] == [90]
