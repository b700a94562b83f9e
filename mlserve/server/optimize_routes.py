"""Optimize jobs over HTTP: POST /admin/models/{m}/optimize starts one, GET /admin/jobs/{id}
reports its progress, results table and published version, DELETE cancels it.

A published version is loaded through the loader like any other; with `rollout` in the body it
becomes the canary of a rollout through the traffic manager. The source version is pinned while
the new one loads, so it takes no traffic before the rollout's first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.optimize.jobs import OptimizeJobs
from mlserve.optimize.request import parse_body
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.registry.safety import check_model_name

JOBS = web.AppKey("optimize_jobs", OptimizeJobs)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class OptimizeHandlers:
    """Parses, calls the job manager, answers with the job."""

    def __init__(self, loader: HotSwapLoader, traffic) -> None:
        self._loader, self._traffic = loader, traffic
        self.jobs = OptimizeJobs(self._deploy)

    def _root(self) -> Path:
        store = self._loader.store
        if not isinstance(store, LocalStore):
            raise InvalidInput("optimize publishes into a local model repository; this one is "
                               f"{store.describe()} (run `mlserve optimize` beside the bucket instead)")
        return store.root

    async def start(self, request: web.Request) -> web.Response:
        name = check_model_name(request.match_info["model"])
        body = await request.read()
        try:
            raw = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"malformed JSON: {exc}") from None
        root = self._root()
        if name not in self._loader.models:
            raise ModelNotFound(f"unknown model {name!r}")
        job_request, rollout = parse_body(raw, name, root)
        job = await self.jobs.start(job_request, rollout)
        return _json(job.to_dict(), 202)

    async def get(self, request: web.Request) -> web.Response:
        return _json(self.jobs.get(request.match_info["job"]).to_dict())

    async def cancel(self, request: web.Request) -> web.Response:
        return _json((await self.jobs.cancel(request.match_info["job"])).to_dict())

    async def _deploy(self, model: str, version: int, rollout: dict | None) -> dict:
        """Load the new version; with a rollout, keep the source serving until the canary's first step."""
        who = "optimize"
        if rollout is None:
            served = await self._loader.load(model, who)
            return {"loaded": version in served.ready_versions(), "serving": served.default_version()}
        current = self._loader.models[model].default_version()
        await self._loader.pin(model, current, who)
        try:
            await self._loader.load(model, who)
            view = self._traffic.start_rollout(model, {**rollout, "version": version})
        finally:
            await self._loader.unpin(model, who)
        return {"loaded": True, "rollout": view.get("rollout")}


def add_optimize_routes(app: web.Application, loader: HotSwapLoader, traffic) -> None:
    handlers = OptimizeHandlers(loader, traffic)
    app[JOBS] = handlers.jobs
    r = app.router
    r.add_post("/admin/models/{model}/optimize", handlers.start)
    r.add_get("/admin/jobs/{job}", handlers.get)
    r.add_delete("/admin/jobs/{job}", handlers.cancel)

    async def close_jobs(app: web.Application) -> None:
        await app[JOBS].close()

    app.on_shutdown.append(close_jobs)
