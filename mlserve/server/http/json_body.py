"""The one way a route reads a JSON request body: its type checked, its size bounded, parsed once,
and refused with a 4xx naming what was wrong (415 a body of another type, 413 over the limit, 400
not JSON, empty where a body is needed, or not an object). The v2 infer route's JSON header goes
through `parse_json_object` too; its body may also be binary, so it reads the body itself."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from mlserve.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from mlserve.server.origin import BINARY_TYPE, is_json_type, media_type


async def read_json(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object; an empty body is {} where `empty_ok`, else refused.

    The size bound is the server's `max_body_bytes` (the app's client_max_size): a declared length
    over it is refused before anything is read, and aiohttp stops a chunked body at it (413)."""
    _check_type(request.headers.get("Content-Type"))
    limit = request.client_max_size
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    body = await request.read()
    if not body.strip():
        if empty_ok:
            return {}
        raise InvalidInput("the request body is empty: this route takes a JSON object")
    return parse_json_object(body)


def parse_json_object(data: bytes | memoryview) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"the request body must be a JSON object, not {_json_kind(parsed)}")
    return parsed


def _check_type(content_type: str | None) -> None:
    """JSON (application/json, */*+json), or octet-stream (what tritonclient.http.aio sends its JSON
    as), or no type (tritonclient.http sends none)."""
    if content_type is None:
        return
    media = media_type(content_type)
    if not (is_json_type(media) or media == BINARY_TYPE):
        raise UnsupportedMediaType(f"this route takes a JSON body (Content-Type: application/json), "
                                   f"not Content-Type {content_type[:100]!r}")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
