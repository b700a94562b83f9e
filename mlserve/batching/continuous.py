"""The generation scheduler: waiting and running queues over one KV block pool, planned one step at a time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mlserve.engine.llm.kv_cache import BlockManager
from mlserve.engine.llm.sequence import SeqStatus, Sequence
from mlserve.spec import Sampled, SeqChunk


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """The sizes one scheduler works within."""

    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    eos_token_id: int | None = None


@dataclass(frozen=True, slots=True)
class SchedulePlan:
    """What one step computes: a chunk of tokens per scheduled sequence, and what changed in the pool."""

    chunks: tuple[SeqChunk, ...]
    new_block_ids: tuple[int, ...]
    preempted: tuple[str, ...]

    @property
    def num_batched_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass(frozen=True, slots=True)
class StepOutput:
    """A sequence that got a token this step (it may have finished with it)."""

    seq: Sequence
    sampled: Sampled


class Scheduler:
    """Owns the waiting and running queues and the BlockManager; never sees HTTP, asyncio or tensors."""

    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self.block_manager = BlockManager(limits.num_blocks, limits.block_size)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._seqs: dict[str, Sequence] = {}
        self.num_preemptions = 0
        self._virtual_tag = 0
        """The fair tag of the latest admitted sequence."""
        self._last_tag: dict[str, int] = {}
        """Each tenant's latest fair tag, while it is ahead of _virtual_tag."""

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue by priority, then by fair tag: a tenant's k-th waiting sequence gets round k counted
        from the latest admission (start-time fair queueing), so one tenant's thousand sequences
        interleave with another's one instead of holding it back, and within a tenant order is kept."""
        assert seq.req_id not in self._seqs, f"duplicate req_id {seq.req_id}"
        seq.status = SeqStatus.WAITING
        self._seqs[seq.req_id] = seq
        seq.fair_tag = max(self._virtual_tag, self._last_tag.get(seq.tenant, 0)) + 1
        self._last_tag[seq.tenant] = seq.fair_tag
        order = _order(seq)
        if not self.waiting or _order(self.waiting[-1]) <= order:
            self.waiting.append(seq)
            return
        # Behind every waiting request of the same or a higher priority and an earlier round.
        index = next(i for i, other in enumerate(self.waiting) if _order(other) > order)
        self.waiting.insert(index, seq)

    def get(self, req_id: str) -> Sequence | None:
        return self._seqs.get(req_id)

    def finish(self, req_id: str, status: SeqStatus) -> Sequence | None:
        """End a sequence early (stop string, cancelled client) and free its blocks at once."""
        seq = self._seqs.get(req_id)
        if seq is None:
            return None
        if seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
        self._release(seq, status)
        return seq

    def schedule(self) -> SchedulePlan:
        """Computed tokens catch up to the total; prefill and decode are not separate phases.

        Running sequences go first, in admission order, each taking min(uncomputed tokens, budget
        left). When the pool cannot hold a sequence's next tokens, the most recently admitted
        running sequence is preempted (blocks freed, requeued at the front of waiting, recomputed
        later) until it fits. Waiting sequences are admitted in queue order (priority, then fair
        round between tenants, then arrival) only when nothing was preempted this step, while the token budget, max_num_seqs and the pool allow; a prompt
        longer than the budget left is computed in chunks over several steps."""
        budget = self.limits.max_num_batched_tokens
        chunks: list[SeqChunk] = []
        new_blocks: list[int] = []
        preempted: list[str] = []
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self._make_room(seq, num_new, preempted):
                break
            new_blocks += self.block_manager.append(seq, num_new)
            chunks.append(self._chunk(seq, num_new))
            budget -= num_new
            index += 1
        if not preempted:
            self._admit(budget, chunks, new_blocks)
        return SchedulePlan(tuple(chunks), tuple(new_blocks), tuple(preempted))

    def update(self, plan: SchedulePlan, sampled: list[Sampled]) -> list[StepOutput]:
        """Record what the step computed and the tokens it sampled; finished sequences leave at once."""
        tokens = iter(sampled)
        outputs = []
        for chunk in plan.chunks:
            seq = self._seqs.get(chunk.req_id)
            token = next(tokens) if chunk.needs_logits else None
            if seq is None or seq.status is not SeqStatus.RUNNING:
                continue
            seq.num_computed_tokens = chunk.start + len(chunk.token_ids)
            self.block_manager.cache_full_blocks(seq)
            if token is None:
                continue
            seq.output_token_ids.append(token.token_id)
            outputs.append(StepOutput(seq, token))
            status = self._stop_status(seq, token.token_id)
            if status is not None:
                self.running.remove(seq)
                self._release(seq, status)
        return outputs

    def kv_slot_usage(self) -> tuple[int, int]:
        """(token slots allocated to running sequences, slots of those holding a token)."""
        allocated = sum(len(s.block_table) for s in self.running) * self.limits.block_size
        used = sum(min(s.num_computed_tokens, s.num_tokens) for s in self.running)
        return allocated, used

    def _make_room(self, seq: Sequence, num_new: int, preempted: list[str]) -> bool:
        """Preempt from the back of the running queue until `seq` fits; False if `seq` itself went."""
        while not self.block_manager.can_append(seq, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim.req_id)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _admit(self, budget: int, chunks: list[SeqChunk], new_blocks: list[int]) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.limits.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:
                self.block_manager.claim_cached_prefix(seq)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.block_manager.can_append(seq, num_new):
                self.block_manager.free(seq)
                return
            self.waiting.popleft()
            self._advance(seq.fair_tag)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            new_blocks += self.block_manager.append(seq, num_new)
            chunks.append(self._chunk(seq, num_new))
            budget -= num_new

    def _advance(self, tag: int) -> None:
        """Admission moves the virtual round on; tenants whose last tag it passed are forgotten."""
        self._virtual_tag = max(self._virtual_tag, tag)
        if len(self._last_tag) > 2 * len(self.waiting) + 64:
            self._last_tag = {t: g for t, g in self._last_tag.items() if g > self._virtual_tag}

    @staticmethod
    def _chunk(seq: Sequence, num_new: int) -> SeqChunk:
        start = seq.num_computed_tokens
        return SeqChunk(
            seq.req_id, seq.token_slice(start, num_new), start, tuple(seq.block_table),
            needs_logits=start + num_new == seq.num_tokens,
        )

    def _stop_status(self, seq: Sequence, token_id: int) -> SeqStatus | None:
        if token_id == self.limits.eos_token_id and not seq.params.ignore_eos:
            return SeqStatus.FINISHED_STOPPED
        if token_id in seq.params.stop_token_ids and seq.num_output_tokens > seq.params.min_tokens:
            return SeqStatus.FINISHED_STOPPED
        if seq.num_output_tokens >= seq.params.max_tokens or seq.num_tokens >= self.limits.max_model_len:
            return SeqStatus.FINISHED_LENGTH
        return None

    def _release(self, seq: Sequence, status: SeqStatus) -> None:
        self.block_manager.free(seq)
        seq.status = status
        del self._seqs[seq.req_id]


_LOWEST = 2**31


def _rank(seq: Sequence) -> int:
    """Admission rank: priority 1 first; requests that name none come after every level."""
    return seq.priority if seq.priority else _LOWEST


def _order(seq: Sequence) -> tuple[int, int]:
    return _rank(seq), seq.fair_tag
