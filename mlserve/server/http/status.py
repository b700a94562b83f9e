"""The status page: `GET /` and `/ui/*` serve the static files shipped in mlserve/server/http/ui/,
`GET /status` the overview JSON they (and `mlserve status`) read, and a feature's reference vs live
histogram for the drift panel.

The page itself holds no data, so `/` and `/ui/*` are open (auth.py) while `/status` and the
histogram need an `infer` key like any other data route; admin actions on the page call the
existing /admin routes, which need an admin key. The composition root (app.py) routes the
handlers and runs the HistorySampler as one of its stages.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
from aiohttp import web

from mlserve.config import MonitorConfig
from mlserve.dataplane import DataPlane
from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.monitor.history import MetricsHistory
from mlserve.monitor.metrics import Metrics
from mlserve.server.middleware import TENANT
from mlserve.server.http.overview import Caller, OverviewSources, build_overview

log = logging.getLogger("mlserve.status")

UI_DIR = Path(__file__).parent / "ui"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# The page loads nothing from anywhere else and cannot be framed (its admin buttons act).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers={"Cache-Control": "no-store"})


class StatusHandlers:
    """The page's files, the overview and the drift histogram."""

    def __init__(self, sources: OverviewSources, auth_on: bool, admin_served: bool) -> None:
        self._sources = sources
        self._auth_on = auth_on
        self._admin_served = admin_served
        # Read once: a few small files that only change with the package.
        self._files = {p.name: (p.read_bytes(), CONTENT_TYPES[p.suffix])
                       for p in UI_DIR.iterdir() if p.suffix in CONTENT_TYPES}

    async def page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.Response:
        found = self._files.get(name)
        if found is None:
            raise ModelNotFound(f"no file {name!r} in the status page")
        body, content_type = found
        return web.Response(body=body, content_type=content_type, headers=PAGE_HEADERS)

    async def session(self, request: web.Request) -> web.Response:
        """Open: whether the page must ask for a key before it reads /status."""
        return _json({"auth": self._auth_on})

    async def overview(self, request: web.Request) -> web.Response:
        return _json(build_overview(self._sources, self._caller(request)))

    def _caller(self, request: web.Request) -> Caller:
        key = request.get(TENANT)
        if not self._auth_on:
            return Caller(False, self._admin_served, None)
        is_admin = key is not None and key.has_scope("admin")
        return Caller(True, self._admin_served and is_admin, key.name if key is not None else None)

    async def histogram(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info["version"]
        feature = request.query.get("feature")
        unknown = set(request.query) - {"feature"}
        if not feature or unknown:
            raise InvalidInput("give exactly one query parameter: ?feature=NAME"
                               + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        monitor = self._sources.monitor
        drift = monitor.drift(model, version) if monitor is not None else None
        if drift is None:
            raise ModelNotFound(f"model {model!r} version {version} has no drift statistics")
        histogram = drift.histogram(feature)
        if histogram is None:
            raise ModelNotFound(f"model {model!r} version {version} has no reference for feature {feature!r} yet")
        return _json({"model": model, "version": version, **histogram.to_dict()})


def _queue_depths(plane: DataPlane) -> dict[tuple[str, str], int]:
    """Every ready version and the requests waiting in its queue now."""
    return {
        (served.name, str(v)): sv.num_queued
        for served in plane.served() for v, sv in list(served.versions.items())
        if sv.is_ready
    }


class HistorySampler:
    """Owns the metrics history and the task that adds a point every interval; the reading runs
    on a worker thread (it walks every per-version family), the queue depths on the loop."""

    def __init__(self, config: MonitorConfig, metrics: Metrics, plane: DataPlane) -> None:
        self.history = MetricsHistory(metrics, config.status_interval_s, config.status_points)
        self._plane = plane
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.history.sample, _queue_depths(self._plane))
            except Exception:  # one failed reading must not end the history
                log.exception("status history: a metrics reading failed")
            await asyncio.sleep(self.history.interval_s)
