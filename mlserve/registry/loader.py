"""The hot-swap loader: builds each version's backend and batcher, and keeps the served table in
step with the repository.

Every trigger (SIGHUP, POST /v2/repository/index, --poll-interval, startup) runs the same
reconcile pass. Passes are serialized; triggers that arrive during a pass are folded into one
more pass. Within a pass each model is synced under its own lock (the lock pin, rollback,
load/unload and eviction also take), so those never interleave with a swap of the same model.

A swap, in order (MLServer's `_reload_model` order): register the new version as LOADING (not
routable), fetch, load and warm it up off the loop, mark it READY (the router now prefers it),
then retire the old one: UNLOADING (no new requests), drain what it has queued, free it. A new
version that fails anywhere leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from mlserve.batching.guard import num_hung_threads
from mlserve.config import RegistryConfig
from mlserve.engine import Backend
from mlserve.engine.devices import CudaInventory, Inventory
from mlserve.errors import ModelLoadError, ModelNotFound, Overloaded
from mlserve.monitor.metrics import Metrics
from mlserve.monitor.stats import InferenceStatistics
from mlserve.registry import repository
from mlserve.registry.budget import Budget
from mlserve.registry.control import ExplicitControl
from mlserve.registry.gpu_placer import GpuPlacer
from mlserve.registry.placement import GpuLedger
from mlserve.registry.repository import ModelEntry
from mlserve.registry.opening import GenerativeRuntime, OpenStage, Trust, VersionFiles, open_backend, open_version
from mlserve.registry.served import Artifact, ServedModel, ServedVersion, VersionState
from mlserve.registry.serving import serve_batched, serve_generative
from mlserve.registry.store import Store, VersionStat
from mlserve.registry.upload import UploadLocks
from mlserve.registry.warmup import warmup_inputs
from mlserve.spec import ModelConfig, ModelInfo
from mlserve.state import StateStore

__all__ = ["HotSwapLoader", "ServedModel", "ServedVersion", "VersionState", "warmup_inputs"]

log = logging.getLogger("mlserve.loader")

_MAX_PARALLEL_LOADS = 4
_ROOM_WAIT_S = 30.0
_ROOM_POLL_S = 0.005


class HotSwapLoader:
    """Owns the served table: which versions of which models are loaded, routable, pinned.

    The table is private: others read it through `models` (a read-only view) and change it through
    `control` (Triton's explicit control: load, unload, pin, unpin, rollback), which works through
    the transition methods below. Hooks are registered with `watch_*`, never set from outside."""

    def __init__(self, store: Store, config: RegistryConfig, metrics: Metrics,
                 inventory: Inventory | None = None, state_store: StateStore | None = None) -> None:
        self.store = store
        self._state_store = state_store
        """The shared state store, for the response cache's shared level (None or memory: none)."""
        self._config = config
        self._metrics = metrics
        self._models: dict[str, ServedModel] = {}
        self._view: Mapping[str, ServedModel] = MappingProxyType(self._models)
        self._on_reconciled: list[Callable[[str], None]] = []
        """Called on the loop after a repository pass that changed something (the server re-freezes the heap)."""
        self._scan_errors: dict[str, str] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        """Per model, the config sent with its last load (a model.toml table), used instead of its
        model.toml until a load without one or an unload; held in memory only, as Triton does."""
        self.budget = Budget(config.max_loaded_models, int(config.max_loaded_mb * 2**20))
        self.ledger = GpuLedger(inventory or CudaInventory(), config.gpu_memory_fraction)
        """GPU memory each loaded version holds, and the device each one was placed on."""
        self.placer = GpuPlacer(self.ledger, self._view, self._evict, metrics)
        self._executor = ThreadPoolExecutor(max_workers=_MAX_PARALLEL_LOADS, thread_name_prefix="mlserve-loader")
        self._pass_lock = asyncio.Lock()
        self._load_slots = asyncio.Semaphore(_MAX_PARALLEL_LOADS)
        self._num_requested = 0
        self._num_started = 0
        self._tasks: set[asyncio.Task] = set()
        self._first_loads: dict[str, asyncio.Task] = {}
        self._room_lock = asyncio.Lock()
        self.upload_locks = UploadLocks()
        """Uploads to one model run one at a time (registry/upload.py)."""
        self._reserved: dict[str, int] = {}
        self._created = time.monotonic()
        self._on_loaded: list[Callable[[str, int, Path, ModelEntry, ModelInfo], None]] = []
        """Called on a loader thread once a version has loaded and warmed up (drift references)."""
        self._on_unloaded: list[Callable[[str, int], None]] = []
        self.held_versions: Callable[[str], set[int]] = lambda name: set()
        """Versions a rollout routes to (its stable and canary while it runs, the stable one after a
        rollback): kept loaded whatever the version policy says, or a policy serving only the newest
        would unload the stable version the rollout still splits traffic with. Set by the traffic
        manager (routing sits above the registry)."""
        self.stats = InferenceStatistics()
        """Triton-style statistics per version, fed by each version's batcher; dropped at unload."""
        self._on_unloaded.append(lambda model, version: self.stats.reset(model, str(version)))
        self.control = ExplicitControl(self)
        """Triton's explicit model control (load, unload, pin, unpin, rollback) over this loader."""

    # ---- what others read, and the hooks they register ------------------------------------------

    @property
    def models(self) -> Mapping[str, ServedModel]:
        """The served table, read-only (the data plane, routing and control read it; only the loader
        changes it)."""
        return self._view

    @property
    def scan_errors(self) -> Mapping[str, str]:
        """Model folders the last scan could not read, with the reason."""
        return MappingProxyType(self._scan_errors)

    def override_of(self, name: str) -> dict[str, Any] | None:
        """The config sent with the model's last load (a model.toml table), if one holds."""
        return self._overrides.get(name)

    def watch_loaded(self, hook: Callable[[str, int, Path, ModelEntry, ModelInfo], None]) -> None:
        """Call `hook(model, version, folder, entry, info)` on a loader thread once a version has loaded
        and warmed up, before it takes traffic."""
        self._on_loaded.append(hook)

    def watch_unloaded(self, hook: Callable[[str, int], None]) -> None:
        """Call `hook(model, version)` on the loop once a version is unloaded."""
        self._on_unloaded.append(hook)

    def watch_reconciled(self, hook: Callable[[str], None]) -> None:
        """Call `hook(source)` on the loop after a repository pass that changed something."""
        self._on_reconciled.append(hook)

    async def start(self) -> None:
        """The first pass (with --lazy: list only), the cold-start figure, then the poll timer."""
        ok = await self.reconcile("startup")
        cold_start = _process_age_s(self._created)
        self._metrics.cold_start_seconds.set(cold_start)
        ready = sum(len(m.ready_versions()) for m in self._models.values())
        log.info("cold start: %d model(s) listed, %d version(s) ready, %.2f s after process start%s",
                 len(self._models), ready, cold_start, "" if ok else " (repository unreadable; retrying on reload)")
        if self._config.poll_interval_s > 0:
            task = asyncio.get_running_loop().create_task(self._poll())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._config.poll_interval_s)
            await self.reconcile("poll")

    # ---- transitions explicit control works through (registry/control.py) -------------------------

    def admit(self, entry: ModelEntry) -> ServedModel:
        """The model's table row for this entry (added if new, its entry refreshed if not)."""
        served = self._models.setdefault(entry.name, ServedModel(entry))
        served.entry = entry
        return served

    def set_override(self, name: str, override: dict[str, Any] | None) -> bool:
        """Hold `override` (a model.toml table) for the model's next passes, or clear it with None;
        returns whether one was held before."""
        had = self._overrides.pop(name, None) is not None
        if override is not None:
            self._overrides[name] = override
        return had

    def clear_scan_error(self, name: str) -> None:
        self._scan_errors.pop(name, None)

    def count_transition(self, action: str, source: str) -> None:
        """One pin, unpin or rollback in the transitions metric."""
        self._metrics.transitions.labels(action, label(source)).inc()

    # ---- reconcile -------------------------------------------------------------------------

    def trigger(self, source: str) -> None:
        """Ask for a reconcile pass without waiting for it (signal handlers, the poll timer)."""
        task = asyncio.get_running_loop().create_task(self.reconcile(source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reconcile(self, source: str = "api") -> bool:
        """Bring the served table in line with the repository. Returns False when the repository
        could not be read (then nothing changed). A call made while a pass runs waits for the next
        pass, which serves every call made before it started: never two passes at once."""
        self._num_requested += 1
        ticket = self._num_requested
        async with self._pass_lock:
            if self._num_started >= ticket:
                return True
            self._num_started = self._num_requested
            return await self._reconcile_pass(source)

    async def _reconcile_pass(self, source: str) -> bool:
        started = time.monotonic()
        try:
            scan = await repository.scan(self.store, self._overrides)
        except Exception as exc:
            log.error("reconcile (%s): repository %s unreadable, nothing changed: %s", source,
                      self.store.describe(), exc)
            self._metrics.reconciles.labels(label(source), "unreachable").inc()
            self._metrics.repository_up.labels(self.store.kind).set(0)
            return False
        self._metrics.repository_up.labels(self.store.kind).set(1)
        self._scan_errors = scan.errors
        is_new = {name: name not in self._models for name in scan.models}
        for entry in scan.models.values():
            served = self._models.setdefault(entry.name, ServedModel(entry))
            served.entry = entry
        jobs: list[ServedModel] = []
        planned: dict[str, int] = {}
        for name in scan.models:
            if await self._should_sync(self._models[name], is_new[name], planned):
                jobs.append(self._models[name])
        await asyncio.gather(*(self._sync_locked(served, source) for served in jobs))
        # A folder that now fails to read keeps what it serves; only a folder that is gone is removed.
        gone = [n for n in self._models if n not in scan.models and n not in scan.errors]
        for name in gone:
            await self._remove_model(name, source)
        self.update_gauges()
        if jobs or gone:
            for hook in self._on_reconciled:
                hook(source)
        self._metrics.reconciles.labels(label(source), "ok").inc()
        log.info("reconcile (%s): %d model(s), %d rejected, %d synced in %.2f s", source, len(scan.models),
                 len(scan.errors), len(jobs), time.monotonic() - started)
        return True

    async def _should_sync(self, served: ServedModel, is_new: bool, planned: dict[str, int]) -> bool:
        """Whether this pass loads the model; a new one planned within the budget is added to `planned`
        (name -> estimated bytes) so the models after it see the room it takes."""
        if served.is_unloaded:
            return False
        if served.is_resident or served.pinned is not None:
            return True
        if not is_new or self._config.lazy:
            return False  # evicted or lazy: its next request loads it
        if not self.budget.is_limited:
            return True
        # eager within the budget; the rest load on their first request
        incoming = await self.estimate_bytes(served)
        if not self.budget.has_room(self._models.values(), served, incoming, planned):
            return False
        planned[served.name] = incoming
        return True

    async def _sync_locked(self, served: ServedModel, source: str) -> None:
        async with served.lock:
            await self.sync_model(served, source)

    async def sync_model(self, served: ServedModel, source: str, force: bool = False) -> None:
        """Load what the policy (and the pin) wants, move traffic, retire the rest. Hold served.lock."""
        wanted = set(served.entry.served_versions)
        if served.pinned is not None:
            wanted.add(served.pinned)
        wanted |= {v for v in self.held_versions(served.name) if v in served.entry.versions or v in served.versions}
        for version in sorted(wanted):
            await self._ensure_version(served, version, source, force)
        self._note_default(served, source)
        has_ready_wanted = any(served.versions[v].is_ready for v in wanted if v in served.versions)
        for version in [v for v in served.versions if v not in wanted]:
            if served.versions[version].is_ready and not has_ready_wanted:
                continue  # nothing new is ready: the old version keeps serving
            await self.unload_version(served, version, source)
        self._note_default(served, source)

    async def ensure_version(self, served: ServedModel, version: int, source: str) -> None:
        """Load `version` unless it is loaded and unchanged (pin and rollback). Hold served.lock."""
        await self._ensure_version(served, version, source, force=False)

    async def _ensure_version(self, served: ServedModel, version: int, source: str, force: bool) -> None:
        current = served.versions.get(version)
        try:
            stat = await self._stat(served, version)
        except Exception as exc:
            log.error("model %s version %d: cannot read it from %s (%s): %s", served.name, version,
                      self.store.describe(), source, exc)
            if current is None:
                served.versions[version] = ServedVersion(
                    served.name, version, VersionState.UNAVAILABLE, str(exc), is_retryable=True)
            return
        if current is not None and current.fingerprint == stat.fingerprint and not force:
            if current.state is not VersionState.UNAVAILABLE or not current.is_retryable:
                return  # unchanged: a ready version stays, a rejected artifact is not retried
        await self._load_version(served, version, stat, source)

    async def version_bytes(self, served: ServedModel, version: int) -> int:
        """Size of one version's files (from the store, else from where it last loaded)."""
        return (await self._stat(served, version)).num_bytes

    async def _stat(self, served: ServedModel, version: int) -> VersionStat:
        if version in served.entry.versions:
            return await self.store.stat(served.name, version)
        artifact = served.artifacts.get(version)
        if artifact is None:
            raise ModelNotFound(f"model {served.name!r} has no version {version}")
        return VersionStat(artifact.fingerprint, artifact.num_bytes)

    # ---- one version -------------------------------------------------------------------------

    async def _load_version(self, served: ServedModel, version: int, stat: VersionStat, source: str) -> None:
        old = served.versions.get(version)
        fresh = ServedVersion(served.name, version, fingerprint=stat.fingerprint, num_bytes=stat.num_bytes)
        if old is None or not old.is_ready:
            served.versions[version] = fresh  # listed as LOADING, never routed to
        async with self._load_slots:
            ok = await self._build(served, fresh, source)
        if not ok:
            if old is not None and old.is_ready:
                old.reason = f"new files rejected: {fresh.reason}"
            else:
                served.versions[version] = fresh
            return
        served.versions[version] = fresh
        served.artifacts[version] = Artifact(fresh.path, stat.fingerprint, stat.num_bytes)
        if old is not None and old is not fresh and old.is_ready:
            await self._retire(old)

    async def _build(self, served: ServedModel, fresh: ServedVersion, source: str) -> bool:
        """Fetch, then open the version (registry/opening.py: backend, trust, placement, load, warm-up),
        then serve it: a batcher (and cache) for a batched runtime, an LLM engine for a generative one.
        On failure: UNAVAILABLE with the reason, False."""
        name, version, entry = served.name, fresh.version, served.entry
        loop = asyncio.get_running_loop()
        stage, started = OpenStage("fetch"), time.monotonic()
        try:
            fresh.path = await self._fetch(served, version, fresh.fingerprint)
            trust = Trust(self._config.trust_repository or entry.config.trusted, self._config.trust_uploads)
            files = VersionFiles(f"{name}/{version}", entry.config, fresh.path, trust, self._config.max_artifact_bytes)
            requested = entry.config.device or self._config.default_device
            placement = self.placer.for_version(served, fresh, requested, may_evict=source == "request")
            runtime = await open_version(files, placement, self._executor, stage, load=self._load_backend)
            load_s = time.monotonic() - started - runtime.figures.warmup_s  # fetch and placement count as loading
        except Exception as exc:
            self.placer.release(fresh)
            self._fail(fresh, stage.name, exc, source)
            return False
        self.placer.settle(served, fresh, runtime.figures.measured_gpu_bytes)
        await loop.run_in_executor(self._executor, self._call_loaded_hooks, entry, version, fresh.path, runtime.info)
        if isinstance(runtime, GenerativeRuntime):
            fresh.serving = serve_generative(runtime, name, version, self._metrics)
        else:
            fresh.serving = serve_batched(runtime, entry.config, name, version, fresh.fingerprint, self._metrics,
                                          self.stats, self._state_store, files)
        fresh.state, fresh.reason = VersionState.READY, ""
        figures = runtime.figures
        self._record_load(fresh, load_s, figures.warmup_s)
        log.info("model %s version %d ready (%s; %s on %s, load %.3f s, warm-up %.3f s over %d run(s))", name,
                 version, source, runtime.info.platform, fresh.device, load_s, figures.warmup_s,
                 figures.warmup_runs)
        return True

    def _load_backend(self, name: str, config: ModelConfig, folder: Path, device: str, trust: Trust,
                      cap: int | None) -> Backend:
        """open_version's last step, on a loader thread (tests load on the CPU here while a stand-in
        GPU records what the load takes)."""
        return open_backend(name, config, folder, device, trust, cap)

    def _call_loaded_hooks(self, entry: ModelEntry, version: int, path: Path, info: ModelInfo) -> None:
        for hook in self._on_loaded:
            hook(entry.name, version, path, entry, info)

    async def _fetch(self, served: ServedModel, version: int, fingerprint: str):
        artifact = served.artifacts.get(version)
        if (version not in served.entry.versions and artifact is not None and artifact.fingerprint == fingerprint
                and artifact.path.is_dir()):
            return artifact.path  # gone from the repository: load again from where it was fetched to
        return await self.store.fetch(served.name, version)

    def _fail(self, fresh: ServedVersion, stage: str, exc: Exception, source: str) -> None:
        # The reason goes to clients (index, load errors): it names the version, not the server's folders.
        reason = str(exc)
        if fresh.path is not None:
            reason = reason.replace(str(fresh.path), f"{fresh.model}/{fresh.version}")
        fresh.state, fresh.reason = VersionState.UNAVAILABLE, f"{stage} failed: {reason}"
        fresh.is_retryable = stage == "fetch" or getattr(exc, "is_retryable", False)
        self._metrics.model_load_failures.labels(fresh.model).inc()
        self._metrics.load_failures_by_reason.labels(fresh.model, stage).inc()
        log.error("model %s version %d rejected (%s): %s", fresh.model, fresh.version, source, fresh.reason)

    def _record_load(self, fresh: ServedVersion, load_s: float, warmup_s: float) -> None:
        m, labels = self._metrics, (fresh.model, str(fresh.version))
        m.model_load_seconds.labels(*labels).set(load_s)
        m.model_warmup_seconds.labels(*labels).set(warmup_s)
        m.model_ready.labels(*labels).set(1)

    async def _retire(self, served_version: ServedVersion) -> None:
        """Stop taking requests, let queued ones finish, then free the engine."""
        served_version.state = VersionState.UNLOADING
        serving = served_version.serving
        if serving is not None and not served_version.is_freed:
            await serving.stop()
            served_version.is_freed = True  # its serving stays readable (info, lengths) for answers still going out
            await asyncio.get_running_loop().run_in_executor(self._executor, serving.runtime.close)
        self.placer.release(served_version)

    async def unload_version(self, served: ServedModel, version: int, source: str) -> None:
        served_version = served.versions[version]
        was_ready = served_version.is_ready
        await self._retire(served_version)
        served.versions.pop(version, None)
        self._metrics.forget_version(served.name, str(version))
        try:
            self._metrics.model_warmup_seconds.remove(served.name, str(version))
        except KeyError:
            pass
        for hook in self._on_unloaded:
            hook(served.name, version)
        if was_ready:
            log.info("model %s version %d unloaded (%s)", served.name, version, source)

    async def _remove_model(self, name: str, source: str) -> None:
        served = self._models[name]
        async with served.lock:
            for version in list(served.versions):
                await self.unload_version(served, version, source)
        self._models.pop(name, None)
        self._overrides.pop(name, None)
        log.info("model %s removed (%s)", name, source)

    def _note_default(self, served: ServedModel, source: str) -> None:
        current = served.default_version()
        if current is not None and (not served.history or served.history[-1] != current):
            served.history.append(current)
            del served.history[:-16]
            log.info("model %s: version %d now answers unversioned requests (%s)", served.name, current, source)

    def update_gauges(self) -> None:
        """Resident models and bytes; O(models), so computed per pass and per scrape, not per load."""
        self._metrics.loaded_models.set(self.budget.num_resident(self._models.values()))
        self._metrics.loaded_bytes.set(self.budget.resident_bytes(self._models.values()))

    # ---- first request, eviction ---------------------------------------------------------------

    async def ensure_loaded(self, name: str) -> None:
        """Called before routing: a known model with nothing ready (lazy, evicted) is loaded now; the
        first request waits for it and later ones join the same load."""
        served = self._models.get(name)
        if served is None:
            return
        served.last_used = time.monotonic()
        if served.is_unloaded or served.default_version() is not None or _is_rejected(served):
            return
        task = self._first_loads.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._first_load(served))
            self._first_loads[name] = task
            task.add_done_callback(lambda _done, key=name: self._first_loads.pop(key, None))
        served.num_waiting += 1
        try:
            await asyncio.shield(task)
        finally:
            served.num_waiting -= 1  # the caller routes and queues before the loop runs anything else

    async def _first_load(self, served: ServedModel) -> None:
        try:
            async with self.room(served, await self.estimate_bytes(served), is_strict=False):
                async with served.lock:
                    if served.default_version() is None and not served.is_unloaded:
                        await self.sync_model(served, "request")
        finally:
            served.last_used = time.monotonic()

    @contextlib.asynccontextmanager
    async def room(self, served: ServedModel, incoming_bytes: int, is_strict: bool):
        """Make room for `served` within the budget and hold it (reserved) while the block loads."""
        async with self._room_lock:
            await self._make_room(served, incoming_bytes, is_strict)
            self._reserved[served.name] = incoming_bytes
        try:
            yield
        finally:
            self._reserved.pop(served.name, None)

    async def estimate_bytes(self, served: ServedModel) -> int:
        total = 0
        for version in served.entry.served_versions:
            try:
                total += (await self._stat(served, version)).num_bytes
            except Exception:
                pass  # the load itself will report it
        return total

    async def _make_room(self, incoming: ServedModel, incoming_bytes: int, is_strict: bool = False) -> None:
        """Evict least recently used idle models until `incoming` fits. When every resident model is
        busy, wait for one to go idle (requests finish); past the wait limit, load over the budget.
        Strict (admin load and pin): refuse at once, saying why, instead of waiting or going over."""
        if is_strict and self.budget.max_bytes and incoming_bytes > self.budget.max_bytes:
            raise ModelLoadError(
                f"model {incoming.name!r} needs {incoming_bytes / 2**20:.3f} MiB, more than the whole "
                f"--max-loaded-mb budget of {self.budget.max_bytes / 2**20:.3f} MiB")
        waited_since = None
        while not self.budget.has_room(self._models.values(), incoming, incoming_bytes, self._reserved):
            victim = self.budget.victim(self._models.values(), incoming, self._reserved)
            if victim is None and is_strict:
                busy = sorted(m.name for m in self._models.values() if m.is_resident and m.name != incoming.name)
                raise Overloaded(f"no room for model {incoming.name!r} within the memory budget: every other "
                                 f"resident model is busy ({', '.join(busy)}); retry when one is idle")
            if victim is None:
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since > _ROOM_WAIT_S:
                    log.warning("model %s loads over the budget: every resident model stayed busy", incoming.name)
                    return
                await asyncio.sleep(_ROOM_POLL_S)
                continue
            await self._evict(victim, f"to make room for {incoming.name}")

    async def _evict(self, victim: ServedModel, why: str) -> None:
        """Unload every version of an idle model (it loads again on its next request)."""
        async with victim.lock:
            for version in list(victim.versions):
                await self.unload_version(victim, version, "evict")
        self._metrics.model_evictions.inc()
        log.info("model %s evicted (least recently used) %s", victim.name, why)

    @staticmethod
    def num_hung_workers() -> int:
        """Model workers abandoned as hung and still running (the process must not wait on them at exit)."""
        return num_hung_threads()

    async def close(self) -> None:
        """Drain every version and free every engine (graceful shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for name in list(self._models):
            await self._remove_model(name, "shutdown")
        self._executor.shutdown(wait=False)
        await self.store.close()


def label(source: str) -> str:
    """The kind of trigger (signal, api, poll, ...) without who asked, for bounded metric labels."""
    return source.split(" ", 1)[0]


def _is_rejected(served: ServedModel) -> bool:
    """Every version it has was rejected for its files: loading again would fail the same way."""
    return bool(served.versions) and all(
        sv.state is VersionState.UNAVAILABLE and not sv.is_retryable for sv in served.versions.values()
    )


def _process_age_s(fallback_start: float) -> float:
    """Seconds since this process started (Linux /proc), else since the loader was made."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - fallback_start
