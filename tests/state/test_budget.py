"""Cluster-wide key limits: three TenantLimiters (three replicas) on one real redis-server admit a
quota exactly once between them and a per-second rate within one block of it, paying the store once
per leased block; with the store away a replica goes on with its own share."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from mlserve.server.ratelimit import TenantLimiter
from mlserve.state import MemoryStore
from mlserve.state.budget import LeasedBudget, window_end, window_of
from mlserve.state.redis_store import RedisStore


class CountingStore(RedisStore):
    """RedisStore that counts its incr calls (the round trips the budgets pay)."""

    num_incr = 0

    async def incr(self, key, amount=1, ttl_s=None):
        self.num_incr += 1
        return await super().incr(key, amount, ttl_s)


async def _admit(limiters: list[TenantLimiter], key: str, count: int) -> list[bool]:
    admitted = []
    for i in range(count):
        limiter = limiters[i % len(limiters)]
        await limiter.prepare(key)
        refusal = limiter.acquire(key)
        admitted.append(refusal is None)
        if refusal is None:
            limiter.release(key)
    return admitted


def _replicas(url: str, prefix: str, clock, **limits) -> list[TenantLimiter]:
    limiters = [TenantLimiter(clock=clock, store=CountingStore(url, prefix), wall_clock=clock) for _ in range(3)]
    for limiter in limiters:
        limiter.configure("k1", **limits)
    return limiters


def test_a_quota_admits_exactly_its_count_across_three_replicas_then_refuses_with_a_reason(redis_server):
    prefix, now = f"q-{uuid.uuid4().hex[:8]}", [1_800_000_000.0]

    async def scenario():
        limiters = _replicas(redis_server.url, prefix, lambda: now[0], rps=0, concurrency=0, quota=1000)
        for limiter in limiters:
            await limiter.store.start()
        try:
            admitted = await _admit(limiters, "k1", 1300)
            assert sum(admitted) == 1000 and admitted[-100:] == [False] * 100  # at most a block per replica straggles
            refusal = limiters[0].acquire("k1")
            assert "1000 requests per day (quota used up)" in refusal.reason
            assert sum(limiter.store.num_incr for limiter in limiters) <= 1000 // 10 + 6  # blocks of 10
            assert limiters[0].usage()["k1"] == {"used": 1000, "limit": 1000}
            now[0] += 86400  # the next UTC day starts afresh
            assert sum(await _admit(limiters, "k1", 30)) == 30
        finally:
            for limiter in limiters:
                await limiter.store.close()

    asyncio.run(scenario())


def test_requests_per_second_hold_across_replicas(redis_server):
    prefix, now = f"r-{uuid.uuid4().hex[:8]}", [1_800_000_000.25]

    async def scenario():
        limiters = _replicas(redis_server.url, prefix, lambda: now[0], rps=100, concurrency=0)
        for limiter in limiters:
            await limiter.store.start()
        try:
            # Three replicas, 3x the demand in one second: the cluster admits the limit (each replica's
            # own bucket would admit 100 on its own: 300 in all).
            assert sum(await _admit(limiters, "k1", 300)) == 100
            now[0] += 1.0
            assert sum(await _admit(limiters, "k1", 300)) == 100
        finally:
            for limiter in limiters:
                await limiter.store.close()

    asyncio.run(scenario())


def test_one_process_keeps_its_token_bucket_and_a_lost_store_leaves_a_local_share():
    limiter = TenantLimiter(store=MemoryStore())
    limiter.configure("k1", rps=5, concurrency=0)
    assert asyncio.run(_admit([limiter], "k1", 20)).count(True) == 5  # burst of rps, as before

    class Away(MemoryStore):
        async def incr(self, key, amount=1, ttl_s=None):
            from mlserve.state import StateUnavailable

            raise StateUnavailable("away")

    budget = LeasedBudget("quota:k", 50, "day")
    admitted = 0

    async def spend():
        nonlocal admitted
        for _ in range(80):
            if budget.needs_refill():
                await budget.refill(Away())
            admitted += budget.try_take()

    asyncio.run(spend())
    assert admitted == 50


def test_a_second_that_turns_between_lease_and_admission_refuses_nothing():
    """Prepared at the end of one second, admitted in the next: the request spends the token it was
    prepared with (on the old code the window rolled in between and a key limited to a million
    requests per second was told 429), and the next request leases the new second's block."""
    now = [1_800_000_000.999]
    budget = LeasedBudget("rps:k", 1000, "second", clock=lambda: now[0])
    store = MemoryStore()

    async def scenario():
        assert budget.needs_refill()
        await budget.refill(store)
        now[0] = 1_800_000_001.0001
        assert budget.try_take()
        assert budget.needs_refill()  # the new second: its own block
        await budget.refill(store)
        assert budget.try_take() and budget.window == "1800000001"

    asyncio.run(scenario())


@pytest.mark.parametrize("period, expected", [("second", "1800000000"), ("day", "2027-01-15"), ("month", "2027-01")])
def test_windows(period, expected):
    assert window_of(period, 1_800_000_000.5) == expected


@pytest.mark.parametrize("period", ["second", "day", "month"])
@pytest.mark.parametrize("now", [1_800_000_000.5, 1_798_761_599.9, 1_796_083_200.0])  # mid-day, New Year's Eve, a month's first second
def test_a_window_ends_where_the_next_begins(period, now):
    end = window_end(period, now)
    assert window_of(period, end - 0.001) == window_of(period, now) != window_of(period, end)


async def _until_shares_given_back(url: str, key: str, timeout_s: float = 10.0) -> None:
    """Poll the key's share hash in Redis until every replica's share there is 0."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            shares = await client.hgetall(key)
            if all(v.split(b":")[0] == b"0" for v in shares.values()):
                return
            assert asyncio.get_running_loop().time() < deadline, f"shares not given back: {shares}"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def test_a_keys_concurrency_holds_across_replicas_and_follows_the_traffic(redis_server):
    prefix, now = f"c-{uuid.uuid4().hex[:8]}", [1_800_000_000.0]

    async def hold(limiters: list[TenantLimiter], count: int) -> list[TenantLimiter]:
        """`count` requests spread over the replicas, none released: the replicas that admitted each."""
        holders = []
        for i in range(count):
            limiter = limiters[i % len(limiters)]
            await limiter.prepare("k1")
            if limiter.acquire("k1") is None:
                holders.append(limiter)
        return holders

    async def scenario():
        limiters = _replicas(redis_server.url, prefix, lambda: now[0], rps=0, concurrency=4)
        for limiter in limiters:
            await limiter.store.start()
        try:
            holders = await hold(limiters, 12)
            assert len(holders) == 4  # each replica alone would admit 4: 12 in all
            refusal = limiters[1].acquire("k1")
            assert refusal is not None and "4 requests in flight across replicas" in refusal.reason
            for limiter in holders:
                limiter.release("k1")
            # Idle replicas give their slots back (after SLOT_IDLE_S): one replica alone may then take all four.
            await _until_shares_given_back(redis_server.url, f"{prefix}:slots:k1")
            assert len(await hold(limiters[:1], 6)) == 4
            assert len(await hold(limiters[1:], 4)) == 0
        finally:
            for limiter in limiters:
                await limiter.store.close()

    asyncio.run(scenario())


def test_with_the_store_away_a_replica_keeps_its_local_share_of_the_concurrency():
    from mlserve.state import StateUnavailable

    class Away(MemoryStore):
        is_shared = True

        async def claim_share(self, key, owner, want, limit, ttl_s):
            raise StateUnavailable("away")

    async def scenario():
        limiter = TenantLimiter(store=Away())
        limiter.configure("k1", rps=0, concurrency=6)
        admitted = 0
        for _ in range(10):
            await limiter.prepare("k1")
            admitted += limiter.acquire("k1") is None
        return admitted

    assert asyncio.run(scenario()) == 6  # never saw other replicas: the whole limit, as one process


def test_a_request_whose_lease_waited_while_others_spent_the_rate_leases_again_instead_of_a_429():
    """Five requests arrive when the rate budget has 2 tokens left and the quota's block is spent.
    The first leases the quota's next block (a store round trip: the others wait for it); then all
    five spend the rate budget's tokens, and the three that find it empty lease its next block and
    are admitted, since the limit (100 a second) has room (on the old code they got 429)."""

    class Yielding(MemoryStore):
        is_shared = True

        async def incr(self, key, amount=1, ttl_s=None):
            await asyncio.sleep(0)  # a store round trip: other requests run meanwhile
            return await super().incr(key, amount, ttl_s)

    limiter = TenantLimiter(store=Yielding(), wall_clock=lambda: 1_800_000_000.5)
    limiter.configure("k1", rps=100, concurrency=0, quota=1000)

    async def scenario():
        assert await limiter.admit("k1") is None
        limiter.release("k1")
        rate, quota = limiter._tenants["k1"].budgets
        assert (rate.period, quota.period) == ("second", "day")
        rate.tokens, quota.tokens = 2, 0
        return await asyncio.gather(*(limiter.admit("k1") for _ in range(5)))

    refusals = asyncio.run(scenario())
    assert [r.reason if r else None for r in refusals] == [None] * 5


def test_the_next_block_is_leased_in_the_background_before_the_last_one_runs_out():
    """Under a quarter of a block left, one lease starts off the request path: requests go on spending
    what is left without waiting for the store, and the new block joins when the store answers."""

    class Held(MemoryStore):
        def __init__(self):
            super().__init__()
            self.gate, self.calls = asyncio.Event(), 0

        async def incr(self, key, amount=1, ttl_s=None):
            self.calls += 1
            if self.calls > 1:
                await self.gate.wait()  # the store is slow to answer the second lease
            return await super().incr(key, amount, ttl_s)

    store = Held()
    limiter = TenantLimiter(store=store, wall_clock=lambda: 1_800_000_000.5)
    limiter.configure("k1", rps=0, concurrency=0, quota=10_000)  # blocks of 100

    async def scenario():
        assert await limiter.admit("k1") is None
        (quota,) = limiter._tenants["k1"].budgets
        quota.tokens = 26
        for _ in range(26):  # the lease starts at 24 left; none of these waits for it
            assert await asyncio.wait_for(limiter.admit("k1"), timeout=5) is None
        assert store.calls == 2 and quota.tokens == 0
        store.gate.set()
        while limiter._leasing:
            await asyncio.sleep(0.01)
        assert quota.tokens == 100 and quota.used == 200

    asyncio.run(scenario())


def test_a_token_quota_is_one_budget_across_replicas(redis_server):
    """Three replicas spend generations' tokens from one token quota of 1,000: once the cluster's sum
    reaches it, every replica refuses the next generation, naming the token quota."""
    prefix, now = f"t-{uuid.uuid4().hex[:8]}", [1_800_000_000.0]

    async def scenario():
        limiters = _replicas(redis_server.url, prefix, lambda: now[0], rps=0, concurrency=0, token_quota=1000)
        for limiter in limiters:
            await limiter.store.start()
        try:
            spent = 0
            while spent < 1000:
                limiter = limiters[spent % 3]
                assert await limiter.check_tokens("k1") is None
                await limiter.spend_tokens("k1", 70)
                spent += 70
            refusals = [await limiter.check_tokens("k1") for limiter in limiters]
            assert all(r is not None and "1000 generation tokens per day (token quota used up)" in r.reason
                       for r in refusals)
            now[0] += 86400  # the next UTC day: a fresh quota
            assert await limiters[0].check_tokens("k1") is None
        finally:
            for limiter in limiters:
                await limiter.store.close()

    asyncio.run(scenario())


def test_requests_waiting_for_a_lease_all_wake_when_it_ends():
    """50 requests find the block spent while one lease is under way: one store call, and when it
    answers every waiter goes on within a couple of turns of the event loop (with a lock they were
    handed over one per turn: under load, tens of milliseconds at the start of every rate window)."""

    class Slow(MemoryStore):
        def __init__(self):
            super().__init__()
            self.gate, self.calls = asyncio.Event(), 0

        async def incr(self, key, amount=1, ttl_s=None):
            self.calls += 1
            await self.gate.wait()
            return await super().incr(key, amount, ttl_s)

    store = Slow()
    budget = LeasedBudget("rps:k", 10_000, "second", clock=lambda: 1_800_000_000.5)

    async def scenario():
        waiters = [asyncio.ensure_future(budget.refill(store)) for _ in range(50)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert store.calls == 1 and not any(w.done() for w in waiters)
        store.gate.set()
        for _ in range(4):
            await asyncio.sleep(0)
        assert sum(w.done() for w in waiters) == 50 and budget.tokens == budget.block

    asyncio.run(scenario())


def test_requests_waiting_for_a_concurrency_claim_all_wake_when_it_ends():
    """The same for a key's concurrency share: one claim under way, 30 requests needing one wait for
    it and all go on together when it is answered (with a lock, one per turn of the event loop)."""
    from mlserve.state.budget import SharedSlots

    class Slow(MemoryStore):
        is_shared = True

        def __init__(self):
            super().__init__()
            self.gate, self.calls = asyncio.Event(), 0

        async def claim_share(self, key, owner, want, limit, ttl_s):
            self.calls += 1
            await self.gate.wait()
            return await super().claim_share(key, owner, want, limit, ttl_s)

    store = Slow()
    slots = SharedSlots("k", 100, "replica-a")

    async def scenario():
        waiters = [asyncio.ensure_future(slots.claim(store, lambda: 0)) for _ in range(30)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert store.calls == 1 and not any(w.done() for w in waiters)
        store.gate.set()
        for _ in range(4):
            await asyncio.sleep(0)
        assert sum(w.done() for w in waiters) == 30 and store.calls == 1 and slots.held > 0

    asyncio.run(scenario())
