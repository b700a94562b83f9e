"""The in-process StateStore: one replica's state in dicts, the same contract as RedisStore.

Runs on the event loop thread only (no locks). Expiry is judged on read with an injectable clock.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping

from mlserve.state.base import ONCE_TTL_S, BadStateData, Document, Handler, HealthObserver, Share


class MemoryStore:
    """Documents, hashes, values and leases of one process; notices go to this process's subscribers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._docs: dict[str, Document] = {}
        self._hashes: dict[str, dict[str, float]] = {}
        self._values: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        self._expiry: dict[str, float] = {}
        self._deadlines: list[tuple[float, str]] = []
        """(deadline, key) of every TTL set, oldest first: the sweep's work list."""
        self._leases: dict[str, tuple[str, float]] = {}
        self._subscribers: dict[str, list[Handler]] = {}
        self._blobs: dict[str, bytes] = {}
        self._indexes: dict[str, OrderedDict[str, None]] = {}
        self._shares: dict[str, dict[str, tuple[int, float]]] = {}

    @property
    def is_up(self) -> bool:
        return True

    @property
    def is_shared(self) -> bool:
        return False

    def describe(self) -> str:
        return "memory"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscribers.clear()

    def on_health(self, observer: HealthObserver) -> None:
        return None  # never lost

    # -- documents ---------------------------------------------------------------------------------

    async def get(self, key: str) -> Document | None:
        self._kind(key, self._docs)
        found = self._docs.get(key)
        return Document(found.version, copy.deepcopy(found.data)) if found else None

    async def put(self, key: str, data: Mapping[str, Any], expect: int | None = None) -> Document | None:
        self._kind(key, self._docs)
        current = self._docs.get(key)
        version = current.version if current else 0
        if expect is not None and expect != version:
            return None
        written = self._docs[key] = Document(version + 1, copy.deepcopy(dict(data)))
        return written

    async def delete(self, key: str) -> None:
        self._expiry.pop(key, None)
        for table in (self._docs, self._hashes, self._values, self._counters):
            table.pop(key, None)

    # -- notices -----------------------------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        loop = asyncio.get_running_loop()
        for handler in self._subscribers.get(channel, []):
            loop.call_soon(handler, message)

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._subscribers.setdefault(channel, []).append(handler)

    # -- counters, hashes, values ------------------------------------------------------------------

    def _expire(self, key: str) -> None:
        deadline = self._expiry.get(key)
        if deadline is not None and self._clock() >= deadline:
            self._expiry.pop(key)
            for table in (self._hashes, self._values, self._counters, self._blobs):
                table.pop(key, None)

    def _kind(self, key: str, table: dict) -> None:
        """BadStateData when `key` already holds another kind of value (Redis's WRONGTYPE)."""
        self._expire(key)
        for other in (self._docs, self._hashes, self._values, self._counters, self._blobs, self._shares):
            if other is not table and key in other:
                raise BadStateData(f"state key {key!r} holds another kind of value")

    def _set_ttl(self, key: str, ttl_s: float | None) -> None:
        if ttl_s is not None:
            now = self._clock()
            if key not in self._expiry:  # one entry per key; a later deadline is found when it comes up
                heapq.heappush(self._deadlines, (now + ttl_s, key))
            self._expiry[key] = now + ttl_s
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop keys whose time has passed, though nobody reads them again (a batch id, a window's
        counter): a few per write, so a long-running process holds only what is live."""
        for _ in range(4):
            if not self._deadlines or self._deadlines[0][0] > now:
                return
            _, key = heapq.heappop(self._deadlines)
            deadline = self._expiry.get(key)
            if deadline is not None and deadline > now:
                heapq.heappush(self._deadlines, (deadline, key))  # its TTL was renewed: look again then
            else:
                self._expire(key)

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        self._kind(key, self._counters)
        is_new = key not in self._counters
        self._counters[key] = self._counters.get(key, 0) + amount
        if is_new:
            self._set_ttl(key, ttl_s)
        return self._counters[key]

    async def hincr(self, key: str, increments: Mapping[str, float], ttl_s: float | None = None,
                    once: str | None = None) -> dict[str, float]:
        self._kind(key, self._hashes)
        if once is not None and not await self.set_once(once, "1", ONCE_TTL_S):
            return dict(self._hashes.get(key, {}))
        table = self._hashes.setdefault(key, {})
        for name, amount in increments.items():
            table[name] = table.get(name, 0.0) + float(amount)
        self._set_ttl(key, ttl_s)
        return dict(table)

    async def hgetall(self, key: str) -> dict[str, float]:
        self._kind(key, self._hashes)
        return dict(self._hashes.get(key, {}))

    async def hadd_capped(self, key: str, values: Mapping[str, float], cap: int, ttl_s: float) -> bool:
        self._kind(key, self._hashes)
        table = self._hashes.get(key)
        if table is not None and len(table) >= cap:
            return False
        if table is None:
            table = self._hashes[key] = {}
            self._set_ttl(key, ttl_s)
        table.update({name: float(value) for name, value in values.items()})
        return True

    async def hget(self, key: str, field: str) -> float | None:
        self._kind(key, self._hashes)
        return self._hashes.get(key, {}).get(field)

    async def hset_min(self, key: str, field: str, value: float) -> float:
        self._kind(key, self._hashes)
        table = self._hashes.setdefault(key, {})
        table[field] = min(table.get(field, value), value)
        return table[field]

    async def set_once(self, key: str, value: str, ttl_s: float) -> bool:
        self._kind(key, self._values)
        if key in self._values:
            return False
        self._values[key] = value
        self._set_ttl(key, ttl_s)
        return True

    async def set_many(self, values: Mapping[str, str], ttl_s: float) -> None:
        for key, value in values.items():
            self._kind(key, self._values)
            self._values[key] = value
            self._set_ttl(key, ttl_s)

    async def get_value(self, key: str) -> str | None:
        self._kind(key, self._values)
        return self._values.get(key)

    # -- leases ------------------------------------------------------------------------------------

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        now = self._clock()
        held = self._leases.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[key] = (owner, now + ttl_s)
        return True

    async def release(self, key: str, owner: str) -> None:
        held = self._leases.get(key)
        if held is not None and held[0] == owner:
            del self._leases[key]

    # -- bytes under a capped index, shares of a limit ---------------------------------------------

    async def get_bytes(self, key: str) -> bytes | None:
        self._kind(key, self._blobs)
        return self._blobs.get(key)

    async def set_bytes(self, key: str, value: bytes, ttl_s: float, index: str | None = None,
                        max_entries: int = 0) -> None:
        self._kind(key, self._blobs)
        self._blobs[key] = bytes(value)
        self._set_ttl(key, ttl_s)
        if index is None:
            return
        keys = self._indexes.setdefault(index, OrderedDict())
        for old in [k for k in keys if k not in self._blobs or self._expiry.get(k, float("inf")) <= self._clock()]:
            del keys[old]
        keys[key] = None
        keys.move_to_end(key)
        while len(keys) > max_entries:
            old, _ = keys.popitem(last=False)
            self._blobs.pop(old, None)
            self._expiry.pop(old, None)

    async def claim_share(self, key: str, owner: str, want: int, limit: int, ttl_s: float) -> Share:
        self._kind(key, self._shares)
        now = self._clock()
        shares = self._shares.setdefault(key, {})
        for other in [o for o, (_, until) in shares.items() if until <= now]:
            del shares[other]
        others = sum(held for o, (held, _) in shares.items() if o != owner)
        granted = max(0, min(want, limit - others))
        shares[owner] = (granted, now + ttl_s)
        return Share(granted, len(shares))
