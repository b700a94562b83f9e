"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streaming as SSE)."""

from __future__ import annotations

import dataclasses
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, AsyncIterator

import orjson
from aiohttp import web

from mlserve import errors
from mlserve.config import LimitsConfig
from mlserve.monitor.metrics import Metrics
from mlserve.routing.service import InferenceService
from mlserve.server.limits import LIMITS, check_token_limits
from mlserve.server.middleware import status_for
from mlserve.server.openai_embeddings import EmbeddingHandlers
from mlserve.server.openai_extras import ExtraHandlers
from mlserve.server.openai_protocol import GenerationRequest, parse_generation

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import LLMEngine, RequestHandle, TokenEvent

OPENAI_SHAPED = ("/v1/", "/tokenize", "/detokenize")
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error", 503: "service_unavailable"}


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": "model_not_found" if status == 404 else None}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


@web.middleware
async def openai_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Under /v1/ errors keep OpenAI's shape, so its clients raise their own typed errors."""
    if not request.path.startswith(OPENAI_SHAPED):
        return await handler(request)
    try:
        return await handler(request)
    except errors.MlserveError as exc:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, errors.Overloaded) else None
        return openai_error(status_for(exc), str(exc), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return openai_error(exc.status, exc.reason)


@dataclasses.dataclass(frozen=True, slots=True)
class _Target:
    engine: LLMEngine
    model: str
    version: str


class OpenAIHandlers:
    """Parse the body, submit to the model version's engine, encode the answer (whole or streamed)."""

    def __init__(self, service: InferenceService, metrics: Metrics) -> None:
        self._service = service
        self._metrics = metrics

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, is_chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, is_chat=True)

    async def _generate(self, request: web.Request, is_chat: bool) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise errors.InvalidInput(f"the request body is not valid JSON: {exc}") from None
        req = parse_generation(body, is_chat)
        await self._service.loader.ensure_loaded(req.model)  # lazy or evicted models load on first use
        target = self._target(req.model)
        handle = self._submit(target.engine, req, request.app.get(LIMITS) or LimitsConfig())
        self._metrics.requests.labels(target.model, target.version, "openai", "200").inc()
        if req.stream:
            return await self._stream(request, req, target, handle)
        return await self._whole(request, req, target, handle)

    def _target(self, model: str) -> _Target:
        served = self._service.router.pick(model, None)
        if served.llm_engine is None:
            raise errors.InvalidInput(f"model {model!r} is not a generation model; use /v2/models/{model}/infer")
        return _Target(served.llm_engine, model, str(served.version))

    @staticmethod
    def _submit(engine: LLMEngine, req: GenerationRequest, limits: LimitsConfig) -> RequestHandle:
        tokenizer = engine.backend.tokenizer
        if req.prompt_token_ids is not None:
            ids = list(req.prompt_token_ids)
            if max(ids) >= engine.backend.runner.shape.vocab_size or min(ids) < 0:
                raise errors.InvalidInput(f"prompt token ids must lie in [0, {engine.backend.runner.shape.vocab_size})")
        else:
            if req.is_chat:
                ids = tokenizer.encode(tokenizer.apply_chat_template(list(req.messages)), add_special_tokens=False)
            else:
                ids = tokenizer.encode(req.prompt)
        params = req.params
        if not req.max_tokens_given and req.is_chat:
            params = dataclasses.replace(params, max_tokens=max(1, engine.max_model_len - len(ids)))
        check_token_limits(len(ids), params.max_tokens if req.max_tokens_given else 0, limits)
        return engine.submit(ids, params)

    async def _whole(self, request, req: GenerationRequest, target: _Target, handle: RequestHandle) -> web.Response:
        text, events = [], []
        async with aclosing(_events(request, target.engine, handle)) as stream:
            async for event in stream:
                text.append(event.text)
                events.append(event)
        if not events:
            return web.Response(status=204)  # the client went away; nobody reads this
        last = events[-1]
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason,
                                  "logprobs": _logprobs(target.engine, req, events)}
        if req.is_chat:
            choice["message"] = {"role": "assistant", "content": "".join(text)}
        else:
            choice["text"] = "".join(text)
        return _json({**_head(req, target, handle), "choices": [choice], "usage": _usage(last)})

    async def _stream(self, request, req: GenerationRequest, target: _Target, handle: RequestHandle):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        head = _head(req, target, handle, chunk=True)
        if req.is_chat:
            await _send(response, {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}]})
        last = None
        try:
            last = await self._stream_events(request, req, target, handle, response, head)
        except errors.MlserveError as exc:  # the status line has gone out: report it in the stream
            await _send(response, {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        if req.include_usage and last is not None:
            await _send(response, {**head, "choices": [], "usage": _usage(last)})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    async def _stream_events(request, req: GenerationRequest, target: _Target, handle: RequestHandle,
                             response: web.StreamResponse, head: dict[str, Any]) -> TokenEvent | None:
        last = None
        async with aclosing(_events(request, target.engine, handle)) as events:  # a failed write cancels
            async for event in events:
                last = event
                if not event.token_ids and event.finish_reason is None:
                    continue
                choice: dict[str, Any] = {"index": 0, "finish_reason": event.finish_reason,
                                          "logprobs": _logprobs(target.engine, req, [event])}
                if req.is_chat:
                    choice["delta"] = {"content": event.text} if event.text else {}
                else:
                    choice["text"] = event.text
                await _send(response, {**head, "choices": [choice]})
        return last


async def _events(request: web.Request, engine: LLMEngine, handle: RequestHandle) -> AsyncIterator[TokenEvent]:
    """The request's events up to its last; a client that went away cancels it, freeing its blocks."""
    finished = False
    try:
        while True:
            event = await handle.queue.get()
            if event.error is not None:
                finished = True
                raise errors.InferenceFailed(event.error)
            if request.transport is None or request.transport.is_closing():
                break
            yield event
            if event.finish_reason is not None:
                finished = True
                return
    finally:
        if not finished:
            engine.abort(handle.req_id)


async def _send(response: web.StreamResponse, chunk: dict) -> None:
    await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")


def _head(req: GenerationRequest, target: _Target, handle: RequestHandle, chunk: bool = False) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if req.is_chat else "text_completion"
    prefix = "chatcmpl-" if req.is_chat else "cmpl-"
    return {"id": prefix + handle.req_id, "object": kind, "created": int(time.time()), "model": target.model}


def _usage(last: TokenEvent) -> dict[str, int]:
    return {"prompt_tokens": last.num_prompt_tokens, "completion_tokens": last.num_output_tokens,
            "total_tokens": last.num_prompt_tokens + last.num_output_tokens}


def _logprobs(engine: LLMEngine, req: GenerationRequest, events: list[TokenEvent]) -> dict[str, Any] | None:
    if req.params.logprobs is None:
        return None
    token_text = engine.backend.tokenizer.token_text
    entries = [entry for event in events for entry in event.logprobs]
    if req.is_chat:
        return {"content": [
            {"token": token_text(t), "logprob": lp, "bytes": list(token_text(t).encode()),
             "top_logprobs": [{"token": token_text(i), "logprob": v, "bytes": list(token_text(i).encode())}
                              for i, v in top]}
            for t, lp, top in entries
        ]}
    offsets, offset = [], 0
    for t, _, _ in entries:
        offsets.append(offset)
        offset += len(token_text(t))
    return {"tokens": [token_text(t) for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{token_text(i): v for i, v in top} for _, _, top in entries], "text_offset": offsets}


def _json(payload: dict) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def add_openai_routes(app: web.Application, service: InferenceService, metrics: Metrics) -> None:
    handlers = OpenAIHandlers(service, metrics)
    extras = ExtraHandlers(service.generation)
    app.middlewares.append(openai_error_middleware)
    app.router.add_get("/v1/models", extras.models)
    app.router.add_get("/v1/models/{model}", extras.model)
    app.router.add_post("/v1/embeddings", EmbeddingHandlers(service).embeddings)
    app.router.add_get("/health", extras.health)
    app.router.add_get("/version", extras.version)
    app.router.add_post("/tokenize", extras.tokenize)
    app.router.add_post("/detokenize", extras.detokenize)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
