"""One generation request as the engine tracks it: tokens, computed prefix, block table, status."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from mlserve.spec import SamplingParams


class SeqStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED_STOPPED = auto()
    FINISHED_LENGTH = auto()
    FINISHED_ABORTED = auto()


FINISHED = frozenset({SeqStatus.FINISHED_STOPPED, SeqStatus.FINISHED_LENGTH, SeqStatus.FINISHED_ABORTED})

# OpenAI's finish_reason for each finished status.
FINISH_REASON = {
    SeqStatus.FINISHED_STOPPED: "stop",
    SeqStatus.FINISHED_LENGTH: "length",
    SeqStatus.FINISHED_ABORTED: "abort",
}


@dataclass(slots=True)
class Sequence:
    """Prompt plus generated tokens; `num_computed_tokens` of them have K/V in the blocks of `block_table`."""

    req_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_s: float = 0.0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0
    """Leading blocks of block_table already registered under their prefix hash."""
    status: SeqStatus = SeqStatus.WAITING
    num_preemptions: int = 0
    priority: int | None = None
    """1 = admitted first; None = after every request that names a priority."""
    tenant: str = ""
    """Whose fair share of admission this sequence takes (an API key, or its own request)."""
    fair_tag: int = 0
    """Admission round within its priority, given by the scheduler when it queues the sequence."""

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, count: int) -> tuple[int, ...]:
        """Tokens [start, start + count) without building the whole list (a decode needs only the last)."""
        num_prompt = len(self.prompt_token_ids)
        if start >= num_prompt:
            return tuple(self.output_token_ids[start - num_prompt:start - num_prompt + count])
        return tuple(self.token_ids[start:start + count])

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASON.get(self.status)
