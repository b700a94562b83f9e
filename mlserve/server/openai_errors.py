"""OpenAI's error shape for the /v1 routes and vLLM's extras, whoever refused the request: a handler,
the gate (401/403/429/503/413) or the internal-error catch-all."""

from __future__ import annotations

import orjson
from aiohttp import web

from mlserve import errors
from mlserve.server.middleware import status_for

OPENAI_SHAPED = ("/v1/", "/tokenize", "/detokenize")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable", 504: "timeout"}
_KEPT_HEADERS = ("Retry-After", "WWW-Authenticate", "Allow")


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """{"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": "model_not_found" if status == 404 else None}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


@web.middleware
async def openai_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Outermost on the app: rewrites a plain {"error": "..."} answer on an OpenAI path into OpenAI's shape."""
    if not request.path.startswith(OPENAI_SHAPED):
        return await handler(request)
    try:
        response = await handler(request)
    except errors.MlserveError as exc:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, errors.Overloaded) else None
        return openai_error(status_for(exc), str(exc), headers)
    if response.status < 400 or not isinstance(response, web.Response) or response.prepared:
        return response
    try:
        message = orjson.loads(response.body)["error"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return response
    if not isinstance(message, str):
        return response  # already in OpenAI's shape
    headers = {k: v for k, v in response.headers.items() if k in _KEPT_HEADERS}
    reshaped = openai_error(response.status, message, headers)
    if not response.keep_alive:
        reshaped.force_close()
    return reshaped
