"""MlflowFollower: a registered model's `@challenger` becomes a canary rollout, and the rollout's end
goes back to MLflow.

Every TICK_S, per model, from the MLflow store's last listing (no MLflow call unless there is
something to write):

- a challenger in rollout mode (the champion's `[challenger]` table, registry/mlflow_toml.py), loaded
  and ready beside a ready champion, with no rollout of it over that champion yet: one is started
  through ModelControl with the table's plan, like POST /admin/models/{m}/rollout. A rollout still
  running whose canary is no longer the challenger (the alias moved or was deleted) is cancelled.
- that rollout rolled back: the challenger alias is deleted (only while it still points at that
  version: a person who moved it meanwhile wins) and the version gets the tag
  `mlserve.rollout = rolled back: <reason>`. Promoted: the champion alias moves to it, the challenger
  alias is deleted (same guard), tag `mlserve.rollout = promoted`. Then a reconcile pass follows, so
  the version mlserve no longer wants unloads without waiting for the next poll.
- what was written, or why it could not be (MLflow away, an answer refusing it), is logged and added
  to the rollout's history (GET /admin/models/{m}/rollout, event "mlflow"); a failed write is
  retried with backoff (RETRY_FIRST_S doubling to RETRY_MAX_S) until it lands.

A rollback asked of mlserve (`POST /admin/models/{m}/rollback`) moves the serving alias back to the
champion seen before the current one (`rollback`), instead of pinning a version here.

In split mode nothing is automatic: the split with the experiment stands until someone moves an
alias. A rollout cancelled by the API leaves both aliases as they are. Behind replicas every replica
runs this: a second start is refused by the control document (already rolling out), and the writes
are guarded by reading the alias first, so doing them twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from mlserve.dataplane.control import ModelControl
from mlserve.errors import Conflict, MlserveError, ModelNotReady
from mlserve.registry.loader import HotSwapLoader, ServedModel
from mlserve.registry.mlflow import MlflowStore
from mlserve.registry.mlflow_toml import Challenge
from mlserve.routing.manager import TrafficManager
from mlserve.state import BadStateData, StateUnavailable

log = logging.getLogger("mlserve.mlflow")

TICK_S = 0.2
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
START_RETRY_S = 5.0
ROLLBACK_WAIT_S = 60.0
MAX_CHAMPIONS = 16
OUTCOME_TAG = "mlserve.rollout"
"""The model version tag that records how mlserve's rollout of it ended."""


class MlflowFollower:
    """Starts each model's challenger rollout and writes its outcome back to the MLflow registry."""

    def __init__(self, store: MlflowStore, loader: HotSwapLoader, traffic: TrafficManager, control: ModelControl,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._loader = loader
        self._traffic = traffic
        self._control = control
        self._clock = clock
        self._written: set[str] = set()
        """Ids of the rollouts whose end this process wrote back."""
        self._failures: dict[str, tuple[int, float]] = {}
        """Rollout id -> (failed writes so far, when to try again)."""
        self._start_at: dict[str, float] = {}
        """Per model, the earliest time to try a start again after one was refused."""
        self._task: asyncio.Task | None = None
        self._champions: dict[str, list[int]] = {}
        """Per model, the @champion versions seen here, oldest first (what a rollback goes back to)."""
        control.route_rollbacks(self.rollback)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for name in list(self._loader.models):
                try:
                    await self.follow(name)
                except (StateUnavailable, BadStateData) as exc:
                    log.debug("model %s: challenger held (%s)", name, exc)
                except Exception:
                    log.exception("model %s: following the MLflow challenger failed; retried next tick", name)

    def _see_champion(self, name: str) -> None:
        champion = self._store.champion(name)
        seen = self._champions.setdefault(name, [])
        if champion is not None and (not seen or seen[-1] != champion):
            if champion in seen:  # moved back to an earlier one: what came after it is undone
                del seen[seen.index(champion) + 1:]
            else:
                seen.append(champion)
            del seen[:-MAX_CHAMPIONS]

    async def rollback(self, name: str, source: str) -> ServedModel:
        """`POST /admin/models/{m}/rollback` on an MLflow model: @champion goes back to the version it
        pointed at before (as seen by this server), every replica follows the alias, and this one
        answers once that version serves. Refused (409) when no earlier champion was seen; an MLflow
        that refuses the write or is away is the error, and nothing changed."""
        self._see_champion(name)
        seen = self._champions.get(name, [])
        if len(seen) < 2:
            raise Conflict(f"model {name!r}: no earlier @{self._store.alias} seen since this server started, "
                           f"so there is nothing to roll back to; move @{self._store.alias} in MLflow instead")
        current, previous = seen[-1], seen[-2]
        try:
            await self._store.set_alias(name, self._store.alias, previous)
        except MlserveError as exc:
            raise type(exc)(f"model {name!r}: rollback not done, MLflow refused moving @{self._store.alias} "
                            f"back to version {previous}: {exc}") from None
        log.warning("model %s: rolled back (%s): @%s moved from version %d back to %d in MLflow", name, source,
                    self._store.alias, current, previous)
        self._loader.trigger(f"rollback ({source})")
        deadline = self._clock() + ROLLBACK_WAIT_S
        while self._clock() < deadline:
            served = self._loader.models.get(name)
            if served is not None and served.default_version() == previous and self._is_ready(name, previous):
                self._see_champion(name)
                return served
            await asyncio.sleep(TICK_S)
        raise ModelNotReady(f"model {name!r}: @{self._store.alias} is back on version {previous} in MLflow, "
                            f"but that version did not serve here within {ROLLBACK_WAIT_S:.0f} s (see its state)")

    async def follow(self, name: str) -> None:
        """One tick for one model."""
        self._see_champion(name)
        challenge = self._store.challenge(name)
        if challenge is None and self._traffic.running_rollout(name) is None:
            return  # the common case, without building the rollout's view
        rollout = self._rollout(name)
        if rollout is not None and rollout["status"] == "running" and self._is_orphan(name, rollout, challenge):
            await self._cancel(name, rollout, challenge)
            return
        if challenge is None or challenge.spec.mode != "rollout":
            return
        is_ours = rollout is not None and rollout["version"] == str(challenge.challenger) \
            and rollout["stable"] == str(challenge.champion)
        if not is_ours:
            await self._start(name, challenge)
        elif rollout["status"] in ("rolled_back", "promoted") and rollout["id"] not in self._written:
            await self._write_back(name, rollout, challenge)

    def _rollout(self, name: str) -> dict[str, Any] | None:
        try:
            return self._traffic.rollout_view(name)["rollout"]
        except MlserveError:
            return None

    def _is_orphan(self, name: str, rollout: dict[str, Any], challenge: Challenge | None) -> bool:
        """A running rollout whose canary the aliases dropped: the challenger moved to another version,
        or was deleted and the canary is no longer loaded for anything else (a pin)."""
        if challenge is not None:
            return rollout["version"] != str(challenge.challenger)
        served = self._loader.models.get(name)
        canary = int(rollout["version"])
        return served is not None and canary not in served.entry.served_versions and served.pinned != canary

    def _is_ready(self, name: str, version: int) -> bool:
        served = self._loader.models.get(name)
        found = served.versions.get(version) if served is not None else None
        return found is not None and found.is_ready

    async def _start(self, name: str, challenge: Challenge) -> None:
        if not (self._is_ready(name, challenge.champion) and self._is_ready(name, challenge.challenger)):
            return  # loading (or failed to load: the champion serves on, the version's reason says why)
        if self._clock() < self._start_at.get(name, 0.0):
            return
        try:
            await self._control.start_rollout(name, challenge.spec.rollout_body(challenge.challenger))
        except MlserveError as exc:  # another replica started it first, or a version unloaded meanwhile
            self._start_at[name] = self._clock() + START_RETRY_S
            log.info("model %s: rollout of @%s version %d not started: %s", name, self._store.challenger_alias,
                     challenge.challenger, exc)
            return
        log.info("model %s: @%s version %d rolled out over @%s version %d", name, self._store.challenger_alias,
                 challenge.challenger, self._store.alias, challenge.champion)

    async def _cancel(self, name: str, rollout: dict[str, Any], challenge: Challenge | None) -> None:
        now = "moved to version %d" % challenge.challenger if challenge else "deleted"
        log.warning("model %s: @%s %s during the rollout of version %s: cancelling it", name,
                    self._store.challenger_alias, now, rollout["version"])
        try:
            await self._control.cancel_rollout(name)
        except MlserveError:
            pass  # finished meanwhile

    async def _write_back(self, name: str, rollout: dict[str, Any], challenge: Challenge) -> None:
        rollout_id = rollout["id"]
        tries, retry_at = self._failures.get(rollout_id, (0, 0.0))
        if self._clock() < retry_at:
            return
        version, promoted = challenge.challenger, rollout["status"] == "promoted"
        try:
            done = await self._write(name, version, promoted, rollout.get("reason") or "")
        except MlserveError as exc:
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** tries)
            self._failures[rollout_id] = (tries + 1, self._clock() + delay)
            log.error("model %s: MLflow not told that version %d %s (attempt %d, next in %.0f s): %s", name, version,
                      "was promoted" if promoted else "rolled back", tries + 1, delay, exc)
            if not tries:
                await self._control.note_rollout(name, rollout_id, {"event": "mlflow", "error": str(exc)})
            return
        self._written.add(rollout_id)
        self._failures.pop(rollout_id, None)
        log.info("model %s: MLflow told: %s", name, done)
        await self._control.note_rollout(name, rollout_id, {"event": "mlflow", "done": done})
        self._loader.trigger("mlflow")

    async def _write(self, name: str, version: int, promoted: bool, reason: str) -> str:
        """The aliases and the outcome tag; returns what was done, in words."""
        store, done = self._store, []
        if promoted:
            await store.set_alias(name, store.alias, version)
            done.append(f"@{store.alias} -> version {version}")
        current = await store.alias_version(name, store.challenger_alias)
        if current == version:
            await store.delete_alias(name, store.challenger_alias)
            done.append(f"@{store.challenger_alias} deleted")
        else:
            done.append(f"@{store.challenger_alias} left alone (now {current or 'unset'})")
        outcome = "promoted" if promoted else f"rolled back: {reason}"
        await store.set_version_tag(name, version, OUTCOME_TAG, outcome[:5000])
        done.append(f"version {version} tagged {OUTCOME_TAG}={outcome!r}")
        return "; ".join(done)
