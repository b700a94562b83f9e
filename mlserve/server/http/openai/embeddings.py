"""POST /v1/embeddings: OpenAI's body decoded into one v2 request for the model's `text` input, so it
takes the same data-plane path as /v2/.../infer (version choice, batcher, breaker, deadline, monitoring)."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput, PayloadTooLarge
from mlserve.dataplane import DataPlane
from mlserve.server.http.json_body import read_json
from mlserve.server.limits import LIMITS
from mlserve.server.middleware import TENANT
from mlserve.spec import SchedulePolicy
from mlserve.spec.embedding import encode_token_ids
from mlserve.spec.infer import InferRequest

MAX_INPUTS = 2048
MAX_INPUT_CHARS = 100_000
_KNOWN_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in value)


def parse_inputs(value: Any, vocab_size: int) -> list[bytes]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists -> `text` elements.
    Token ids are checked here, before batching, so a bad one fails only its own request."""
    if isinstance(value, str) or _is_ids(value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidInput("input must be a string, a list of strings, a list of token ids or a list of those lists")
    if len(value) > MAX_INPUTS:
        raise PayloadTooLarge(f"input has {len(value)} items, over the limit of {MAX_INPUTS}")
    elements = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            if len(item) > MAX_INPUT_CHARS:
                raise PayloadTooLarge(f"input[{i}] has {len(item)} characters, over the limit of {MAX_INPUT_CHARS}")
            elements.append(item.encode("utf-8"))
        elif _is_ids(item):
            if max(item) >= vocab_size:
                raise InvalidInput(f"input[{i}]: token ids must lie in [0, {vocab_size})")
            elements.append(encode_token_ids(item))
        else:
            raise InvalidInput(f"input[{i}] must be a string or a non-empty list of non-negative token ids")
    return elements


def _options(body: dict) -> tuple[str, int | None]:
    unknown = sorted(set(body) - _KNOWN_KEYS)
    if unknown:
        raise InvalidInput(f"unsupported parameter(s) for /v1/embeddings: {', '.join(unknown)}")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidInput(f"encoding_format must be 'float' or 'base64', got {encoding!r}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise InvalidInput(f"dimensions must be a positive integer, got {dimensions!r}")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise InvalidInput("user must be a string")
    return encoding, dimensions


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _policy(request: web.Request) -> SchedulePolicy:
    """The key's priority and the server's default deadline (the batcher enforces it)."""
    key = request.get(TENANT)
    seconds = (request.config_dict.get(LIMITS) or LimitsConfig()).default_timeout_s
    return SchedulePolicy(key.priority if key is not None else None, None,
                          time.monotonic() + seconds if seconds else None)


class EmbeddingHandlers:
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise InvalidInput("the body must be a JSON object with a non-empty string model")
        encoding, dimensions = _options(body)
        elements = parse_inputs(body.get("input"), await self._plane.embedding_vocab_size(body["model"]))
        text = np.empty(len(elements), dtype=object)
        text[:] = elements
        result = await self._plane.infer(InferRequest(
            body["model"], None, {"text": text}, {"text": "BYTES"}, outputs=("embedding", "num_tokens"),
            headers=request.headers, policy=_policy(request),
        ))
        vectors = result.outputs["embedding"]
        if dimensions is not None and dimensions != vectors.shape[1]:
            raise InvalidInput(f"dimensions: model {body['model']!r} gives {vectors.shape[1]}-dimensional "
                               f"embeddings and cannot shorten them")
        num_tokens = int(result.outputs["num_tokens"].sum())
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)} for i, v in enumerate(vectors)]
        payload = {"object": "list", "data": data, "model": result.model,
                   "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}}
        return web.Response(body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                            content_type="application/json")
