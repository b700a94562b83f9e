"""The one table from error class to HTTP status, and the middleware that applies it."""

from __future__ import annotations

import logging
import uuid

import orjson
from aiohttp import web

from mlserve import errors

log = logging.getLogger("mlserve.server")

# Most specific first: PayloadTooLarge is an InvalidInput.
ERROR_STATUS: tuple[tuple[type[errors.MlserveError], int], ...] = (
    (errors.PayloadTooLarge, 413),
    (errors.ModelNotFound, 404),
    (errors.ModelNotReady, 503),
    (errors.InvalidInput, 400),
    (errors.Overloaded, 429),
    (errors.RequestTimeout, 504),
    (errors.ModelLoadError, 400),
    (errors.InferenceFailed, 500),
)


def status_for(exc: errors.MlserveError) -> int:
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json", headers=headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every failure leaves as JSON {"error": ...}; anything unexpected is logged once with its req_id."""
    try:
        return await handler(request)
    except errors.MlserveError as exc:
        headers = None
        if isinstance(exc, errors.Overloaded):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return json_error(status_for(exc), str(exc), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"request body too large: {exc.text}"
        return json_error(exc.status, message, {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception:
        req_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        log.exception("internal error on %s %s (req_id %s)", request.method, request.path, req_id)
        return json_error(500, f"internal server error (req_id {req_id})")
