"""Answers OpenAI batch lines the way /v1/completions and /v1/chat/completions answer a request that
is not streamed: the protocol layer's decoder reads each body, `InferenceService.generate` runs it on
the model's default version (unrouted: no split or breaker applies to a job)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

import numpy as np

from mlserve.errors import InvalidInput, MlserveError, Overloaded
from mlserve.jobs.openai_batch import URLS
from mlserve.spec import GenerationRequest, TokenEvent, TokenLimits

if TYPE_CHECKING:
    from mlserve.routing.generation.run import GenerationRun

Parse = Callable[[Any, bool], GenerationRequest]
"""The OpenAI body decoder (server/http/openai/protocol.parse_generation): a protocol concern, passed in."""
Submit = Callable[[GenerationRequest], Awaitable["GenerationRun"]]


class Generates(Protocol):
    """Whatever starts generations: the inference service, or the data plane in front of it."""

    async def generate(self, request: GenerationRequest, routed: bool = True) -> GenerationRun: ...


def job_submit(service: Generates, limits: TokenLimits) -> Submit:
    """A job's way to generate: the service's one entry point, unrouted, within the server's limits."""

    async def submit(req: GenerationRequest) -> GenerationRun:
        return await service.generate(dataclasses.replace(req, limits=limits), routed=False)

    return submit

_STATUS = ((InvalidInput, 400, "invalid_request_error"), (Overloaded, 429, "rate_limit_error"))


class BatchGenerator:
    """The infer callable of an OpenAI batch run: every request of a batch submitted at once."""

    def __init__(self, model: str, parse: Parse, submit: Submit) -> None:
        self._model = model
        self._parse_body = parse
        self._submit = submit

    async def __call__(self, inputs: dict[str, np.ndarray], num_rows: int) -> dict[str, np.ndarray]:
        answers = await asyncio.gather(*(self._answer(line) for line in inputs["request"]))
        out = np.empty(len(answers), dtype=object)
        out[:] = answers
        return {"response": out}

    async def _answer(self, line: dict[str, Any]) -> dict[str, Any]:
        try:
            req = self._parse(line)
            run = await self._submit(req)
            events = await _collect(run)
        except MlserveError as exc:
            status, kind = next(((s, k) for cls, s, k in _STATUS if isinstance(exc, cls)), (500, "server_error"))
            body = {"error": {"message": str(exc), "type": kind, "param": None, "code": None}}
            return _line(line["custom_id"], status, uuid.uuid4().hex, body)
        return _line(line["custom_id"], 200, run.req_id, self._body(req, run.req_id, events))

    def _parse(self, line: dict[str, Any]) -> GenerationRequest:
        req = self._parse_body(line["body"], URLS[line["url"]])
        if req.model != self._model:
            raise InvalidInput(f"this batch runs model {self._model!r}; the request names {req.model!r}")
        if req.stream:
            raise InvalidInput("stream is not supported in a batch file")
        if req.params.logprobs is not None:
            raise InvalidInput("logprobs are not supported in a batch file")
        if len(req.prompts) > 1 or req.n != 1 or req.best_of or req.echo:
            raise InvalidInput("a batch line takes one prompt and n = 1, without best_of or echo")
        return req

    def _body(self, req: GenerationRequest, req_id: str, events: list[TokenEvent]) -> dict[str, Any]:
        text, last = "".join(e.text for e in events), events[-1]
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
        if req.is_chat:
            choice["message"] = {"role": "assistant", "content": text}
        usage = {"prompt_tokens": last.num_prompt_tokens, "completion_tokens": last.num_output_tokens,
                 "total_tokens": last.num_prompt_tokens + last.num_output_tokens}
        if not req.is_chat:
            choice["text"] = text
        kind, prefix = ("chat.completion", "chatcmpl-") if req.is_chat else ("text_completion", "cmpl-")
        return {"id": prefix + req_id, "object": kind, "created": int(time.time()), "model": self._model,
                "choices": [choice], "usage": usage}


async def _collect(run: GenerationRun) -> list[TokenEvent]:
    """Every event of one request up to its last (a failed one raises); a cancelled run frees its blocks."""
    return [event async for event in run.events()]


def _line(custom_id: str, status: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"batch_req_{request_id}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}
