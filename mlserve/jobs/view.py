"""How a job's rows, rate and ETA are shown: from its run on the replica that runs it, else as its
owner last recorded them (or, in one process, from the checkpoint beside its output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from mlserve.jobs.checkpoint import checkpoint_path, load_checkpoint
from mlserve.jobs.record import JobRecord, JobState
from mlserve.jobs.progress import Progress


class Rows(Protocol):
    """A run's rows so far: its checkpoint, or what a child process last reported."""

    rows_total: int | None
    rows_done: int
    rows_failed: int


class Run(Protocol):
    """What the view reads of a run here (a BatchRun, or a ProcessRun for a job in a child process)."""

    @property
    def checkpoint(self) -> Rows | None: ...

    @property
    def progress(self) -> Progress: ...


def progress_of(record: JobRecord, run: Run | None, status: Callable[[], str] | None) -> dict[str, Any]:
    """Rows, rate, ETA and reason: from the run when it is here, else as the owner last recorded."""
    if run is None or run.checkpoint is None:
        return {"reason": record.reason, "rows_total": record.rows_total, "rows_done": record.rows_done,
                "rows_failed": record.rows_failed,
                "rows_per_s": record.rows_per_s if record.state is JobState.RUNNING else 0.0,
                "eta_s": record.eta_s if record.state is JobState.RUNNING else None}
    running = record.state is JobState.RUNNING
    checkpoint = run.checkpoint
    return {"reason": status() if running and status is not None else record.reason,
            "rows_total": checkpoint.rows_total, "rows_done": checkpoint.rows_done,
            "rows_failed": checkpoint.rows_failed,
            "rows_per_s": round(run.progress.rows_per_s(), 1) if running else 0.0,
            "eta_s": run.progress.eta_s() if running else None}


def progress_from_checkpoint(record: JobRecord) -> dict[str, Any]:
    try:
        checkpoint = load_checkpoint(checkpoint_path(Path(record.output)))
    except ValueError:
        checkpoint = None
    return {"reason": record.reason, "rows_total": checkpoint.rows_total if checkpoint else None,
            "rows_done": checkpoint.rows_done if checkpoint else 0,
            "rows_failed": checkpoint.rows_failed if checkpoint else 0, "rows_per_s": 0.0, "eta_s": None}


def copy_progress(record: JobRecord, run: Run | None) -> None:
    if run is None or run.checkpoint is None:
        return
    record.rows_total, record.rows_done = run.checkpoint.rows_total, run.checkpoint.rows_done
    record.rows_failed = run.checkpoint.rows_failed
    running = record.state is JobState.RUNNING
    record.rows_per_s = round(run.progress.rows_per_s(), 1) if running else 0.0
    record.eta_s = run.progress.eta_s() if running else None
