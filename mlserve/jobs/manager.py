"""In-server batch jobs: accepted, recorded on disk, run at most `max_running` at a time through a
version's own batcher, cancelled on request, and resumed from their checkpoints after a restart."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from mlserve.config import JobsConfig
from mlserve.errors import Forbidden, InvalidInput, JobNotFound, Overloaded
from mlserve.jobs.checkpoint import checkpoint_path, load_checkpoint
from mlserve.jobs.record import (
    JobRecord, JobState, allowed_path, check_request, load_records, parse_version, remove_record, save_record,
)
from mlserve.jobs.runner import BatchRun, InferFn, JobPlan, RowFormats, output_files, preflight
from mlserve.spec import ModelInfo

log = logging.getLogger("mlserve.jobs")


@dataclass(frozen=True, slots=True)
class Target:
    """The version a job runs on: its tensors, and how to queue rows on its batcher."""

    version: int
    info: ModelInfo
    infer: InferFn
    formats: RowFormats | None = None
    """How to read and write the job's files when not by suffix (OpenAI batch files)."""
    status: Callable[[], str] | None = None
    """Why a running job is slow right now ("waiting: live load"), or ""."""


Resolver = Callable[[str, "int | None", "int | None"], Awaitable[Target]]
"""(model, version or None for the default, priority level or None for the lowest) -> Target."""


class JobManager:
    """Owns every in-server job: records in `state_dir` (at most `max_jobs`, finished ones kept for
    `retention_s`), one task per job, a slot limit."""

    def __init__(self, config: JobsConfig, resolve: Resolver) -> None:
        self._config = config
        self._resolve = resolve
        self.is_enabled = bool(config.allowed_dir)
        self._root = Path(config.allowed_dir).resolve() if self.is_enabled else Path()
        self._state_dir = (Path(config.state_dir) if config.state_dir else self._root / ".mlserve-jobs").resolve()
        self.jobs: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._runs: dict[str, BatchRun] = {}
        self._status: dict[str, Callable[[], str]] = {}
        self._slots: asyncio.Semaphore | None = None

    async def start(self) -> None:
        """Pick up every unfinished job recorded before the last stop (or crash)."""
        if not self.is_enabled:
            return
        self._slots = asyncio.Semaphore(self._config.max_running)
        self._state_dir.mkdir(parents=True, exist_ok=True)
        for record in await asyncio.to_thread(load_records, self._state_dir):
            self.jobs[record.job_id] = record
        await self.prune()
        for record in list(self.jobs.values()):
            if not record.is_finished:
                log.info("batch job %s resumes (%s -> %s)", record.job_id, record.input, record.output)
                self._schedule(record)

    async def close(self) -> None:
        """Stop every task; unfinished jobs keep their state and resume at the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _check_enabled(self) -> None:
        if not self.is_enabled:
            raise Forbidden("in-server batch jobs are off: set jobs.allowed_dir (mlserve start --batch-dir DIR)")

    async def submit(self, body: Any) -> JobRecord:
        """Check everything a run would refuse, then record and queue the job."""
        self._check_enabled()
        body = check_request(body)
        await self.prune(room=1)
        self._check_room()
        output = self._path(body["output"], "output")
        errors_raw = body.get("errors") or str(output.with_name(output.name + ".errors.jsonl"))
        record = JobRecord(
            secrets.token_hex(8), body["model"], parse_version(body.get("version")),
            str(self._path(body["input"], "input")), str(output), str(self._path(errors_raw, "errors")),
            body.get("priority"), body.get("overwrite", False), time.time(),
        )
        self._check_free(record)
        target = await self._resolve(record.model, record.version, record.priority)
        plan = self._plan(record, target)
        await asyncio.to_thread(preflight, plan, record.overwrite, target.formats)
        self._check_free(record)  # again: another job may have taken a file while this one was checked
        self._check_room()
        record.version = target.version
        self.jobs[record.job_id] = record
        try:
            await asyncio.to_thread(save_record, self._state_dir, record)
        except OSError:
            del self.jobs[record.job_id]
            raise
        self._schedule(record)
        log.info("batch job %s accepted: %s/%d, %s -> %s", record.job_id, record.model, record.version,
                 record.input, record.output)
        return record

    async def prune(self, room: int = 0) -> None:
        """Forget finished jobs older than `retention_s`, then the oldest finished ones while more
        than `max_jobs - room` are kept; their records are deleted (their files stay)."""
        now, limit = time.time(), self._config.max_jobs - room
        finished = sorted((r for r in self.jobs.values() if r.is_finished), key=_finished_at)
        expired = [r for r in finished if now - _finished_at(r) >= self._config.retention_s]
        crowded = finished[len(expired):][:max(0, len(self.jobs) - len(expired) - limit)]
        gone = [r.job_id for r in expired + crowded]
        for job_id in gone:  # all before the first await: a prune running beside this one sees them gone
            self.jobs.pop(job_id, None)
            self._runs.pop(job_id, None)
        for job_id in gone:
            await asyncio.to_thread(remove_record, self._state_dir, job_id)
            log.info("batch job %s: record pruned", job_id)

    def _check_room(self) -> None:
        if len(self.jobs) >= self._config.max_jobs:
            raise Overloaded(f"{len(self.jobs)} batch jobs are queued or running, the server's limit ([jobs] "
                             "max_jobs); submit again when one finishes", retry_after_s=30)

    def _path(self, raw: Any, what: str) -> Path:
        """A job's file under the batch folder, never in the folder holding the job records."""
        path = allowed_path(self._root, raw, what)
        if path.is_relative_to(self._state_dir):
            raise Forbidden(f"{what} {raw!r} lies in the folder holding the batch job records")
        return path

    def _check_free(self, record: JobRecord) -> None:
        """No two unfinished jobs write the same file (output, its partial and checkpoint, errors),
        or read a file another one writes."""
        writes = _written(record)
        for other in self.jobs.values():
            if other.is_finished:
                continue
            others = _written(other)
            clash = (writes & (others | {other.input})) | ({record.input} & others)
            if clash:
                raise InvalidInput(f"batch job {other.job_id} is still using {sorted(clash)[0]}")

    def _plan(self, record: JobRecord, target: Target) -> JobPlan:
        return JobPlan(record.model, target.version, target.info, Path(record.input), Path(record.output),
                       Path(record.errors), self._config.chunk_rows)

    def _schedule(self, record: JobRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._run(record))
        self._tasks[record.job_id] = task
        task.add_done_callback(lambda _t, key=record.job_id: self._tasks.pop(key, None))

    async def _run(self, record: JobRecord) -> None:
        assert self._slots is not None, "run before start"
        async with self._slots:
            run = None
            try:
                target = await self._resolve(record.model, record.version, record.priority)
                run = BatchRun(self._plan(record, target), target.infer, target.formats)
                self._runs[record.job_id] = run
                if target.status is not None:
                    self._status[record.job_id] = target.status
                await asyncio.to_thread(run.prepare, record.overwrite)
                record.overwrite, record.state = False, JobState.RUNNING  # a resume never starts over
                await asyncio.to_thread(save_record, self._state_dir, record)
                await run.run()
                await self._finish(record, JobState.DONE, "")
            except asyncio.CancelledError:
                if record.state is JobState.CANCELLED:
                    await asyncio.to_thread(save_record, self._state_dir, record)
                raise  # otherwise the server is stopping: the record stays unfinished and resumes
            except Exception as exc:
                log.error("batch job %s failed: %s", record.job_id, exc)
                await self._finish(record, JobState.FAILED, f"{type(exc).__name__}: {exc}")
            finally:
                self._status.pop(record.job_id, None)
                if run is not None:
                    run.close()

    async def _finish(self, record: JobRecord, state: JobState, reason: str) -> None:
        record.state, record.reason, record.finished = state, reason, time.time()
        await asyncio.to_thread(save_record, self._state_dir, record)
        log.info("batch job %s %s", record.job_id, state.name.lower())

    def get(self, job_id: str) -> JobRecord:
        self._check_enabled()
        record = self.jobs.get(job_id)
        if record is None:
            raise JobNotFound(f"no batch job {job_id!r}")
        return record

    async def cancel(self, job_id: str) -> JobRecord:
        """Stop a queued or running job; what it committed stays, with its checkpoint."""
        record = self.get(job_id)
        if record.is_finished:
            raise InvalidInput(f"batch job {job_id} is already {record.state.name.lower()}")
        record.state, record.reason, record.finished = JobState.CANCELLED, "cancelled on request", time.time()
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(save_record, self._state_dir, record)
        log.info("batch job %s cancelled", job_id)
        return record

    def view(self, record: JobRecord) -> dict[str, Any]:
        """The job as the API shows it: what was asked, its state, rows, rate and ETA."""
        run = self._runs.get(record.job_id)
        checkpoint = run.checkpoint if run is not None else None
        if checkpoint is None:
            try:
                checkpoint = load_checkpoint(checkpoint_path(Path(record.output)))
            except ValueError:
                checkpoint = None
        running = run is not None and record.state is JobState.RUNNING
        status = self._status.get(record.job_id)
        reason = status() if running and status is not None else record.reason
        progress = run.progress if run is not None else None
        return {
            "id": record.job_id, "model": record.model,
            "version": str(record.version) if record.version is not None else None,
            "input": record.input, "output": record.output, "errors": record.errors,
            "priority": record.priority, "state": record.state.name.lower(), "reason": reason,
            "created": record.created,
            "rows_total": checkpoint.rows_total if checkpoint else None,
            "rows_done": checkpoint.rows_done if checkpoint else 0,
            "rows_failed": checkpoint.rows_failed if checkpoint else 0,
            "rows_per_s": round(progress.rows_per_s(), 1) if running else 0.0,
            "eta_s": progress.eta_s() if running else None,
        }


def _written(record: JobRecord) -> set[str]:
    return {str(p) for p in output_files(Path(record.output))} | {record.errors}


def _finished_at(record: JobRecord) -> float:
    return record.finished if record.finished is not None else record.created
