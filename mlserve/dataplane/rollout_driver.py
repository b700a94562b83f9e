"""The rollout driver: exactly one replica judges and advances each running rollout.

A rollout's state lives in its model's control document (ModelControl writes it; every replica
applies its split). Every TICK_S each replica, for each rollout running here, tries the rollout's
lease in the store (`rollout:<model>:lease:<id>`, LEASE_S, renewed every tick by its holder). The
holder records itself as the driver, judges the step on every replica's counts (summed in the store,
rollout_stats.py) and writes the next state with a guard: the write lands only if the document still
holds the same rollout at the same step, so a cancel or an API split that came first wins. A driver
that dies stops renewing; within LEASE_S another replica takes the lease and carries on from the
stored state: the same step, timed from the stored step start, over the same shared counts.

A store that is away holds the rollout where it is: no lease, no counts, no write, so it neither
advances nor rolls back on missing data; it resumes when the store is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from mlserve.routing.manager import TrafficManager
from mlserve.routing.rollout import FINISHED, Rollout, RolloutStatus
from mlserve.state import BadStateData, StateStore, StateUnavailable

log = logging.getLogger("mlserve.control")

TICK_S = 0.1
LEASE_S = 3.0
"""How long a driver's lease outlives its last renewal: the longest a dead driver holds a rollout."""

Update = Callable[[Rollout | None], Rollout | None]
"""Given the stored rollout, the one to store instead (None: leave it)."""
WriteRollout = Callable[[str, Update], Awaitable[Rollout | None]]


def lease_key(model: str, rollout_id: str) -> str:
    return f"rollout:{model}:lease:{rollout_id}"


class RolloutDriver:
    """Takes, renews and gives back rollout leases, and drives the rollouts it holds."""

    def __init__(self, store: StateStore, traffic: TrafficManager, owner: str, write: WriteRollout) -> None:
        self._store = store
        self._traffic = traffic
        self._owner = owner
        self._write = write
        self._held: dict[str, str] = {}
        """Lease keys this replica holds, by model."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for name in self._traffic.rolling_out():
                try:
                    await self.drive(name)
                except (StateUnavailable, BadStateData) as exc:
                    log.debug("model %s: rollout held (%s)", name, exc)
                except Exception:
                    log.exception("model %s: driving the rollout failed; retried next tick", name)

    async def drive(self, name: str) -> None:
        """One tick for one model: take or renew the lease; the holder records itself, then judges."""
        rollout = self._traffic.running_rollout(name)
        if rollout is None:
            return
        key = lease_key(name, rollout.id)
        if not await self._store.lease(key, self._owner, LEASE_S):
            self._held.pop(name, None)
            return
        self._held[name] = key
        if rollout.driver != self._owner:
            log.info("model %s: driving the rollout of version %d from step %d (was %s)", name,
                     rollout.plan.version, rollout.step, rollout.driver or "nobody")
            await self._write(name, _same_step(rollout, lambda current: _driven_by(current, self._owner)))
            return
        judged = await self._traffic.judge_rollout(name)
        if judged is not None:
            await self._write(name, _same_step(rollout, lambda _: judged))
        if judged is not None and judged.status in FINISHED:
            await self._give_back(name)

    async def _give_back(self, name: str) -> None:
        key = self._held.pop(name, None)
        if key is not None:
            await self._store.release(key, self._owner)

    async def close(self) -> None:
        """Give back every lease held (a replica that stops hands its rollouts over at once)."""
        for name in list(self._held):
            try:
                await self._give_back(name)
            except (StateUnavailable, BadStateData):
                return


def _same_step(seen: Rollout, then: Update) -> Update:
    """`then`, only while the stored rollout is still `seen` at the same step (else nothing)."""

    def update(current: Rollout | None) -> Rollout | None:
        if current is None or current.id != seen.id or current.status is not RolloutStatus.RUNNING \
                or current.step != seen.step:
            return None
        return then(current)

    return update


def _driven_by(current: Rollout, owner: str) -> Rollout:
    current.driver = owner
    return current
