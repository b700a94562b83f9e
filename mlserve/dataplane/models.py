"""The model side of the server, built in one place: the repository (a folder, S3 or MLflow), the
loader over it, the inference service, the two doors (`DataPlane`, `ModelControl`) and the hooks
that tie the loader to the monitor and the optimizer. The composition root (server/app.py) holds a
`Models` and never the registry's or routing's own types, so no protocol module reaches past the doors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlserve.config import Config, JobsConfig
from mlserve.dataplane.bandit import BanditDriver
from mlserve.dataplane.control import ModelControl
from mlserve.dataplane.mlflow_follower import MlflowFollower
from mlserve.dataplane.plane import DataPlane
from mlserve.monitor.collectors import VersionStatus
from mlserve.monitor.hub import Monitor
from mlserve.monitor.metrics import Metrics
from mlserve.optimize.auto import AutoOptimizer, ledger_dir
from mlserve.optimize.jobs import OptimizeJobs
from mlserve.optimize.metrics import OptimizeCollector
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.registry.mlflow import MlflowStore
from mlserve.registry.s3 import S3Store
from mlserve.registry.repository import ModelEntry
from mlserve.registry.store import Store
from mlserve.registry.stores import open_store
from mlserve.registry.sweep import sweep_store
from mlserve.routing.service import InferenceService
from mlserve.spec import ModelInfo
from mlserve.state import StateStore


@dataclass(slots=True)
class Models:
    """The loader and the doors over it; what the server starts, stops and asks about its repository."""

    loader: HotSwapLoader
    service: InferenceService
    """Routes, batches and answers; the data plane's inference calls are its methods."""
    plane: DataPlane
    metrics: Metrics

    @classmethod
    def open(cls, config: Config, metrics: Metrics, shared: StateStore, store: Store | None = None) -> Models:
        loader = HotSwapLoader(store or open_store(config.registry.models, config.registry), config.registry,
                               metrics, state_store=shared)
        service = InferenceService(loader, metrics, shared)
        return cls(loader, service, DataPlane(loader, service), metrics)

    def control(self, shared: StateStore) -> ModelControl:
        return ModelControl(shared, self.loader, self.service.traffic)

    def bandit(self, shared: StateStore, control: ModelControl) -> BanditDriver:
        """Moves the split of every model whose [traffic] has a bandit (under a lease, through `control`)."""
        return BanditDriver(shared, self.service.traffic, control)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Debris a crash left in the repository (staging, dead servers' job folders), before the scan."""
        await sweep_store(self.loader.store)

    async def start(self, on_reconciled: Callable[[str], None] | None = None) -> None:
        if on_reconciled is not None:
            self.loader.watch_reconciled(on_reconciled)
        await self.loader.start()

    async def close(self) -> None:
        await self.loader.close()

    async def close_traffic(self) -> None:
        """Stop the traffic tasks (shadows, rollouts) before the loader drains the versions they use."""
        await self.service.traffic.close()

    def describe(self) -> str:
        return self.loader.store.describe()

    def trigger(self, source: str) -> None:
        """Reconcile soon (SIGHUP)."""
        self.loader.trigger(source)

    def num_hung_workers(self) -> int:
        return self.loader.num_hung_workers()

    def update_gauges(self) -> None:
        self.loader.update_gauges()

    @property
    def local_root(self) -> Path | None:
        """The repository's folder when it is a local one (optimize publishes only there)."""
        return self.loader.store.root if isinstance(self.loader.store, LocalStore) else None

    # -- hooks -------------------------------------------------------------------------------------

    def connect_monitor(self, monitor: Monitor, metrics: Metrics) -> None:
        """Hook the monitor to version loads and answered requests, and export its metrics."""
        self.service.monitor = monitor

        def loaded(model: str, version: int, path: Path, entry: ModelEntry, info: ModelInfo) -> None:
            outputs = tuple(s.name for s in info.outputs)
            monitor.add_version(model, str(version), path, entry.config.drift, outputs)

        self.loader.watch_loaded(loaded)
        self.loader.watch_unloaded(lambda model, version: monitor.remove_version(model, str(version)))
        metrics.watch_versions(lambda: _version_statuses(self.plane))
        metrics.watch_drift(monitor.drift_reports)
        metrics.watch_gpu()

    def optimize_jobs(self, control: ModelControl, config: JobsConfig, store: StateStore | None = None) -> OptimizeJobs:
        """The job manager, publishing through the control door (a rollout it starts is shared and
        driven like one started by hand); its children yield to the data plane's live load, which
        /metrics shows."""
        jobs = OptimizeJobs(control.deploy, config, store, is_serving=self.plane.is_serving)
        self.metrics.registry.register(OptimizeCollector(jobs))
        return jobs

    def mlflow_follower(self, control: ModelControl) -> MlflowFollower | None:
        """With an mlflow:// repository: rolls each @challenger out over @champion through `control`."""
        store = self.loader.store
        return MlflowFollower(store, self.loader, self.service.traffic, control) if isinstance(store, MlflowStore) else None

    def auto_optimizer(self, jobs: OptimizeJobs, config: Config) -> AutoOptimizer:
        """Automatic runs publish into a local repository, upload to an S3 one, or register in an
        MLflow registry; their ledger sits beside the job records (else in the repository, or beside
        a remote repository's downloads)."""
        root, store = self.local_root, self.loader.store
        remote_cache = None
        cache = Path(config.registry.cache_dir).expanduser() if config.registry.cache_dir else \
            Path.home() / ".cache" / "mlserve"
        if isinstance(store, S3Store):
            remote_cache = cache / "optimize-runs" / store.bucket / store.prefix
        elif isinstance(store, MlflowStore):
            remote_cache = cache / "optimize-runs" / "mlflow" / store.cache_name
        return AutoOptimizer(jobs, self.loader, root, ledger_dir(config.jobs.state_dir, root, remote_cache),
                             config.registry.trust_repository, config.registry.trust_uploads)


def _version_statuses(plane: DataPlane) -> list[VersionStatus]:
    out = []
    for served in plane.served():
        for version, sv in list(served.versions.items()):
            capacity = served.entry.config.batching.max_queue_size
            out.append(VersionStatus(served.name, str(version), sv.state.name, sv.num_in_flight, capacity))
    return out
