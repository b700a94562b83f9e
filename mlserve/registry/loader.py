"""The hot-swap loader: builds each version's backend and batcher, and keeps the served table in
step with the repository."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

import numpy as np

from mlserve.batching.dynamic import BatchStats, DynamicBatcher
from mlserve.config import RegistryConfig
from mlserve.engine import Backend, create_backend, infer_backend_name
from mlserve.errors import ModelLoadError
from mlserve.monitor.metrics import Metrics
from mlserve.registry import repository
from mlserve.registry.repository import ModelEntry
from mlserve.registry.spec import DATATYPE_TO_NUMPY, ModelInfo, TensorSpec
from mlserve.registry.store import Store

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import LLMEngine

log = logging.getLogger("mlserve.loader")


class VersionState(Enum):
    LOADING = auto()
    READY = auto()
    UNLOADING = auto()
    UNAVAILABLE = auto()


@dataclass(slots=True)
class ServedVersion:
    """One version of one model as the server holds it, whatever its state."""

    model: str
    version: int
    state: VersionState = VersionState.LOADING
    reason: str = ""
    fingerprint: str = ""
    backend: Backend | None = None
    batcher: DynamicBatcher | None = None
    info: ModelInfo | None = None
    llm_engine: LLMEngine | None = None
    """The continuous batcher of a generation model (backend llm); None for the others."""

    @property
    def is_ready(self) -> bool:
        return self.state is VersionState.READY


@dataclass(slots=True)
class ServedModel:
    """A model and its versions; the router picks among the ready ones."""

    entry: ModelEntry
    versions: dict[int, ServedVersion] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    def ready_versions(self) -> list[int]:
        return sorted(v for v, sv in self.versions.items() if sv.is_ready)


def warmup_inputs(info: ModelInfo) -> dict[str, np.ndarray] | None:
    """One row of zeros per input, or None when a non-batch dimension is unknown."""
    inputs = {}
    for spec in info.inputs:
        dims = list(spec.shape)
        if info.max_batch_size > 0:
            dims[0] = 1
        if any(d < 0 for d in dims):
            return None
        inputs[spec.name] = _zeros(spec, tuple(dims))
    return inputs


def _zeros(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.datatype == "BYTES":
        array = np.empty(shape, dtype=object)
        array.fill(b"")
        return array
    return np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])


class HotSwapLoader:
    """Owns the served table. A new version is loaded and warmed up while the old one serves, then
    traffic moves (the router picks ready versions) and the old one drains and unloads."""

    def __init__(self, store: Store, config: RegistryConfig, metrics: Metrics) -> None:
        self.store = store
        self._config = config
        self._metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.scan_errors: dict[str, str] = {}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlserve-loader")
        self._lock: asyncio.Lock | None = None

    async def reconcile(self) -> None:
        """Bring the served table in line with the repository; one pass at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                scan = await loop.run_in_executor(self._executor, repository.scan, self.store)
            except Exception as exc:
                log.error("repository %s unreadable, nothing changed: %s", self.store.describe(), exc)
                return
            self.scan_errors = scan.errors
            for entry in scan.models.values():
                await self._reconcile_model(entry)
            for name in [n for n in self.models if n not in scan.models]:
                await self._remove_model(name)

    async def _reconcile_model(self, entry: ModelEntry) -> None:
        served = self.models.get(entry.name)
        if served is None:
            served = self.models[entry.name] = ServedModel(entry)
        served.entry = entry
        wanted = entry.served_versions
        for version in wanted:
            current = served.versions.get(version)
            fingerprint = await self._fingerprint(entry.name, version)
            if current is not None and current.fingerprint == fingerprint and current.state is not VersionState.UNAVAILABLE:
                continue
            await self._load_version(served, version, fingerprint)
        for version in [v for v in served.versions if v not in wanted]:
            await self._unload_version(served, version)

    async def _fingerprint(self, model: str, version: int) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.store.fingerprint, model, version)

    async def _load_version(self, served: ServedModel, version: int, fingerprint: str) -> None:
        old = served.versions.get(version)
        fresh = ServedVersion(served.name, version, fingerprint=fingerprint)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            backend = await loop.run_in_executor(self._executor, self._build_backend, served.entry, version)
        except Exception as exc:
            fresh.state, fresh.reason = VersionState.UNAVAILABLE, str(exc)
            self._metrics.model_load_failures.labels(served.name).inc()
            log.error("model %s version %d failed to load: %s", served.name, version, exc)
            if old is None or not old.is_ready:
                served.versions[version] = fresh
            return
        fresh.backend, fresh.info = backend, backend.info
        fresh.batcher = DynamicBatcher(
            backend.infer, served.entry.config.batching, f"{served.name}-{version}",
            instances=served.entry.config.instances, observer=self._observer(served.name, str(version)),
        )
        fresh.batcher.start()
        if getattr(backend, "is_generative", False):
            fresh.llm_engine = self._start_llm_engine(backend, served.name, version)
        fresh.state = VersionState.READY
        served.versions[version] = fresh
        elapsed = time.monotonic() - started
        self._metrics.model_load_seconds.labels(served.name, str(version)).set(elapsed)
        self._metrics.model_ready.labels(served.name, str(version)).set(1)
        log.info("model %s version %d ready (%s, %.2f s)", served.name, version, fresh.info.platform, elapsed)
        if old is not None and old.is_ready:
            await self._retire(old)

    def _start_llm_engine(self, backend: Backend, model: str, version: int) -> LLMEngine:
        from mlserve.batching.llm_engine import LLMEngine
        from mlserve.batching.llm_metrics import LLMObserver

        engine = LLMEngine(backend, f"{model}-{version}", LLMObserver(self._metrics, model, str(version)))
        engine.start()
        return engine

    def _build_backend(self, entry: ModelEntry, version: int) -> Backend:
        """Runs on the loader thread: fetch, load and warm up, so the loop never waits on it."""
        path = self.store.local_path(entry.name, version)
        name = entry.config.backend or infer_backend_name(path)
        if name is None:
            raise ModelLoadError(f"{entry.name}/{version}: no model file found and no backend set in model.toml")
        backend = create_backend(name, entry.config, trust_repository=self._config.trust_repository)
        backend.load(path, entry.config.device or self._config.default_device)
        sample = warmup_inputs(backend.info)
        if sample is not None:
            try:
                backend.infer(sample)
            except Exception as exc:
                backend.unload()
                raise ModelLoadError(f"warm-up failed: {type(exc).__name__}: {exc}") from exc
        return backend

    async def _retire(self, served_version: ServedVersion) -> None:
        """Stop taking requests, let queued ones finish, then free the engine."""
        served_version.state = VersionState.UNLOADING
        if served_version.llm_engine is not None:
            await served_version.llm_engine.stop()
        if served_version.batcher is not None:
            await served_version.batcher.stop()
        if served_version.backend is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, served_version.backend.unload)

    async def _unload_version(self, served: ServedModel, version: int) -> None:
        served_version = served.versions[version]
        was_ready = served_version.is_ready
        await self._retire(served_version)
        served.versions.pop(version, None)
        self._metrics.forget_version(served.name, str(version))
        if was_ready:
            log.info("model %s version %d unloaded", served.name, version)

    async def _remove_model(self, name: str) -> None:
        served = self.models[name]
        for version in list(served.versions):
            await self._unload_version(served, version)
        del self.models[name]

    def _observer(self, model: str, version: str):
        m = self._metrics
        batch_size = m.batch_size.labels(model, version)
        batch_requests = m.batch_requests.labels(model, version)
        queue = m.queue_latency.labels(model, version)
        compute = m.compute_latency.labels(model, version)

        def observe(stats: BatchStats) -> None:
            batch_size.observe(stats.num_rows)
            batch_requests.observe(stats.num_requests)
            compute.observe(stats.compute_s)
            for waited in stats.queue_s:
                queue.observe(waited)

        return observe

    async def close(self) -> None:
        """Drain every version and free every engine (graceful shutdown)."""
        for name in list(self.models):
            await self._remove_model(name)
        self._executor.shutdown(wait=False)
