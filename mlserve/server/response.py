"""The one way a handler answers with JSON (orjson, numpy arrays included), and the error body
every non-OpenAI route uses: {"error": "..."}."""

from __future__ import annotations

from typing import Any, Mapping

import orjson
from aiohttp import web

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=_OPTIONS), status=status, content_type="application/json",
                        headers=headers)


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)
