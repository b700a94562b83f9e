"""The one way a handler answers with JSON (orjson, numpy arrays included), and the one place errors
become HTTP answers, in either shape: {"error": "..."} on every route but OpenAI's, and OpenAI's
{"error": {"message", "type", "param", "code"}} on the /v1 routes and vLLM's extras. Statuses and
OpenAI types come from `mlserve.errors.ERROR_TABLE`."""

from __future__ import annotations

from enum import Enum, auto
from typing import Any, Mapping

import orjson
from aiohttp import web

from mlserve import errors

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mlserve"'}


class ErrorShape(Enum):
    """Which body an error answer has: a protocol's own, chosen by the route."""

    PLAIN = auto()
    OPENAI = auto()


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=_OPTIONS), status=status, content_type="application/json",
                        headers=headers)


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


def error_response(exc: errors.MlserveError, shape: ErrorShape = ErrorShape.PLAIN) -> web.Response:
    """The answer to an error: its table row's status, Retry-After when it says when to retry, and
    an authentication challenge with a 401."""
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if isinstance(exc, errors.Unauthenticated):
        headers.update(_CHALLENGE)
    kind = errors.kind_of(exc)
    return _render(kind.http_status, str(exc), kind, shape, headers or None)


def status_response(status: int, message: str, shape: ErrorShape = ErrorShape.PLAIN,
                    headers: Mapping[str, str] | None = None) -> web.Response:
    """An answer to a refusal that is a bare status (aiohttp's 404 for no route, 405, 413 while
    reading; the browser checks' 403 and 415); OpenAI's type is the status's row in the table."""
    return _render(status, message, errors.kind_for_status(status), shape, headers)


def _render(status: int, message: str, kind: errors.ErrorKind, shape: ErrorShape,
            headers: Mapping[str, str] | None) -> web.Response:
    if shape is ErrorShape.OPENAI:
        body = {"error": {"message": message, "type": kind.openai_type, "param": None, "code": kind.openai_code}}
        return json_response(body, status, headers)
    return json_error(status, message, headers)
