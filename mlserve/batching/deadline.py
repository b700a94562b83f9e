"""Request deadlines behind one timer per batcher.

Most requests carry the server's default deadline, so they arrive with deadlines in increasing
order: they wait in a FIFO and one loop timer is armed for the oldest. Answered requests leave the
head as answers come back (roughly in arrival order), so the FIFO stays about as long as what is
in flight. A request whose deadline is earlier than the newest one's (a shorter `timeout` of its
own) gets a timer of its own. One timer call per request costs several microseconds on the loop;
this costs a deque append.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

from mlserve.batching.queue import Waiting


class DeadlineWatch:
    """Calls `on_deadline(item)` once an unanswered item's `deadline` has passed."""

    def __init__(self, on_deadline: Callable[[Waiting], None]) -> None:
        self._on_deadline = on_deadline
        self._fifo: deque[Waiting] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, item: Waiting, loop: asyncio.AbstractEventLoop) -> None:
        assert item.deadline is not None
        if self._fifo and item.deadline < self._fifo[-1].deadline:
            delay = item.deadline - time.monotonic()
            item.timer = loop.call_at(loop.time() + delay, self._on_deadline, item)
            return
        self._fifo.append(item)
        if self._timer is None:
            self._arm(loop)

    def prune(self) -> None:
        """Drop answered requests from the head (call after answers go out)."""
        fifo = self._fifo
        while fifo and fifo[0].future.done():
            fifo.popleft()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = self._fifo[0].deadline - time.monotonic()
        self._timer = loop.call_at(loop.time() + max(delay, 0.0), self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = time.monotonic()
        fifo = self._fifo
        while fifo and (fifo[0].future.done() or fifo[0].deadline <= now):
            item = fifo.popleft()
            if not item.future.done():
                self._on_deadline(item)
        if fifo:
            self._arm(loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fifo.clear()
