"""SharedExperiments with a store that goes away: the hot path never waits or raises, what it counts
meanwhile stays bounded, and it all reaches the store on its return."""

from __future__ import annotations

import asyncio

from mlserve.routing import shared as shared_module
from mlserve.routing.shared import SharedExperiments, moments_from
from mlserve.state import MemoryStore, StateUnavailable


class FlakyStore(MemoryStore):
    """A MemoryStore that can be made unreachable."""

    is_away = False

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name in ("incr", "hincr", "set_many", "get_value", "set_once", "hgetall") and self.is_away:
            async def away(*args, **kwargs):
                raise StateUnavailable("away")

            return away
        return attr


def test_counts_made_while_the_store_is_away_reach_it_on_return(monkeypatch):
    monkeypatch.setattr(shared_module, "MAX_PENDING", 50)

    async def scenario():
        store = FlakyStore()
        shared = SharedExperiments(store)
        store.is_away = True
        for i in range(200):
            shared.note("m", f"r{i}", 1 + i % 2, ok=i % 10 != 0)
        assert await shared.credit("m", 2, 1.0) is None  # counted locally
        await shared.flush()
        assert await shared.claim("m", "r1") is None and await shared.snapshot("m") is None
        store.is_away = False
        await shared.flush()
        counts = await store.hgetall("exp:m:h")
        assert counts == {"r:1": 100.0, "r:2": 100.0, "e:1": 20.0}
        assert moments_from(await store.hgetall("exp:m:o"), 2).n == 1
        # Only the newest MAX_PENDING assignments were kept while away.
        assert await shared.lookup("m", "r199") == 2 and await shared.lookup("m", "r0") is None

    asyncio.run(scenario())
