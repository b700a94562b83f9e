"""The HTTP gate's rules for gRPC calls: the same path policy, key ring, per-key limits and in-flight
bound, reached through the `Gate` object only. Each RPC is judged as the HTTP path that does the
same thing, so a policy change covers both protocols."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from mlserve import errors
from mlserve.keys import ApiKey
from mlserve.server.auth import Access, bearer_token
from mlserve.server.middleware import Gate

HEALTH_PATH = "/v2/health/live"
MODEL_PATH = "/v2/models/_/infer"
REPOSITORY_PATH = "/v2/repository/index"
RPC_PATHS = {
    "ServerLive": HEALTH_PATH, "ServerReady": HEALTH_PATH, "ServerMetadata": MODEL_PATH, "ModelReady": MODEL_PATH,
    "ModelMetadata": MODEL_PATH, "ModelConfig": MODEL_PATH, "ModelStatistics": MODEL_PATH, "ModelInfer": MODEL_PATH,
    "RepositoryIndex": REPOSITORY_PATH, "RepositoryModelLoad": REPOSITORY_PATH,
    "RepositoryModelUnload": REPOSITORY_PATH,
}
"""Each unary RPC -> the HTTP path whose policy judges it."""


class Refused(Exception):
    """A call the gate turned away, and why: an error whose gRPC code (`errors.ERROR_TABLE`), message
    and retry time the servicer sends. Kept apart from the errors a call itself raises: on a stream,
    a refusal ends the stream while a failed request is answered in it."""

    def __init__(self, error: errors.MlserveError) -> None:
        super().__init__(str(error))
        self.error = error

    @property
    def code(self) -> str:
        return errors.kind_of(self.error).grpc_code

    @property
    def message(self) -> str:
        return str(self.error)

    @property
    def retry_after_s(self) -> float | None:
        return self.error.retry_after_s


async def authorize(gate: Gate, path: str, authorization: str | None, peer: str = "") -> ApiKey | None:
    """The caller's key (None when authentication is off or the path is open), else Refused."""
    access = gate.policy.access(path)
    if access is Access.OPEN:
        return None
    if access is Access.DISABLED:
        raise Refused(errors.Forbidden("admin and repository calls are off on this address "
                                       "(bind to loopback or set auth.admin_enabled)"))
    if not gate.keyring.is_enabled:
        if access is Access.ADMIN:
            gate.audit.record("gRPC", path, _address(peer))
        return None
    token = bearer_token(authorization)
    if token is None:
        raise Refused(errors.Unauthenticated("an API key is required: send metadata 'authorization: Bearer <key>'"))
    result = await gate.keyring.authenticate(token, _address(peer))
    if result.is_throttled:
        raise Refused(errors.Overloaded("too many failed checks of this API key from this address; retry later",
                                        result.retry_after_s))
    key = result.key
    if key is None:
        raise Refused(errors.Unauthenticated("the API key is not valid (unknown, malformed or revoked)"))
    scope = "admin" if access is Access.ADMIN else "infer"
    if not key.has_scope(scope):
        raise Refused(errors.Forbidden(f"key {key.name!r} lacks the {scope!r} scope this call needs"))
    return key


def _address(peer: str) -> str:
    """gRPC's peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") -> the client address alone."""
    _, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if rest else peer
    return host.strip("[]")


@contextlib.asynccontextmanager
async def admitted(gate: Gate, key: ApiKey | None, is_open: bool) -> AsyncIterator[None]:
    """Hold the key's rate/concurrency slot and one of the server's in-flight slots for the block."""
    if is_open:
        yield
        return
    await admit(gate, key)
    try:
        yield
    finally:
        release(gate, key)


async def admit(gate: Gate, key: ApiKey | None) -> None:
    """Take the key's rate/concurrency slot and one of the server's in-flight slots, or raise Refused
    holding neither; `release` gives them back (a stream's request holds them past its own task)."""
    if key is not None:
        refusal = await gate.keyring.limiter.admit(key.key_id)  # a store call once per leased block, not per request
        if refusal is not None:
            raise Refused(errors.Overloaded(refusal.reason, max(1.0, math.ceil(refusal.retry_after_s))))
    if not gate.take_slot():
        if key is not None:
            gate.keyring.limiter.release(key.key_id)
        raise Refused(errors.ServerBusy(f"server is at its limit of {gate.in_flight.limit} requests in flight"))


def release(gate: Gate, key: ApiKey | None) -> None:
    gate.give_slot()
    if key is not None:
        gate.keyring.limiter.release(key.key_id)


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request whose bytes are not the protobuf message its method takes."""

    error: str


def _tolerant(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or whatever a broken message raises
            return Malformed(str(exc) or type(exc).__name__)

    return parse


class MalformedRequests(grpc.aio.ServerInterceptor):
    """A unary request that does not parse answers INVALID_ARGUMENT (grpc's own answer would be
    UNKNOWN); on a stream the Malformed message reaches the servicer, which ends the stream so."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is None:
            return handler._replace(request_deserializer=parse)
        inner = handler.unary_unary

        async def unary(request, context):
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed_message(request))
            return await inner(request, context)

        return handler._replace(request_deserializer=parse, unary_unary=unary)


def malformed_message(request: Malformed) -> str:
    return f"the request is not a valid protobuf message of this method: {request.error}"
