"""Plain data of a generation request that crosses layers: the decoded request, what the client
asked of the sampler, one step's chunk of a sequence, one sampled token, and the events a request
gets back. No torch here, so the scheduler and the OpenAI protocol import them without the engine."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What the client asked of the sampler and of the stopping rules."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 = no top-k cut."""
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    """Alternatives to report per token; None = no logprobs at all."""
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    """Both subtract from the logits of tokens already generated (OpenAI's rule)."""
    repetition_penalty: float = 1.0
    """Divides positive and multiplies negative logits of tokens in the prompt or output (CTRL's rule)."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    """EOS and stop_token_ids are masked, and stop strings not applied, until this many tokens exist."""
    stop_token_ids: tuple[int, ...] = ()

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def changes_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)


@dataclass(frozen=True, slots=True)
class SeqChunk:
    """The tokens of one sequence computed in this step, from position `start`."""

    req_id: str
    token_ids: tuple[int, ...]
    start: int
    block_table: tuple[int, ...]
    needs_logits: bool
    """The chunk reaches the sequence's last token, so its next token is sampled."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """One sampled token, with its log-probability and the top alternatives when asked for."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """New output of one request after one step; the last one carries a finish_reason or an error."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[tuple[int, float, tuple[tuple[int, float], ...]], ...] = ()
    """(token id, logprob, top alternatives) per token, when logprobs were asked for."""
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None
    index: int = 0
    """Which sequence of the request this is (prompt index * n + sample index)."""
    logprob_sum: float = 0.0
    """Sum of the logprobs of this event's tokens (ranks best_of candidates, feeds drift)."""


@dataclass(frozen=True, slots=True)
class RequestHandle:
    """What a caller keeps: the request id, its sequences' ids (to cancel) and the one queue all of
    their TokenEvents arrive on."""

    req_id: str
    queue: asyncio.Queue
    num_prompt_tokens: int
    req_ids: tuple[str, ...] = ()

    @property
    def num_seqs(self) -> int:
        return len(self.req_ids) or 1


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """The `[limits]` a generation request is held to."""

    max_prompt_tokens: int
    max_generation_tokens: int
    budget_tokens: int
    """Tokens one request may generate in all: prompts x sequences per prompt x max_tokens."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation request, whatever protocol brought it: what the client asked (a decoded
    /v1/completions or /v1/chat/completions body, or a batch file's line), and who asks it under
    which limits (set by the protocol layer before it reaches the service)."""

    model: str
    prompts: tuple[str | tuple[int, ...], ...]
    """Completions: one or more prompts, each text or token ids; empty for chat."""
    messages: tuple[dict[str, str], ...] | None
    params: SamplingParams
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    is_chat: bool
    n: int = 1
    best_of: int | None = None
    """Candidates per prompt when more than n; the n with the highest cumulative logprob are returned."""
    echo: bool = False
    limits: TokenLimits | None = None
    """The server's token limits; None until the protocol layer sets them (the service requires them)."""
    priority: int | None = None
    """The API key's priority, if it has one."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """For a sticky routing key taken from a header."""
    tenant: str | None = None
    """Whose share of the engine the sequences take (the API key); None = the request's own."""

    @property
    def num_seqs_per_prompt(self) -> int:
        """Sequences the engine runs per prompt: best_of candidates, else n."""
        return self.best_of or self.n


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What /v1/models says of one model: its kind and its context length."""

    name: str
    kind: str
    """"generate" or "embed"."""
    max_model_len: int | None
    version: str
