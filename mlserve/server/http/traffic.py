"""Traffic admin routes: splits, experiments, rollouts, and the feedback that experiments judge."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mlserve.dataplane import DataPlane
from mlserve.dataplane.control import ModelControl
from mlserve.server.http.json_body import read_json
from mlserve.server.response import json_response


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json(request, empty_ok=True)


class TrafficHandlers:
    """Each handler parses, calls one DataPlane (or, for changes, ModelControl) method, and encodes."""

    def __init__(self, plane: DataPlane, control: ModelControl) -> None:
        self._plane = plane
        self._control = control

    async def get_traffic(self, request: web.Request) -> web.Response:
        return json_response(self._plane.traffic_view(request.match_info["model"]))

    async def put_traffic(self, request: web.Request) -> web.Response:
        return json_response(await self._control.set_traffic(request.match_info["model"], await _body(request)))

    async def get_experiment(self, request: web.Request) -> web.Response:
        return json_response(await self._plane.experiment(request.match_info["model"]))

    async def feedback(self, request: web.Request) -> web.Response:
        return json_response(await self._control.feedback(request.match_info["model"], await _body(request)))

    async def get_rollout(self, request: web.Request) -> web.Response:
        return json_response(await self._plane.rollout(request.match_info["model"]))

    async def start_rollout(self, request: web.Request) -> web.Response:
        return json_response(await self._control.start_rollout(request.match_info["model"], await _body(request)), 202)

    async def cancel_rollout(self, request: web.Request) -> web.Response:
        return json_response(await self._control.cancel_rollout(request.match_info["model"]))

