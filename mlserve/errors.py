"""The error hierarchy and the one table that says what each error is in every protocol.

Errors carry messages, not statuses. `ERROR_TABLE` gives each class its HTTP status, its gRPC status
code (a `grpc.StatusCode` member name) and OpenAI's error `type` and `code`; the HTTP, gRPC and
OpenAI layers all look errors up here (`kind_of`), so the protocols cannot drift apart. This module
imports nothing from HTTP or gRPC."""

from __future__ import annotations

from dataclasses import dataclass


class MlserveError(Exception):
    """Base of every error mlserve raises on purpose."""

    retry_after_s: float | None = None
    """When the client may try again (a Retry-After header, gRPC `retry-after` metadata); None: not said."""


class ModelNotFound(MlserveError):
    """The model or version is not in the repository."""

    @classmethod
    def unknown(cls, model: str, version: str | int | None = None, detail: str = "") -> ModelNotFound:
        """Triton's wording, which its clients look for: "Request for unknown model: 'm' is not found"."""
        shown = f" version {version}" if version not in (None, "") else ""
        return cls(f"Request for unknown model: {model!r}{shown} is not found{detail}")


class ModelNotReady(MlserveError):
    """The model or version exists but cannot serve right now."""


class InvalidInput(MlserveError):
    """The request is malformed or does not match the model's inputs."""


class PayloadTooLarge(InvalidInput):
    """The request body or a tensor in it is over a configured limit."""


class Conflict(InvalidInput):
    """The request would overwrite something that exists or is being written (a version upload)."""


class UnsupportedMediaType(InvalidInput):
    """The request body is of a type the route does not take (a JSON route sent form data)."""


class Unauthenticated(MlserveError):
    """The request carries no valid API key."""


class JobNotFound(MlserveError):
    """No batch job has this id."""


class Forbidden(MlserveError):
    """The request may not do this: its key lacks the scope, the route is off on this address, or it
    names something this server may not touch (a path outside the allowed folder)."""


class Overloaded(MlserveError):
    """A queue is full; the client should retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServerBusy(MlserveError):
    """The server is at its bound of requests in flight; the client should retry shortly."""

    retry_after_s = 1.0


class RequestTimeout(MlserveError):
    """The request's deadline passed before it ran."""


class InferenceFailed(MlserveError):
    """The model raised while running a batch."""


class ModelLoadError(MlserveError):
    """A model version could not be read or loaded."""


class ModelHung(RequestTimeout, InferenceFailed):
    """A batch ran past the model's hang deadline; its worker was replaced. Answers 504 (its
    own row in ERROR_TABLE, as RequestTimeout); a batcher that passes
    InferenceFailed through unchanged keeps it."""


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """What an error class is in each protocol."""

    http_status: int
    grpc_code: str
    """A `grpc.StatusCode` member name."""
    openai_type: str
    openai_code: str | None = None


ERROR_TABLE: dict[type[MlserveError], ErrorKind] = {
    MlserveError: ErrorKind(500, "INTERNAL", "server_error"),
    ModelNotFound: ErrorKind(404, "NOT_FOUND", "not_found_error", "model_not_found"),
    ModelNotReady: ErrorKind(503, "UNAVAILABLE", "service_unavailable"),
    InvalidInput: ErrorKind(400, "INVALID_ARGUMENT", "invalid_request_error"),
    PayloadTooLarge: ErrorKind(413, "RESOURCE_EXHAUSTED", "invalid_request_error"),
    UnsupportedMediaType: ErrorKind(415, "INVALID_ARGUMENT", "invalid_request_error"),
    Conflict: ErrorKind(409, "ALREADY_EXISTS", "invalid_request_error"),
    Unauthenticated: ErrorKind(401, "UNAUTHENTICATED", "authentication_error"),
    JobNotFound: ErrorKind(404, "NOT_FOUND", "not_found_error"),
    Forbidden: ErrorKind(403, "PERMISSION_DENIED", "permission_error"),
    Overloaded: ErrorKind(429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
    ServerBusy: ErrorKind(503, "UNAVAILABLE", "service_unavailable"),
    RequestTimeout: ErrorKind(504, "DEADLINE_EXCEEDED", "timeout"),
    InferenceFailed: ErrorKind(500, "INTERNAL", "server_error"),
    ModelLoadError: ErrorKind(400, "INVALID_ARGUMENT", "invalid_request_error"),
    ModelHung: ErrorKind(504, "DEADLINE_EXCEEDED", "timeout"),
}
"""Every class in this module has its own row. A subclass defined elsewhere takes the row of its
nearest listed ancestor (method resolution order)."""

_BY_STATUS: dict[int, ErrorKind] = {}
for _kind in ERROR_TABLE.values():
    _BY_STATUS.setdefault(_kind.http_status, _kind)


def kind_of(error: MlserveError | type[MlserveError]) -> ErrorKind:
    """The table's row for an error (or error class): its own, else its nearest listed ancestor's."""
    cls = error if isinstance(error, type) else type(error)
    for ancestor in cls.__mro__:
        kind = ERROR_TABLE.get(ancestor)
        if kind is not None:
            return kind
    return ERROR_TABLE[MlserveError]


def kind_for_status(status: int) -> ErrorKind:
    """The row of the first error class answering with this HTTP status, for refusals that arrive
    as a bare status (aiohttp's 404 for an unknown route, 405); the base row when none does."""
    return _BY_STATUS.get(status, ERROR_TABLE[MlserveError])
