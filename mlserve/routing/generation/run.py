"""Generation through the service: version choice (split, sticky key, canary, breaker, fallback),
tokenizing, limits, the engine's request, and on completion the traffic record, the prediction log and
drift features (prompt length, output length, mean token logprob), as v2 inference gets them.

`start_generation` is the one way in (behind `InferenceService.generate`), for /v1 requests and batch
jobs alike; a `GenerationRun` is what it returns."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, AsyncGenerator, AsyncIterator, Protocol

import numpy as np

from mlserve.config import LimitsConfig
from mlserve.errors import InferenceFailed, InvalidInput, PayloadTooLarge
from mlserve.monitor.hub import Monitor, Observation
from mlserve.registry.loader import HotSwapLoader, ServedVersion
from mlserve.registry.serving import GenerativeServing
from mlserve.routing.manager import TrafficManager
from mlserve.routing.router import Router

from mlserve.spec import GenerationRequest, TokenLimits

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import RequestHandle, TokenEvent
    from mlserve.spec import SamplingParams


class GenerationRoutes(Protocol):
    """What generation uses of `InferenceService` (which satisfies it): named here so this module need
    not import the service, which imports it."""

    @property
    def loader(self) -> HotSwapLoader: ...
    @property
    def traffic(self) -> TrafficManager: ...
    @property
    def router(self) -> Router: ...
    @property
    def monitor(self) -> Monitor | None: ...


def check_token_ids(token_ids: list[int], vocab_size: int) -> None:
    if token_ids and (min(token_ids) < 0 or max(token_ids) >= vocab_size):
        raise InvalidInput(f"token ids must lie in [0, {vocab_size})")


def token_limits(limits: LimitsConfig) -> TokenLimits:
    """The `[limits]` a generation request is held to, from the server's settings."""
    return TokenLimits(limits.max_prompt_tokens, limits.max_generation_tokens, limits.generation_budget_tokens)


class GenerationRun:
    """A generation in flight on one version: its events, then one outcome for the traffic record
    (a routed run's only: a batch job's run records nothing)."""

    def __init__(self, service: GenerationRoutes, served: ServedVersion, serving: GenerativeServing,
                 handle: RequestHandle, prompt_ids: list[list[int]], routed: bool) -> None:
        self.model, self.version = served.model, str(served.version)
        self.req_id = handle.req_id
        self.handle = handle
        self.prompt_ids = prompt_ids
        self._service, self._served, self._routed = service, served, routed
        self._serving = serving
        self._started = time.monotonic()
        self._num_output, self._logprob_sum = 0, 0.0
        self._source = self._receive()
        self._first: TokenEvent | None = None

    async def first(self) -> None:
        """Wait for the first event, so a version that fails before any token can be replaced."""
        self._first = await anext(self._source)

    async def events(self) -> AsyncIterator[TokenEvent]:
        """Every sequence's events until all have finished. Leaving early (client gone, deadline)
        cancels the rest and frees their blocks."""
        try:
            if self._first is not None:
                yield self._first
            async for event in self._source:
                yield event
        finally:
            await self._source.aclose()

    def prompt_text(self, index: int) -> str:
        return self._serving.tokenizer.decode(self.prompt_ids[index])

    def token_text(self, token_id: int) -> str:
        return self._serving.tokenizer.token_text(token_id)

    async def _receive(self) -> AsyncGenerator[TokenEvent, None]:
        left, outcome = self.handle.num_seqs, None
        try:
            while left:
                event = await self.handle.queue.get()
                if event.error is not None:
                    outcome = False
                    raise InferenceFailed(event.error)
                self._num_output += len(event.token_ids)
                self._logprob_sum += event.logprob_sum
                if event.finish_reason is not None:
                    left -= 1
                yield event
            outcome = True
        except asyncio.CancelledError:  # the deadline passed (a client that leaves closes, never cancels)
            outcome = False
            raise
        finally:
            if left:
                self._serving.engine.abort_request(self.handle)
            self._finish(outcome)

    def _finish(self, ok: bool | None) -> None:
        """ok None: the client went away, which says nothing about the version."""
        if not self._routed:
            return
        traffic = self._service.traffic
        latency = time.monotonic() - self._started
        if ok is None:
            traffic.release(self._served)
            return
        traffic.record(self.model, self._served, self.req_id, latency, ok, self._routed)
        if ok and self._service.monitor is not None:
            mean_logprob = self._logprob_sum / max(1, self._num_output)
            self._service.monitor.observe(Observation(
                self.model, self.version, self.req_id,
                {"prompt_tokens": np.asarray([[sum(len(p) for p in self.prompt_ids)]], dtype=np.float32)},
                {"output_tokens": np.asarray([[self._num_output]], dtype=np.float32),
                 "mean_logprob": np.asarray([[mean_logprob]], dtype=np.float32)},
                latency, "router",
            ))


async def start_generation(service: GenerationRoutes, request: GenerationRequest, routed: bool = True) -> GenerationRun:
    """Start on the routed version and wait for its first event. A version that fails before its first
    token is recorded as failed (its breaker counts it) and the request moves to another ready version,
    so a client never sees the failure of a version that a fallback could answer.

    `routed` False (batch jobs): the model's default version as it stands, no split, breaker or
    fallback, nothing recorded; the run starts without waiting for its first event."""
    assert request.limits is not None, "the protocol layer sets a generation request's limits"
    await service.loader.ensure_loaded(request.model)  # lazy or evicted models load on first use
    if not routed:
        return await _submit(service, service.router.pick(request.model, None), request, routed=False)
    failed: set[int] = set()
    while True:
        served = _pick(service, request, failed)
        run = await _submit(service, served, request)
        try:
            await run.first()
            return run
        except InferenceFailed:
            failed.add(served.version)
            if not _other_ready(service, request.model, failed):
                raise


def _pick(service: GenerationRoutes, request: GenerationRequest, failed: set[int]) -> ServedVersion:
    key = service.traffic.sticky_key(service.router.model(request.model), request.headers, {})
    served = service.router.pick(request.model, None, key, routed=True)
    if served.version not in failed:
        return served
    service.traffic.release(served)
    return service.router.pick(request.model, str(_other_ready(service, request.model, failed)), routed=True)


def _other_ready(service: GenerationRoutes, model: str, failed: set[int]) -> int | None:
    ready = [v for v in service.router.model(model).ready_versions() if v not in failed]
    return ready[-1] if ready else None


async def _submit(service: GenerationRoutes, served: ServedVersion, request: GenerationRequest,
                  routed: bool = True) -> GenerationRun:
    """Tokenizing runs on a thread (the tokenizer releases the GIL for long texts), so a long prompt
    does not hold the event loop."""
    try:
        serving = served.serving
        if not isinstance(serving, GenerativeServing):
            raise InvalidInput(f"model {request.model!r} is not a generation model; "
                               f"use /v2/models/{request.model}/infer")
        limits = _limits(request)
        check_text_chars(request.prompts, request.messages, limits.max_prompt_tokens)
        ids = await asyncio.to_thread(lambda: [prompt_ids(serving, request, p) for p in (request.prompts or (None,))])
        params = bounded_params(serving, request, ids)
        handle = serving.engine.submit_many(ids, params, request.num_seqs_per_prompt, request.priority,
                                            request.tenant)
    except BaseException:  # a refusal, or the deadline cancelled the tokenizing
        if routed:
            service.traffic.release(served)  # refused before it ran: nothing to judge
        raise
    return GenerationRun(service, served, serving, handle, ids, routed)


def _limits(request: GenerationRequest) -> TokenLimits:
    assert request.limits is not None, "start_generation checked it"
    return request.limits


MAX_CHARS_PER_TOKEN = 64
"""No tokenizer mlserve serves merges more characters than this into one token: a prompt longer than
max_prompt_tokens times this is refused before tokenizing (which costs time in proportion to length)."""


def check_prompt_chars(num_chars: int, max_prompt_tokens: int) -> None:
    limit = max_prompt_tokens * MAX_CHARS_PER_TOKEN
    if num_chars > limit:
        raise PayloadTooLarge(f"prompt has {num_chars} characters, over the limit of {limit} "
                              f"({max_prompt_tokens} tokens of at most {MAX_CHARS_PER_TOKEN} characters)")


def check_text_chars(prompts: tuple[str | tuple[int, ...], ...], messages: tuple[dict[str, str], ...] | None,
                     max_prompt_tokens: int) -> None:
    """Every text prompt, and a chat's contents together, within the character cap: checked before a
    template is rendered or any text tokenized."""
    for text in prompts:
        if isinstance(text, str):
            check_prompt_chars(len(text), max_prompt_tokens)
    if messages:
        check_prompt_chars(sum(len(m["content"]) for m in messages), max_prompt_tokens)


def prompt_ids(serving: GenerativeServing, request: GenerationRequest, prompt: str | tuple[int, ...] | None
               ) -> list[int]:
    tokenizer, limits = serving.tokenizer, _limits(request)
    if isinstance(prompt, tuple):
        ids = list(prompt)
        check_token_ids(ids, serving.vocab_size)
    elif prompt is None:
        text = tokenizer.apply_chat_template(list(request.messages or ()))
        check_prompt_chars(len(text), limits.max_prompt_tokens)
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        check_prompt_chars(len(prompt), limits.max_prompt_tokens)
        ids = tokenizer.encode(prompt)
    if len(ids) > limits.max_prompt_tokens:
        raise PayloadTooLarge(f"prompt has {len(ids)} tokens, over the limit of {limits.max_prompt_tokens}")
    return ids


def bounded_params(serving: GenerativeServing, request: GenerationRequest, prompt_ids: list[list[int]]) -> SamplingParams:
    """Token ids the params name must exist; a chat with no max_tokens gets the room left, within the
    server's max_generation_tokens and its share of the request's budget. The budget bounds what the
    whole request may generate (prompts x sequences x max_tokens), which no single limit does."""
    limits = _limits(request)
    params, cap, budget = request.params, limits.max_generation_tokens, limits.budget_tokens
    vocab = serving.vocab_size
    check_token_ids([i for i, _ in params.logit_bias] + list(params.stop_token_ids), vocab)
    num_seqs = len(prompt_ids) * request.num_seqs_per_prompt
    if not request.max_tokens_given and request.messages is not None:
        room = serving.max_model_len - max(len(ids) for ids in prompt_ids)
        params = dataclasses.replace(params, max_tokens=max(1, min(room, cap, budget // num_seqs)))
    elif params.max_tokens > cap:
        raise InvalidInput(f"max_tokens {params.max_tokens} is over the limit of {cap}")
    total = num_seqs * params.max_tokens
    if total > budget:
        raise InvalidInput(
            f"this request may generate {len(prompt_ids)} prompt(s) x {request.num_seqs_per_prompt} sequence(s) "
            f"x {params.max_tokens} max_tokens = {total} tokens, over the generation budget of {budget} tokens "
            "per request ([limits] generation_budget_tokens)"
        )
    return params
