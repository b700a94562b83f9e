"""Cluster-wide limits spent locally: a key's requests per second and per day or month, counted in
the StateStore in blocks, so the request path pays a store round trip once per block, never per
request.

Each `LeasedBudget` leases a block of tokens for the current window (`incr` on the window's counter
returns the cluster's total leased; the part of the block under the limit is granted) and spends it
locally. Leased tokens a replica does not spend in the window are lost to the others, so blocks are
small against the limit (BLOCK_SHARE). A store that is away grants the replica blocks of its own up to
what it last saw left of the limit (the documented local share); the counts are its own until the
store is back.
"""

from __future__ import annotations

import asyncio
import calendar
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from mlserve.state.base import BadStateData, StateStore, StateUnavailable

PERIODS = ("second", "day", "month")
BLOCK_SHARE = {"second": 0.05, "day": 0.01, "month": 0.01}
"""Block size as a share of the limit (at least one token): the error a replica's unspent block can cause."""
MAX_BLOCK = 1000


def window_of(period: str, now: float) -> str:
    """The window `now` (Unix seconds, UTC) falls in: second, day or month."""
    if period == "second":
        return str(int(now))
    stamp = time.gmtime(now)
    return time.strftime("%Y-%m-%d" if period == "day" else "%Y-%m", stamp)


def window_end(period: str, now: float) -> float:
    """When the window `now` falls in ends (Unix seconds)."""
    if period == "second":
        return math.floor(now) + 1.0
    if period == "day":
        return (math.floor(now / 86400) + 1) * 86400.0
    stamp = time.gmtime(now)
    year, month = (stamp.tm_year + 1, 1) if stamp.tm_mon == 12 else (stamp.tm_year, stamp.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def window_ttl_s(period: str) -> float:
    return {"second": 5.0, "day": 2 * 86400.0, "month": 32 * 86400.0}[period]


@dataclass(slots=True)
class LeasedBudget:
    """One key's limit over one period, spent from locally leased blocks."""

    name: str
    limit: int
    period: str
    clock: Callable[[], float] = time.time
    tokens: int = 0
    window: str = ""
    is_exhausted: bool = False
    used: int = 0
    """Cluster-wide tokens leased in this window, as last seen (what `/metrics` shows)."""
    _lock: asyncio.Lock | None = field(default=None, repr=False)
    _ends_at: float = field(default=0.0, repr=False)
    """When the current window ends: the request path formats no date until then."""

    @property
    def block(self) -> int:
        return max(1, min(MAX_BLOCK, math.floor(self.limit * BLOCK_SHARE[self.period])))

    def _roll(self) -> str:
        now = self.clock()
        if now < self._ends_at and now >= self._ends_at - 32 * 86400:  # inside the window (a clock set back rolls)
            return self.window
        window = window_of(self.period, now)
        self._ends_at = window_end(self.period, now)
        if window != self.window:
            self.window, self.tokens, self.is_exhausted, self.used = window, 0, False, 0
        return window

    def needs_refill(self) -> bool:
        self._roll()
        return self.tokens <= 0 and not self.is_exhausted

    def try_take(self) -> bool:
        """Spend one token (no store call); False when the leased tokens are spent. A request prepared
        in one window and admitted in the next spends the token it was prepared with (the window rolls
        in `needs_refill`): a second that turns between the two is no reason to refuse."""
        if self.tokens <= 0:
            return False
        self.tokens -= 1
        return True

    async def refill(self, store: StateStore) -> None:
        """Lease the next block of this window (one store call; concurrent callers share it)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            window = self._roll()
            if self.tokens > 0 or self.is_exhausted:
                return
            block = self.block
            try:
                total = await store.incr(f"budget:{self.name}:{window}", block, window_ttl_s(self.period))
            except (StateUnavailable, BadStateData):
                total = self.used + block  # the local share: blocks of our own, up to what was left
            granted = max(0, min(block, self.limit - (total - block)))
            self.used = min(self.limit, total)
            self.tokens += granted
            if granted < block:
                self.is_exhausted = True
            self.window = window

    def retry_after_s(self) -> float:
        now = self.clock()
        if self.period == "second":
            return math.ceil(now) - now or 1.0
        return 60.0
