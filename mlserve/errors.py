"""The error hierarchy. Errors carry messages; server/middleware.py maps them to HTTP statuses."""

from __future__ import annotations


class MlserveError(Exception):
    """Base of every error mlserve raises on purpose."""


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


class JobNotFound(MlserveError):
    """No batch job has this id."""


class Forbidden(MlserveError):
    """The request names something this server may not touch (a path outside the allowed folder)."""


class Overloaded(MlserveError):
    """A queue is full; the client should retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(MlserveError):
    """The request's deadline passed before it ran."""


class InferenceFailed(MlserveError):
    """The model raised while running a batch."""


class ModelLoadError(MlserveError):
    """A model version could not be read or loaded."""


class ModelHung(RequestTimeout, InferenceFailed):
    """A batch ran past the model's hang deadline; its worker was replaced. Answers 504 (the
    status table checks RequestTimeout before InferenceFailed); a batcher that passes
    InferenceFailed through unchanged keeps it."""
