"""The one table from error class to HTTP status, and the middleware that applies it."""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

import orjson
from aiohttp import web

from mlserve import errors
from mlserve.keys import ApiKey
from mlserve.server.auth import Access, KeyRing, PathPolicy, bearer_token
from mlserve.server.ratelimit import InFlight
from mlserve.server.state import ServerState

log = logging.getLogger("mlserve.server")

# Most specific first: PayloadTooLarge is an InvalidInput.
ERROR_STATUS: tuple[tuple[type[errors.MlserveError], int], ...] = (
    (errors.PayloadTooLarge, 413),
    (errors.ModelNotFound, 404),
    (errors.JobNotFound, 404),
    (errors.ModelNotReady, 503),
    (errors.InvalidInput, 400),
    (errors.Forbidden, 403),
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


# --- Access and admission: authentication, per-key limits, server-wide bounds -------------------

# Request key holding the ApiKey that authenticated the request (None without authentication).
TENANT = web.RequestKey("tenant", ApiKey) if hasattr(web, "RequestKey") else "mlserve.tenant"


@dataclass(slots=True)
class Gate:
    """What the gate middleware consults before a handler runs."""

    policy: PathPolicy
    keyring: KeyRing
    in_flight: InFlight
    state: ServerState
    max_body_bytes: int
    ready_tracks_saturation: bool = False


def _content_too_long(request: web.Request, limit: int) -> web.Response | None:
    """413 from the declared length alone: the body is never read into memory."""
    length = request.content_length
    if length is None or length <= limit:
        return None
    response = json_error(413, f"request body of {length} bytes is over the limit of {limit} bytes")
    response.force_close()
    return response


async def _authenticate(gate: Gate, request: web.Request, access: Access) -> web.Response | ApiKey | None:
    """The ApiKey, None when authentication is off, or the 401/403/429 response to send."""
    if not gate.keyring.is_enabled:
        return None
    token = bearer_token(request.headers.get("Authorization"))
    challenge = {"WWW-Authenticate": 'Bearer realm="mlserve"'}
    if token is None:
        return json_error(401, "an API key is required: send 'Authorization: Bearer <key>'", challenge)
    key = await gate.keyring.authenticate(token)
    if key is None:
        return json_error(401, "the API key is not valid (unknown, malformed or revoked)", challenge)
    scope = "admin" if access is Access.ADMIN else "infer"
    if not key.has_scope(scope):
        return json_error(403, f"key {key.name!r} lacks the {scope!r} scope this endpoint needs")
    refusal = gate.keyring.limiter.acquire(key.key_id)
    if refusal is not None:
        return json_error(429, refusal.reason, {"Retry-After": str(max(1, math.ceil(refusal.retry_after_s)))})
    return key


def _route_path(request: web.Request) -> str:
    """The template of the route that will run (what the policy must judge), else the path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def gate_middleware(gate: Gate):
    """Open paths pass; others are size-checked, authenticated, rate-limited and counted in flight."""

    @web.middleware
    async def gate_mw(request: web.Request, handler) -> web.StreamResponse:
        access = gate.policy.access(_route_path(request))
        if access is Access.OPEN:
            return await handler(request)
        if access is Access.DISABLED:
            return json_error(403, "admin and repository endpoints are off on this address "
                                   "(bind to loopback or set auth.admin_enabled)")
        refused = _content_too_long(request, gate.max_body_bytes)
        if refused is not None:
            return refused
        outcome = await _authenticate(gate, request, access)
        if isinstance(outcome, web.Response):
            return outcome
        try:
            return await _admitted(gate, request, handler, outcome)
        finally:
            if outcome is not None:
                gate.keyring.limiter.release(outcome.key_id)

    return gate_mw


async def _admitted(gate: Gate, request: web.Request, handler, key: ApiKey | None) -> web.StreamResponse:
    if not gate.in_flight.try_acquire():
        return json_error(503, f"server is at its limit of {gate.in_flight.limit} requests in flight",
                          {"Retry-After": "1"})
    request[TENANT] = key
    _track_saturation(gate)
    try:
        return await handler(request)
    finally:
        gate.in_flight.release()
        _track_saturation(gate)


def _track_saturation(gate: Gate) -> None:
    if gate.ready_tracks_saturation:
        gate.state.is_saturated = gate.in_flight.is_saturated
