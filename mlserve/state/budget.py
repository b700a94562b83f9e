"""Cluster-wide limits spent locally: a key's requests per second and per day or month, counted in
the StateStore in blocks, so the request path pays a store round trip once per block, never per
request; and a key's concurrency, held as per-replica shares of its slots (`SharedSlots`).

Each `LeasedBudget` leases a block of tokens for the current window (`incr` on the window's counter
returns the cluster's total leased; the part of the block under the limit is granted) and spends it
locally; the next block is leased in the background once a quarter of a block is left, so requests
wait for the store only when a window opens or a burst outruns the lease. Leased tokens a replica does not spend in the window are lost to the others, so blocks are
small against the limit (BLOCK_SHARE). A store that is away grants the replica blocks of its own up to
what it last saw left of the limit (the documented local share); the counts are its own until the
store is back.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from mlserve.state.base import BadStateData, StateStore, StateUnavailable

PERIODS = ("second", "day", "month")
BLOCK_SHARE = {"second": 0.05, "day": 0.01, "month": 0.01}
"""Block size as a share of the limit (at least one token): the error a replica's unspent block can cause."""
MAX_BLOCK = 1000


class SingleFlight:
    """At most one store call of a kind under way. Callers that come meanwhile wait for that one and
    all wake together when it ends, then look again at what it changed (an asyncio.Lock would hand
    over one waiter per turn of the event loop: under load, a convoy of tens of milliseconds)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: asyncio.Future | None = None

    @property
    def is_busy(self) -> bool:
        return self._pending is not None

    async def settled(self) -> bool:
        """Wait until no call is under way; True when one was."""
        waited = False
        while self._pending is not None:
            waited = True
            await asyncio.shield(self._pending)
        return waited

    @contextlib.contextmanager
    def flying(self) -> Iterator[None]:
        """The block is the call under way (no await between `settled()` and entering it)."""
        done = self._pending = asyncio.get_running_loop().create_future()
        try:
            yield
        finally:
            self._pending = None
            done.set_result(None)


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
    _lease: SingleFlight = field(default_factory=SingleFlight, repr=False)
    """The lease under way, if any: later callers wait for it instead of leasing again."""
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

    def wants_refill(self) -> bool:
        """Tokens are running low (under a quarter of a block) and no lease is under way: lease the
        next block now, in the background, so no request waits for the store's round trip."""
        return 0 < self.tokens < max(1, self.block // 4) and not self.is_exhausted and not self._lease.is_busy

    def try_take(self) -> bool:
        """Spend one token (no store call); False when the leased tokens are spent. A request prepared
        in one window and admitted in the next spends the token it was prepared with (the window rolls
        in `needs_refill`): a second that turns between the two is no reason to refuse."""
        if self.tokens <= 0:
            return False
        self.tokens -= 1
        return True

    async def refill(self, store: StateStore, ahead: bool = False) -> None:
        """Lease the next block of this window (one store call); `ahead` leases it while tokens are
        still left (see `wants_refill`). Callers that come while a lease is under way wait for that
        one and all wake together when it ends (a lock would hand over one waiter per turn of the
        event loop: under load, a convoy of tens of milliseconds at the start of every window)."""
        if await self._lease.settled() and ahead:
            return
        window = self._roll()
        if self.is_exhausted or self.tokens >= (max(1, self.block // 4) if ahead else 1):
            return
        with self._lease.flying():
            block = self.block
            try:
                total = await store.incr(f"budget:{self.name}:{window}", block, window_ttl_s(self.period))
            except (StateUnavailable, BadStateData):
                total = self.used + block  # the local share: blocks of our own, up to what was left
            granted = max(0, min(block, self.limit - (total - block)))
            if window == self.window or not self.window:
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


SLOT_BLOCK_SHARE = 0.1
"""A replica claims room for this share of a key's concurrency limit (at least one slot) beyond its
requests in flight, so a burst pays one claim per block, not one per request."""
SLOT_RENEW_S = 1.0
"""How often a replica with requests of the key re-claims its share: slots it no longer needs go back."""
SLOT_IDLE_S = 1.0
"""A replica with no request of the key in flight for this long gives its whole share back."""
SLOT_TTL_S = 15.0
"""A share not claimed again for this long lapses: a dead replica's slots come back by themselves."""


@dataclass(slots=True)
class SharedSlots:
    """One key's concurrency limit held across replicas: this replica's share of the slots.

    Each replica claims a share in the store (`claim_share`: its in-flight count plus a block of room,
    cut to what the other replicas' live shares leave) and admits locally while its in-flight count
    is under its share; the sum of the shares never exceeds the limit, so neither does the sum of
    requests in flight. A replica claims again only when it runs out of room or SLOT_RENEW_S has
    passed (then it also gives back what it no longer needs), and gives everything back after
    SLOT_IDLE_S with nothing in flight (so a replica's share follows its traffic, and a steady stream
    of one request at a time costs no claim per request). With the store away it goes on with its
    local share: the limit split evenly between the replicas it last saw (all of it, if it never saw
    the store), never less than what it already holds.
    """

    name: str
    limit: int
    owner: str
    clock: Callable[[], float] = time.monotonic
    held: int = 0
    num_owners: int = 1
    claimed_at: float | None = None
    _claim: SingleFlight = field(default_factory=SingleFlight, repr=False)
    """The claim under way, if any: requests that need one meanwhile wait for it, together."""
    _idle: asyncio.Task | None = field(default=None, repr=False)

    @property
    def block(self) -> int:
        return max(1, math.floor(self.limit * SLOT_BLOCK_SHARE))

    def on_idle(self, store: StateStore, in_flight: Callable[[], int]) -> None:
        """Nothing in flight now: give the share back unless a request comes within SLOT_IDLE_S."""
        if self.held > 0 and (self._idle is None or self._idle.done()):
            self._idle = asyncio.get_running_loop().create_task(self._give_back_later(store, in_flight))

    async def _give_back_later(self, store: StateStore, in_flight: Callable[[], int]) -> None:
        await asyncio.sleep(SLOT_IDLE_S)
        await self._claim.settled()
        if in_flight() or self.held == 0:
            return
        with self._claim.flying():
            try:
                await store.claim_share(f"slots:{self.name}", self.owner, 0, self.limit, SLOT_TTL_S)
            except (StateUnavailable, BadStateData):
                return  # kept; it lapses in the store after SLOT_TTL_S anyway
            self.held, self.claimed_at = 0, self.clock()

    def can_admit(self, num_in_flight: int) -> bool:
        return num_in_flight < self.held

    def needs_claim(self, num_in_flight: int) -> bool:
        if self.claimed_at is None or self.clock() - self.claimed_at >= SLOT_RENEW_S:
            return True
        return num_in_flight >= self.held and self.held < self.limit

    async def claim(self, store: StateStore, in_flight: Callable[[], int]) -> None:
        """Claim room for the next requests (one store call; callers queued behind it re-check first)."""
        await self._claim.settled()
        if not self.needs_claim(in_flight()):
            return
        with self._claim.flying():
            want = min(self.limit, in_flight() + self.block)
            try:
                if not store.is_up:  # known lost: no wait for a call that would fail
                    raise StateUnavailable("state store lost")
                share = await store.claim_share(f"slots:{self.name}", self.owner, want, self.limit, SLOT_TTL_S)
                self.held, self.num_owners = share.granted, share.num_owners
            except (StateUnavailable, BadStateData):
                self.held = max(self.held, math.ceil(self.limit / max(1, self.num_owners)))
            self.claimed_at = self.clock()
