"""Model lifecycle control over HTTP: Triton's repository load/unload, and rollback, pin and unpin.

Each handler parses, calls one loader method and answers with the model's state. Who asked (the
client address) goes into the loader's transition log.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mlserve.dataplane import DataPlane, ServedModel
from mlserve.dataplane.control import ModelControl
from mlserve.errors import InvalidInput
from mlserve.spec.names import check_model_name
from mlserve.server.http.json_body import read_json
from mlserve.server.response import json_response
from mlserve.server.triton_upload import check_unload_parameters, load_model
from mlserve.spec.version import parse_version


def model_state(served: ServedModel) -> dict[str, Any]:
    return {
        "name": served.name,
        "serving": served.default_version(),
        "pinned": served.pinned,
        "ready_versions": served.ready_versions(),
        "history": list(served.history),
        "unloaded": served.is_unloaded,
    }


def _model(request: web.Request) -> str:
    """The model named in the path, refused (400) unless it is a plain model name."""
    return check_model_name(request.match_info["model"])


async def _pin_version(request: web.Request) -> int:
    version = (await read_json(request, empty_ok=True)).get("version")
    if version is None:
        raise InvalidInput('the body must be {"version": N} with N a positive integer')
    return parse_version(version)


async def _parameters(request: web.Request) -> dict[str, Any]:
    """The `parameters` of a repository load or unload body (an empty body has none)."""
    parsed = await read_json(request, empty_ok=True)
    if set(parsed) - {"parameters"}:
        raise InvalidInput('the body must be {"parameters": {...}} or empty')
    parameters = parsed.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return parameters


class AdminHandlers:
    """Explicit control of what each model serves; every change goes through ModelControl, which
    shares it with the other replicas."""

    def __init__(self, control: ModelControl, plane: DataPlane) -> None:
        self._control = control
        self._plane = plane

    @staticmethod
    def _who(request: web.Request) -> str:
        return f"api {request.remote}"

    async def load(self, request: web.Request) -> web.Response:
        """Triton's load; with `parameters` (config, file:<version>/<name>) it uploads first."""
        name = _model(request)
        parameters, who = await _parameters(request), self._who(request)
        served = await load_model(self._control, name, parameters, True, who)
        return json_response(model_state(served))

    async def unload(self, request: web.Request) -> web.Response:
        """Triton's unload; `unload_dependents` is taken (mlserve has no ensembles, so no model has
        dependents), any other parameter is refused."""
        name = _model(request)
        check_unload_parameters(await _parameters(request))
        served = await self._control.unload(name, self._who(request))
        return json_response(model_state(served))

    async def rollback(self, request: web.Request) -> web.Response:
        served = await self._control.rollback(_model(request), self._who(request))
        return json_response(model_state(served))

    async def pin(self, request: web.Request) -> web.Response:
        version = await _pin_version(request)
        served = await self._control.pin(_model(request), version, self._who(request))
        return json_response(model_state(served))

    async def unpin(self, request: web.Request) -> web.Response:
        served = await self._control.unpin(_model(request), self._who(request))
        return json_response(model_state(served))

    async def state(self, request: web.Request) -> web.Response:
        return json_response(model_state(self._plane.model(_model(request))))

