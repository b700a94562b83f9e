"""The drift view, and the hooks that connect the monitor to the loader, the service and /metrics."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from mlserve.dataplane import DataPlane
from mlserve.errors import ModelNotFound
from mlserve.monitor.collectors import VersionStatus
from mlserve.monitor.hub import Monitor
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.repository import ModelEntry
from mlserve.routing.service import InferenceService
from mlserve.server.response import json_response
from mlserve.spec import ModelInfo


def _version_statuses(plane: DataPlane) -> list[VersionStatus]:
    out = []
    for served in plane.served():
        for version, sv in list(served.versions.items()):
            in_flight = sv.batcher.num_in_flight if sv.batcher is not None else 0
            capacity = served.entry.config.batching.max_queue_size
            out.append(VersionStatus(served.name, str(version), sv.state.name, in_flight, capacity))
    return out


class DriftHandlers:
    """GET /v2/models/{model}[/versions/{version}]/drift: PSI and KS per feature, top drifters, status."""

    def __init__(self, monitor: Monitor, service: InferenceService) -> None:
        self._monitor = monitor
        self._service = service

    async def drift(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        if version:
            served = self._service.router.version(name, version)
        else:
            served = self._service.router.pick(name, None)
        monitor = self._monitor.drift(name, str(served.version))
        if monitor is None:
            raise ModelNotFound(
                f"model {name!r} version {served.version} has no drift statistics "
                "(drift is off for it, or its reference could not be read: see the server log)"
            )
        return json_response(monitor.report().to_dict())


def connect_monitor(monitor: Monitor, metrics: Metrics, loader: HotSwapLoader, service: InferenceService,
                    plane: DataPlane) -> None:
    """Hook the monitor to version loads and answered requests, and export its metrics."""
    service.monitor = monitor

    def loaded(model: str, version: int, path: Path, entry: ModelEntry, info: ModelInfo) -> None:
        outputs = tuple(s.name for s in info.outputs)
        monitor.add_version(model, str(version), path, entry.config.drift, outputs)

    loader.watch_loaded(loaded)
    loader.watch_unloaded(lambda model, version: monitor.remove_version(model, str(version)))
    metrics.watch_versions(lambda: _version_statuses(plane))
    metrics.watch_drift(monitor.drift_reports)
    metrics.watch_gpu()
