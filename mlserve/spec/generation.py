"""Plain data of a generation request that crosses layers: what the client asked of the sampler,
one step's chunk of a sequence, and one sampled token. No torch here, so the scheduler and the
OpenAI protocol import them without the engine."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


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
