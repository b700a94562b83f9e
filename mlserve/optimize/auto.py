"""Automatic optimization: a new version of a model whose model.toml says `[optimize]
on_new_version = true` gets one optimize run, through the admin optimize job machinery (a child
process at idle priority), with the section's passes, gate, data and rollout.

Threading: the loader calls `on_loaded` on one of its threads once a version has loaded; the hook
only checks the version folder and hands the name and version to the loop. Everything else runs
on the loop, never on the request path.

One run per source version, recorded on disk (`<ledger>/<model>/<version>.json`, written
atomically) before it starts and again when it ends, so a restart neither loses a queued or
interrupted run (it starts again, at most MAX_ATTEMPTS times in all) nor repeats a finished one.
A version the optimizer published carries `optimization.json` and never triggers a run: no loop.

On an S3 repository the run works on a local mirror of the model (optimize/mirror.py: the new
version, fetched from the server's own cache, and model.toml); the winner is published into the
mirror, uploaded to the bucket as the next version, then loaded (and rolled out) as on a local one.

On an MLflow registry a version "arrives" when it becomes the `@champion` the server serves (a
challenger or any other registered version does not start a run). The run works on a mirror too;
the winner is registered as a new model version with its record and lineage as tags
(optimize/mlflow_repo.py), and the server's registry follower deploys it: as `@challenger` when the
section gives rollout steps (the champion's [challenger] table is made from them,
registry/mlflow_toml.py), else as `@champion`. "Already published" after a restart is read from the
registry's `mlserve.source_version` tags.

On either remote repository the ledger lives under `[jobs] state_dir`, else beside the registry's
download cache.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum, auto
from pathlib import Path

from mlserve.engine.base import VERSION_BACKEND_FILE
from mlserve.optimize.jobs import Job, JobState, OptimizeJobs
from mlserve.optimize.mirror import Mirror, S3Mirror
from mlserve.optimize.mlflow_repo import MlflowMirror, published_in_registry
from mlserve.optimize.request import parse_body
from mlserve.optimize.source import version_numbers
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.mlflow import MlflowStore
from mlserve.registry.repository import ModelEntry
from mlserve.registry.s3 import S3Store
from mlserve.spec import ModelInfo, OptimizeSettings

log = logging.getLogger("mlserve.optimize")

MAX_ATTEMPTS = 2
"""Starts of one run in all: a run a restart interrupted starts once more, never twice."""
RETRY_S = 5.0
"""How often a queued run that could not start (the model or the server busy with jobs) tries again."""
_MAX_RUN_FILE_BYTES = 4 * 2**20


class RunState(Enum):
    QUEUED = auto()
    RUNNING = auto()
    PUBLISHED = auto()
    NO_WINNER = auto()
    FAILED = auto()
    CANCELLED = auto()


UNFINISHED = frozenset({RunState.QUEUED, RunState.RUNNING})


@dataclass(slots=True)
class AutoRun:
    """One automatic run of one source version, as recorded on disk and shown in /admin."""

    model: str
    source_version: int
    state: RunState = RunState.QUEUED
    attempts: int = 0
    job_id: str | None = None
    published_version: int | None = None
    winner: str | None = None
    reason: str = ""
    rows: list[dict] = field(default_factory=list)
    deployment: dict | None = None
    queued_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "state": self.state.name.lower(), "trigger": "new_version"}

    @classmethod
    def from_dict(cls, raw: dict) -> AutoRun:
        body = {k: v for k, v in raw.items() if k not in ("state", "trigger")}
        return cls(**body, state=RunState[raw["state"].upper()])


class AutoOptimizer:
    """Owns the ledger of automatic runs and the queue of those waiting for a job slot."""

    def __init__(self, jobs: OptimizeJobs, loader: HotSwapLoader, models_root: Path | None, ledger: Path | None,
                 trust_repository: bool, trust_uploads: bool = False) -> None:
        """The trust settings are the server's: a version it serves is one the optimizer may open.
        `models_root` is the local repository; None for a remote one (runs then use a mirror)."""
        self._jobs, self._loader = jobs, loader
        self._root, self._ledger = models_root, ledger
        self._s3 = loader.store if isinstance(loader.store, S3Store) else None
        self._mlflow = loader.store if isinstance(loader.store, MlflowStore) else None
        self._mirrors: dict[tuple[str, int], Mirror] = {}
        self._trust, self._trust_uploads = trust_repository, trust_uploads
        self.runs: dict[tuple[str, int], AutoRun] = {}
        self._arrived: collections.deque[tuple[str, int]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._is_closing = False
        self._claiming: set[tuple[str, int]] = set()
        """Arrivals whose record is being created; not startable until it is."""
        loader.watch_loaded(self.on_loaded)

    # ---- the loader's thread -----------------------------------------------------------------

    def on_loaded(self, name: str, version: int, path: Path, entry: ModelEntry, info: ModelInfo) -> None:
        """Runs on a loader thread: only a check of the folder and a hand-off to the loop."""
        if not entry.config.optimize.on_new_version or (path / VERSION_BACKEND_FILE).is_file():
            return  # not asked for, or made by the optimizer itself
        if self._mlflow is not None and self._mlflow.champion(name) != version:
            return  # a registered model's challenger: only the version it serves arrives
        self._arrived.append((name, version))
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._take_arrivals)

    # ---- the loop ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the ledger, queue again what a stop interrupted, then take arrivals."""
        if self._ledger is not None:
            for run in await asyncio.to_thread(load_runs, self._ledger):
                self.runs[(run.model, run.source_version)] = run
        self._wake = asyncio.Event()
        for run in [r for r in self.runs.values() if r.state in UNFINISHED]:
            await self._resume(run)
        self._loop = asyncio.get_running_loop()
        self._take_arrivals()
        self._spawn(self._pump())

    async def close(self) -> None:
        """Before the jobs stop: a run the shutdown cancels stays recorded as unfinished."""
        self._is_closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The cancel may have cut a save short (its write still queued for a thread): what a restart
        # reads must be what ran, e.g. a run started (attempts counted) and not the claim before it.
        for run in [r for r in self.runs.values() if r.state in UNFINISHED]:
            await self._save(run)

    def views(self, model: str) -> list[dict]:
        """The model's runs, newest source version first; a running one says what it waits for
        (`waiting`: "live load" while the server holds it stopped) and its seconds stopped."""
        return [self._view(r) for (m, _), r in sorted(self.runs.items(), key=lambda kv: -kv[0][1]) if m == model]

    def _view(self, run: AutoRun) -> dict:
        job = self._jobs.jobs.get(run.job_id) if run.job_id is not None else None
        if job is None or run.state is not RunState.RUNNING:
            return {**run.to_dict(), "waiting": None, "paused_s": None}
        return {**run.to_dict(), "waiting": job.pause.waiting, "paused_s": round(job.pause.stopped_s(time.monotonic()), 3)}

    def _take_arrivals(self) -> None:
        while self._arrived:
            name, version = self._arrived.popleft()
            if (name, version) in self.runs or (name, version) in self._claiming:
                continue  # one run per source version, ever
            if self._ledger is None or (self._root is None and self._s3 is None and self._mlflow is None):
                log.warning("model %s version %d: [optimize] on_new_version needs a local, S3 or MLflow "
                            "model repository; not run", name, version)
                continue
            self._claiming.add((name, version))
            self._spawn(self._claim(AutoRun(name, version)))

    async def _claim(self, run: AutoRun) -> None:
        """The record is created exclusively: of servers sharing the ledger, one runs it."""
        assert self._ledger is not None and self._wake is not None
        try:
            is_ours = await asyncio.to_thread(claim_run, self._ledger, run)
        finally:
            self._claiming.discard((run.model, run.source_version))
        if not is_ours:
            log.info("model %s version %d: automatic optimization already recorded by another server; not run",
                     run.model, run.source_version)
            return
        self.runs[(run.model, run.source_version)] = run
        log.info("model %s version %d arrived: automatic optimization queued", run.model, run.source_version)
        self._wake.set()

    async def _resume(self, run: AutoRun) -> None:
        """A run the last stop interrupted: published already (the version is there), given up, or queued."""
        try:
            published = await self._published(run)
        except Exception as exc:  # the remote repository away: queued; looked for again before it starts
            log.warning("model %s version %d: could not look for a version an interrupted automatic run "
                        "published: %s", run.model, run.source_version, exc)
            published = None
        if published is not None:
            run.state, run.published_version = RunState.PUBLISHED, published
            run.reason = "published before the last stop"
        elif run.attempts >= MAX_ATTEMPTS:
            run.state = RunState.FAILED
            run.reason = f"interrupted {run.attempts} times by a stop of the server; not started again"
        else:
            run.state, run.job_id = RunState.QUEUED, None
            log.info("model %s version %d: automatic optimization interrupted by a stop; queued again",
                     run.model, run.source_version)
        if run.state is not RunState.QUEUED:
            run.finished_at = time.time()
        await self._save(run)

    async def _published(self, run: AutoRun) -> int | None:
        """The version an earlier attempt of `run` published, if one did before a stop."""
        if self._s3 is not None:
            return await _published_in_store(self._s3, run.model, run.source_version)
        if self._mlflow is not None:
            return await published_in_registry(self._mlflow, run.model, run.source_version)
        return await asyncio.to_thread(_published_from, self._root, run.model, run.source_version)

    async def _pump(self) -> None:
        """Starts queued runs as job slots allow; woken by arrivals and finished jobs, else every RETRY_S."""
        assert self._wake is not None
        while True:
            self._wake.clear()
            for run in [r for r in self.runs.values() if r.state is RunState.QUEUED]:
                await self._try_start(run)
            try:
                await asyncio.wait_for(self._wake.wait(), RETRY_S)
            except asyncio.TimeoutError:
                pass

    async def _try_start(self, run: AutoRun) -> None:
        settings = self._settings(run.model)
        if settings is None or not settings.on_new_version:
            await self._finish(run, RunState.FAILED, "the model's [optimize] on_new_version is no longer true")
            return
        if self._jobs.is_busy(run.model):
            return  # a job of this model runs, or the server's job limit is reached: the next round tries
        key = (run.model, run.source_version)
        try:
            if run.attempts and (published := await self._published(run)) is not None:
                run.published_version = published  # the look at the last start could not reach the repository
                await self._finish(run, RunState.PUBLISHED, "published before the last stop")
                return
            root, upload = self._root, None
            if self._s3 is not None:
                mirror = self._mirrors[key] = await S3Mirror.open(self._s3, run.model, run.source_version)
                root, upload = mirror.root, mirror.upload
            elif self._mlflow is not None:
                registered = self._mirrors[key] = await MlflowMirror.open(self._mlflow, run.model, run.source_version)
                registered.alias = self._mlflow.challenger_alias if settings.rollout else self._mlflow.alias
                root, upload = registered.root, registered.upload
            assert root is not None
            request, rollout = parse_body(settings.to_body(run.source_version), run.model, root, self._trust,
                                         self._trust_uploads)
            if self._mlflow is not None:
                rollout = None  # the registry follower rolls the @challenger out
            run.attempts += 1
            job = await self._jobs.start(request, rollout, trigger="new_version", upload=upload)
        except Exception as exc:  # a bad section or a failed start is this run's outcome, not the server's
            await self._drop_mirror(key)
            await self._finish(run, RunState.FAILED, f"could not start: {exc}")
            return
        run.state, run.job_id = RunState.RUNNING, job.job_id
        await self._save(run)
        assert job.task is not None
        job.task.add_done_callback(lambda _done: self._on_job_done(run, job))

    def _settings(self, model: str) -> OptimizeSettings | None:
        served = self._loader.models.get(model)
        return served.entry.config.optimize if served is not None else None

    def _on_job_done(self, run: AutoRun, job: Job) -> None:
        """While the server stops, the record stays RUNNING: the next start queues the run again (or
        finds the version it published before the stop)."""
        if not self._is_closing:
            self._spawn(self._job_done(run, job))

    async def _drop_mirror(self, key: tuple[str, int]) -> None:
        mirror = self._mirrors.pop(key, None)
        if mirror is not None:
            await asyncio.to_thread(mirror.remove)

    async def _job_done(self, run: AutoRun, job: Job) -> None:
        await self._drop_mirror((run.model, run.source_version))
        view = job.to_dict()
        run.rows, run.winner, run.deployment = view["rows"], view["winner"], view["deployment"]
        run.published_version = view["published_version"]
        if job.state is JobState.SUCCEEDED:
            state = RunState.PUBLISHED if run.published_version is not None else RunState.NO_WINNER
            await self._finish(run, state, view["reason"])
        else:
            state = RunState.CANCELLED if job.state is JobState.CANCELLED else RunState.FAILED
            await self._finish(run, state, view["error"] or view["reason"])
        assert self._wake is not None
        self._wake.set()

    async def _finish(self, run: AutoRun, state: RunState, reason: str) -> None:
        run.state, run.reason, run.finished_at = state, reason, time.time()
        log.info("model %s version %d: automatic optimization %s%s", run.model, run.source_version,
                 state.name.lower(), f" ({reason})" if reason else "")
        await self._save(run)

    async def _save(self, run: AutoRun) -> None:
        if self._ledger is not None:
            await asyncio.to_thread(save_run, self._ledger, run)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# ---- the ledger (blocking; called through asyncio.to_thread) ------------------------------------

def save_run(ledger: Path, run: AutoRun) -> None:
    """Atomic: written under a temporary name, then renamed over the old record."""
    folder = ledger / run.model
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{run.source_version}.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(run.to_dict()))
    os.replace(tmp, folder / f"{run.source_version}.json")


def claim_run(ledger: Path, run: AutoRun) -> bool:
    """Create the run's record unless one exists (written whole, then linked into place: a link
    fails where the name exists); False when it did."""
    folder = ledger / run.model
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{run.source_version}.json.{os.getpid()}.claim"
    tmp.write_text(json.dumps(run.to_dict()))
    try:
        os.link(tmp, folder / f"{run.source_version}.json")
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def load_runs(ledger: Path) -> list[AutoRun]:
    """Every readable record; an unreadable one is logged and skipped."""
    runs = []
    for path in sorted(ledger.glob("*/*.json")) if ledger.is_dir() else []:
        try:
            if path.stat().st_size > _MAX_RUN_FILE_BYTES:
                raise ValueError("too large")
            runs.append(AutoRun.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("skipped the automatic optimization record %s: %s", path, exc)
    return runs


def _published_from(root: Path | None, model: str, source_version: int) -> int | None:
    """The version an earlier attempt of this run published, if one did before a stop."""
    if root is None or not (root / model).is_dir():
        return None
    for version in version_numbers(root / model):
        marker = root / model / str(version) / VERSION_BACKEND_FILE
        try:
            if json.loads(marker.read_text()).get("source_version") == source_version:
                return version
        except (OSError, ValueError, AttributeError):
            continue
    return None


async def _published_in_store(store: S3Store, model: str, source_version: int) -> int | None:
    """As `_published_from`, for a model in an S3 repository (its versions' optimization.json)."""
    await store.refresh(model)
    for name in await store.list_versions(model):
        if not name.isdigit() or int(name) <= source_version:
            continue
        try:
            marker = json.loads(await store.read_text(model, f"{name}/{VERSION_BACKEND_FILE}") or "{}")
        except ValueError:
            continue
        if isinstance(marker, dict) and marker.get("source_version") == source_version:
            return int(name)
    return None


def ledger_dir(state_dir: str, models_root: Path | None, remote_cache: Path | None = None) -> Path | None:
    """`[jobs] state_dir`/optimize when set, else a hidden folder in the local repository (which the
    scan skips), else `remote_cache` (an S3 repository's: beside its downloads); None when there is
    none of these (a repository runs cannot publish into)."""
    if state_dir:
        return Path(state_dir).resolve() / "optimize"
    if models_root is not None:
        return models_root / ".mlserve-optimize"
    return remote_cache

