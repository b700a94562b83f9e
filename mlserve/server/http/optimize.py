"""Optimize jobs over HTTP: POST /admin/models/{m}/optimize starts one, GET /admin/jobs/{id}
reports its progress, results table and published version, DELETE cancels it.

A published version is loaded through the control door (`ModelControl.deploy`); with `rollout` in
the body it becomes the canary of a rollout. The source version is pinned while the new one loads,
so it takes no traffic before the rollout's first step.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from mlserve.dataplane.models import Models
from mlserve.errors import InvalidInput
from mlserve.optimize.auto import AutoOptimizer
from mlserve.optimize.jobs import OptimizeJobs
from mlserve.optimize.request import parse_body
from mlserve.spec.names import check_model_name
from mlserve.server.http.json_body import read_json
from mlserve.server.response import json_response


class OptimizeHandlers:
    """Parses, calls the job manager, answers with the job."""

    def __init__(self, jobs: OptimizeJobs, models: Models, trust_repository: bool,
                 auto: AutoOptimizer | None = None, trust_uploads: bool = False) -> None:
        self._jobs, self._models, self._plane, self._trust_repository = jobs, models, models.plane, trust_repository
        self._auto, self._trust_uploads = auto, trust_uploads

    def _root(self) -> Path:
        root = self._models.local_root
        if root is None:
            raise InvalidInput("the optimize route publishes into a local model repository; this one is "
                               f"{self._models.describe()} (run `mlserve optimize --models s3://...` instead)")
        return root

    async def start(self, request: web.Request) -> web.Response:
        name = check_model_name(request.match_info["model"])
        raw = await read_json(request, empty_ok=True)
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
        rollout = self._plane.rollout_view(name)["rollout"]
        runs = self._auto.views(name) if self._auto is not None else []
        return json_response({"model": name, "runs": runs, "rollout": rollout})

    async def get(self, request: web.Request) -> web.Response:
        return json_response(await self._jobs.view(request.match_info["job"]))

    async def cancel(self, request: web.Request) -> web.Response:
        return json_response(await self._jobs.cancel_anywhere(request.match_info["job"]))


def optimize_routes(jobs: OptimizeJobs, models: Models, trust_repository: bool,
                    auto: AutoOptimizer | None = None, trust_uploads: bool = False) -> list[web.RouteDef]:
    """`trust_repository`: the server's own setting; a model's `trusted = true` counts too.
    `trust_uploads`: the server's; an uploaded TorchScript or .pt2 version is optimized only with it."""
    handlers = OptimizeHandlers(jobs, models, trust_repository, auto, trust_uploads)
    return [
        web.get("/admin/models/{model}/optimize", handlers.runs),
        web.post("/admin/models/{model}/optimize", handlers.start),
        web.get("/admin/jobs/{job}", handlers.get),
        web.delete("/admin/jobs/{job}", handlers.cancel),
    ]
