"""DeadlineWatch: one timer for deadlines that arrive in order, a timer of its own for one that
comes earlier, and answered requests never expire."""

from __future__ import annotations

import asyncio
import time

from mlserve.batching.deadline import DeadlineWatch
from mlserve.batching.queue import Waiting


def _item(loop, deadline: float) -> Waiting:
    return Waiting(None, 1, 1, time.monotonic(), deadline=deadline, future=loop.create_future())


def test_deadlines_expire_in_order_and_answered_requests_never_do():
    async def main():
        loop = asyncio.get_running_loop()
        expired: list[str] = []
        items = {}

        def on_deadline(item):
            name = next(k for k, v in items.items() if v is item)
            expired.append(name)
            item.future.set_exception(TimeoutError(name))

        watch = DeadlineWatch(on_deadline)
        now = time.monotonic()
        items["a"] = _item(loop, now + 0.02)
        items["b"] = _item(loop, now + 0.04)
        items["answered"] = _item(loop, now + 0.05)
        items["c"] = _item(loop, now + 0.06)
        items["early"] = _item(loop, now + 0.01)  # earlier than the newest: a timer of its own
        for item in items.values():
            watch.watch(item, loop)
        items["answered"].future.set_result("ok")
        watch.prune()
        await asyncio.wait([v.future for v in items.values()], timeout=5)
        watch.close()
        for item in items.values():
            item.future.exception()  # retrieved: no "never retrieved" warnings
        return expired, items

    expired, items = asyncio.run(main())
    assert expired == ["early", "a", "b", "c"]
    assert items["answered"].future.result() == "ok"
