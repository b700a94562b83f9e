"""Optimize job records in the shared state store, so `GET /admin/jobs/{id}` answers from any replica.

The replica that runs a job (its child process is local to it) writes `optimize:<id>` when the job
starts and when it ends; `optimize:index` keeps the newest MAX_RECORDS ids, and the records of older
ones are deleted. A cancel sent to another replica is announced on the `optimize` channel; the replica
running the job stops it. Nothing here is needed with the memory store (one process).

While a job runs, its replica holds the lease `optimize:lease:<id>` (`[jobs] lease_s`, renewed every
third of it). A job's child dies with its replica, so a record still `running` whose lease is gone
is read as `failed`, saying so: the replica stopped (or lost the store for a whole lease) before the
job ended. A replica that was only cut off writes the job's real end when it ends, over that reading.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from mlserve.state import BadStateData, StateStore, StateUnavailable

log = logging.getLogger("mlserve.optimize")

CHANNEL = "optimize"
INDEX_KEY = "optimize:index"
MAX_RECORDS = 200
MAX_TRIES = 8


def record_key(job_id: str) -> str:
    return f"optimize:{job_id}"


def lease_key(job_id: str) -> str:
    return f"optimize:lease:{job_id}"


class OptimizeRecords:
    """Writes this replica's optimize jobs to the store and reads other replicas' back."""

    def __init__(self, store: StateStore, replica: str, on_cancel: Callable[[str], Any], lease_s: float) -> None:
        self._store = store
        self._replica = replica
        self._lease_s = lease_s
        store.subscribe(CHANNEL, on_cancel)

    async def hold(self, job_ids: list[str]) -> None:
        """Take or renew the lease of each job running here (a store that is away misses this, logged)."""
        for job_id in job_ids:
            try:
                await self._store.lease(lease_key(job_id), self._replica, self._lease_s)
            except StateUnavailable as exc:
                log.warning("optimize job %s: lease not renewed: %s", job_id, exc)

    async def let_go(self, job_id: str) -> None:
        try:
            await self._store.release(lease_key(job_id), self._replica)
        except StateUnavailable as exc:  # it runs out by itself
            log.warning("optimize job %s: lease not released: %s", job_id, exc)

    async def write(self, view: dict[str, Any]) -> None:
        """Record a job's view (a store that is away misses this write, logged; the next one lands)."""
        try:
            await self._store.put(record_key(view["id"]), {"kind": "optimize", "owner": self._replica, "job": view})
            await self._index(view["id"])
        except (StateUnavailable, BadStateData) as exc:
            log.warning("optimize job %s: record not written to the state store: %s", view["id"], exc)

    async def _index(self, job_id: str) -> None:
        for _ in range(MAX_TRIES):
            doc = await self._store.get(INDEX_KEY)
            ids = doc.data.get("ids") if doc is not None else []
            if not isinstance(ids, list) or not all(isinstance(i, list) and len(i) == 2 for i in ids):
                raise BadStateData(f"state key {INDEX_KEY!r} has no 'ids' list of [id, time]")
            if any(i[0] == job_id for i in ids):
                return
            ids = [*ids, [job_id, time.time()]]
            gone, kept = ids[:-MAX_RECORDS], ids[-MAX_RECORDS:]
            if await self._store.put(INDEX_KEY, {"ids": kept}, expect=0 if doc is None else doc.version):
                for old, _ in gone:
                    await self._store.delete(record_key(old))
                return

    async def read(self, job_id: str) -> dict[str, Any] | None:
        """Another replica's job as it last recorded it (with its `owner`), or None; BadStateData names
        the key when the record is not one mlserve wrote."""
        key = record_key(job_id)
        doc = await self._store.get(key)
        if doc is None:
            return None
        view, owner = doc.data.get("job"), doc.data.get("owner")
        if doc.data.get("kind") != "optimize" or not isinstance(view, dict) or not isinstance(owner, str):
            raise BadStateData(f"state key {key!r} is not an optimize job record")
        if view.get("state") == "running" and await self._store.get_value(lease_key(job_id)) is None:
            view = {**view, "state": "failed", "waiting": None,
                    "error": f"replica {owner} stopped holding the job (its lease of {self._lease_s:g} s ran out) "
                             "before it ended: the job's process ended with it; start the job again"}
        return {**view, "owner": owner}

    async def request_cancel(self, job_id: str) -> None:
        await self._store.publish(CHANNEL, job_id)
