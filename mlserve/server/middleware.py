"""The one table from error class to HTTP status, the gate (the browser checks, authentication,
per-key limits, the in-flight bound), and the one middleware that applies both to every route.

The browser checks (Host, Origin, Content-Type: `origin.BrowserGate`) run first on every request,
open routes and the hot path included. The v2 infer route is then marked `one_pass`: it calls the
gate and maps its own errors inside one coroutine, so the middleware hands it the request untouched."""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

from aiohttp import web

from mlserve import errors
from mlserve.keys import ApiKey
from mlserve.server.auth import Access, AdminAudit, KeyRing, PathPolicy, TrustedProxies, bearer_token
from mlserve.server.origin import BrowserGate
from mlserve.server.ratelimit import InFlight
from mlserve.server.response import json_error
from mlserve.server.state import ServerState

log = logging.getLogger("mlserve.server")

# Most specific first: PayloadTooLarge and Conflict are InvalidInputs.
ERROR_STATUS: tuple[tuple[type[errors.MlserveError], int], ...] = (
    (errors.PayloadTooLarge, 413),
    (errors.Conflict, 409),
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


# The same errors as gRPC status code names (grpc.StatusCode members), for the gRPC server.
GRPC_ERROR_STATUS: tuple[tuple[type[errors.MlserveError], str], ...] = (
    (errors.PayloadTooLarge, "RESOURCE_EXHAUSTED"),
    (errors.Conflict, "ALREADY_EXISTS"),
    (errors.ModelNotFound, "NOT_FOUND"),
    (errors.ModelNotReady, "UNAVAILABLE"),
    (errors.InvalidInput, "INVALID_ARGUMENT"),
    (errors.Overloaded, "RESOURCE_EXHAUSTED"),
    (errors.RequestTimeout, "DEADLINE_EXCEEDED"),
    (errors.ModelLoadError, "INVALID_ARGUMENT"),
    (errors.InferenceFailed, "INTERNAL"),
)


def status_for(exc: errors.MlserveError) -> int:
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


ONE_PASS = "mlserve_one_pass"


def one_pass(handler):
    """Mark a handler that gates, decodes and maps its own errors in one coroutine."""
    setattr(handler, ONE_PASS, True)
    return handler


def error_response(exc: errors.MlserveError) -> web.Response:
    headers = None
    if isinstance(exc, errors.Overloaded):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    return json_error(status_for(exc), str(exc), headers)


def http_error_response(exc: web.HTTPException) -> web.Response:
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 413:
        message = f"request body too large: {exc.text}"
    return json_error(exc.status, message, {k: v for k, v in exc.headers.items() if k.lower() == "allow"})


def internal_error(request: web.Request) -> web.Response:
    """Call from an `except` block: logs the traceback once, with a req_id the client also sees."""
    req_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    log.exception("internal error on %s %s (req_id %s)", request.method, request.path, req_id)
    return json_error(500, f"internal server error (req_id {req_id})")


async def _answer(request: web.Request, handler) -> web.StreamResponse:
    """Every failure leaves as JSON {"error": ...}; anything unexpected is logged once with its req_id."""
    try:
        return await handler(request)
    except errors.MlserveError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error_response(exc)
    except Exception:
        return internal_error(request)


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
    browser: BrowserGate
    proxies: TrustedProxies
    audit: AdminAudit
    ready_tracks_saturation: bool = False

    async def enter(self, request: web.Request, access: Access = Access.INFER) -> tuple[web.Response | None, ApiKey | None]:
        """(refusal, None), or (None, the key or None) once admitted: then `leave` must follow."""
        refused = _content_too_long(request, self.max_body_bytes)
        if refused is not None:
            return refused, None
        try:
            outcome = await _authenticate(self, request, access)
        except errors.MlserveError as exc:  # too many keys being verified at once: 429
            return error_response(exc), None
        if isinstance(outcome, web.Response):
            return outcome, None
        if not self.in_flight.try_acquire():
            if outcome is not None:
                self.keyring.limiter.release(outcome.key_id)
            return json_error(503, f"server is at its limit of {self.in_flight.limit} requests in flight",
                              {"Retry-After": "1"}), None
        request[TENANT] = outcome
        _track_saturation(self)
        return None, outcome

    def client_address(self, request: web.Request) -> str:
        """The socket's peer, or the client a trusted proxy names in X-Forwarded-For."""
        forwarded = request.headers.getall("X-Forwarded-For", None)
        return self.proxies.client_address(request.remote or "", ",".join(forwarded) if forwarded else None)

    def leave(self, key: ApiKey | None) -> None:
        self.in_flight.release()
        _track_saturation(self)
        if key is not None:
            self.keyring.limiter.release(key.key_id)


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
        if access is Access.ADMIN:
            gate.audit.record(request.method, _route_path(request), gate.client_address(request))
        return None
    token = bearer_token(request.headers.get("Authorization"))
    challenge = {"WWW-Authenticate": 'Bearer realm="mlserve"'}
    if token is None:
        return json_error(401, "an API key is required: send 'Authorization: Bearer <key>'", challenge)
    result = await gate.keyring.authenticate(token, gate.client_address(request))
    if result.is_throttled:
        return json_error(429, "too many failed checks of this API key from this address; retry later",
                          {"Retry-After": str(max(1, math.ceil(result.retry_after_s)))})
    key = result.key
    if key is None:
        return json_error(401, "the API key is not valid (unknown, malformed or revoked)", challenge)
    scope = "admin" if access is Access.ADMIN else "infer"
    if not key.has_scope(scope):
        return json_error(403, f"key {key.name!r} lacks the {scope!r} scope this endpoint needs")
    refusal = await gate.keyring.limiter.admit(key.key_id)  # a store call once per leased block, not per request
    if refusal is not None:
        return json_error(429, refusal.reason, {"Retry-After": str(max(1, math.ceil(refusal.retry_after_s)))})
    return key


def _route_path(request: web.Request) -> str:
    """The template of the route that will run (what the policy must judge), else the path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def front_middleware(gate: Gate):
    """The browser checks first, for every route (a listed origin's preflight is answered here);
    then open paths pass, others are size-checked, authenticated, rate-limited and counted in
    flight; every route's errors become JSON. One-pass handlers do the second part themselves."""

    @web.middleware
    async def front(request: web.Request, handler) -> web.StreamResponse:
        refusal = gate.browser.check(request.method, request.path, request.headers)
        if refusal is not None:
            return json_error(refusal.status, refusal.message)
        if gate.browser.is_preflight(request.method, request.headers):
            return web.Response(status=204, headers=gate.browser.preflight_headers(request.headers))
        if getattr(handler, ONE_PASS, False):
            return await handler(request)
        access = gate.policy.access(_route_path(request))
        if access is Access.OPEN:
            return await _answer(request, handler)
        if access is Access.DISABLED:
            return json_error(403, "admin and repository endpoints are off on this address "
                                   "(bind to loopback or set auth.admin_enabled)")
        refused, key = await gate.enter(request, access)
        if refused is not None:
            return refused
        try:
            return await _answer(request, handler)
        finally:
            gate.leave(key)

    return front


def cors_signal(browser: BrowserGate):
    """An on_response_prepare hook: CORS headers on every response, streamed ones included."""

    async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in browser.cors_headers(request.headers).items():
            if name == "Vary" and response.headers.get("Vary"):
                value = f"{response.headers['Vary']}, {value}"
            response.headers[name] = value

    return add_cors_headers


def _track_saturation(gate: Gate) -> None:
    if gate.ready_tracks_saturation:
        gate.state.is_saturated = gate.in_flight.is_saturated
