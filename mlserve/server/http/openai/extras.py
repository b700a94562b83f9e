"""vLLM's extra routes beside the OpenAI ones: /v1/models[/{id}], /health, /version, /tokenize, /detokenize."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from mlserve import __version__
from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.dataplane import DataPlane
from mlserve.server.http.json_body import read_json
from mlserve.server.limits import LIMITS
from mlserve.server.http.openai.protocol import parse_messages
from mlserve.spec.generation import ModelCard


def card_json(card: ModelCard) -> dict[str, Any]:
    return {"id": card.name, "object": "model", "created": 0, "owned_by": "mlserve", "root": card.name,
            "parent": None, "max_model_len": card.max_model_len, "permission": []}


async def read_model_body(request: web.Request) -> dict[str, Any]:
    """A JSON object body that names a model."""
    body = await read_json(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model must be a non-empty string")
    return body


def _check_keys(body: dict, known: frozenset[str], route: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidInput(f"unsupported parameter(s) for {route}: {', '.join(unknown)}")


_TOKENIZE_KEYS = frozenset({"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"})


class ExtraHandlers:
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [card_json(c) for c in self._plane.cards()]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        card = await self._plane.card(name)
        if card is None:
            raise ModelNotFound(f"model {name!r} neither generates nor embeds (see /v2/models/{name})")
        return _json(card_json(card))

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": __version__})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await read_model_body(request)
        _check_keys(body, _TOKENIZE_KEYS, "/tokenize")
        if body.get("add_generation_prompt") is False:
            raise InvalidInput("add_generation_prompt: false is not supported; chat prompts end with the assistant turn")
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise InvalidInput("add_special_tokens must be true or false")
        cap = (request.config_dict.get(LIMITS) or LimitsConfig()).max_prompt_tokens
        if "messages" in body:
            ids, length = await self._plane.tokenize(body["model"], None, list(parse_messages(body)), special, cap)
        elif isinstance(body.get("prompt"), str):
            ids, length = await self._plane.tokenize(body["model"], body["prompt"], None, special, cap)
        else:
            raise InvalidInput("give prompt (a string) or messages")
        return _json({"count": len(ids), "max_model_len": length, "tokens": ids, "token_strs": None})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await read_model_body(request)
        _check_keys(body, frozenset({"model", "tokens"}), "/detokenize")
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise InvalidInput("tokens must be a list of integers")
        return _json({"prompt": await self._plane.detokenize(body["model"], tokens)})


def _json(payload: dict) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
