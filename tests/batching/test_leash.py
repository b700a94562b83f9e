"""Lone batches on the loop's own thread (batching/leash.py): a real ONNX Runtime session answers
them there, and one that runs past the leash is stopped by ORT's terminate flag and runs again on
a worker, where the hang guard answers it; the loop is blocked only for about the leash."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlserve.batching.dynamic import BatchStats, DynamicBatcher
from mlserve.batching.guard import GuardedInfer
from mlserve.batching.leash import LEASH, Leash
from mlserve.engine.onnx_backend import OnnxBackend
from mlserve.errors import ModelHung
from mlserve.spec import BatchingSpec, ModelConfig


def _write_spinner(path: Path) -> None:
    """y = x + n, computed by a Loop of n trips where n = max(x): fast on small values, seconds on 2e6
    (about a microsecond a trip)."""
    from onnx import TensorProto, helper, save

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
         helper.make_node("Cast", ["top"], ["trips"], to=TensorProto.INT64),
         helper.make_node("Constant", [], ["go"], value=helper.make_tensor("go", TensorProto.BOOL, [], [True])),
         helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)],
        "spinner",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


class _Recording:
    """The backend's stoppable infer, noting the thread each call ran on."""

    def __init__(self, backend: OnnxBackend) -> None:
        self._infer = backend.stoppable_infer
        self.threads: list[int] = []

    def __call__(self, inputs, arm):
        self.threads.append(threading.get_ident())
        return self._infer(inputs, arm)


def test_a_stoppable_run_returns_its_outputs_and_one_past_the_leash_returns_none():
    leash = Leash(limit_s=0.02, poll_s=0.005, quiet_s=0.05)

    def endless(inputs, arm):
        stopped = threading.Event()
        arm(stopped.set)
        stopped.wait(30)
        raise RuntimeError("stopped")

    assert leash.run(lambda inputs, arm: {"y": inputs["x"] * 2}, {"x": np.ones(2)})["y"].tolist() == [2.0, 2.0]
    started = time.monotonic()
    assert leash.run(endless, {}) is None
    assert 0.02 <= time.monotonic() - started < 5
    assert leash.num_stopped == 1
    with pytest.raises(ValueError, match="bad input"):
        leash.run(lambda inputs, arm: (_ for _ in ()).throw(ValueError("bad input")), {})
    # Asleep after a quiet spell, the watchdog wakes for the next run and stops it too.
    deadline = time.monotonic() + 10
    while not leash.is_asleep and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leash.is_asleep
    assert leash.run(endless, {}) is None
    assert leash.num_stopped == 2


def test_lone_onnx_batches_run_on_the_loop_thread_and_a_spinning_one_goes_to_the_hang_guard(tmp_path):
    _write_spinner(tmp_path / "model.onnx")
    backend = OnnxBackend(ModelConfig())
    backend.load(tmp_path, "cpu")
    backend.infer({"x": np.zeros((1, 3), np.float32)})  # warm: the first run must not count as a slow lone batch
    recording = _Recording(backend)
    stopped_before = LEASH.num_stopped

    async def main():
        stats: list[BatchStats] = []
        guard = GuardedInfer(backend.infer, "spinner/1", hang_timeout_s=0.5, stoppable=recording)
        batcher = DynamicBatcher(guard, BatchingSpec(max_batch_size=8), "spinner/1", observer=stats.append)
        batcher.start()
        loop_thread = threading.get_ident()
        for _ in range(3):
            quick = await batcher.submit({"x": np.full((1, 3), 2.0, np.float32)}, 1)
            np.testing.assert_array_equal(quick["y"], np.full((1, 3), 4.0, np.float32))
        assert len(recording.threads) == 3, "the quick lone batches did not run on the loop's thread"
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)
        with pytest.raises(ModelHung, match="did not finish a batch within 0.5 s"):
            await batcher.submit({"x": np.full((1, 3), 2e6, np.float32)}, 1)
        ticker.cancel()
        after = await batcher.submit({"x": np.zeros((1, 3), np.float32)}, 1)
        await batcher.stop()
        deadline = time.monotonic() + 120  # the abandoned worker ends its run before the session goes
        while guard.num_hung and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return stats, loop_thread, gaps, after, guard.num_hung

    stats, loop_thread, gaps, after, num_hung = asyncio.run(main())
    assert num_hung == 0
    short = [s for s in stats if s.is_short]
    assert short, "no lone batch took the short path"
    assert recording.threads and set(recording.threads) == {loop_thread}
    assert LEASH.num_stopped == stopped_before + 1
    # The spinning batch held the loop for about the leash, not for the half second the hang guard waited.
    assert max(gaps) < 0.25, max(gaps)
    assert sum(gaps) >= 0.45
    np.testing.assert_array_equal(after["y"], np.zeros((1, 3), np.float32))
