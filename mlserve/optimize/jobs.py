"""In-server optimize jobs: each runs in a child process at low priority, so serving keeps its CPU
and a crash in a compiler or quantizer never takes the server down.

While the server's models serve, a running child is stopped and continued once they are quiet
(optimize/yielding.py); the job's view says `waiting: live load` meanwhile, and its time limit counts
only the time it ran.

The job folder holds the request, the child's progress lines and its report; the child's scratch
lives inside it, and the whole folder is removed when the child is done (the job's figures stay in
memory for GET). A published version is handed to `on_published`, which the server wires to the
loader (and to the rollout API when the job asked for a canary).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum, auto
from pathlib import Path
from typing import Awaitable, Callable

from mlserve.config import JobsConfig
from mlserve.errors import InvalidInput, MlserveError, ModelNotFound, Overloaded
from mlserve.lifeline import is_alive
from mlserve.optimize.pipeline import OptimizeRequest
from mlserve.optimize.pause import is_pausable
from mlserve.optimize.records import OptimizeRecords
from mlserve.optimize.request import to_json
from mlserve.optimize.yielding import LiveYield, Pause
from mlserve.state import BadStateData, StateStore

log = logging.getLogger("mlserve.optimize")

OnPublished = Callable[[str, int, "dict | None"], Awaitable[dict]]


@dataclass(frozen=True, slots=True)
class Published:
    """A version published to a remote repository: its number there, and, when the remote
    repository deploys it itself (an MLflow alias the server follows), what was done instead of
    loading it here."""

    version: int
    deployment: dict | None = None


Upload = Callable[[int], Awaitable[Published]]
"""Copies a version the job published into its local mirror to the remote repository it mirrors
(which may number it differently)."""
_STOP_GRACE_S = 10.0
MAX_FINISHED_JOBS = 100
"""Finished jobs kept for GET; the oldest go first."""
JOB_FOLDER_PREFIX = "mlserve-job-"
"""Job folders are `<tmp>/mlserve-job-<server pid>-<random>`: the pid says when one is debris."""
_JOB_FOLDER = re.compile(re.escape(JOB_FOLDER_PREFIX) + r"(\d+)-")


class JobState(Enum):
    RUNNING = auto()
    SUCCEEDED = auto()
    FAILED = auto()
    CANCELLED = auto()


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(slots=True)
class Job:
    """One optimize job as GET /admin/jobs/{id} reports it."""

    job_id: str
    model: str
    folder: Path
    rollout: dict | None
    state: JobState = JobState.RUNNING
    progress: list[dict] = field(default_factory=list)
    report: dict | None = None
    error: str = ""
    deployment: dict | None = None
    """What happened after publishing: the load, and the rollout when one was asked for."""
    trigger: str = "api"
    """api (POST /admin/models/{m}/optimize) or new_version ([optimize] on_new_version)."""
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task | None = None
    started_at: float = field(default_factory=time.monotonic)
    pause: Pause = field(default_factory=Pause)
    """While live load holds the child stopped, and for how long it has been in all."""
    upload: Upload | None = None
    """For a job on a mirror of a remote repository: runs before the published version is loaded."""

    def to_dict(self) -> dict:
        if self.state is JobState.RUNNING:
            self.progress = _read_progress(self.folder / "progress.jsonl")
        report = self.report or {}
        pid = self.process.pid if self.process is not None else None
        return {"id": self.job_id, "kind": "optimize", "model": self.model, "state": self.state.name.lower(),
                "trigger": self.trigger,
                "pid": pid, "waiting": self.pause.waiting if self.state is JobState.RUNNING else None,
                "paused_s": round(self.pause.stopped_s(time.monotonic()), 3),
                "progress": self.progress, "rows": report.get("rows", [r["row"] for r in self.progress
                                                                         if r.get("event") == "row"]),
                "winner": report.get("winner"), "published_version": report.get("published_version"),
                "reason": report.get("reason", ""), "error": self.error, "deployment": self.deployment}


def _read_progress(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


class OptimizeJobs:
    """Starts, tracks and cancels optimize jobs; one child process each, at most
    `optimize_max_running` at once, each stopped after `optimize_timeout_s`."""

    def __init__(self, on_published: OnPublished, config: JobsConfig, store: StateStore | None = None,
                 replica: str = "", is_serving: Callable[[], bool] | None = None) -> None:
        """With `is_serving` (the data plane's), running children yield to live load."""
        self._on_published = on_published
        self._yield = LiveYield(is_serving) if is_serving is not None else None
        self._config = config
        self.jobs: dict[str, Job] = {}
        self._records = None
        """With a shared store: every job's record there, for GET and DELETE through any replica."""
        if store is not None and store.is_shared:
            self._records = OptimizeRecords(store, replica or f"{socket.gethostname()}:{os.getpid()}",
                                            self._on_cancel_notice, config.lease_s)
        self._spawned: set[asyncio.Task] = set()
        self._holding: asyncio.Task | None = None
        """With a shared store, while jobs run here: renews their leases."""

    def is_busy(self, model: str) -> bool:
        """Whether a start for `model` would be refused for now: one of its jobs runs, or the server's limit is reached."""
        running = [j for j in self.jobs.values() if j.state is JobState.RUNNING]
        return any(j.model == model for j in running) or len(running) >= self._config.optimize_max_running

    async def start(self, request: OptimizeRequest, rollout: dict | None, trigger: str = "api",
                    upload: Upload | None = None) -> Job:
        """One running job per model (two would race for the next version number), and a cap on
        the children the whole server runs. With `upload`, the request's repository is a local mirror
        and a published version goes to the remote one before it is loaded."""
        running = [j for j in self.jobs.values() if j.state is JobState.RUNNING]
        same = [j for j in running if j.model == request.model]
        if same:
            raise InvalidInput(f"model {request.model!r} already has optimize job {same[0].job_id} running")
        if len(running) >= self._config.optimize_max_running:
            raise Overloaded(f"{len(running)} optimize jobs are running, the server's limit ([jobs] "
                             "optimize_max_running); start this one when one of them finishes", retry_after_s=30)
        self._forget_old()
        folder = Path(tempfile.mkdtemp(prefix=f"{JOB_FOLDER_PREFIX}{os.getpid()}-"))
        (folder / "request.json").write_text(json.dumps(to_json(request)))
        job = Job(uuid.uuid4().hex[:16], request.model, folder, rollout, trigger=trigger, upload=upload)
        with open(folder / "stderr.log", "wb") as stderr:
            job.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mlserve.optimize.worker", str(folder), str(os.getpid()),
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr, env=_child_env(), start_new_session=True,
            )
        job.task = asyncio.get_running_loop().create_task(self._watch(job))
        self.jobs[job.job_id] = job
        if self._yield is not None:
            self._yield.add(job.job_id, job.process.pid, folder, job.pause,
                            lambda: is_pausable(folder) and not _is_publishing(job))
        log.info("optimize job %s for model %s started (pid %d)", job.job_id, job.model, job.process.pid)
        if self._records is not None:
            await self._records.hold([job.job_id])  # before the record: a reader never finds one unheld
            if self._holding is None or self._holding.done():
                self._holding = asyncio.get_running_loop().create_task(self._hold_leases(self._records))
        await self._write(job)
        return job

    async def _write(self, job: Job) -> None:
        if self._records is not None:
            await self._records.write(job.to_dict())
            if job.state is not JobState.RUNNING:
                await self._records.let_go(job.job_id)

    async def _hold_leases(self, records: OptimizeRecords) -> None:
        """Renew the leases of the jobs running here every third of a lease, until none runs."""
        while running := [j.job_id for j in self.jobs.values() if j.state is JobState.RUNNING]:
            try:
                await records.hold(running)
            except Exception:  # one failed renewal must not end the renewals: the leases would lapse
                log.exception("optimize jobs: lease renewal failed")
            await asyncio.sleep(self._config.lease_s / 3)

    def _on_cancel_notice(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.state is JobState.RUNNING:
            task = asyncio.get_running_loop().create_task(self.cancel(job_id))
            self._spawned.add(task)
            task.add_done_callback(self._spawned.discard)

    async def view(self, job_id: str) -> dict:
        """The job from this replica, or (shared store) as the replica running it recorded it."""
        if job_id in self.jobs or self._records is None:
            return self.get(job_id).to_dict()
        try:
            view = await self._records.read(job_id)
        except BadStateData as exc:
            log.error("optimize job %s: record refused: %s", job_id, exc)
            raise MlserveError(f"optimize job record refused: {exc}") from None
        if view is None:
            raise ModelNotFound(f"no job {job_id!r}")
        return view

    async def cancel_anywhere(self, job_id: str) -> dict:
        """Cancel here, or ask the replica running the job (a notice) and wait up to 3 s to see it stop."""
        if job_id in self.jobs or self._records is None:
            return (await self.cancel(job_id)).to_dict()
        view = await self.view(job_id)
        if view["state"] != "running":
            return view
        await self._records.request_cancel(job_id)
        deadline = asyncio.get_running_loop().time() + 3.0
        while view["state"] == "running" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            view = await self.view(job_id)
        return view

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state in FINISHED]
        for job in finished[:max(0, len(finished) - MAX_FINISHED_JOBS + 1)]:
            del self.jobs[job.job_id]

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise ModelNotFound(f"no job {job_id!r}")
        return self.jobs[job_id]

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state is JobState.RUNNING and job.process is not None and job.process.returncode is None \
                and not _is_publishing(job):  # too late once publishing: the job finishes and says so
            job.state = JobState.CANCELLED
            self._release(job)
            await _stop(job.process)
        if job.task is not None:
            await asyncio.shield(job.task)
        return job

    async def sweep(self) -> None:
        """At start: remove the job folders of servers that are gone (killed before cleaning up)."""
        for folder in await asyncio.to_thread(sweep_job_folders, Path(tempfile.gettempdir())):
            log.info("removed the folder of an optimize job whose server is gone: %s", folder)

    async def close(self) -> None:
        for job in list(self.jobs.values()):
            await self.cancel(job.job_id)
        if self._holding is not None:
            self._holding.cancel()
        if self._yield is not None:
            await self._yield.close()

    def _release(self, job: Job) -> None:
        """No more pauses for this job: continued if stopped (it is being stopped, or it ended)."""
        if self._yield is not None:
            self._yield.release(job.job_id)

    async def _watch(self, job: Job) -> None:
        assert job.process is not None
        code = await self._wait(job)
        self._release(job)
        job.progress = _read_progress(job.folder / "progress.jsonl")
        try:
            # A cancel (or the time limit) that raced the start of publishing loses: the version is
            # there, so say so.
            if job.state is JobState.RUNNING or (job.folder / "report.json").is_file():
                await self._finish(job, code)
        except Exception as exc:  # a failed load or rollout is the job's outcome, not the server's
            job.state, job.error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(job.folder, ignore_errors=True)
        log.info("optimize job %s: %s %s", job.job_id, job.state.name.lower(), job.error)
        await self._write(job)

    async def _wait(self, job: Job) -> int:
        """The child's exit code; past the time limit (time stopped for live load not counted) it is
        stopped, unless it is already publishing."""
        assert job.process is not None
        limit = self._config.optimize_timeout_s
        while (left := limit - _ran_s(job)) > 0:
            try:
                return await asyncio.wait_for(job.process.wait(), left)
            except asyncio.TimeoutError:
                pass
        if job.state is JobState.RUNNING and not _is_publishing(job):
            self._release(job)
            await _stop(job.process)
            if job.state is JobState.RUNNING:  # not cancelled meanwhile
                job.state = JobState.FAILED
                job.error = f"stopped: ran past the optimize time limit of {limit:g} s ([jobs] optimize_timeout_s)"
        return await job.process.wait()

    async def _finish(self, job: Job, code: int) -> None:
        report_path, error_path = job.folder / "report.json", job.folder / "error.json"
        if code != 0 or not report_path.is_file():
            job.state = JobState.FAILED
            job.error = (json.loads(error_path.read_text())["error"] if error_path.is_file()
                         else f"exit code {code}: {_tail(job.folder / 'stderr.log')}")
            return
        job.report = json.loads(report_path.read_text())
        version = job.report.get("published_version")
        if version is not None:
            published = await job.upload(version) if job.upload is not None else Published(version)
            job.report["published_version"] = published.version
            job.deployment = published.deployment
            if job.deployment is None:
                job.deployment = await self._on_published(job.model, published.version, job.rollout)
        job.state = JobState.SUCCEEDED


def sweep_job_folders(tmp: Path) -> list[Path]:
    """Blocking: remove `mlserve-job-<pid>-*` folders whose server pid no longer runs; returns them."""
    removed = []
    for folder in tmp.glob(JOB_FOLDER_PREFIX + "*"):
        match = _JOB_FOLDER.match(folder.name)
        if match and folder.is_dir() and not folder.is_symlink() and not is_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _ran_s(job: Job) -> float:
    now = time.monotonic()
    return now - job.started_at - job.pause.stopped_s(now)


def _is_publishing(job: Job) -> bool:
    return any(e.get("event") == "publishing" for e in _read_progress(job.folder / "progress.jsonl"))


def _child_env() -> dict[str, str]:
    """One OpenMP thread for the libraries' own defaults (quantizer calibration sessions, the
    exporter); the measured sessions set the model's intra_op_threads themselves."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the worker's process group (the worker and whatever it started), continued in case
    it was stopped, SIGKILL after the grace period."""
    _signal_group(process, signal.SIGTERM)
    _signal_group(process, signal.SIGCONT)
    try:
        await asyncio.wait_for(process.wait(), _STOP_GRACE_S)
    except asyncio.TimeoutError:
        _signal_group(process, signal.SIGKILL)
        await process.wait()


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the worker leads its own group (start_new_session)
    except ProcessLookupError:
        pass


def _tail(path: Path, num_chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-num_chars:]
    except OSError:
        return ""
