"""The protocol-neutral core of generation: pick the version, tokenize, check lengths and limits,
submit to the version's engine; cancel; name tokens. Protocol layers (OpenAI today) decode a
request, call this, and encode what comes back, never touching the engine or its tokenizer."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput, PayloadTooLarge
from mlserve.registry.loader import HotSwapLoader
from mlserve.routing.router import Router
from mlserve.spec import GenerationRequest, RequestHandle, SamplingParams

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import LLMEngine


class Generation:
    """One submitted request: which version answers, where its TokenEvents arrive, how to cancel it."""

    __slots__ = ("model", "version", "handle", "_engine")

    def __init__(self, model: str, version: str, handle: RequestHandle, engine: LLMEngine) -> None:
        self.model = model
        self.version = version
        self.handle = handle
        self._engine = engine

    @property
    def req_id(self) -> str:
        return self.handle.req_id

    def abort(self) -> None:
        """The client went away: the engine frees the request's blocks before its next step."""
        self._engine.abort(self.handle.req_id)

    def token_text(self, token_id: int) -> str:
        return self._engine.backend.tokenizer.token_text(token_id)


class GenerationService:
    """Every generation protocol's one path into the LLM engines of the served versions."""

    def __init__(self, loader: HotSwapLoader, router: Router, limits: LimitsConfig) -> None:
        self._loader = loader
        self._router = router
        self._limits = limits

    def model_names(self) -> list[str]:
        """Models with a ready generation version, sorted."""
        return [
            name for name, served in sorted(self._loader.models.items())
            if any(sv.llm_engine is not None for sv in served.versions.values() if sv.is_ready)
        ]

    async def submit(self, req: GenerationRequest) -> Generation:
        await self._loader.ensure_loaded(req.model)  # lazy or evicted models load on first use
        served = self._router.pick(req.model, None)
        engine = served.llm_engine
        if engine is None:
            raise InvalidInput(f"model {req.model!r} is not a generation model; use /v2/models/{req.model}/infer")
        ids = _prompt_ids(engine, req)
        params = req.params
        if not req.max_tokens_given and req.is_chat:
            params = dataclasses.replace(params, max_tokens=max(1, engine.max_model_len - len(ids)))
        self._check_limits(len(ids), params, req.max_tokens_given)
        return Generation(req.model, str(served.version), engine.submit(ids, params), engine)

    def _check_limits(self, num_prompt_tokens: int, params: SamplingParams, max_tokens_given: bool) -> None:
        limits = self._limits
        if num_prompt_tokens > limits.max_prompt_tokens:
            raise PayloadTooLarge(f"prompt has {num_prompt_tokens} tokens, over the limit of {limits.max_prompt_tokens}")
        if max_tokens_given and params.max_tokens > limits.max_generation_tokens:
            raise InvalidInput(f"max_tokens {params.max_tokens} is over the limit of {limits.max_generation_tokens}")


def _prompt_ids(engine: LLMEngine, req: GenerationRequest) -> list[int]:
    tokenizer = engine.backend.tokenizer
    if req.prompt_token_ids is not None:
        ids = list(req.prompt_token_ids)
        vocab_size = engine.backend.runner.shape.vocab_size
        if max(ids) >= vocab_size or min(ids) < 0:
            raise InvalidInput(f"prompt token ids must lie in [0, {vocab_size})")
        return ids
    if req.is_chat:
        return tokenizer.encode(tokenizer.apply_chat_template(list(req.messages)), add_special_tokens=False)
    return tokenizer.encode(req.prompt)
