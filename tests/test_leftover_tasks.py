"""What the server does with tasks still running once it has stopped: each is cancelled, and one that
turns its cancel into an error it catches is named instead of holding the process's exit for ever."""

from __future__ import annotations

import asyncio

from mlserve.cli import end_leftover_tasks


def test_leftover_tasks_are_cancelled_and_one_that_will_not_end_is_named():
    released = asyncio.Event()

    async def swallows_its_cancels() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if released.is_set():
                    raise  # else: what a library does when it turns a cancel into an error and catches that

    async def scenario():
        ended = asyncio.create_task(asyncio.sleep(3600), name="sleeper")
        stuck = asyncio.create_task(swallows_its_cancels(), name="stubborn")
        await asyncio.sleep(0)  # both are running
        names = await end_leftover_tasks(wait_s=0.2)
        assert ended.cancelled()
        assert names == ["stubborn (test_leftover_tasks_are_cancelled_and_one_that_will_not_end_is_named."
                         "<locals>.swallows_its_cancels)"] and not stuck.done()
        released.set()
        stuck.cancel()
        await asyncio.wait([stuck])

    asyncio.run(scenario())


def test_nothing_left_is_nothing_named():
    assert asyncio.run(end_leftover_tasks(wait_s=0.2)) == []
