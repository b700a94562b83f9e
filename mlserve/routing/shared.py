"""Experiment state that every replica shares through the StateStore: which version answered each
routed request (for feedback sent to any replica), each arm's sufficient statistics (count, sum,
sum of squares: mergeable, so counts made while the store was away are simply added on its return),
per-version request and error counts, and the sequential tests' always-valid p-values.

Hot path: `note()` is synchronous and only appends to pending batches; one flush task per process
writes them every FLUSH_S in one pipeline. Feedback pays its round trips (it is not inference). A
store that is away leaves the pending batches bounded (MAX_PENDING assignments, the oldest dropped;
statistics are a few numbers per arm) and flushed when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict

from mlserve.routing.stats import Moments
from mlserve.state import BadStateData, StateStore, StateUnavailable

log = logging.getLogger("mlserve.routing")

ASSIGN_TTL_S = 3600.0
"""How long a routed request can get feedback from any replica: at least this, at most twice (its window and the next)."""
MAX_ASSIGN_PER_TTL = 100_000
"""Assignments written per model per ASSIGN_TTL_S window; past it, only the answering replica keeps them."""
MAX_PENDING = 10_000
FLUSH_S = 0.05
"""How often pending assignments and counts go out: one short burst of round trips per interval, so
the store costs the serving core about the same at 100 and at 10,000 req/s."""
LOOKUP_WAIT_S = 1.0
"""Feedback for an id no replica has written yet waits this long (its replica's flush may be under way)."""


def moments_from(sums: dict[str, float], version: int) -> Moments:
    n = int(sums.get(f"n:{version}", 0))
    if n <= 0:
        return Moments()
    s, q = sums.get(f"s:{version}", 0.0), sums.get(f"q:{version}", 0.0)
    return Moments(n, s / n, max(0.0, q - s * s / n))


def versions_in(fields: dict[str, float]) -> set[int]:
    out = set()
    for name in fields:
        kind, _, version = name.partition(":")
        if version.isdigit() and kind in ("n", "r", "e"):
            out.add(int(version))
    return out


class SharedExperiments:
    """Assignments, statistics and test p-values of every model's experiment in the state store."""

    def __init__(self, store: StateStore, clock=time.time) -> None:
        self._store = store
        self._clock = clock
        self._assign: OrderedDict[tuple[str, str], int] = OrderedDict()
        """(model, request id) -> version, waiting for the next flush."""
        self._stats: dict[str, dict[str, float]] = {}
        self._retry: list[tuple[str, dict[str, float], str]] = []
        """Batches a failed flush tried: retried first, with the same ids (bounded: one flush's worth,
        as no flush runs while the store is away, plus one per outcome credited meanwhile)."""
        self._flush_task: asyncio.Task | None = None
        store.on_health(self._on_health)

    @staticmethod
    def _key(model: str, kind: str, rest: str = "") -> str:
        return f"exp:{model}:{kind}" + (f":{rest}" if rest else "")

    # -- hot path ----------------------------------------------------------------------------------

    def note(self, model: str, req_id: str, version: int, ok: bool) -> None:
        """A routed request was answered: its assignment and the version's counts go out in the next flush."""
        self._assign[(model, req_id)] = version
        while len(self._assign) > MAX_PENDING:
            self._assign.popitem(last=False)
        self._add(self._key(model, "h"), {f"r:{version}": 1.0, **({} if ok else {f"e:{version}": 1.0})})
        self._schedule()

    def count(self, key: str, increments: dict[str, float]) -> None:
        """Add to any shared hash of counts (a rollout step's) in the next flush: same batches, same ids."""
        self._add(key, increments)
        self._schedule()

    async def counts(self, key: str) -> dict[str, float] | None:
        """A shared hash of counts, every replica's flushed batches summed (None: the store is away)."""
        try:
            return await self._store.hgetall(key)
        except StateUnavailable:
            return None
        except BadStateData as exc:
            log.error("shared counts refused: %s", exc)
            return None

    def _add(self, key: str, increments: dict[str, float]) -> None:
        pending = self._stats.setdefault(key, {})
        for name, amount in increments.items():
            pending[name] = pending.get(name, 0.0) + amount

    def _schedule(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            try:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush_soon())
            except RuntimeError:  # no loop (a synchronous unit test): nothing shared to write
                return

    async def _flush_soon(self) -> None:
        """Flush until nothing is pending (what arrived during a flush goes in the next), or until the
        store is lost (its return schedules the next flush)."""
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()
            if not (self._assign or self._stats or self._retry) or not self._store.is_up:
                return

    async def flush(self) -> None:
        """Write the pending batches; a store that is away keeps them for its return. Each batch of
        counts carries an id, kept across retries, so a write whose reply was lost counts once."""
        if not self._store.is_up:
            return  # the store's return schedules the next flush; until then the counts merge
        assign, self._assign = self._assign, OrderedDict()
        batches = self._retry + [(key, increments, uuid.uuid4().hex) for key, increments in self._stats.items()]
        self._retry, self._stats = [], {}
        done = 0
        try:
            await self._write_assignments(assign)
            for key, increments, batch_id in batches:
                await self._hincr(key, increments, batch_id)
                done += 1
        except StateUnavailable:
            self._retry = batches[done:] + self._retry
            assign.update(self._assign)
            self._assign = assign
            while len(self._assign) > MAX_PENDING:
                self._assign.popitem(last=False)

    async def _hincr(self, key: str, increments: dict[str, float], batch_id: str) -> dict[str, float] | None:
        try:
            return await self._store.hincr(key, increments, ASSIGN_TTL_S * 24, once=f"exp:batch:{batch_id}")
        except BadStateData as exc:
            log.error("experiment statistics refused: %s", exc)
            return None

    async def _write_assignments(self, assign: OrderedDict[tuple[str, str], int]) -> None:
        """One round trip per model: the flush's assignments go into the hash of the current window
        (`exp:<model>:a:<window>`), which holds at most MAX_ASSIGN_PER_TTL and expires two windows on."""
        if not assign:
            return
        window = int(self._clock() // ASSIGN_TTL_S)
        per_model: dict[str, dict[str, float]] = {}
        for (model, req_id), version in assign.items():
            per_model.setdefault(model, {})[req_id] = version
        for model, batch in per_model.items():
            await self._store.hadd_capped(self._key(model, "a", str(window)), batch, MAX_ASSIGN_PER_TTL,
                                          2 * ASSIGN_TTL_S)
        assign.clear()

    def _on_health(self, is_up: bool) -> None:
        if is_up and (self._assign or self._stats or self._retry):
            self._schedule()

    async def close(self) -> None:
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)
        if self._store.is_up:
            await self.flush()

    # -- feedback ----------------------------------------------------------------------------------

    async def lookup(self, model: str, req_id: str) -> int | None:
        """The version another replica answered `req_id` with (None: unknown, or the store is away)."""
        deadline = time.monotonic() + LOOKUP_WAIT_S
        while True:
            window = int(self._clock() // ASSIGN_TTL_S)
            try:
                found = await self._store.hget(self._key(model, "a", str(window)), req_id)
                if found is None:
                    found = await self._store.hget(self._key(model, "a", str(window - 1)), req_id)
            except (StateUnavailable, BadStateData):
                return None
            if found is not None:
                return int(found) if found.is_integer() and found > 0 else None
            if time.monotonic() >= deadline or not self._store.is_shared:
                return None  # in one process, nothing is on its way
            await asyncio.sleep(0.05)

    async def claim(self, model: str, req_id: str) -> bool | None:
        """True when this is the request's first outcome cluster-wide; None when the store is away."""
        try:
            return await self._store.set_once(self._key(model, "f", req_id), "1", ASSIGN_TTL_S)
        except (StateUnavailable, BadStateData):
            return None

    async def credit(self, model: str, version: int, value: float) -> dict[str, float] | None:
        """Add an outcome to the arm; returns every arm's sums after it (None: the store is away,
        the outcome waits, with its batch id, for the store's return)."""
        increments = {f"n:{version}": 1.0, f"s:{version}": value, f"q:{version}": value * value}
        batch = (self._key(model, "o"), increments, uuid.uuid4().hex)
        try:
            return await self._hincr(*batch)
        except StateUnavailable:
            if len(self._retry) < MAX_PENDING:
                self._retry.append(batch)
            else:
                self._add(batch[0], increments)  # past the bound: still counted, merged with the rest
            return None

    async def lower_p_value(self, model: str, control: int, version: int, p_value: float) -> float:
        try:
            return await self._store.hset_min(self._key(model, "t"), f"p:{control}:{version}", p_value)
        except (StateUnavailable, BadStateData):
            return p_value

    async def snapshot(self, model: str) -> tuple[dict[str, float], dict[str, float], dict[str, float]] | None:
        """(outcome sums, request and error counts, test p-values), or None when the store is away.
        This replica's pending counts go out first, so its own answers are in the view it gives."""
        await self.flush()
        try:
            return (await self._store.hgetall(self._key(model, "o")), await self._store.hgetall(self._key(model, "h")),
                    await self._store.hgetall(self._key(model, "t")))
        except StateUnavailable:
            return None
        except BadStateData as exc:
            log.error("experiment statistics refused: %s", exc)
            return None
