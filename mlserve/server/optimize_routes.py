"""Optimize jobs over HTTP: POST /admin/models/{m}/optimize starts one, GET /admin/jobs/{id}
reports its progress, results table and published version, DELETE cancels it.

A published version is loaded through the loader like any other; with `rollout` in the body it
becomes the canary of a rollout through the traffic manager. The source version is pinned while
the new one loads, so it takes no traffic before the rollout's first step.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from aiohttp import web

from mlserve.config import Config, JobsConfig
from mlserve.dataplane import DataPlane
from mlserve.errors import InvalidInput
from mlserve.optimize.auto import AutoOptimizer, ledger_dir
from mlserve.optimize.jobs import OptimizeJobs
from mlserve.optimize.request import parse_body
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.registry.safety import check_model_name
from mlserve.server.response import json_response
from mlserve.state import StateStore


def optimize_jobs(loader: HotSwapLoader, plane: DataPlane, control, config: JobsConfig,
                  store: StateStore | None = None) -> OptimizeJobs:
    """The job manager, with publishing wired to the loader and the rollout API (the control door,
    so a rollout it starts is shared and driven like one started by hand)."""

    async def deploy(model: str, version: int, rollout: dict | None) -> dict:
        """Load the new version; with a rollout, keep the source serving until the canary's first step."""
        who = "optimize"
        if rollout is None:
            served = await loader.control.load(model, who)
            return {"loaded": version in served.ready_versions(), "serving": served.default_version()}
        current = plane.model(model).default_version()
        await loader.control.pin(model, current, who)
        try:
            await loader.control.load(model, who)
            view = await control.start_rollout(model, {**rollout, "version": version})
        finally:
            await loader.control.unpin(model, who)
        return {"loaded": True, "rollout": view.get("rollout")}

    return OptimizeJobs(deploy, config, store)


def auto_optimizer(jobs: OptimizeJobs, loader: HotSwapLoader, config: Config) -> AutoOptimizer:
    """Automatic runs publish into a local repository; their ledger sits beside the job records."""
    root = loader.store.root if isinstance(loader.store, LocalStore) else None
    return AutoOptimizer(jobs, loader, root, ledger_dir(config.jobs.state_dir, root),
                         config.registry.trust_repository, config.registry.trust_uploads)


class OptimizeHandlers:
    """Parses, calls the job manager, answers with the job."""

    def __init__(self, jobs: OptimizeJobs, loader: HotSwapLoader, plane: DataPlane, trust_repository: bool,
                 auto: AutoOptimizer | None = None, traffic=None, trust_uploads: bool = False) -> None:
        self._jobs, self._loader, self._plane, self._trust_repository = jobs, loader, plane, trust_repository
        self._auto, self._traffic, self._trust_uploads = auto, traffic, trust_uploads

    def _root(self) -> Path:
        store = self._loader.store
        if not isinstance(store, LocalStore):
            raise InvalidInput("the optimize route publishes into a local model repository; this one is "
                               f"{store.describe()} (run `mlserve optimize --models s3://...` instead)")
        return store.root

    async def start(self, request: web.Request) -> web.Response:
        name = check_model_name(request.match_info["model"])
        body = await request.read()
        try:
            raw = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"malformed JSON: {exc}") from None
        root = self._root()
        self._plane.model(name)
        job_request, rollout = parse_body(raw, name, root, self._trust_repository, self._trust_uploads)
        job = await self._jobs.start(job_request, rollout)
        return json_response(job.to_dict(), 202)

    async def runs(self, request: web.Request) -> web.Response:
        """The model's automatic runs (queued, running, published, no_winner, failed, cancelled) with
        the rollout the last published one started (its status says promoted or rolled back)."""
        name = check_model_name(request.match_info["model"])
        self._plane.model(name)
        rollout = self._traffic.rollout_view(name)["rollout"] if self._traffic is not None else None
        runs = self._auto.views(name) if self._auto is not None else []
        return json_response({"model": name, "runs": runs, "rollout": rollout})

    async def get(self, request: web.Request) -> web.Response:
        return json_response(await self._jobs.view(request.match_info["job"]))

    async def cancel(self, request: web.Request) -> web.Response:
        return json_response(await self._jobs.cancel_anywhere(request.match_info["job"]))


def optimize_routes(jobs: OptimizeJobs, loader: HotSwapLoader, plane: DataPlane, trust_repository: bool,
                    auto: AutoOptimizer | None = None, traffic=None, trust_uploads: bool = False) -> list[web.RouteDef]:
    """`trust_repository`: the server's own setting; a model's `trusted = true` counts too.
    `trust_uploads`: the server's; an uploaded TorchScript or .pt2 version is optimized only with it."""
    handlers = OptimizeHandlers(jobs, loader, plane, trust_repository, auto, traffic, trust_uploads)
    return [
        web.get("/admin/models/{model}/optimize", handlers.runs),
        web.post("/admin/models/{model}/optimize", handlers.start),
        web.get("/admin/jobs/{job}", handlers.get),
        web.delete("/admin/jobs/{job}", handlers.cancel),
    ]
