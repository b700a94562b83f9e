"""Model lifecycle control over HTTP: Triton's repository load/unload, and rollback, pin and unpin.

Each handler parses, calls one loader method and answers with the model's state. Who asked (the
client address) goes into the loader's transition log.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from mlserve.errors import InvalidInput
from mlserve.registry.loader import HotSwapLoader, ServedModel
from mlserve.registry.safety import check_model_name


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


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
    body = await request.read()
    try:
        parsed = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    version = parsed.get("version") if isinstance(parsed, dict) else None
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInput('the body must be {"version": N} with N a positive integer')
    return version


class AdminHandlers:
    """Explicit control of what each model serves."""

    def __init__(self, loader: HotSwapLoader) -> None:
        self._loader = loader

    @staticmethod
    def _who(request: web.Request) -> str:
        return f"api {request.remote}"

    async def load(self, request: web.Request) -> web.Response:
        served = await self._loader.load(_model(request), self._who(request))
        return _json(model_state(served))

    async def unload(self, request: web.Request) -> web.Response:
        name = _model(request)
        await self._loader.unload(name, self._who(request))
        return _json(model_state(self._loader.models[name]))

    async def rollback(self, request: web.Request) -> web.Response:
        served = await self._loader.rollback(_model(request), self._who(request))
        return _json(model_state(served))

    async def pin(self, request: web.Request) -> web.Response:
        version = await _pin_version(request)
        served = await self._loader.pin(_model(request), version, self._who(request))
        return _json(model_state(served))

    async def unpin(self, request: web.Request) -> web.Response:
        served = await self._loader.unpin(_model(request), self._who(request))
        return _json(model_state(served))

    async def state(self, request: web.Request) -> web.Response:
        name = _model(request)
        served = self._loader.models.get(name)
        if served is None:
            return _json({"error": f"unknown model {name!r}"}, 404)
        return _json(model_state(served))


def add_admin_routes(app: web.Application, loader: HotSwapLoader, traffic=None) -> None:
    handlers = AdminHandlers(loader)
    if traffic is not None:
        from mlserve.server.optimize_routes import add_optimize_routes

        add_optimize_routes(app, loader, traffic)
    r = app.router
    r.add_post("/v2/repository/models/{model}/load", handlers.load)
    r.add_post("/v2/repository/models/{model}/unload", handlers.unload)
    r.add_get("/admin/models/{model}", handlers.state)
    r.add_post("/admin/models/{model}/rollback", handlers.rollback)
    r.add_post("/admin/models/{model}/pin", handlers.pin)
    r.add_post("/admin/models/{model}/unpin", handlers.unpin)
