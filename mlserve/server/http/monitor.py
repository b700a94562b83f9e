"""The drift view (the hooks that feed the monitor are wired in mlserve/dataplane/models.py)."""

from __future__ import annotations

from aiohttp import web

from mlserve.errors import ModelNotFound
from mlserve.monitor.hub import Monitor
from mlserve.dataplane import DataPlane
from mlserve.server.response import json_response


class DriftHandlers:
    """GET /v2/models/{model}[/versions/{version}]/drift: PSI and KS per feature, top drifters, status."""

    def __init__(self, monitor: Monitor, plane: DataPlane) -> None:
        self._monitor = monitor
        self._plane = plane

    async def drift(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        served = self._plane.version(name, version) if version else self._plane.pick(name, None)
        monitor = self._monitor.drift(name, str(served.version))
        if monitor is None:
            raise ModelNotFound(
                f"model {name!r} version {served.version} has no drift statistics "
                "(drift is off for it, or its reference could not be read: see the server log)"
            )
        return json_response(monitor.report().to_dict())
