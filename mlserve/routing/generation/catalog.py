"""What the service knows of its generation and embedding versions: which versions generate or embed,
their tokenizers, vocabulary sizes and model cards. Handlers ask these questions here, never of engine
internals, so every protocol gets the same answers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mlserve.errors import InvalidInput
from mlserve.registry.loader import HotSwapLoader, ServedVersion
from mlserve.registry.serving import GenerativeServing
from mlserve.routing.generation.run import check_text_chars, check_token_ids
from mlserve.spec.generation import ModelCard

if TYPE_CHECKING:
    from mlserve.routing.router import Router

EMBEDDING_PLATFORM = "mlserve_embedding"


def _kind(sv: ServedVersion) -> str | None:
    if isinstance(sv.serving, GenerativeServing):
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

    async def _generating(self, model: str) -> GenerativeServing:
        """What serves the default version, refused unless it generates (for tokenizing: every version
        of a model shares its tokenizer)."""
        await self._loader.ensure_loaded(model)
        serving = self._router.pick(model, None).serving
        if not isinstance(serving, GenerativeServing):
            raise InvalidInput(f"model {model!r} is not a generation model; use /v2/models/{model}/infer")
        return serving

    async def tokenize(self, model: str, prompt: str | None, messages: list[dict[str, Any]] | None,
                       add_special_tokens: bool, max_prompt_tokens: int) -> tuple[list[int], int]:
        """(token ids, the model's context length) for a prompt or a chat, within the character cap the
        generation routes apply; tokenized on a thread, as a generation's prompt is."""
        check_text_chars((prompt,) if prompt is not None else (), tuple(messages or ()), max_prompt_tokens)
        serving = await self._generating(model)
        tokenizer = serving.tokenizer

        def encode() -> list[int]:
            if messages is not None:
                return tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
            assert prompt is not None, "the handler gives a prompt or messages"
            return tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

        return await asyncio.to_thread(encode), serving.max_model_len

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        serving = await self._generating(model)
        check_token_ids(token_ids, serving.vocab_size)  # the version's one vocabulary: what generation checks
        return serving.tokenizer.decode(token_ids)
