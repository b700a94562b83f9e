"""What the server remembers of one in-server job, on disk so a restart resumes it."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from enum import Enum, auto
from pathlib import Path
from typing import Any

import orjson

from mlserve.errors import Forbidden, InvalidInput
from mlserve.jobs.rows import replace_durably
from mlserve.spec.version import parse_version as check_version

log = logging.getLogger("mlserve.jobs")


class JobState(Enum):
    QUEUED = auto()
    RUNNING = auto()
    DONE = auto()
    FAILED = auto()
    CANCELLED = auto()


FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

REQUEST_KEYS = {"model", "version", "input", "output", "errors", "priority", "overwrite"}


@dataclass(slots=True)
class JobRecord:
    """One job as asked for, and where it stands; `version` is fixed once the job first starts."""

    job_id: str
    model: str
    version: int | None
    input: str
    output: str
    errors: str
    priority: int | None
    overwrite: bool
    created: float
    state: JobState = JobState.QUEUED
    reason: str = ""
    finished: float | None = None
    """When it finished (wall clock), for pruning old records."""
    owner: str = ""
    """The replica that runs it (holds its lease); empty in one process."""
    cancel_requested: bool = False
    """Set by a replica that does not run the job; the owner cancels it when it sees this."""
    updated: float | None = None
    """When the owner last wrote its progress (wall clock)."""
    rows_total: int | None = None
    rows_done: int = 0
    rows_failed: int = 0
    rows_per_s: float = 0.0
    eta_s: float | None = None
    """Progress as the owner last wrote it, for replicas that read the record from the state store."""

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED

    def to_bytes(self) -> bytes:
        raw = asdict(self)
        raw["state"] = self.state.name
        return orjson.dumps(raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> JobRecord:
        raw = orjson.loads(data)
        raw["state"] = JobState[raw["state"]]
        return cls(**raw)


def save_record(folder: Path, record: JobRecord) -> None:
    tmp = folder / f"{record.job_id}.json.tmp"
    with open(tmp, "wb") as fh:
        fh.write(record.to_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    replace_durably(tmp, folder / f"{record.job_id}.json")


def remove_record(folder: Path, job_id: str) -> None:
    (folder / f"{job_id}.json").unlink(missing_ok=True)


def load_records(folder: Path) -> list[JobRecord]:
    """Every readable record in the folder, oldest first; an unreadable one is logged and left."""
    records = []
    for path in folder.glob("*.json"):
        try:
            records.append(JobRecord.from_bytes(path.read_bytes()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("batch job record %s is unreadable, skipped: %s", path, exc)
    return sorted(records, key=lambda r: r.created)


def allowed_path(root: Path, raw: Any, what: str) -> Path:
    """A job's file: relative paths are taken under `root`; anything resolving outside it is refused."""
    if not isinstance(raw, str) or not raw:
        raise InvalidInput(f"{what!r} must be a non-empty path")
    if "://" in raw:
        raise InvalidInput(f"{what!r}: paths under the server's batch folder or s3://bucket/key are supported, "
                           f"got {raw!r}")
    path = Path(raw)
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not resolved.is_relative_to(root):
        raise Forbidden(f"{what} {raw!r} lies outside the folder batch jobs may use")
    return resolved


def parse_version(raw: Any) -> int | None:
    if raw is None:
        return None
    return check_version(raw, "'version'")


def check_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    unknown = set(body) - REQUEST_KEYS
    if unknown:
        raise InvalidInput(f"unknown key(s) {sorted(unknown)}; a job takes {sorted(REQUEST_KEYS)}")
    for key in ("model", "input", "output"):
        if key not in body:
            raise InvalidInput(f"missing {key!r}")
    if not isinstance(body["model"], str):
        raise InvalidInput("'model' must be a string")
    priority = body.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool) or priority < 1):
        raise InvalidInput(f"'priority' must be a positive integer level, got {priority!r}")
    if not isinstance(body.get("overwrite", False), bool):
        raise InvalidInput("'overwrite' must be true or false")
    return body
