"""Errors to HTTP answers in the shape of the route's protocol (statuses from
`mlserve.errors.ERROR_TABLE`), the gate (the browser checks, authentication, per-key limits, the
in-flight bound), and the one middleware that applies both to every route.

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
from mlserve.server.response import ErrorShape, error_response, status_response
from mlserve.server.state import ServerState

log = logging.getLogger("mlserve.server")


def status_for(exc: errors.MlserveError) -> int:
    """The HTTP status of an error, from `errors.ERROR_TABLE`."""
    return errors.kind_of(exc).http_status


OPENAI_PATHS = ("/v1/", "/tokenize", "/detokenize")
"""The routes that answer errors in OpenAI's shape: the /v1 sub-application and vLLM's extras."""


def error_shape(request: web.Request) -> ErrorShape:
    """The error shape of the protocol the request's route belongs to, decided before anything runs."""
    return ErrorShape.OPENAI if request.path.startswith(OPENAI_PATHS) else ErrorShape.PLAIN


ONE_PASS = "mlserve_one_pass"


def one_pass(handler):
    """Mark a handler that gates, decodes and maps its own errors in one coroutine."""
    setattr(handler, ONE_PASS, True)
    return handler


def http_error_response(exc: web.HTTPException, shape: ErrorShape = ErrorShape.PLAIN) -> web.Response:
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 413:
        message = f"request body too large: {exc.text}"
    return status_response(exc.status, message, shape, {k: v for k, v in exc.headers.items() if k.lower() == "allow"})


def internal_error(request: web.Request, shape: ErrorShape = ErrorShape.PLAIN) -> web.Response:
    """Call from an `except` block: logs the traceback once, with a req_id the client also sees."""
    req_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    log.exception("internal error on %s %s (req_id %s)", request.method, request.path, req_id)
    return error_response(errors.MlserveError(f"internal server error (req_id {req_id})"), shape)


async def _answer(request: web.Request, handler, shape: ErrorShape) -> web.StreamResponse:
    """Every failure leaves as JSON in the route's shape; anything unexpected is logged once with its req_id."""
    try:
        return await handler(request)
    except errors.MlserveError as exc:
        return error_response(exc, shape)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error_response(exc, shape)
    except Exception:
        return internal_error(request, shape)


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

    async def enter(self, request: web.Request, access: Access = Access.INFER,
                    shape: ErrorShape = ErrorShape.PLAIN) -> tuple[web.Response | None, ApiKey | None]:
        """(refusal, None), or (None, the key or None) once admitted: then `leave` must follow."""
        refused = _content_too_long(request, self.max_body_bytes, shape)
        if refused is not None:
            return refused, None
        try:  # the refusals (401, 403, 429; 429 too when many keys are being verified at once)
            outcome = await _authenticate(self, request, access)
        except errors.MlserveError as exc:
            return error_response(exc, shape), None
        if not self.take_slot():
            if outcome is not None:
                self.keyring.limiter.release(outcome.key_id)
            busy = errors.ServerBusy(f"server is at its limit of {self.in_flight.limit} requests in flight")
            return error_response(busy, shape), None
        request[TENANT] = outcome
        return None, outcome

    def take_slot(self) -> bool:
        """One of the server's in-flight slots, if one is free; HTTP and gRPC take them alike, and
        readiness follows saturation when `ready_tracks_saturation`."""
        if not self.in_flight.try_acquire():
            return False
        _track_saturation(self)
        return True

    def give_slot(self) -> None:
        self.in_flight.release()
        _track_saturation(self)

    def client_address(self, request: web.Request) -> str:
        """The socket's peer, or the client a trusted proxy names in X-Forwarded-For."""
        forwarded = request.headers.getall("X-Forwarded-For", None)
        return self.proxies.client_address(request.remote or "", ",".join(forwarded) if forwarded else None)

    def leave(self, key: ApiKey | None) -> None:
        self.give_slot()
        if key is not None:
            self.keyring.limiter.release(key.key_id)


def _content_too_long(request: web.Request, limit: int, shape: ErrorShape) -> web.Response | None:
    """413 from the declared length alone: the body is never read into memory."""
    length = request.content_length
    if length is None or length <= limit:
        return None
    too_large = errors.PayloadTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    response = error_response(too_large, shape)
    response.force_close()
    return response


async def _authenticate(gate: Gate, request: web.Request, access: Access) -> ApiKey | None:
    """The ApiKey, or None when authentication is off; raises the refusal (401, 403, 429) otherwise."""
    if not gate.keyring.is_enabled:
        if access is Access.ADMIN:
            gate.audit.record(request.method, _route_path(request), gate.client_address(request))
        return None
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise errors.Unauthenticated("an API key is required: send 'Authorization: Bearer <key>'")
    result = await gate.keyring.authenticate(token, gate.client_address(request))
    if result.is_throttled:  # whole seconds, rounded up
        raise errors.Overloaded("too many failed checks of this API key from this address; retry later",
                                math.ceil(result.retry_after_s))
    key = result.key
    if key is None:
        raise errors.Unauthenticated("the API key is not valid (unknown, malformed or revoked)")
    scope = "admin" if access is Access.ADMIN else "infer"
    if not key.has_scope(scope):
        raise errors.Forbidden(f"key {key.name!r} lacks the {scope!r} scope this endpoint needs")
    refusal = await gate.keyring.limiter.admit(key.key_id)  # a store call once per leased block, not per request
    if refusal is not None:
        raise errors.Overloaded(refusal.reason, math.ceil(refusal.retry_after_s))
    return key


def _route_path(request: web.Request) -> str:
    """The template of the route that will run (what the policy must judge), else the path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def front_middleware(gate: Gate):
    """The browser checks first, for every route (a listed origin's preflight is answered here);
    then open paths pass, others are size-checked, authenticated, rate-limited and counted in
    flight; every route's errors become JSON in its protocol's shape. One-pass handlers do the second part themselves."""

    @web.middleware
    async def front(request: web.Request, handler) -> web.StreamResponse:
        shape = error_shape(request)
        refusal = gate.browser.check(request.method, request.path, request.headers)
        if refusal is not None:
            return status_response(refusal.status, refusal.message, shape)
        if gate.browser.is_preflight(request.method, request.headers):
            return web.Response(status=204, headers=gate.browser.preflight_headers(request.headers))
        if getattr(handler, ONE_PASS, False):
            return await handler(request)
        access = gate.policy.access(_route_path(request))
        if access is Access.OPEN:
            return await _answer(request, handler, shape)
        if access is Access.DISABLED:
            return error_response(errors.Forbidden("admin and repository endpoints are off on this address "
                                                   "(bind to loopback or set auth.admin_enabled)"), shape)
        refused, key = await gate.enter(request, access, shape)
        if refused is not None:
            return refused
        try:
            return await _answer(request, handler, shape)
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
