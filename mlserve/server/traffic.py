"""Traffic admin routes: splits, experiments, rollouts, and the feedback that experiments judge."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from mlserve.errors import InvalidInput
from mlserve.routing.manager import TrafficManager


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


class TrafficHandlers:
    """Each handler parses, calls one TrafficManager method, and encodes."""

    def __init__(self, traffic: TrafficManager) -> None:
        self._traffic = traffic

    async def get_traffic(self, request: web.Request) -> web.Response:
        return _json(self._traffic.traffic_view(request.match_info["model"]))

    async def put_traffic(self, request: web.Request) -> web.Response:
        return _json(self._traffic.set_split(request.match_info["model"], await _body(request)))

    async def get_experiment(self, request: web.Request) -> web.Response:
        return _json(self._traffic.experiment_view(request.match_info["model"]))

    async def feedback(self, request: web.Request) -> web.Response:
        return _json(self._traffic.feedback(request.match_info["model"], await _body(request)))

    async def get_rollout(self, request: web.Request) -> web.Response:
        return _json(self._traffic.rollout_view(request.match_info["model"]))

    async def start_rollout(self, request: web.Request) -> web.Response:
        return _json(self._traffic.start_rollout(request.match_info["model"], await _body(request)), 202)

    async def cancel_rollout(self, request: web.Request) -> web.Response:
        return _json(self._traffic.cancel_rollout(request.match_info["model"]))


def add_traffic_routes(app: web.Application, traffic: TrafficManager) -> None:
    """Register the routes, and stop shadow workers and rollout tasks on shutdown."""
    handlers = TrafficHandlers(traffic)
    r = app.router
    r.add_get("/admin/models/{model}/traffic", handlers.get_traffic)
    r.add_put("/admin/models/{model}/traffic", handlers.put_traffic)
    r.add_get("/admin/models/{model}/experiment", handlers.get_experiment)
    r.add_get("/admin/models/{model}/rollout", handlers.get_rollout)
    r.add_post("/admin/models/{model}/rollout", handlers.start_rollout)
    r.add_delete("/admin/models/{model}/rollout", handlers.cancel_rollout)
    r.add_post("/v2/models/{model}/feedback", handlers.feedback)

    async def close(app: web.Application):
        yield
        await traffic.close()

    app.cleanup_ctx.append(close)
