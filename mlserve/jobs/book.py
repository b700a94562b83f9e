"""Job records in the shared state store, so that every replica sees every job.

Each job is one versioned document `jobs:record:<id>`; `jobs:index` lists every job id with its
creation and finish times (what pruning and the 429 cap need without reading each record). Both are
written by compare-and-set: the owner's progress, another replica's cancel request and pruning never
undo each other. The lease `job:<id>` says which replica runs the job. A document mlserve did not write
(a wrong type, a missing field, another schema) is refused by name (BadStateData), never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mlserve.errors import Overloaded
from mlserve.jobs.record import JobRecord, JobState
from mlserve.state import BadStateData, StateStore

INDEX_KEY = "jobs:index"
CHANNEL = "jobs"
"""Notices carry a job id: its record changed (a cancel request); the owner re-reads it at once."""
MAX_TRIES = 8

IndexEntry = tuple[float, "float | None"]
"""(created, finished or None) of one job, wall clock."""


def record_key(job_id: str) -> str:
    return f"jobs:record:{job_id}"


def lease_key(job_id: str) -> str:
    return f"job:{job_id}"


def to_doc(record: JobRecord, checkpoint: str) -> dict[str, Any]:
    """The record as stored: what was asked (`spec`), who runs it, where it stands."""
    return {
        "kind": "batch", "id": record.job_id,
        "spec": {"model": record.model, "version": record.version, "input": record.input,
                 "output": record.output, "errors": record.errors, "priority": record.priority,
                 "overwrite": record.overwrite},
        "owner": record.owner, "state": record.state.name, "error": record.reason,
        "cancel_requested": record.cancel_requested, "checkpoint": checkpoint,
        "progress": {"rows_total": record.rows_total, "rows_done": record.rows_done,
                     "rows_failed": record.rows_failed, "rows_per_s": record.rows_per_s, "eta_s": record.eta_s},
        "created": record.created, "updated": record.updated, "finished": record.finished,
    }


def _field(key: str, raw: dict, name: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
    value = raw.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise BadStateData(f"state key {key!r}: batch job field {name!r} is {value!r}, not a {kinds[0].__name__}")
    return value


def from_doc(key: str, data: dict[str, Any]) -> JobRecord:
    """A stored record, checked field by field; BadStateData names the key and the field."""
    if data.get("kind") != "batch":
        raise BadStateData(f"state key {key!r} is not a batch job record (kind {data.get('kind')!r})")
    spec, progress = data.get("spec"), data.get("progress")
    if not isinstance(spec, dict) or not isinstance(progress, dict):
        raise BadStateData(f"state key {key!r}: a batch job record needs 'spec' and 'progress' objects")
    state = _field(key, data, "state", (str,))
    if state not in JobState.__members__:
        raise BadStateData(f"state key {key!r}: unknown batch job state {state!r}")
    number = (int, float)
    return JobRecord(
        _field(key, data, "id", (str,)), _field(key, spec, "model", (str,)),
        _field(key, spec, "version", (int,), optional=True), _field(key, spec, "input", (str,)),
        _field(key, spec, "output", (str,)), _field(key, spec, "errors", (str,)),
        _field(key, spec, "priority", (int,), optional=True), _field(key, spec, "overwrite", (bool,)),
        float(_field(key, data, "created", number)), JobState[state], _field(key, data, "error", (str,)),
        _field(key, data, "finished", number, optional=True), _field(key, data, "owner", (str,)),
        _field(key, data, "cancel_requested", (bool,)), _field(key, data, "updated", number, optional=True),
        _field(key, progress, "rows_total", (int,), optional=True), _field(key, progress, "rows_done", (int,)),
        _field(key, progress, "rows_failed", (int,)), float(_field(key, progress, "rows_per_s", number)),
        _field(key, progress, "eta_s", number, optional=True),
    )


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as read, with the document version a compare-and-set write must name."""

    record: JobRecord
    version: int


class StoreBook:
    """Reads and writes job records and the index in the state store (StateUnavailable when it is away)."""

    def __init__(self, store: StateStore, checkpoint_of: Callable[[JobRecord], str]) -> None:
        self._store = store
        self._checkpoint_of = checkpoint_of

    async def get(self, job_id: str) -> Stored | None:
        key = record_key(job_id)
        doc = await self._store.get(key)
        return None if doc is None else Stored(from_doc(key, doc.data), doc.version)

    async def put(self, record: JobRecord, expect: int | None) -> bool:
        """Write the record; with `expect`, only over that version (0 = a new record)."""
        doc = await self._store.put(record_key(record.job_id), to_doc(record, self._checkpoint_of(record)), expect)
        return doc is not None

    async def delete(self, job_id: str) -> None:
        await self._store.delete(record_key(job_id))

    async def index(self) -> dict[str, IndexEntry]:
        doc = await self._store.get(INDEX_KEY)
        return {} if doc is None else _index(doc.data)

    async def update_index(self, change: Callable[[dict[str, IndexEntry]], bool]) -> dict[str, IndexEntry]:
        """Apply `change` (returns False to write nothing) by compare-and-set, retried on a concurrent write."""
        for _ in range(MAX_TRIES):
            doc = await self._store.get(INDEX_KEY)
            entries = {} if doc is None else _index(doc.data)
            if not change(entries):
                return entries
            body = {"jobs": {k: [c, f] for k, (c, f) in entries.items()}}
            if await self._store.put(INDEX_KEY, body, expect=0 if doc is None else doc.version) is not None:
                return entries
        raise Overloaded(f"state key {INDEX_KEY!r}: {MAX_TRIES} concurrent writers in a row; try again", retry_after_s=1)

    async def notify(self, job_id: str) -> None:
        await self._store.publish(CHANNEL, job_id)


def _index(data: dict[str, Any]) -> dict[str, IndexEntry]:
    jobs = data.get("jobs")
    if not isinstance(jobs, dict):
        raise BadStateData(f"state key {INDEX_KEY!r} has no 'jobs' object")
    entries: dict[str, IndexEntry] = {}
    for job_id, entry in jobs.items():
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], (int, float))
                or not (entry[1] is None or isinstance(entry[1], (int, float)))):
            raise BadStateData(f"state key {INDEX_KEY!r}: entry {job_id!r} is not [created, finished]")
        entries[job_id] = (float(entry[0]), None if entry[1] is None else float(entry[1]))
    return entries
