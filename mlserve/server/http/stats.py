"""Triton's statistics extension over HTTP: `/v2/models[/{m}[/versions/{v}]]/stats`."""

from __future__ import annotations

import orjson
from aiohttp import web

from mlserve.dataplane import DataPlane
from mlserve.monitor.metrics import Metrics
from mlserve.server.statistics import model_stats


def stats_routes(plane: DataPlane, metrics: Metrics | None = None) -> list[web.RouteDef]:
    """`/v2/models/stats` is a plain path, matched before `/v2/models/{model}` whatever the order."""

    async def stats(request: web.Request) -> web.Response:
        match = request.match_info
        rows = model_stats(plane, metrics, match.get("model", ""), match.get("version", ""))
        return web.Response(body=orjson.dumps({"model_stats": rows}), content_type="application/json")

    return [
        web.get("/v2/models/stats", stats),
        web.get("/v2/models/{model}/stats", stats),
        web.get("/v2/models/{model}/versions/{version}/stats", stats),
    ]
