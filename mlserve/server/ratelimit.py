"""Per-tenant rate limits (token bucket, concurrency) and the server-wide in-flight bound. Pure
state with an injectable clock; the middleware calls it."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from mlserve.state import MemoryStore, StateStore
from mlserve.state.budget import LeasedBudget, SharedSlots

Clock = Callable[[], float]


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; one request takes one token."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    def try_take(self, now: float) -> float | None:
        """None when a token was taken, else the seconds until one will be there."""
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate


MAX_LEASE_TRIES = 4


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not admitted, and when to come back."""

    reason: str
    retry_after_s: float
    may_lease: bool = False
    """The local block is spent but the limit is not: leasing the next block may admit it (`admit`)."""


@dataclass(slots=True)
class _Tenant:
    bucket: TokenBucket | None
    max_concurrency: int
    num_in_flight: int = 0
    budgets: tuple[LeasedBudget, ...] = ()
    """Cluster-wide limits (requests per second across replicas, the quota), spent from leased blocks."""
    slots: SharedSlots | None = None
    """This replica's share of the key's concurrency limit, where replicas share the store."""
    tokens: LeasedBudget | None = None
    """The generation token quota (prompt and completion tokens per day or month), cluster-wide."""


@dataclass(slots=True)
class TenantLimiter:
    """Rate and concurrency per key id; limits change on reload while counts in flight are kept."""

    clock: Clock = time.monotonic
    _tenants: dict[str, _Tenant] = field(default_factory=dict)
    store: StateStore = field(default_factory=MemoryStore)
    """Where cluster-wide budgets are counted (shared when replicas share a Redis)."""
    wall_clock: Clock = time.time
    """Unix time, for the budgets' windows (second, UTC day, UTC month)."""
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    """Names this replica's share of each key's concurrency in the store."""
    _leasing: set[asyncio.Task] = field(default_factory=set)
    """Blocks being leased ahead, in the background (kept so they are not collected mid-flight)."""

    def configure(self, key_id: str, rps: float, concurrency: int, quota: int = 0, quota_period: str = "day",
                  token_quota: int = 0) -> None:
        tenant = self._tenants.get(key_id)
        tokens = LeasedBudget(f"tokens:{key_id}", token_quota, quota_period, self.wall_clock) if token_quota else None
        bucket = TokenBucket(rps, max(1.0, rps)) if rps > 0 else None
        budgets = self._budgets(key_id, rps, quota, quota_period)
        slots = SharedSlots(key_id, concurrency, self.replica_id, self.clock) \
            if concurrency > 0 and self.store.is_shared else None
        if tenant is None:
            self._tenants[key_id] = _Tenant(bucket, concurrency, budgets=budgets, slots=slots, tokens=tokens)
            return
        if tokens is None or tenant.tokens is None or (tenant.tokens.limit, tenant.tokens.period) != (token_quota, quota_period):
            tenant.tokens = tokens
        if bucket is None or tenant.bucket is None or tenant.bucket.rate != rps:
            tenant.bucket = bucket
        if slots is None or tenant.slots is None or tenant.slots.limit != concurrency:
            tenant.slots = slots
        tenant.max_concurrency = concurrency
        if [(b.limit, b.period) for b in budgets] != [(b.limit, b.period) for b in tenant.budgets]:
            tenant.budgets = budgets

    def _budgets(self, key_id: str, rps: float, quota: int, quota_period: str) -> tuple[LeasedBudget, ...]:
        """The quota always; the per-second budget only where replicas share the store (one process
        has its token bucket, which also bounds bursts)."""
        out = []
        if rps > 0 and self.store.is_shared:
            out.append(LeasedBudget(f"rps:{key_id}", max(1, math.floor(rps)), "second", self.wall_clock))
        if quota > 0:
            out.append(LeasedBudget(f"quota:{key_id}", quota, quota_period, self.wall_clock))
        return tuple(out)

    async def prepare(self, key_id: str) -> None:
        """Lease a block for each cluster-wide budget this key has spent locally, and claim room in
        the key's concurrency share when it is full or due (a store call once per block or renewal;
        nothing otherwise). Call right before `acquire`."""
        tenant = self._tenants.get(key_id)
        if tenant is None:
            return
        if tenant.slots is not None and tenant.slots.needs_claim(tenant.num_in_flight):
            await tenant.slots.claim(self.store, lambda: tenant.num_in_flight)
        for budget in tenant.budgets:
            if budget.needs_refill():
                await budget.refill(self.store)
            elif budget.wants_refill():
                self._lease_ahead(budget)

    def _lease_ahead(self, budget: LeasedBudget) -> None:
        try:
            task = asyncio.get_running_loop().create_task(budget.refill(self.store, ahead=True))
        except RuntimeError:
            return  # no loop: the next request leases in line
        self._leasing.add(task)
        task.add_done_callback(self._leasing.discard)

    async def admit(self, key_id: str) -> Refusal | None:
        """`prepare` then `acquire`. Leasing one budget's block can wait on the store while other
        requests spend another budget's last tokens; such a request leases again (a few times at
        most) instead of being refused while the limit still has room."""
        refusal = None
        for _ in range(MAX_LEASE_TRIES):
            await self.prepare(key_id)
            refusal = self.acquire(key_id)
            if refusal is None or not refusal.may_lease:
                return refusal
        return refusal

    def usage(self) -> dict[str, dict[str, int]]:
        """Per key id, the quota leased cluster-wide in its current window (as last seen here)."""
        return {key_id: {"used": b.used, "limit": b.limit} for key_id, t in self._tenants.items()
                for b in t.budgets if b.period != "second"}

    def token_usage(self) -> dict[str, dict[str, int]]:
        """Per key id, the generation tokens leased cluster-wide in the current window (as last seen here)."""
        return {key_id: {"used": t.tokens.used, "limit": t.tokens.limit}
                for key_id, t in self._tenants.items() if t.tokens is not None}

    async def check_tokens(self, key_id: str) -> Refusal | None:
        """Before a generation: refused once the key's token quota is used up cluster-wide (as far as
        this replica has seen; a generation admitted is never cut short, its tokens count in full)."""
        tenant = self._tenants.get(key_id)
        budget = tenant.tokens if tenant is not None else None
        if budget is None:
            return None
        if budget.needs_refill():
            await budget.refill(self.store)  # no token left here: does the cluster have any?
        if budget.tokens > 0 or not budget.is_exhausted:
            return None
        return Refusal(f"this key is limited to {budget.limit} generation tokens per {budget.period} "
                       "(token quota used up)", budget.retry_after_s())

    async def spend_tokens(self, key_id: str, count: int) -> None:
        """A generation used `count` tokens: spend them from leased blocks, leasing more as needed
        (what is over the quota still counts, so the next generation is refused)."""
        tenant = self._tenants.get(key_id)
        budget = tenant.tokens if tenant is not None else None
        while budget is not None and count > 0:
            if budget.needs_refill():
                await budget.refill(self.store)
            if budget.tokens <= 0:
                budget.used = budget.limit  # exhausted: the rest is over the quota
                return
            taken = min(count, budget.tokens)
            budget.tokens -= taken
            count -= taken

    def forget_others(self, key_ids: set[str]) -> None:
        for key_id in [k for k, t in self._tenants.items() if k not in key_ids and not t.num_in_flight]:
            del self._tenants[key_id]

    def acquire(self, key_id: str) -> Refusal | None:
        """Admit one request (None) or say why not; an admitted request must be released."""
        tenant = self._tenants.get(key_id)
        if tenant is None:
            return None
        if tenant.max_concurrency and tenant.num_in_flight >= tenant.max_concurrency:
            return Refusal(f"this key already has {tenant.num_in_flight} requests in flight "
                           f"(limit {tenant.max_concurrency})", 1.0)
        if tenant.slots is not None and not tenant.slots.can_admit(tenant.num_in_flight):
            return Refusal(f"this key is limited to {tenant.max_concurrency} requests in flight across replicas "
                           f"({tenant.num_in_flight} on this one, the rest in use on others)", 1.0)
        if tenant.bucket is not None:
            wait = tenant.bucket.try_take(self.clock())
            if wait is not None:
                return Refusal(f"this key is limited to {tenant.bucket.rate:g} requests per second", wait)
        for budget in tenant.budgets:
            if not budget.try_take():
                what = "requests per second across replicas" if budget.period == "second" else \
                    f"requests per {budget.period} (quota used up)"
                return Refusal(f"this key is limited to {budget.limit} {what}", budget.retry_after_s(),
                               may_lease=budget.needs_refill())
        tenant.num_in_flight += 1
        return None

    def release(self, key_id: str) -> None:
        tenant = self._tenants.get(key_id)
        if tenant is not None and tenant.num_in_flight > 0:
            tenant.num_in_flight -= 1
            if tenant.num_in_flight == 0 and tenant.slots is not None:
                tenant.slots.on_idle(self.store, lambda: tenant.num_in_flight)


MAX_THROTTLED_CLIENTS = 10_000
"""(client address, key id) pairs whose failed key checks are remembered; the least recently seen
are forgotten."""


@dataclass(slots=True)
class FailureThrottle:
    """Key checks per (client address, key id): each check that needs a hash takes a token from the
    pair's bucket and a check that succeeds gives it back, so only failures (and checks in progress)
    spend the budget, and failures against one key never cost another key anything. Bounded: at
    most MAX_THROTTLED_CLIENTS pairs are remembered."""

    burst: float = 20.0
    rate: float = 1.0
    clock: Clock = time.monotonic
    _buckets: OrderedDict[tuple[str, str], TokenBucket] = field(default_factory=OrderedDict)

    def try_attempt(self, client: str, key_id: str = "") -> float | None:
        """None when the address may have this key checked now, else seconds until it may."""
        pair = (client, key_id)
        bucket = self._buckets.get(pair)
        if bucket is None:
            bucket = self._buckets[pair] = TokenBucket(self.rate, self.burst)
            while len(self._buckets) > MAX_THROTTLED_CLIENTS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(pair)
        return bucket.try_take(self.clock())

    def refund(self, client: str, key_id: str = "") -> None:
        """The check succeeded (or never ran): the attempt costs the pair nothing."""
        bucket = self._buckets.get((client, key_id))
        if bucket is not None:
            bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)

    @property
    def num_clients(self) -> int:
        return len(self._buckets)


@dataclass(slots=True)
class InFlight:
    """Counts the requests the whole server holds; refuses past `limit`."""

    limit: int
    num_in_flight: int = 0

    @property
    def is_saturated(self) -> bool:
        return self.num_in_flight >= self.limit

    def try_acquire(self) -> bool:
        if self.is_saturated:
            return False
        self.num_in_flight += 1
        return True

    def release(self) -> None:
        self.num_in_flight -= 1
