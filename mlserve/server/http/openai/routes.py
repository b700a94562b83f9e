"""OpenAI-compatible generation routes: /v1/completions and /v1/chat/completions (streaming as SSE).
Handlers decode the body, start the generation through the data plane and encode its events."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from mlserve import errors
from mlserve.config import LimitsConfig
from mlserve.dataplane import DataPlane, GenerationRun, token_limits
from mlserve.monitor.metrics import Metrics
from mlserve.server.limits import LIMITS
from mlserve.server.middleware import TENANT
from mlserve.server.http.openai.embeddings import EmbeddingHandlers
from mlserve.server.http.openai.extras import ExtraHandlers, read_model_body
from mlserve.server.http.openai.format import choice_logprobs, deadline_message, usage
from mlserve.server.http.openai.protocol import GenerationRequest, parse_generation
from mlserve.server.ratelimit import TenantLimiter


@dataclass(slots=True)
class _Choice:
    """What one sequence produced, gathered from its events."""

    text: list[str] = field(default_factory=list)
    events: list = field(default_factory=list)
    finish_reason: str | None = None
    num_tokens: int = 0
    logprob_sum: float = 0.0


class OpenAIHandlers:
    """Parse the body, start the generation through the data plane, encode the answer (whole or streamed)."""

    def __init__(self, plane: DataPlane, metrics: Metrics, limiter: TenantLimiter | None = None) -> None:
        self._plane = plane
        self._metrics = metrics
        self._limiter = limiter
        """Where keys' generation token quotas are counted (None: no keys)."""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, is_chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, is_chat=True)

    async def _generate(self, request: web.Request, is_chat: bool) -> web.StreamResponse:
        req = parse_generation(await read_model_body(request), is_chat)
        limits = request.config_dict.get(LIMITS) or LimitsConfig()
        key = request.get(TENANT)
        limiter = self._limiter if key is not None else None
        if limiter is not None:
            refusal = await limiter.check_tokens(key.key_id)
            if refusal is not None:
                raise errors.Overloaded(refusal.reason, refusal.retry_after_s)
        seconds = limits.default_timeout_s or None
        started = time.monotonic()
        try:
            async with asyncio.timeout(seconds):
                run = await self._plane.generate(replace(
                    req, limits=token_limits(limits), priority=key.priority if key is not None else None,
                    headers=request.headers, tenant=key.key_id if key is not None else None,
                ))
        except TimeoutError:
            raise errors.RequestTimeout(deadline_message(seconds)) from None
        left = None if seconds is None else max(0.0, seconds - (time.monotonic() - started))
        response, completion = await (_stream if req.stream else _whole)(request, req, run, left)
        if limiter is not None:  # the key's token quota: prompt and completion tokens, as usage reports them
            await limiter.spend_tokens(key.key_id, usage(run, completion)["total_tokens"])
        self._metrics.requests.labels(run.model, run.version, "openai", str(response.status)).inc()
        return response


async def _whole(request: web.Request, req: GenerationRequest, run: GenerationRun, seconds: float | None):
    choices: dict[int, _Choice] = {}
    try:
        async with asyncio.timeout(seconds):
            async with aclosing(run.events()) as events:
                async for event in events:
                    if request.transport is None or request.transport.is_closing():  # the client went away
                        return web.Response(status=204), sum(c.num_tokens for c in choices.values())
                    _gather(choices.setdefault(event.index, _Choice()), event)
    except TimeoutError:
        raise errors.RequestTimeout(deadline_message(seconds)) from None
    kept = _best(req, choices)
    out = []
    for index, (seq_index, choice) in enumerate(kept):
        entry: dict[str, Any] = {"index": index, "finish_reason": choice.finish_reason,
                                 "logprobs": choice_logprobs(run.token_text, req, choice.events)}
        if req.is_chat:
            entry["message"] = {"role": "assistant", "content": "".join(choice.text), "refusal": None}
        else:
            prefix = run.prompt_text(seq_index // run_width(req)) if req.echo else ""
            entry["text"] = prefix + "".join(choice.text)
        out.append(entry)
    completion = sum(c.num_tokens for c in choices.values())
    return _json({**_head(req, run), "choices": out, "usage": usage(run, completion)}), completion


def run_width(req: GenerationRequest) -> int:
    return req.best_of or req.n


def _gather(choice: _Choice, event) -> None:
    choice.text.append(event.text)
    choice.events.append(event)
    choice.num_tokens += len(event.token_ids)
    choice.logprob_sum += event.logprob_sum
    if event.finish_reason is not None:
        choice.finish_reason = event.finish_reason


def _best(req: GenerationRequest, choices: dict[int, _Choice]) -> list[tuple[int, _Choice]]:
    """Per prompt, the n sequences to return: all of them, or with best_of the n of highest cumulative logprob."""
    width = run_width(req)
    kept = []
    for start in range(0, len(choices), width):
        group = [(i, choices[i]) for i in range(start, start + width)]
        if req.best_of:
            group = sorted(group, key=lambda item: item[1].logprob_sum, reverse=True)[: req.n]
        kept += group
    return kept


async def _stream(request: web.Request, req: GenerationRequest, run: GenerationRun, seconds: float | None):
    """The status line goes out once the first token exists (the service waited for it), so a deadline
    passed before then is a 504; after it, the stream runs to its end."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    head = _head(req, run, chunk=True)
    completion = 0
    async with aclosing(run.events()) as events:
        try:
            await response.prepare(request)
            await _opening(response, req, run, head)
            completion = await _stream_events(request, req, run, response, head, events)
        except ConnectionResetError:  # the client went away: its sequences are cancelled, nothing to log
            return response, completion
        except errors.MlserveError as exc:  # the status line has gone out: report it in the stream
            kind = errors.kind_of(exc)
            await _send(response, {"error": {"message": str(exc), "type": kind.openai_type, "param": None,
                                             "code": kind.openai_code}})
    try:
        if req.include_usage:
            await _send(response, {**head, "choices": [], "usage": usage(run, completion)})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response, completion


async def _opening(response: web.StreamResponse, req: GenerationRequest, run: GenerationRun, head: dict) -> None:
    """Chat: each choice opens with the assistant role; completions with echo: each with its prompt."""
    for index in range(len(run.prompt_ids) * req.n):
        if req.is_chat:
            delta = {"role": "assistant", "content": ""}
            await _send(response, {**head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                        "finish_reason": None}]})
        elif req.echo:
            await _send(response, {**head, "choices": [{"index": index, "text": run.prompt_text(index // req.n),
                                                        "logprobs": None, "finish_reason": None}]})


async def _stream_events(request, req: GenerationRequest, run: GenerationRun, response: web.StreamResponse,
                         head: dict[str, Any], events) -> int:
    completion = 0
    async for event in events:
        completion += len(event.token_ids)
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the client went away")
        if not event.token_ids and event.finish_reason is None:
            continue
        choice: dict[str, Any] = {"index": event.index, "finish_reason": event.finish_reason,
                                  "logprobs": choice_logprobs(run.token_text, req, [event])}
        if req.is_chat:
            choice["delta"] = {"content": event.text} if event.text else {}
        else:
            choice["text"] = event.text
        await _send(response, {**head, "choices": [choice]})
    return completion


async def _send(response: web.StreamResponse, chunk: dict) -> None:
    await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")


def _head(req: GenerationRequest, run: GenerationRun, chunk: bool = False) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if req.is_chat else "text_completion"
    prefix = "chatcmpl-" if req.is_chat else "cmpl-"
    return {"id": prefix + run.req_id, "object": kind, "created": int(time.time()), "model": req.model}


def _json(payload: dict) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def openai_app(plane: DataPlane, metrics: Metrics, limiter: TenantLimiter | None = None) -> web.Application:
    """The /v1 sub-application: OpenAI's generation, embedding and model routes."""
    handlers = OpenAIHandlers(plane, metrics, limiter)
    extras = ExtraHandlers(plane)
    app = web.Application()  # its errors take OpenAI's shape in the front middleware (middleware.error_shape)
    app.add_routes([
        web.get("/models", extras.models),
        web.get("/models/{model}", extras.model),
        web.post("/completions", handlers.completions),
        web.post("/chat/completions", handlers.chat_completions),
        web.post("/embeddings", EmbeddingHandlers(plane).embeddings),
    ])
    return app


def vllm_routes(plane: DataPlane) -> list[web.RouteDef]:
    """vLLM's extras at the root: /health and /version (open), /tokenize and /detokenize."""
    extras = ExtraHandlers(plane)
    return [
        web.get("/health", extras.health),
        web.get("/version", extras.version),
        web.post("/tokenize", extras.tokenize),
        web.post("/detokenize", extras.detokenize),
    ]
