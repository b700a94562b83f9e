"""In-server batch jobs: accepted, recorded, run at most `max_running` at a time through a version's
own batcher, cancelled on request, and resumed from their checkpoints after a restart.

Records live on disk under `state_dir` in one process (the default memory state store), and in the
shared state store when replicas share one (mlserve/jobs/book.py): then any replica lists, shows and
cancels any job, exactly one runs it (the lease `job:<id>`, renewed every third of `lease_s`), and
when that replica dies another takes the job over from its checkpoint (a scan every `scan_s`).

Threading: everything here runs on the event loop; file work goes to threads. A store that is away
stops nothing that runs: the owner keeps running its jobs, and their records are written when the
store is back (`_unsynced`); after a return, no replica takes anything over for one `lease_s`, so the
owners renew first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from mlserve.config import JobsConfig
from mlserve.errors import Forbidden, InvalidInput, JobNotFound, MlserveError, Overloaded
from mlserve.jobs.book import CHANNEL, StoreBook, lease_key
from mlserve.jobs.checkpoint import checkpoint_path
from mlserve.jobs.child import ProcessRun
from mlserve.jobs.record import (
    JobRecord, JobState, allowed_path, check_request, load_records, parse_version, remove_record, save_record,
)
from mlserve.jobs.runner import BatchesFn, BatchRun, InferFn, JobPlan, RowFormats, output_files, preflight
from mlserve.jobs.s3files import S3Files, is_s3, stage_uri
from mlserve.jobs.s3stage import S3Jobs, s3_files
from mlserve.jobs.view import copy_progress, progress_from_checkpoint, progress_of
from mlserve.registry.opening import VersionFiles
from mlserve.spec import ModelInfo
from mlserve.state import BadStateData, StateStore, StateUnavailable

log = logging.getLogger("mlserve.jobs")

CANCEL_WAIT_S = 3.0
"""How long a cancel sent to another replica's job waits to see it stop before answering."""


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
    infer_batches: BatchesFn | None = None
    """Queues a chunk's batches at once (background work: see jobs/sharing.py), or None."""
    files: VersionFiles | None = None
    """The version's files where the job runs in a child process that opens them again
    ([batching] background_process: jobs/child.py); its files on S3 run it here instead."""


Resolver = Callable[[str, "int | None", "int | None"], Awaitable[Target]]
"""(model, version or None for the default, priority level or None for the lowest) -> Target."""


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRecordRefused(MlserveError):
    """A job record in the shared state store is not one mlserve wrote (named by its key)."""


def _refusing(method):
    """A public method whose reads of the store may meet data mlserve did not write: refused by name."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except BadStateData as exc:
            log.error("batch jobs: state refused: %s", exc)
            raise JobRecordRefused(f"batch job state refused: {exc}") from None

    return wrapper


class JobManager:
    """Owns in-server jobs: their records (at most `max_jobs`, finished ones kept for `retention_s`),
    one task per job it runs, a slot limit, and with a shared store its leases and takeovers."""

    def __init__(self, config: JobsConfig, resolve: Resolver, store: StateStore | None = None,
                 replica: str = "", s3: S3Files | None = None) -> None:
        self._config = config
        self._resolve = resolve
        self.is_enabled = bool(config.allowed_dir)
        self._root = Path(config.allowed_dir).resolve() if self.is_enabled else Path()
        self._state_dir = (Path(config.state_dir) if config.state_dir else self._root / ".mlserve-jobs").resolve()
        self.replica = replica or replica_name()
        self._s3 = S3Jobs(s3 or S3Files(), self._state_dir)
        self._store = store if store is not None and store.is_shared else None
        self._book = StoreBook(self._store, self.checkpoint_of) if self._store is not None else None
        self.jobs: dict[str, JobRecord] = {}
        """Every job (one process), or the jobs this replica runs or ran (shared store)."""
        self._tasks: dict[str, asyncio.Task] = {}
        self._runs: dict[str, BatchRun | ProcessRun] = {}
        self._status: dict[str, Callable[[], str]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._loops: list[asyncio.Task] = []
        self._spawned: set[asyncio.Task] = set()
        self._unsynced: set[str] = set()
        self._takeover_after = 0.0
        self._is_closing = False
        if self._store is not None and self.is_enabled:
            self._store.subscribe(CHANNEL, self._on_notice)
            self._store.on_health(self._on_health)

    @property
    def is_shared(self) -> bool:
        return self._book is not None

    async def start(self) -> None:
        """Pick up every unfinished job recorded before the last stop (or crash); with a shared
        store, start renewing leases and looking for jobs whose replica is gone."""
        if not self.is_enabled:
            return
        self._slots = asyncio.Semaphore(self._config.max_running)
        self._state_dir.mkdir(parents=True, exist_ok=True)
        if self.is_shared:
            loop = asyncio.get_running_loop()
            self._loops = [loop.create_task(self._heartbeat()), loop.create_task(self._scan())]
            return
        for record in await asyncio.to_thread(load_records, self._state_dir):
            self.jobs[record.job_id] = record
        await self.prune()
        for record in list(self.jobs.values()):
            if not record.is_finished:
                log.info("batch job %s resumes (%s -> %s)", record.job_id, record.input, record.output)
                self._schedule(record)

    async def close(self, release: bool = True) -> None:
        """Stop every task; unfinished jobs keep their state and resume at the next start (or, with a
        shared store, on another replica: at once when `release`, after their lease ran out when not)."""
        self._is_closing = True  # the loops end at their next turn even if a client swallowed the cancel
        for task in [*self._loops, *self._spawned]:
            task.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*self._loops, *self._spawned, *tasks, return_exceptions=True)
        await self._s3.close()
        if self.is_shared and release:
            for record in self._owned(finished=False):
                with contextlib.suppress(StateUnavailable):
                    await self._store.release(lease_key(record.job_id), self.replica)

    def _check_enabled(self) -> None:
        if not self.is_enabled:
            raise Forbidden("in-server batch jobs are off: set jobs.allowed_dir (mlserve start --batch-dir DIR)")

    def checkpoint_of(self, record: JobRecord) -> str:
        """Where the job's checkpoint lies (shown in its record): beside a local output, or in the
        mirror beside an s3:// one."""
        if is_s3(record.output):
            return stage_uri(record.output)
        return str(checkpoint_path(Path(record.output)))

    # -- submit ------------------------------------------------------------------------------------

    @_refusing
    async def submit(self, body: Any) -> JobRecord:
        """Check everything a run would refuse, then record and queue the job."""
        self._check_enabled()
        body = check_request(body)
        await self.prune(room=1)
        await self._check_room()
        files = s3_files(body) if is_s3(body["input"]) or is_s3(body["output"]) else self._local_files(body)
        record = JobRecord(
            secrets.token_hex(8), body["model"], parse_version(body.get("version")), *files,
            body.get("priority"), body.get("overwrite", False), time.time(), owner=self.replica,
        )
        await self._check_free(record)
        target = await self._resolve(record.model, record.version, record.priority)
        if is_s3(record.input):
            await self._s3.preflight(record, target.info, (target.formats or RowFormats()).suffixes)
        else:
            await asyncio.to_thread(preflight, self._plan(record, target), record.overwrite, target.formats)
        await self._check_free(record)  # again: another job may have taken a file while this one was checked
        await self._check_room()
        record.version = target.version
        await self._record_new(record)
        self._schedule(record)
        log.info("batch job %s accepted: %s/%d, %s -> %s", record.job_id, record.model, record.version,
                 record.input, record.output)
        return record

    async def _record_new(self, record: JobRecord) -> None:
        """On disk, or in the store: the lease first (no other replica may take it), then the record, then
        the index. A store that is away refuses the job (StateUnavailable, 503): nothing was accepted."""
        if not self.is_shared:
            self.jobs[record.job_id] = record
            try:
                await asyncio.to_thread(save_record, self._state_dir, record)
            except OSError:
                del self.jobs[record.job_id]
                raise
            return
        await self._store.lease(lease_key(record.job_id), self.replica, self._config.lease_s)
        record.updated = time.time()
        await self._book.put(record, expect=0)

        def add(entries: dict) -> bool:
            entries[record.job_id] = (record.created, None)
            return True

        try:
            await self._book.update_index(add)
        except (StateUnavailable, BadStateData):
            with contextlib.suppress(StateUnavailable):  # no record left that no index lists
                await self._book.delete(record.job_id)
                await self._store.release(lease_key(record.job_id), self.replica)
            raise
        self.jobs[record.job_id] = record

    @_refusing
    async def prune(self, room: int = 0) -> None:
        """Forget finished jobs older than `retention_s`, then the oldest finished ones while more
        than `max_jobs - room` are kept; their records are deleted (their files stay)."""
        if self.is_shared:
            await self._prune_shared(room)
            return
        gone = _prunable({r.job_id: (r.created, (r.finished or r.created) if r.is_finished else None)
                          for r in self.jobs.values()},
                         self._config, room)
        for job_id in gone:  # all before the first await: a prune running beside this one sees them gone
            self.jobs.pop(job_id, None)
            self._runs.pop(job_id, None)
        for job_id in gone:
            await asyncio.to_thread(remove_record, self._state_dir, job_id)
            log.info("batch job %s: record pruned", job_id)

    async def _prune_shared(self, room: int) -> None:
        gone: list[str] = []

        def drop(entries: dict) -> bool:
            gone[:] = _prunable(entries, self._config, room)
            for job_id in gone:
                del entries[job_id]
            return bool(gone)

        await self._book.update_index(drop)
        for job_id in gone:
            self.jobs.pop(job_id, None)
            self._runs.pop(job_id, None)
            await self._book.delete(job_id)
            log.info("batch job %s: record pruned", job_id)

    async def _check_room(self) -> None:
        count = len(await self._book.index()) if self.is_shared else len(self.jobs)
        if count >= self._config.max_jobs:
            raise Overloaded(f"{count} batch jobs are queued or running, the server's limit ([jobs] "
                             "max_jobs); submit again when one finishes", retry_after_s=30)

    def _local_files(self, body: dict) -> tuple[str, str, str]:
        output = self._path(body["output"], "output")
        errors_raw = body.get("errors") or str(output.with_name(output.name + ".errors.jsonl"))
        return str(self._path(body["input"], "input")), str(output), str(self._path(errors_raw, "errors"))

    def _path(self, raw: Any, what: str) -> Path:
        """A job's file under the batch folder, never in the folder holding the job records."""
        path = allowed_path(self._root, raw, what)
        if path.is_relative_to(self._state_dir):
            raise Forbidden(f"{what} {raw!r} lies in the folder holding the batch job records")
        return path

    async def _unfinished(self) -> list[JobRecord]:
        if not self.is_shared:
            return [r for r in self.jobs.values() if not r.is_finished]
        records = []
        for job_id, (_, finished) in (await self._book.index()).items():
            if finished is None:
                with contextlib.suppress(BadStateData):  # logged where it is read for use
                    if (stored := await self._book.get(job_id)) is not None:
                        records.append(stored.record)
        return records

    async def _check_free(self, record: JobRecord) -> None:
        """No two unfinished jobs write the same file (output, its partial and checkpoint, errors),
        or read a file another one writes."""
        writes = _written(record)
        for other in await self._unfinished():
            if other.is_finished or other.job_id == record.job_id:
                continue
            others = _written(other)
            clash = (writes & (others | {other.input})) | ({record.input} & others)
            if clash:
                raise InvalidInput(f"batch job {other.job_id} is still using {sorted(clash)[0]}")

    def _plan(self, record: JobRecord, target: Target) -> JobPlan:
        paths = self._s3.working(record) if is_s3(record.input) else (record.input, record.output, record.errors)
        return JobPlan(record.model, target.version, target.info, *(Path(p) for p in paths), self._config.chunk_rows)

    # -- running -----------------------------------------------------------------------------------

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
                after_commit = None
                if is_s3(record.input):
                    mirror, loop = await self._s3.stage_in(record), asyncio.get_running_loop()
                    after_commit = lambda: asyncio.run_coroutine_threadsafe(mirror.push(), loop).result()  # noqa: E731
                run = self._new_run(record, target, after_commit)
                self._runs[record.job_id] = run
                if target.status is not None:
                    self._status[record.job_id] = target.status
                await asyncio.to_thread(run.prepare, record.overwrite)
                record.overwrite, record.state = False, JobState.RUNNING  # a resume never starts over
                await self._save(record)
                await run.run()
                if is_s3(record.input):
                    await self._s3.stage_out(record)
                await self._finish(record, JobState.DONE, "")
            except asyncio.CancelledError:
                if record.state is JobState.CANCELLED:
                    await self._save(record)
                raise  # otherwise the server is stopping: the record stays unfinished and resumes
            except Exception as exc:
                log.error("batch job %s failed: %s", record.job_id, exc)
                await self._finish(record, JobState.FAILED, f"{type(exc).__name__}: {exc}")
            finally:
                self._status.pop(record.job_id, None)
                if run is not None:
                    run.close()

    def _new_run(self, record: JobRecord, target: Target, after_commit: Callable[[], None] | None
                  ) -> BatchRun | ProcessRun:
        """In a child process where the version asks for one and the files are local; else here."""
        plan = self._plan(record, target)
        if target.files is not None and not is_s3(record.input):
            return ProcessRun(target.files, plan)
        return BatchRun(plan, target.infer, target.formats, after_commit, infer_batches=target.infer_batches)

    async def _finish(self, record: JobRecord, state: JobState, reason: str) -> None:
        record.state, record.reason, record.finished = state, reason, time.time()
        await self._save(record)
        log.info("batch job %s %s", record.job_id, state.name.lower())

    async def _save(self, record: JobRecord) -> None:
        """On disk, or to the store (one that is away gets it when it is back)."""
        copy_progress(record, self._runs.get(record.job_id))
        if not self.is_shared:
            await asyncio.to_thread(save_record, self._state_dir, record)
            return
        self._unsynced.add(record.job_id)
        await self._sync(record)

    # -- reading and cancelling --------------------------------------------------------------------

    @_refusing
    async def get(self, job_id: str) -> JobRecord:
        """The job from this replica when it runs it, else from the store (StateUnavailable: 503)."""
        self._check_enabled()
        record = self.jobs.get(job_id)
        if record is not None and (not self.is_shared or self._is_mine(record)):
            return record
        if not self.is_shared:
            raise JobNotFound(f"no batch job {job_id!r}")
        stored = await self._read(job_id)
        if stored is None:
            raise JobNotFound(f"no batch job {job_id!r}")
        return stored.record

    async def _read(self, job_id: str):
        try:
            return await self._book.get(job_id)
        except BadStateData as exc:
            log.error("batch job %s: record refused: %s", job_id, exc)
            raise JobRecordRefused(f"batch job record refused: {exc}") from None

    @_refusing
    async def list(self) -> list[JobRecord]:
        """Every job, oldest first (with a shared store, every replica's; a record that does not
        parse is logged by name and left out)."""
        self._check_enabled()
        await self.prune()
        if not self.is_shared:
            return list(self.jobs.values())
        records = []
        for job_id in sorted((i := await self._book.index()), key=lambda k: i[k][0]):
            mine = self.jobs.get(job_id)
            if mine is not None and self._is_mine(mine):
                records.append(mine)
                continue
            with contextlib.suppress(JobRecordRefused):
                if (stored := await self._read(job_id)) is not None:
                    records.append(stored.record)
        return records

    @_refusing
    async def cancel(self, job_id: str) -> JobRecord:
        """Stop a queued or running job; what it committed stays, with its checkpoint. A job another
        replica runs is asked to stop through its record (and a notice), and the answer waits a little
        to show it stopped; one nobody runs is cancelled here."""
        record = await self.get(job_id)
        if record.is_finished:
            raise InvalidInput(f"batch job {job_id} is already {record.state.name.lower()}")
        if not self.is_shared or self._is_mine(record):
            return await self._cancel_here(record)
        if await self._store.lease(lease_key(job_id), self.replica, self._config.lease_s):
            return await self._cancel_unowned(job_id)
        await self._request_cancel(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            record = await self.get(job_id)
            if record.is_finished:
                break
        return record

    async def _cancel_here(self, record: JobRecord) -> JobRecord:
        record.state, record.reason, record.finished = JobState.CANCELLED, "cancelled on request", time.time()
        await self._stop_task(record.job_id)
        await self._save(record)
        log.info("batch job %s cancelled", record.job_id)
        return record

    async def _cancel_unowned(self, job_id: str) -> JobRecord:
        """No replica holds the job (this one took its lease just now): cancel it in the store."""
        try:
            stored = await self._read(job_id)
            if stored is None:
                raise JobNotFound(f"no batch job {job_id!r}")
            record = stored.record
            record.owner = self.replica
            self.jobs[job_id] = record
            return await self._cancel_here(record)
        finally:
            with contextlib.suppress(StateUnavailable):
                await self._store.release(lease_key(job_id), self.replica)

    async def _request_cancel(self, job_id: str) -> None:
        for _ in range(8):
            stored = await self._read(job_id)
            if stored is None:
                raise JobNotFound(f"no batch job {job_id!r}")
            if stored.record.is_finished:
                return
            stored.record.cancel_requested = True
            if await self._book.put(stored.record, expect=stored.version):
                await self._book.notify(job_id)
                return
        raise Overloaded(f"batch job {job_id}: its record changed 8 times in a row; cancel again", retry_after_s=1)

    def view(self, record: JobRecord) -> dict[str, Any]:
        """The job as the API shows it: what was asked, its state, rows, rate and ETA."""
        run = self._runs.get(record.job_id) if not self.is_shared or self._is_mine(record) else None
        progress = progress_of(record, run, self._status.get(record.job_id))
        if ((run is None or run.checkpoint is None) and not self.is_shared and not is_s3(record.output)
                and not record.is_finished and not record.overwrite):
            # a job that will resume shows the checkpoint it resumes from; one that starts over, or
            # that finished, is not shown the checkpoint another job may since have left there
            progress = progress_from_checkpoint(record)
        return {
            "id": record.job_id, "model": record.model,
            "version": str(record.version) if record.version is not None else None,
            "input": record.input, "output": record.output, "errors": record.errors,
            "priority": record.priority, "state": record.state.name.lower(),
            "created": record.created, "owner": record.owner or None,
            "checkpoint": self.checkpoint_of(record), **progress,
        }

    # -- replicas (shared store) -------------------------------------------------------------------

    def _is_mine(self, record: JobRecord) -> bool:
        return record.owner == self.replica and record.job_id in self.jobs

    def _owned(self, finished: bool) -> list[JobRecord]:
        return [r for r in self.jobs.values() if self._is_mine(r) and r.is_finished == finished]

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def _on_notice(self, job_id: str) -> None:
        record = self.jobs.get(job_id)
        if record is not None and self._is_mine(record) and not record.is_finished:
            self._spawn(self._sync(record))

    def _on_health(self, is_up: bool) -> None:
        if is_up:  # the owners renew first: no takeover for one lease
            self._takeover_after = time.monotonic() + self._config.lease_s

    async def _heartbeat(self) -> None:
        """Renew every lease held here, write progress, see cancel requests; every third of a lease
        (at most 1 s, so a cancel sent through another replica is seen within it)."""
        period = min(1.0, self._config.lease_s / 3)
        while not self._is_closing:
            await asyncio.sleep(period)
            try:
                await self._renew_all()
            except Exception:  # the loop outlives any one failure; it runs again next period
                log.exception("batch jobs: lease renewal failed")

    async def _renew_all(self) -> None:
        for record in self._owned(finished=False):
            try:
                if not await self._store.lease(lease_key(record.job_id), self.replica, self._config.lease_s):
                    await self._lose(record, "its lease is held by another replica")
                    continue
            except StateUnavailable:
                continue  # keeps running, and its lease here
            await self._sync(record)
        for job_id in list(self._unsynced):
            if (record := self.jobs.get(job_id)) is not None and record.is_finished:
                await self._sync(record)

    async def _sync(self, record: JobRecord, taking: bool = False) -> None:
        """Write this replica's view of a job it runs, taking in a cancel request; compare-and-set, so
        a request written meanwhile is read next time, never overwritten. A record another replica
        owns now is left alone (this one stops the job), unless this replica is `taking` it over."""
        try:
            stored = await self._read(record.job_id)
            if stored is None:  # a Redis that came back empty: this replica writes what it knows again
                if not record.is_finished or record.job_id in self._unsynced:
                    await self._rewrite(record)
                return
            if not taking and stored.record.owner not in (self.replica, ""):
                await self._lose(record, f"replica {stored.record.owner} runs it now")
                return
            if not taking and stored.record.cancel_requested and not record.is_finished:
                record.cancel_requested = True
                await self._cancel_here(record)  # which syncs again
                return
            copy_progress(record, self._runs.get(record.job_id))
            record.updated = time.time()
            if not await self._book.put(record, expect=stored.version):
                self._unsynced.add(record.job_id)
                return
            if record.is_finished:
                await self._book.update_index(_mark_finished(record))
                await self._store.release(lease_key(record.job_id), self.replica)
            self._unsynced.discard(record.job_id)
        except (StateUnavailable, JobRecordRefused):
            self._unsynced.add(record.job_id)

    async def _rewrite(self, record: JobRecord) -> None:
        copy_progress(record, self._runs.get(record.job_id))
        record.updated = time.time()
        if not await self._book.put(record, expect=0):
            return  # written meanwhile: the next sync reads it

        def add(entries: dict) -> bool:
            entries[record.job_id] = (record.created, record.finished if record.is_finished else None)
            return True

        await self._book.update_index(add)
        if record.is_finished:
            await self._store.release(lease_key(record.job_id), self.replica)
        self._unsynced.discard(record.job_id)
        log.info("batch job %s: record written again (the state store had lost it)", record.job_id)

    async def _lose(self, record: JobRecord, why: str) -> None:
        """Another replica runs the job now (this one was cut off past its lease): stop, write nothing."""
        log.warning("batch job %s: stopped here, %s", record.job_id, why)
        self.jobs.pop(record.job_id, None)
        self._unsynced.discard(record.job_id)
        await self._stop_task(record.job_id)

    async def _stop_task(self, job_id: str) -> None:
        """Cancel the job's task and wait for it, unless this is that task (a record write inside the
        run found a cancel request): then it stops at its next await."""
        task = self._tasks.get(job_id)
        if task is None:
            return
        task.cancel()
        if task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)

    async def _scan(self) -> None:
        """Take over every unfinished job whose lease ran out (its replica died or stopped)."""
        while not self._is_closing:
            await asyncio.sleep(self._config.scan_s)
            if time.monotonic() < self._takeover_after:
                continue
            try:
                entries = await self._book.index()
                for job_id in [j for j, r in self.jobs.items() if r.is_finished and j not in entries
                               and j not in self._unsynced]:
                    self.jobs.pop(job_id, None)  # pruned by another replica
                    self._runs.pop(job_id, None)
                for job_id, (_, finished) in entries.items():
                    if self._is_closing:
                        return
                    if finished is None and job_id not in self._tasks and job_id not in self.jobs:
                        await self._try_take(job_id)
            except StateUnavailable:
                continue
            except BadStateData as exc:
                log.error("batch jobs: index refused: %s", exc)
            except Exception:  # the loop outlives any one failure
                log.exception("batch jobs: scan for jobs to take over failed")

    async def _try_take(self, job_id: str) -> None:
        """Take the lease of a job nobody holds; record the takeover (cancelled when asked, failed when
        its files are not visible here), then run it from its checkpoint."""
        if not await self._store.lease(lease_key(job_id), self.replica, self._config.lease_s):
            return
        try:
            stored = await self._read(job_id)
        except JobRecordRefused:
            stored = None
        if stored is None or stored.record.is_finished:
            await self._store.release(lease_key(job_id), self.replica)
            return
        record, before = stored.record, stored.record.owner
        record.owner = self.replica
        unreachable = self._unreachable(record)
        if record.cancel_requested:
            record.state, record.reason, record.finished = JobState.CANCELLED, "cancelled on request", time.time()
        elif unreachable:
            log.error("batch job %s cannot be taken over: %s", job_id, unreachable)
            record.state, record.finished = JobState.FAILED, time.time()
            record.reason = f"replica {before} stopped and {unreachable}"
        else:
            record.state, record.reason = JobState.QUEUED, f"taken over from replica {before}"
        self.jobs[job_id] = record
        self._unsynced.add(job_id)
        await self._sync(record, taking=True)
        if job_id in self._unsynced and not record.is_finished:  # not recorded: leave it for the next scan
            self.jobs.pop(job_id, None)
            self._unsynced.discard(job_id)
            await self._store.release(lease_key(job_id), self.replica)
            return
        if not record.is_finished:
            log.info("batch job %s taken over from replica %s at its checkpoint (%d rows done)", job_id, before,
                     record.rows_done)
            self._schedule(record)

    def _unreachable(self, record: JobRecord) -> str:
        """Why this replica cannot see the job's files (they were on the dead replica's own disk), or ""."""
        if is_s3(record.input):
            return ""
        tail = ("its files lie on that replica's local disk only; a job moves between replicas only when its "
                "files are on a folder every replica shares or on s3://")
        if not Path(record.input).resolve().is_relative_to(self._root) or not Path(record.input).is_file():
            return f"its input {record.input} is not visible on replica {self.replica}: {tail}"
        checkpoint = checkpoint_path(Path(record.output))
        if record.rows_done > 0 and not checkpoint.is_file():
            return f"its checkpoint {checkpoint} is not visible on replica {self.replica}: {tail}"
        return ""


def _mark_finished(record: JobRecord):
    def change(entries: dict) -> bool:
        if record.job_id not in entries or entries[record.job_id][1] is not None:
            return False
        entries[record.job_id] = (record.created, record.finished or time.time())
        return True

    return change


def _prunable(entries: dict[str, tuple[float, float | None]], config: JobsConfig, room: int) -> list[str]:
    """Finished jobs past `retention_s`, then the oldest finished while more than `max_jobs - room` remain."""
    now, limit = time.time(), config.max_jobs - room
    finished = sorted((f, job_id) for job_id, (_, f) in entries.items() if f is not None)
    expired = [job_id for f, job_id in finished if now - f >= config.retention_s]
    crowded = [job_id for _, job_id in finished[len(expired):]][:max(0, len(entries) - len(expired) - limit)]
    return expired + crowded


def _written(record: JobRecord) -> set[str]:
    return {str(p) for p in output_files(Path(record.output))} | {record.errors}
