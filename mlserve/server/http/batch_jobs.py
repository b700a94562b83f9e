"""`/v2/batch/jobs`: start, list, show and cancel in-server batch jobs (mlserve/jobs runs them and
shares each version with live traffic)."""

from __future__ import annotations

from aiohttp import web

from mlserve.config import Config
from mlserve.dataplane import DataPlane, token_limits
from mlserve.jobs.manager import JobManager
from mlserve.jobs.metrics import JobsCollector
from mlserve.jobs.s3files import S3Files
from mlserve.jobs.sharing import resolver
from mlserve.monitor.metrics import Metrics
from mlserve.server.http.openai.protocol import parse_generation
from mlserve.server.http.json_body import read_json
from mlserve.server.response import json_response
from mlserve.state import StateStore

JOBS = web.AppKey("batch_jobs", JobManager)

class BatchJobHandlers:
    """Parse, call the manager, encode."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    async def create(self, request: web.Request) -> web.Response:
        record = await self._manager.submit(await read_json(request))
        return json_response(self._manager.view(record), 201)

    async def list(self, request: web.Request) -> web.Response:
        if not self._manager.is_enabled:
            return json_response({"jobs": [], "enabled": False})
        records = await self._manager.list()
        return json_response({"jobs": [self._manager.view(r) for r in records], "enabled": True})

    async def show(self, request: web.Request) -> web.Response:
        return json_response(self._manager.view(await self._manager.get(request.match_info["job_id"])))

    async def cancel(self, request: web.Request) -> web.Response:
        return json_response(self._manager.view(await self._manager.cancel(request.match_info["job_id"])))


def add_batch_job_routes(app: web.Application, config: Config, plane: DataPlane,
                         state_store: StateStore, metrics: Metrics) -> None:
    """Routes, the manager's start and stop (a cleanup context added after the services' own, so jobs
    start once models are loaded and stop before they unload), and its metrics. It takes the services
    it uses one by one (not app.py's `Services`), so it need not import the module that imports it."""
    s3 = S3Files(config.registry.s3_endpoint or None, config.registry.s3_region or None)
    manager = JobManager(config.jobs, resolver(plane, token_limits(config.limits), parse_generation), state_store,
                         s3=s3)
    app[JOBS] = manager
    handlers = BatchJobHandlers(manager)
    app.add_routes([
        web.post("/v2/batch/jobs", handlers.create),
        web.get("/v2/batch/jobs", handlers.list),
        web.get("/v2/batch/jobs/{job_id}", handlers.show),
        web.delete("/v2/batch/jobs/{job_id}", handlers.cancel),
    ])
    metrics.registry.register(JobsCollector(manager))

    async def lifetime(app: web.Application):
        await manager.start()
        yield
        await manager.close()

    app.cleanup_ctx.append(lifetime)
