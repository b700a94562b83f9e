"""The generation side of the service: which versions generate or embed, their tokenizers, model cards,
and the batch jobs' way in. Handlers ask these questions here, never of engine internals, so every
protocol gets the same answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput
from mlserve.registry.loader import HotSwapLoader, ServedVersion
from mlserve.routing.generate import check_token_ids
from mlserve.spec import GenerationRequest, RequestHandle

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import LLMEngine
    from mlserve.routing.router import Router

EMBEDDING_PLATFORM = "mlserve_embedding"


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What /v1/models says of one model: its kind and its context length."""

    name: str
    kind: str
    """"generate" or "embed"."""
    max_model_len: int | None
    version: str


def _kind(sv: ServedVersion) -> str | None:
    if sv.llm_engine is not None:
        return "generate"
    if sv.info is not None and sv.info.platform == EMBEDDING_PLATFORM:
        return "embed"
    return None


def _card(name: str, sv: ServedVersion) -> ModelCard | None:
    kind = _kind(sv)
    if kind is None:
        return None
    return ModelCard(name, kind, sv.max_seq_length, str(sv.version))


class GenerationCatalog:
    """Looks up generation and embedding versions for the OpenAI-style routes."""

    def __init__(self, loader: HotSwapLoader, router: Router) -> None:
        self._loader = loader
        self._router = router

    def cards(self) -> list[ModelCard]:
        cards = []
        for name, served in sorted(self._loader.models.items()):
            default = served.default_version()
            card = _card(name, served.versions[default]) if default is not None else None
            if card is not None:
                cards.append(card)
        return cards

    async def card(self, model: str) -> ModelCard | None:
        """The model's card; None for a model that neither generates nor embeds."""
        await self._loader.ensure_loaded(model)
        return _card(model, self._router.pick(model, None))

    async def embedding_vocab_size(self, model: str) -> int:
        """The default version's vocabulary size; InvalidInput when `model` does not embed."""
        await self._loader.ensure_loaded(model)
        served = self._router.pick(model, None)
        if _kind(served) != "embed":
            raise InvalidInput(f"model {model!r} is not an embedding model")
        assert served.vocab_size is not None, "an embedding version has a vocabulary"
        return served.vocab_size

    async def engine(self, model: str) -> LLMEngine:
        """The default version's engine (for tokenizing: every version of a model shares its tokenizer)."""
        await self._loader.ensure_loaded(model)
        served = self._router.pick(model, None)
        if served.llm_engine is None:
            raise InvalidInput(f"model {model!r} is not a generation model; use /v2/models/{model}/infer")
        return served.llm_engine

    async def tokenize(self, model: str, prompt: str | None, messages: list[dict[str, Any]] | None,
                       add_special_tokens: bool, max_prompt_tokens: int) -> tuple[list[int], int]:
        """(token ids, the model's context length) for a prompt or a chat, within the character cap the
        generation routes apply; tokenized on a thread, as a generation's prompt is."""
        from mlserve.routing.generate import check_text_chars

        check_text_chars((prompt,) if prompt is not None else (), tuple(messages or ()), max_prompt_tokens)
        engine = await self.engine(model)
        tokenizer = engine.tokenizer

        def encode() -> list[int]:
            if messages is not None:
                return tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
            return tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

        return await asyncio.to_thread(encode), engine.max_model_len

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        engine = await self.engine(model)
        check_token_ids(token_ids, engine.tokenizer.vocab_size)
        return engine.tokenizer.decode(token_ids)


class Generation:
    """One submitted batch-job request: which version answers, where its TokenEvents arrive, how to cancel it."""

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
        """The job was cancelled: the engine frees the request's blocks before its next step."""
        self._engine.abort_request(self.handle)

    def token_text(self, token_id: int) -> str:
        return self._engine.tokenizer.token_text(token_id)


class GenerationService:
    """Batch jobs' path into a generation version (pinned by the job, so no split or breaker applies):
    the same tokenizing and limits as InferenceService.generate, one sequence per line."""

    def __init__(self, loader: HotSwapLoader, router: Router, limits: LimitsConfig) -> None:
        self._loader = loader
        self._router = router
        self._limits = limits

    async def submit(self, req: GenerationRequest) -> Generation:
        from mlserve.routing.generate import (GenerateRequest, TokenLimits, bounded_params, check_text_chars,
                                              prompt_ids)

        if len(req.prompts) > 1 or req.n != 1 or req.best_of or req.echo:
            raise InvalidInput("a batch line takes one prompt and n = 1, without best_of or echo")
        await self._loader.ensure_loaded(req.model)  # lazy or evicted models load on first use
        served = self._router.pick(req.model, None)
        engine = served.llm_engine
        if engine is None:
            raise InvalidInput(f"model {req.model!r} is not a generation model; use /v2/models/{req.model}/infer")
        limits = TokenLimits.of(self._limits)
        request = GenerateRequest(req.model, req.prompts, req.messages, req.params, limits, req.max_tokens_given)
        check_text_chars(request.prompts, request.messages, limits.max_prompt_tokens)
        ids = await asyncio.to_thread(lambda: [prompt_ids(engine, request, p) for p in (req.prompts or (None,))])
        handle = engine.submit(ids[0], bounded_params(engine, request, ids))
        return Generation(req.model, str(served.version), handle, engine)
