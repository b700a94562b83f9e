"""ModelControl: the one door admin changes pass through, and where they are shared with the other
replicas.

Each change (traffic keys; a bandit's split; load, unload, pin, unpin, rollback) is written to the state store as the
model's control document `control:<model>` (compare-and-set, retried on a concurrent write, so two
admins racing both land and the later write of a key wins), applied here, and announced on the
`control` channel. Every replica re-reads the document on the notice, when it starts, and when the
store comes back after a loss, and applies what is newer than what it applied last.

A canary rollout's state (plan, step, step start, status, reason, driver) is the document's
`rollout` key; `split_by` says whether the rollout's split or the API's is in force (an API split
after a rollout wins). One replica drives it under a lease (rollout_driver.py).

All of it runs on the event loop; one lock per model keeps a replica's applies in version order.
A store that is away refuses the change (503, nothing changed) rather than let replicas drift.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Awaitable, Callable

from mlserve.dataplane.rollout_driver import RolloutDriver, Update
from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.registry.loader import HotSwapLoader, ServedModel
from mlserve.registry.upload import Upload, publish
from mlserve.routing.bandit import BanditRecord
from mlserve.routing.manager import TrafficManager
from mlserve.routing.rollout import Rollout, RolloutStatus
from mlserve.state import BadStateData, Document, StateStore, StateUnavailable

log = logging.getLogger("mlserve.control")

CHANNEL = "control"
MAX_TRIES = 8
"""Compare-and-set attempts before a write gives up (each loses only to a concurrent writer)."""


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def doc_key(model: str) -> str:
    return f"control:{model}"


class ModelControl:
    """Writes admin changes to the store and applies every replica's changes here."""

    def __init__(self, store: StateStore, loader: HotSwapLoader, traffic: TrafficManager,
                 replica: str | None = None) -> None:
        self._store = store
        self._loader = loader
        self._traffic = traffic
        self._id = replica or replica_id()
        """This replica's name in the store (writer of a change, owner of a lease): host:pid by default."""
        self._applied: dict[str, int] = {}
        self._loads: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._rollouts: dict[str, tuple[Any, bool]] = {}
        """Per model, the rollout state and split owner last applied here."""
        self._tasks: set[asyncio.Task] = set()
        self._is_started = False
        self._driver = RolloutDriver(store, traffic, self._id, self._update_rollout)
        self._rollback: Callable[[str, str], Awaitable[ServedModel]] | None = None
        """Where rollbacks go instead of the loader's pin (`route_rollbacks`)."""
        store.subscribe(CHANNEL, self._on_notice)
        store.on_health(self._on_health)

    @property
    def replica(self) -> str:
        return self._id

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the current state of every model (a replica that starts joins the others)."""
        self._is_started = True
        await self.sync_all()
        self._spawn(self._driver.run())

    async def close(self) -> None:
        self._is_started = False
        await self._driver.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def sync_all(self) -> None:
        for name in list(self._loader.models):
            await self.sync(name)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_notice(self, message: str) -> None:
        name, _, _ = message.rpartition(":")
        if self._is_started and name in self._loader.models:
            self._spawn(self.sync(name))

    def _on_health(self, is_up: bool) -> None:
        if is_up and self._is_started:
            self._spawn(self.sync_all())

    # -- reading and applying ----------------------------------------------------------------------

    async def sync(self, name: str) -> None:
        """Apply the model's control document if it is newer than the one applied here; a store that
        is away or a document that does not parse leaves the state in force (logged by name)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            try:
                doc = await self._store.get(doc_key(name))
            except StateUnavailable:
                return
            except BadStateData as exc:
                log.error("model %s: control state refused: %s", name, exc)
                return
            if doc is not None and doc.version > self._applied.get(name, 0):
                await self._apply(name, doc)

    async def _apply(self, name: str, doc: Document, with_model: bool = True) -> None:
        """Apply a control document here; without `with_model` its traffic and rollout only (a rollout
        write leaves what this replica serves alone: an optimize job may hold a pin of its own)."""
        first = name not in self._applied
        self._applied[name] = doc.version
        try:
            traffic = doc.data.get("traffic", {})
            if not isinstance(traffic, dict):
                raise ValueError("'traffic' is not an object")
            if traffic != self._traffic.override(name):
                self._traffic.apply_override(name, traffic)
            model = doc.data.get("model", {})
            if not isinstance(model, dict):
                raise ValueError("'model' is not an object")
            if with_model:
                await self._apply_model(name, model, first)
            self._apply_rollout(name, doc.data)
        except (ValueError, TypeError) as exc:
            log.error("model %s: control document version %d refused: %s", name, doc.version, exc)
        except Exception as exc:  # a load or pin that fails here: this replica keeps what it serves
            log.warning("model %s: control document version %d not applied here: %s", name, doc.version, exc)
        bandit = doc.data.get("bandit")
        if bandit is not None and bandit != self._traffic.bandit_record(name):
            try:
                self._traffic.apply_bandit(name, bandit)
            except ValueError as exc:
                log.error("model %s: control document version %d: bandit refused: %s", name, doc.version, exc)

    def _apply_rollout(self, name: str, data: dict[str, Any]) -> None:
        raw, owns_split = data.get("rollout"), data.get("split_by", "rollout") == "rollout"
        if raw is None or self._rollouts.get(name) == (raw, owns_split):
            return
        rollout = Rollout.from_state(raw)  # ValueError names what does not parse
        self._traffic.put_rollout(name, rollout, owns_split, is_own_change=data.get("by") == self._id)
        self._rollouts[name] = (raw, owns_split)

    async def _apply_model(self, name: str, model: dict[str, Any], first: bool) -> None:
        served = self._loader.models.get(name)
        if served is None or not model:
            return
        source = "replica (shared state)"
        loads = int(model.get("loads", 0))
        if model.get("unloaded"):
            if not served.is_unloaded:
                await self._loader.control.unload(name, source)
            self._loads[name] = loads
            return
        if served.is_unloaded or (not first and loads > self._loads.get(name, 0)):
            await self._loader.control.load(name, source)
        self._loads[name] = loads
        pinned = model.get("pinned")
        if pinned is not None and (not isinstance(pinned, int) or isinstance(pinned, bool) or pinned < 1):
            raise ValueError(f"'pinned' must be a version number, got {pinned!r}")
        if pinned != served.pinned:
            if pinned is None:
                await self._loader.control.unpin(name, source)
            else:
                await self._loader.control.pin(name, pinned, source)

    # -- writing -----------------------------------------------------------------------------------

    async def _write(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Document:
        """Read, change, compare-and-set: a concurrent writer makes this read again, never lose."""
        key = doc_key(name)
        for _ in range(MAX_TRIES):
            try:
                current = await self._store.get(key)
            except BadStateData as exc:
                log.error("model %s: control state refused, written anew: %s", name, exc)
                current = None
                written = await self._store.put(key, change({}))
            else:
                data = dict(current.data) if current else {}
                written = await self._store.put(key, change(data), expect=current.version if current else 0)
            if written is not None:
                try:
                    await self._store.publish(CHANNEL, f"{name}:{written.version}")
                except StateUnavailable:
                    pass  # written; the others read it when they reconnect
                return written
        raise StateUnavailable(f"model {name!r}: the control document kept changing under {MAX_TRIES} writes")

    async def _record(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """A change already made here: write it and mark it applied (this replica is in that state)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            written = await self._write(name, change)
            self._applied[name] = written.version
            self._loads[name] = int(written.data.get("model", {}).get("loads", 0))

    async def set_traffic(self, name: str, body: Any) -> dict:
        """PUT /admin/models/{m}/traffic: checked here, written, then applied on every replica."""
        keys = self._traffic.check_override(name, body)

        def change(data: dict[str, Any]) -> dict[str, Any]:
            traffic = {**data.get("traffic", {}), **keys}
            return {**data, "traffic": {k: v for k, v in traffic.items() if v is not None}, "by": self._id,
                    **_split_over_rollout(data, keys)}

        async with self._locks.setdefault(name, asyncio.Lock()):
            written = await self._write(name, change)
            await self._apply(name, written)
        return self._traffic.traffic_view(name)

    async def feedback(self, name: str, body: Any) -> dict:
        """POST /v2/models/{m}/feedback: an experiment's outcome for one routed request, credited to the
        version that answered it (shared through the state store by the traffic manager)."""
        return await self._traffic.feedback(name, body)

    async def set_bandit(self, name: str, record: BanditRecord) -> None:
        """A bandit's new split (mlserve/dataplane/bandit.py, the replica holding its lease): written
        beside the admin's keys, counted, then applied on every replica like an admin change."""

        def change(data: dict[str, Any]) -> dict[str, Any]:
            previous = data.get("bandit")
            updates = previous.get("updates", 0) if isinstance(previous, dict) else 0
            updates = updates + 1 if isinstance(updates, int) else 1
            return {**data, "bandit": record.with_updates(updates).to_json()}

        async with self._locks.setdefault(name, asyncio.Lock()):
            written = await self._write(name, change)
            await self._apply(name, written)

    @staticmethod
    def _model_change(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def change(data: dict[str, Any]) -> dict[str, Any]:
            updates = dict(fields)
            model = dict(data.get("model", {}))
            if updates.pop("load", False):
                model["loads"] = int(model.get("loads", 0)) + 1
            model.update(updates)
            return {**data, "model": model}

        return change

    async def _check_up(self) -> None:
        if not self._store.is_up:
            raise StateUnavailable("shared state store unavailable: admin changes wait until it is back")

    async def load(self, name: str, source: str, upload: Callable[[dict[str, Any]], Upload] | None = None) -> ServedModel:
        """Load here, then on every replica. With `upload` (built from the model's current model.toml),
        its files are written and loaded first, and taken back if they do not load (registry/upload.py)."""
        await self._check_up()
        served = await (publish(self._loader, name, upload, source) if upload is not None
                        else self._loader.control.load(name, source))
        await self._record(name, self._model_change(load=True, unloaded=False, pinned=served.pinned))
        return served

    async def reconcile(self, source: str) -> None:
        """Scan the repository now (Triton's repository index asks for it): new versions load, gone
        ones unload, on this replica; each replica scans its own repository."""
        await self._loader.reconcile(source)

    async def unload(self, name: str, source: str) -> ServedModel:
        await self._check_up()
        await self._loader.control.unload(name, source)
        await self._record(name, self._model_change(unloaded=True, pinned=None))
        return self._loader.models[name]

    async def pin(self, name: str, version: int, source: str) -> ServedModel:
        await self._check_up()
        served = await self._loader.control.pin(name, version, source)
        await self._record(name, self._model_change(unloaded=False, pinned=served.pinned))
        return served

    async def unpin(self, name: str, source: str) -> ServedModel:
        await self._check_up()
        served = await self._loader.control.unpin(name, source)
        await self._record(name, self._model_change(pinned=None))
        return served

    def route_rollbacks(self, rollback: Callable[[str, str], Awaitable[ServedModel]]) -> None:
        """A repository whose own aliases say what serves (MLflow) rolls back there instead: `rollback`
        moves the alias back, and every replica follows it."""
        self._rollback = rollback

    async def rollback(self, name: str, source: str) -> ServedModel:
        """Roll back here (pins the previous version), then pin that version on every replica; with an
        MLflow repository, the serving alias goes back to the previous champion instead."""
        if self._rollback is not None:
            return await self._rollback(name, source)
        await self._check_up()
        served = await self._loader.control.rollback(name, source)
        await self._record(name, self._model_change(unloaded=False, pinned=served.pinned))
        return served

    async def deploy(self, name: str, version: int, rollout: dict | None, source: str = "optimize") -> dict:
        """Load a version just published (an optimize winner). With a rollout it becomes the canary:
        the serving version is pinned while it loads, so it takes no traffic before the first step."""
        if rollout is None:
            served = await self._loader.control.load(name, source)
            return {"loaded": version in served.ready_versions(), "serving": served.default_version()}
        served = self._loader.models.get(name)
        if served is None:
            raise ModelNotFound(f"model {name!r} is not in the repository")
        await self._loader.control.pin(name, served.default_version(), source)
        try:
            await self._loader.control.load(name, source)
            view = await self.start_rollout(name, {**rollout, "version": version})
        finally:
            await self._loader.control.unpin(name, source)
        return {"loaded": True, "rollout": view.get("rollout")}

    # -- rollouts ----------------------------------------------------------------------------------

    async def start_rollout(self, name: str, body: Any) -> dict:
        """POST /admin/models/{m}/rollout: checked here, written, applied on every replica, then driven
        by whichever replica holds its lease."""
        await self._check_up()
        rollout = self._traffic.new_rollout(name, body)

        def start(current: Rollout | None) -> Rollout:
            if current is not None and current.status is RolloutStatus.RUNNING:
                raise InvalidInput(f"model {name!r} is already rolling out version {current.plan.version}")
            return rollout

        await self._update_rollout(name, start, split_by="rollout")
        return self._traffic.rollout_view(name)

    async def cancel_rollout(self, name: str) -> dict:
        await self._check_up()

        def cancel(current: Rollout | None) -> Rollout:
            if current is None or current.status is not RolloutStatus.RUNNING:
                raise InvalidInput(f"model {name!r} has no rollout running")
            current.cancel("cancelled by the API")
            return current

        await self._update_rollout(name, cancel)
        return self._traffic.rollout_view(name)

    async def note_rollout(self, name: str, rollout_id: str, note: dict[str, Any]) -> None:
        """Add `note` to the history of rollout `rollout_id` (a finished one too), once: what was done
        outside mlserve about it (the MLflow follower's write-back), shown by GET .../rollout."""

        def add(current: Rollout | None) -> Rollout | None:
            if current is None or current.id != rollout_id or note in current.history:
                return None
            current.history.append(note)
            return current

        await self._update_rollout(name, add)

    async def _update_rollout(self, name: str, update: Update, split_by: str | None = None) -> Rollout | None:
        """Write the document's rollout as `update` changes the stored one, and apply it here; None
        (nothing written) when `update` leaves it. Raises what `update` raises."""
        changed: list[Rollout] = []

        def change(data: dict[str, Any]) -> dict[str, Any]:
            try:
                stored = Rollout.from_state(data["rollout"]) if data.get("rollout") is not None else None
            except ValueError as exc:
                log.error("model %s: stored rollout refused: %s", name, exc)
                stored = None
            after = update(stored)
            if after is None:
                raise _Unchanged
            changed.append(after)
            return {**data, "rollout": after.to_state(), "by": self._id,
                    **({"split_by": split_by} if split_by else {})}

        try:
            async with self._locks.setdefault(name, asyncio.Lock()):
                written = await self._write(name, change)
                await self._apply(name, written, with_model=False)
        except _Unchanged:
            return None
        return changed[-1]


class _Unchanged(Exception):
    """A rollout update that had nothing to write (the stored rollout moved on)."""


def _split_over_rollout(data: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    """An API split after a rollout: a running one is cancelled (a null split leaves it running), and
    the API's split is in force from then on, on every replica, even one that starts later."""
    stored = data.get("rollout")
    if "split" not in keys or stored is None:
        return {}
    try:
        rollout = Rollout.from_state(stored)
    except ValueError:
        return {"split_by": "api"}
    if rollout.status is RolloutStatus.RUNNING:
        if keys["split"] is None:
            return {}
        rollout.cancel("split set by the API")
    return {"rollout": rollout.to_state(), "split_by": "api"}
