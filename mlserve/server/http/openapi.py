"""`/openapi.json`: an OpenAPI 3.0 description of the HTTP surface, built from the live route table.

Routes this module knows get full request schemas; any other route (added by later modules) is
still listed with its path parameters and the shared error responses, so the description never
falls behind the router.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from mlserve import __version__, errors
from mlserve.server.response import json_response
from mlserve.spec import DATATYPE_TO_NUMPY

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def error_statuses() -> dict[str, str]:
    """Each error status of `errors.ERROR_TABLE`, described by its classes' docstrings."""
    described: dict[int, list[str]] = {}
    for cls, kind in errors.ERROR_TABLE.items():
        if cls is not errors.MlserveError:
            first = " ".join((cls.__doc__ or cls.__name__).split()).split(". ")[0].rstrip(".")
            described.setdefault(kind.http_status, []).append(first)
    described.setdefault(500, []).append("Internal error (its req_id is in the message and in the log)")
    return {str(status): " / ".join(texts) for status, texts in sorted(described.items())}


ERROR_STATUSES = error_statuses()

TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPE_TO_NUMPY)},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"timeout": {"type": "integer", "minimum": 1}}},
        "inputs": {"type": "array", "items": TENSOR, "minItems": 1},
        "outputs": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        },
    },
}
REQUEST_BODIES = {"/v2/models/{model}/infer": INFER_REQUEST, "/v2/models/{model}/versions/{version}/infer": INFER_REQUEST}


def _operation(method: str, path: str, secured: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    for status, text in ERROR_STATUSES.items():
        responses[status] = {"description": text, "content": {"application/json": {"schema": ERROR}}}
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_') or 'root'}",
        "responses": responses,
    }
    params = _PARAM.findall(path)
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for p in params
        ]
    if method == "POST" and path in REQUEST_BODIES:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": REQUEST_BODIES[path]}}}
    if secured and not path.startswith("/v2/health/"):
        op["security"] = [{"bearer": []}]
    return op


def describe(app: web.Application, secured: bool = False) -> dict[str, Any]:
    """The OpenAPI document for every route the app serves now."""
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*") or route.resource is None:
            continue
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.resource.canonical)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route.method, path, secured)
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "mlserve", "version": __version__},
        "paths": dict(sorted(paths.items())),
    }
    if secured:
        doc["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    return doc


def openapi_handler(secured: bool = False):
    """GET /openapi.json; `secured` marks every route but health as needing a bearer key."""

    async def openapi(request: web.Request) -> web.Response:
        return json_response(describe(request.app, secured))

    return openapi
