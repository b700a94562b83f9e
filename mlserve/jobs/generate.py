"""Answers OpenAI batch lines on one LLMEngine, the way /v1/completions and /v1/chat/completions
answer a request that is not streamed."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import numpy as np

from mlserve.batching.llm_engine import LLMEngine, RequestHandle, TokenEvent
from mlserve.errors import InvalidInput, MlserveError, Overloaded
from mlserve.jobs.openai_batch import URLS
from mlserve.server.openai_protocol import GenerationRequest, parse_generation

_STATUS = ((InvalidInput, 400, "invalid_request_error"), (Overloaded, 429, "rate_limit_error"))


class BatchGenerator:
    """The infer callable of an OpenAI batch run: every request of a batch submitted at once."""

    def __init__(self, engine: LLMEngine, model: str) -> None:
        self._engine = engine
        self._model = model

    async def __call__(self, inputs: dict[str, np.ndarray], num_rows: int) -> dict[str, np.ndarray]:
        answers = await asyncio.gather(*(self._answer(line) for line in inputs["request"]))
        out = np.empty(len(answers), dtype=object)
        out[:] = answers
        return {"response": out}

    async def _answer(self, line: dict[str, Any]) -> dict[str, Any]:
        try:
            req = self._parse(line)
            handle = self._submit(req)
            events = await _collect(self._engine, handle)
        except MlserveError as exc:
            status, kind = next(((s, k) for cls, s, k in _STATUS if isinstance(exc, cls)), (500, "server_error"))
            body = {"error": {"message": str(exc), "type": kind, "param": None, "code": None}}
            return _line(line["custom_id"], status, uuid.uuid4().hex, body)
        return _line(line["custom_id"], 200, handle.req_id, self._body(req, handle, events))

    def _parse(self, line: dict[str, Any]) -> GenerationRequest:
        req = parse_generation(line["body"], URLS[line["url"]])
        if req.model != self._model:
            raise InvalidInput(f"this batch runs model {self._model!r}; the request names {req.model!r}")
        if req.stream:
            raise InvalidInput("stream is not supported in a batch file")
        if req.params.logprobs is not None:
            raise InvalidInput("logprobs are not supported in a batch file")
        return req

    def _submit(self, req: GenerationRequest) -> RequestHandle:
        engine = self._engine
        tokenizer = engine.backend.tokenizer
        if req.prompt_token_ids is not None:
            ids = list(req.prompt_token_ids)
            vocab = engine.backend.runner.shape.vocab_size
            if max(ids) >= vocab or min(ids) < 0:
                raise InvalidInput(f"prompt token ids must lie in [0, {vocab})")
        elif req.is_chat:
            ids = tokenizer.encode(tokenizer.apply_chat_template(list(req.messages)), add_special_tokens=False)
        else:
            ids = tokenizer.encode(req.prompt)
        params = req.params
        if not req.max_tokens_given and req.is_chat:
            params = dataclasses.replace(params, max_tokens=max(1, engine.max_model_len - len(ids)))
        return engine.submit(ids, params)

    def _body(self, req: GenerationRequest, handle: RequestHandle, events: list[TokenEvent]) -> dict[str, Any]:
        text, last = "".join(e.text for e in events), events[-1]
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
        if req.is_chat:
            choice["message"] = {"role": "assistant", "content": text}
        usage = {"prompt_tokens": last.num_prompt_tokens, "completion_tokens": last.num_output_tokens,
                 "total_tokens": last.num_prompt_tokens + last.num_output_tokens}
        if not req.is_chat:
            choice["text"] = text
        kind, prefix = ("chat.completion", "chatcmpl-") if req.is_chat else ("text_completion", "cmpl-")
        return {"id": prefix + handle.req_id, "object": kind, "created": int(time.time()), "model": self._model,
                "choices": [choice], "usage": usage}


async def _collect(engine: LLMEngine, handle: RequestHandle) -> list[TokenEvent]:
    """Every event of one request up to its last; a cancelled run frees its blocks."""
    events: list[TokenEvent] = []
    try:
        while True:
            event = await handle.queue.get()
            if event.error is not None:
                raise MlserveError(event.error)
            events.append(event)
            if event.finish_reason is not None:
                return events
    except BaseException:
        engine.abort(handle.req_id)
        raise


def _line(custom_id: str, status: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"batch_req_{request_id}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}
