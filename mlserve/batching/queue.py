"""The bounded waiting room of one model version: one FIFO per priority level, with ageing."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, eq=False)
class Waiting:
    """One queued request: its tensors, rows, level (1 = highest) and times on the monotonic clock."""

    inputs: Any
    num_rows: int
    priority: int
    enqueued_at: float
    deadline: float | None = None
    future: Any = None
    timer: Any = None


class RequestQueue:
    """Waiting requests by priority level. Higher levels are taken first, FIFO within a level; a
    request that has waited `aging_s` is taken ahead of every level, so low levels never starve.

    Pure bookkeeping with no clock of its own: callers pass `now`, which keeps it testable.
    """

    def __init__(self, num_levels: int, max_size: int, aging_s: float) -> None:
        self._levels: list[deque[Waiting]] = [deque() for _ in range(num_levels)]
        self._max_size = max_size
        self._aging_s = aging_s
        self.num_requests = 0
        self.num_rows = 0
        self.num_pushed = 0
        """Requests ever pushed: a cheap way to see whether anything arrived since a moment ago."""

    def is_full(self) -> bool:
        return self.num_requests >= self._max_size

    def push(self, item: Waiting) -> None:
        assert not self.is_full(), "push on a full queue"
        self._levels[item.priority - 1].append(item)
        self.num_requests += 1
        self.num_rows += item.num_rows
        self.num_pushed += 1

    def remove(self, item: Waiting) -> bool:
        """Take one request out wherever it waits (its deadline passed); False if already taken."""
        try:
            self._levels[item.priority - 1].remove(item)
        except ValueError:
            return False
        self._forget(item)
        return True

    def oldest_enqueued_at(self) -> float | None:
        heads = [level[0].enqueued_at for level in self._levels if level]
        return min(heads) if heads else None

    def take(self, max_rows: int, now: float, at_least_one: bool = True) -> list[Waiting]:
        """Requests for one batch of at most `max_rows` rows (at least one request when any wait,
        unless `at_least_one` is False: then a first request larger than `max_rows` stays queued).

        Order: requests that have waited past the ageing limit (oldest first), then by level, FIFO.
        A request that does not fit ends the batch, so nothing overtakes its own level.
        """
        batch: list[Waiting] = []
        rows = 0
        while self.num_requests:
            level = self._next_level(now)
            head = level[0]
            if (batch or not at_least_one) and rows + head.num_rows > max_rows:
                break
            level.popleft()
            self._forget(head)
            batch.append(head)
            rows += head.num_rows
            if rows >= max_rows:
                break
        return batch

    def _next_level(self, now: float) -> deque[Waiting]:
        starved = [level for level in self._levels if level and now - level[0].enqueued_at >= self._aging_s]
        if starved:
            return min(starved, key=lambda level: level[0].enqueued_at)
        return next(level for level in self._levels if level)

    def _forget(self, item: Waiting) -> None:
        self.num_requests -= 1
        self.num_rows -= item.num_rows
