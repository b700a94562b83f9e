"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streaming as SSE)."""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from mlserve import errors
from mlserve.monitor.metrics import Metrics
from mlserve.routing.generation import Generation, GenerationService
from mlserve.server.middleware import status_for
from mlserve.server.openai_protocol import parse_generation
from mlserve.server.response import json_response
from mlserve.spec import GenerationRequest, TokenEvent

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error", 503: "service_unavailable"}


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": "model_not_found" if status == 404 else None}}
    return json_response(body, status, headers)


@web.middleware
async def openai_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Under /v1/ errors keep OpenAI's shape, so its clients raise their own typed errors."""
    try:
        return await handler(request)
    except errors.MlserveError as exc:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, errors.Overloaded) else None
        return openai_error(status_for(exc), str(exc), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return openai_error(exc.status, exc.reason)


class OpenAIHandlers:
    """Parse the body, call the generation service, encode the answer (whole or streamed)."""

    def __init__(self, generation: GenerationService, metrics: Metrics) -> None:
        self._generation = generation
        self._metrics = metrics

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "mlserve"}
                for name in self._generation.model_names()]
        return json_response({"object": "list", "data": data})

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
        gen = await self._generation.submit(req)
        self._metrics.requests.labels(gen.model, gen.version, "openai", "200").inc()
        if req.stream:
            return await self._stream(request, req, gen)
        return await self._whole(request, req, gen)

    async def _whole(self, request, req: GenerationRequest, gen: Generation) -> web.Response:
        text, events = [], []
        async with aclosing(_events(request, gen)) as stream:
            async for event in stream:
                text.append(event.text)
                events.append(event)
        if not events:
            return web.Response(status=204)  # the client went away; nobody reads this
        last = events[-1]
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason,
                                  "logprobs": _logprobs(gen, req, events)}
        if req.is_chat:
            choice["message"] = {"role": "assistant", "content": "".join(text)}
        else:
            choice["text"] = "".join(text)
        return json_response({**_head(req, gen), "choices": [choice], "usage": _usage(last)})

    async def _stream(self, request, req: GenerationRequest, gen: Generation):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        head = _head(req, gen, chunk=True)
        if req.is_chat:
            await _send(response, {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}]})
        last = None
        try:
            last = await self._stream_events(request, req, gen, response, head)
        except errors.MlserveError as exc:  # the status line has gone out: report it in the stream
            await _send(response, {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        if req.include_usage and last is not None:
            await _send(response, {**head, "choices": [], "usage": _usage(last)})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    async def _stream_events(request, req: GenerationRequest, gen: Generation,
                             response: web.StreamResponse, head: dict[str, Any]) -> TokenEvent | None:
        last = None
        async with aclosing(_events(request, gen)) as events:  # a failed write cancels
            async for event in events:
                last = event
                if not event.token_ids and event.finish_reason is None:
                    continue
                choice: dict[str, Any] = {"index": 0, "finish_reason": event.finish_reason,
                                          "logprobs": _logprobs(gen, req, [event])}
                if req.is_chat:
                    choice["delta"] = {"content": event.text} if event.text else {}
                else:
                    choice["text"] = event.text
                await _send(response, {**head, "choices": [choice]})
        return last


async def _events(request: web.Request, gen: Generation) -> AsyncIterator[TokenEvent]:
    """The request's events up to its last; a client that went away cancels it, freeing its blocks."""
    finished = False
    try:
        while True:
            event = await gen.handle.queue.get()
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
            gen.abort()


async def _send(response: web.StreamResponse, chunk: dict) -> None:
    await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")


def _head(req: GenerationRequest, gen: Generation, chunk: bool = False) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if req.is_chat else "text_completion"
    prefix = "chatcmpl-" if req.is_chat else "cmpl-"
    return {"id": prefix + gen.req_id, "object": kind, "created": int(time.time()), "model": gen.model}


def _usage(last: TokenEvent) -> dict[str, int]:
    return {"prompt_tokens": last.num_prompt_tokens, "completion_tokens": last.num_output_tokens,
            "total_tokens": last.num_prompt_tokens + last.num_output_tokens}


def _logprobs(gen: Generation, req: GenerationRequest, events: list[TokenEvent]) -> dict[str, Any] | None:
    if req.params.logprobs is None:
        return None
    token_text = gen.token_text
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


def openai_app(generation: GenerationService, metrics: Metrics) -> web.Application:
    """The /v1 sub-application: its own route table, and OpenAI's error shape for every failure."""
    handlers = OpenAIHandlers(generation, metrics)
    app = web.Application(middlewares=[openai_error_middleware])
    app.add_routes([
        web.get("/models", handlers.models),
        web.post("/completions", handlers.completions),
        web.post("/chat/completions", handlers.chat_completions),
    ])
    return app
