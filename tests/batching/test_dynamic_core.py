"""The dynamic batcher's limits and lifecycle (row cap, unbatched models, draining on stop), with a
plain function as the model; test_dynamic.py covers the scheduling policy."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from mlserve.batching.dynamic import DynamicBatcher
from mlserve.errors import InvalidInput, Overloaded
from mlserve.spec import BatchingSpec


class RecordingModel:
    """y = 2x; remembers every batch's row count; can be held to let a queue build up."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs):
        self.gate.wait(10)
        self.batches.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2}


def run(coro):
    return asyncio.run(coro)


async def until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for a state of the batcher (the loop keeps running its workers meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the batcher never reached the state")
        await asyncio.sleep(0.005)


def test_batches_never_exceed_max_rows():
    async def main():
        model = RecordingModel()
        batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=4, max_queue_delay_us=1000), "t")
        batcher.start()
        model.gate.clear()
        tasks = [asyncio.create_task(batcher.submit({"x": np.ones((n, 1), np.float32)}, n)) for n in (3, 2, 2, 1, 4)]
        await until(lambda: batcher.num_in_flight == 5)
        model.gate.set()
        await asyncio.gather(*tasks)
        await batcher.stop()
        return model.batches

    batches = run(main())
    assert all(b <= 4 for b in batches) and sum(batches) == 12, batches



def test_full_queue_is_refused_and_oversized_requests_rejected():
    async def main():
        model = RecordingModel()
        batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=2, max_queue_size=2), "t")
        batcher.start()
        model.gate.clear()
        running = asyncio.create_task(batcher.submit({"x": np.ones((1, 1))}, 1))
        await until(lambda: batcher.num_in_flight == 1 and batcher.num_queued == 0)  # a worker holds it
        queued = [asyncio.create_task(batcher.submit({"x": np.ones((1, 1))}, 1)) for _ in range(2)]
        await until(lambda: batcher.num_queued == 2)
        with pytest.raises(Overloaded):
            await batcher.submit({"x": np.ones((1, 1))}, 1)
        with pytest.raises(InvalidInput, match="max_batch_size"):
            await batcher.submit({"x": np.ones((3, 1))}, 3)
        model.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.stop()

    run(main())


def test_unbatched_model_runs_one_request_at_a_time():
    async def main():
        model = RecordingModel()
        batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=0), "t")
        batcher.start()
        model.gate.clear()
        tasks = [asyncio.create_task(batcher.submit({"x": np.ones((2, 1))}, 1)) for _ in range(4)]
        await until(lambda: batcher.num_in_flight == 4)
        model.gate.set()
        await asyncio.gather(*tasks)
        await batcher.stop()
        return model.batches

    assert run(main()) == [2, 2, 2, 2]


def test_stop_drains_queued_requests():
    async def main():
        model = RecordingModel()
        batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=1), "t")
        batcher.start()
        model.gate.clear()
        tasks = [asyncio.create_task(batcher.submit({"x": np.ones((1, 1))}, 1)) for _ in range(5)]
        await until(lambda: batcher.num_in_flight == 5)
        asyncio.get_running_loop().call_later(0.1, model.gate.set)  # released while stop() drains
        await batcher.stop()
        return [t.done() and not t.exception() for t in tasks]

    assert all(run(main()))


def test_requests_with_different_trailing_shapes_are_never_concatenated():
    """Token sequences of different lengths queue together; each length runs as its own group,
    and every request gets the rows it sent (y = 2x), in the order the engine returns them."""

    async def main():
        model = RecordingModel()
        batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=16, max_queue_delay_us=200_000), "t")
        batcher.start()
        model.gate.clear()
        busy = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2), np.float32)}, 1))
        await until(lambda: batcher.num_in_flight == 1 and batcher.num_queued == 0)  # a worker holds it
        sent = [np.full((1, width), i, np.float32) for i, width in enumerate([8, 12, 8, 5, 12, 8])]
        tasks = [asyncio.create_task(batcher.submit({"x": x}, 1)) for x in sent]
        await until(lambda: batcher.num_queued == len(sent))
        model.gate.set()
        answers = await asyncio.gather(*tasks)
        await busy
        await batcher.stop()
        return sent, answers, model.batches

    sent, answers, batches = run(main())
    for x, answer in zip(sent, answers):
        np.testing.assert_array_equal(answer["y"], x * 2)
    # After the busy batch: one group of three (width 8), two (width 12) and one (width 5).
    assert sorted(batches[1:]) == [1, 2, 3], batches


class PickyModel(RecordingModel):
    """y = 2x, but a batch with any negative value is bad input (as a model that checks ids does)."""

    def __call__(self, inputs):
        outputs = super().__call__(inputs)
        if (inputs["x"] < 0).any():
            raise InvalidInput("x must not be negative")
        return outputs


def test_one_request_with_bad_data_in_a_batch_gets_400_and_its_batch_mates_their_answers():
    async def main():
        model = PickyModel()
        batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=8, max_queue_delay_us=1000), "t")
        batcher.start()
        model.gate.clear()
        values = [1.0, 2.0, -3.0, 4.0]

        async def submit_and_wait(chosen, queued):
            tasks = [asyncio.create_task(batcher.submit({"x": np.full((1, 1), v, np.float32)}, 1)) for v in chosen]
            await until(lambda: batcher.num_in_flight == 1 + queued and batcher.num_queued == queued)
            return tasks

        tasks = await submit_and_wait(values[:1], 0)  # the first runs alone, held
        tasks += await submit_and_wait(values[1:], 3)  # the other three queue behind it
        model.gate.set()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return answers, model.batches

    answers, batches = run(main())
    assert batches == [1, 3, 1, 1, 1]  # the batch of three failed on bad input and ran again one by one
    assert [float(a["y"][0, 0]) for i, a in enumerate(answers) if i != 2] == [2.0, 4.0, 8.0]
    assert isinstance(answers[2], InvalidInput) and "must not be negative" in str(answers[2])
