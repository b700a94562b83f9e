"""Background requests cut into the slices a batch has room for (batching/background.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlserve.batching.background import BackgroundQueue


def rows(first: int, count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(first, first + count, dtype=np.float32)[:, None]}


def answer(pieces) -> None:
    """Run the slices as a model would: each gets its own rows back, doubled."""
    for piece in pieces:
        piece.future.set_result({"y": piece.inputs["x"] * 2})


def test_slices_are_cut_in_arrival_order_and_a_request_is_answered_once_all_its_rows_are():
    async def main():
        loop = asyncio.get_running_loop()
        queue = BackgroundQueue()
        a, b = loop.create_future(), loop.create_future()
        queue.push(rows(0, 5), 5, 0.0, a)
        queue.push(rows(100, 3), 3, 0.0, b)
        first = queue.take(3)
        second = queue.take(4)
        left = queue.num_rows
        answer(second)
        await asyncio.sleep(0)
        b_done_early = b.done()
        answer(first)
        rest = queue.take(10)
        answer(rest)
        return ([p.num_rows for p in first], [p.num_rows for p in second], [p.num_rows for p in rest], left,
                b_done_early, (await a)["y"][:, 0].tolist(), (await b)["y"][:, 0].tolist(), len(queue))

    first, second, rest, left, b_done_early, a_out, b_out, num_left = asyncio.run(main())
    assert (first, second, rest, left) == ([3], [2, 2], [1], 1)
    assert not b_done_early  # its last row was not taken yet
    assert a_out == [0, 2, 4, 6, 8]
    assert b_out == [200, 202, 204]
    assert num_left == 0


def test_a_failed_slice_fails_its_request_and_drops_its_rows_not_yet_taken():
    async def main():
        loop = asyncio.get_running_loop()
        queue = BackgroundQueue()
        failing, other = loop.create_future(), loop.create_future()
        queue.push(rows(0, 6), 6, 0.0, failing)
        queue.push(rows(10, 2), 2, 0.0, other)
        piece = queue.take(2)[0]
        piece.future.set_exception(ValueError("bad row"))
        await asyncio.sleep(0)
        after_failure = queue.num_rows
        rest = queue.take(8)
        answer(rest)
        return failing, after_failure, [p.inputs["x"][:, 0].tolist() for p in rest], (await other)["y"][:, 0].tolist()

    failing, after_failure, rest, other_out = asyncio.run(main())
    with pytest.raises(ValueError, match="bad row"):
        failing.result()
    assert after_failure == 2  # only the other request's rows wait
    assert rest == [[10, 11]]
    assert other_out == [20, 22]


def test_a_removed_request_gives_up_its_rows_not_yet_taken():
    async def main():
        loop = asyncio.get_running_loop()
        queue = BackgroundQueue()
        handle = queue.push(rows(0, 4), 4, 0.0, loop.create_future())
        queue.take(1)
        queue.remove(handle)
        return queue.num_rows, len(queue), queue.take(4)

    assert asyncio.run(main()) == (0, 0, [])


def test_none_takes_the_next_request_whole():
    async def main():
        loop = asyncio.get_running_loop()
        queue = BackgroundQueue()
        queue.push(rows(0, 5), 5, 0.0, loop.create_future())
        queue.push(rows(5, 5), 5, 0.0, loop.create_future())
        return [p.num_rows for p in queue.take(None)], queue.num_rows

    assert asyncio.run(main()) == ([5], 5)
