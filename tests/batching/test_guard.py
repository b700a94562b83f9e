"""GuardedInfer: failures name the model, hangs are cut off and the worker replaced, out-of-memory
batches are split in halves."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mlserve.batching.guard import GuardedInfer, is_out_of_memory
from mlserve.errors import InferenceFailed, ModelHung, RequestTimeout
from mlserve.server.middleware import status_for
from mlserve.spec import BatchingSpec, ModelConfig


def double(inputs):
    return {"y": inputs["x"] * 2}


def test_result_passes_through():
    guard = GuardedInfer(double, "m/1")
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(guard({"x": x})["y"], x * 2)


def test_a_raising_model_fails_with_its_name():
    def boom(inputs):
        raise ValueError("bad weights")

    guard = GuardedInfer(boom, "broken/3")
    with pytest.raises(InferenceFailed, match=r"model broken/3 failed: ValueError: bad weights") as info:
        guard({"x": np.zeros((1, 2))})
    assert status_for(info.value) == 500


def test_a_hanging_model_times_out_and_its_worker_is_replaced():
    release = threading.Event()

    def maybe_hang(inputs):
        if inputs["x"][0, 0] < 0:
            release.wait(10)
        return double(inputs)

    guard = GuardedInfer(maybe_hang, "hang/1", hang_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(ModelHung, match="did not finish a batch within 0.2 s") as info:
        guard({"x": -np.ones((1, 2))})
    assert time.monotonic() - started < 2.0
    assert isinstance(info.value, RequestTimeout) and status_for(info.value) == 504
    assert guard.num_hung == 1
    # The next batch runs on a fresh worker while the first is still stuck.
    x = np.ones((2, 2))
    np.testing.assert_array_equal(guard({"x": x})["y"], x * 2)
    release.set()
    deadline = time.monotonic() + 5
    while guard.num_hung and time.monotonic() < deadline:
        time.sleep(0.01)
    assert guard.num_hung == 0


def test_too_many_hung_workers_refuse_at_once():
    release = threading.Event()
    guard = GuardedInfer(lambda inputs: release.wait(10), "stuck/1", hang_timeout_s=0.05, max_hung=2)
    for _ in range(2):
        with pytest.raises(ModelHung):
            guard({"x": np.zeros((1, 1))})
    started = time.monotonic()
    with pytest.raises(InferenceFailed, match="2 hung workers"):
        guard({"x": np.zeros((1, 1))})
    assert time.monotonic() - started < 0.05
    release.set()


def test_an_out_of_memory_batch_is_split_until_it_fits():
    seen_rows = []

    def small_only(inputs):
        rows = inputs["x"].shape[0]
        seen_rows.append(rows)
        if rows > 2:
            raise MemoryError(f"cannot hold {rows} rows")
        return double(inputs)

    guard = GuardedInfer(small_only, "oom/1")
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    np.testing.assert_array_equal(guard({"x": x})["y"], x * 2)
    assert seen_rows == [7, 3, 1, 2, 4, 2, 2]
    assert guard.num_splits == 3


def test_torch_allocator_failure_is_recognised():
    import torch

    with pytest.raises(RuntimeError) as info:
        torch.empty([2**48])
    assert is_out_of_memory(info.value)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_an_unbatched_model_that_runs_out_of_memory_fails():
    def always_oom(inputs):
        raise MemoryError("no")

    config = ModelConfig(batching=BatchingSpec(max_batch_size=0))
    guard = GuardedInfer.for_model(always_oom, config, "big/1")
    with pytest.raises(InferenceFailed, match="ran out of memory on a batch of 4 row"):
        guard({"x": np.zeros((4, 2))})


def test_hang_deadline_comes_from_model_toml():
    config = ModelConfig(hang_timeout_us=250_000)
    assert GuardedInfer.for_model(double, config, "m/1").hang_timeout_s == 0.25
    assert GuardedInfer.for_model(double, ModelConfig(), "m/1").hang_timeout_s == 60.0


def test_a_hung_batch_on_the_loop_is_answered_504_and_the_next_runs_on_a_fresh_thread():
    """The batcher's path: `run` on the event loop, a watchdog timer instead of a waiting thread."""
    import asyncio

    release = threading.Event()
    threads: list[int] = []

    def maybe_hang(inputs):
        threads.append(threading.get_ident())
        if inputs["x"][0, 0] < 0:
            release.wait(10)
        return double(inputs)

    async def main():
        guard = GuardedInfer(maybe_hang, "hang/2", hang_timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(ModelHung, match="did not finish a batch within 0.2 s"):
            await guard.run({"x": -np.ones((1, 2))})
        waited = time.monotonic() - started
        x = np.ones((2, 2))
        after = await guard.run({"x": x})
        return guard, waited, after, x

    guard, waited, after, x = asyncio.run(main())
    assert waited < 2.0
    np.testing.assert_array_equal(after["y"], x * 2)
    assert guard.num_hung == 1 and len(set(threads)) == 2, threads
    release.set()
    deadline = time.monotonic() + 5
    while guard.num_hung and time.monotonic() < deadline:
        time.sleep(0.01)
    assert guard.num_hung == 0
