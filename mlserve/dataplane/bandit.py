"""BanditDriver: moves the split of every model whose [traffic] has a bandit, once per `update_s`.

Behind replicas exactly one process computes a model's split: the one holding the state store's lease
`bandit:<model>` (taken or renewed at every update, for three update periods, released on a clean
stop; when its holder dies, another replica takes it at its next update). The holder reads every
replica's outcome sums from the store (mlserve/routing/shared.py), asks the policy
(mlserve/routing/bandit.py) for the split, and writes it through ModelControl, the door admin changes
pass through, so every replica applies the same split. In one process (the memory store) the same
path runs with a lease nobody else wants.

Runs on the event loop, off the request path: one task, which sleeps until the next model is due
(at most MAX_SLEEP_S, so a bandit added by a reload starts within that). A store that is away skips
the update: the split in force stays until the store is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from typing import Callable

import numpy as np

from mlserve.dataplane.control import ModelControl, replica_id
from mlserve.errors import MlserveError
from mlserve.routing.bandit import BanditRecord, allocate
from mlserve.routing.manager import TrafficManager
from mlserve.spec import BanditSpec
from mlserve.state import BadStateData, StateStore, StateUnavailable

log = logging.getLogger("mlserve.bandit")

MAX_SLEEP_S = 1.0
LEASE_PERIODS = 3
"""The lease lasts this many update periods: a live holder renews it twice over before it lapses."""


def lease_key(model: str) -> str:
    return f"bandit:{model}"


class BanditDriver:
    """Owns the update timer of every model's bandit and this replica's claim on their leases."""

    def __init__(self, store: StateStore, traffic: TrafficManager, control: ModelControl,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._store = store
        self._traffic = traffic
        self._control = control
        self._clock = clock
        self._wall = wall
        self.owner = f"{replica_id()}:{uuid.uuid4().hex[:8]}"
        """This replica's name on the leases (unique even for two drivers in one process)."""
        self._due: dict[str, float] = {}
        self._held: set[str] = set()
        self._rngs: dict[str, np.random.Generator] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop, and hand back the leases held so another replica takes over at its next update."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for name in sorted(self._held):
            try:
                await self._store.release(lease_key(name), self.owner)
            except (StateUnavailable, BadStateData):
                pass  # it lapses on its own
        self._held.clear()

    async def _run(self) -> None:
        while True:
            try:
                soonest = await self.tick()
            except Exception:  # a bug here must not end every model's updates for good
                log.exception("bandit updates failed; trying again")
                soonest = self._clock() + MAX_SLEEP_S
            await asyncio.sleep(max(0.01, min(MAX_SLEEP_S, soonest - self._clock())))

    async def tick(self) -> float:
        """Update every bandit that is due; returns the clock time the next one is due."""
        now = self._clock()
        soonest = now + MAX_SLEEP_S
        bandits = self._traffic.bandits()
        for name in set(self._due) - set(bandits):
            del self._due[name]
        for name, spec in bandits.items():
            due = self._due.get(name, now)
            if due <= now:
                due = self._due[name] = now + spec.update_s
                await self._update_safely(name, spec)
            soonest = min(soonest, due)
        return soonest

    async def _update_safely(self, name: str, spec: BanditSpec) -> None:
        try:
            await self.update(name, spec)
        except (StateUnavailable, BadStateData) as exc:
            log.debug("model %s: bandit update skipped: %s", name, exc)
        except MlserveError as exc:  # the model went away meanwhile
            log.debug("model %s: bandit update skipped: %s", name, exc)
        except Exception:
            log.exception("model %s: bandit update failed", name)

    async def update(self, name: str, spec: BanditSpec) -> bool:
        """Write a new split for `name` if this replica holds (or takes) its lease; True when written."""
        if not await self._store.lease(lease_key(name), self.owner, LEASE_PERIODS * spec.update_s):
            self._held.discard(name)
            return False
        self._held.add(name)
        inputs = await self._traffic.bandit_inputs(name)
        if inputs is None:
            return False
        arms, outcomes, is_binary = inputs
        allocation = allocate(spec, arms, outcomes, is_binary, self._rng(name))
        await self._control.set_bandit(name, BanditRecord.of(allocation, outcomes, self._wall(), self.owner))
        return True

    def _rng(self, name: str) -> np.random.Generator:
        """One generator per model, seeded by its name: the same outcomes give the same draws."""
        found = self._rngs.get(name)
        if found is None:
            found = self._rngs[name] = np.random.default_rng(zlib.crc32(name.encode()))
        return found
