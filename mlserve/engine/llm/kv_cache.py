"""The KV block pool: block ids, reference counts and the prefix-hash -> block map. No tensors here;
engine/llm/runner.py turns block ids into slots of the cache tensors."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from mlserve.engine.llm.sequence import Sequence


@dataclass(slots=True)
class Block:
    """One block of `block_size` token slots. `prefix_hash` is set once the block is full and computed."""

    block_id: int
    ref_count: int = 0
    prefix_hash: int | None = None
    token_ids: tuple[int, ...] = ()


def block_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    """A full block's identity: its tokens and, through the parent's hash, every token before them."""
    return hash((parent, token_ids))


class BlockManager:
    """Hands out KV blocks to sequences and shares full blocks between sequences with the same prefix.

    A block with no references sits in the free queue, oldest first. If it still carries a prefix
    hash it can be claimed back by a later sequence with that prefix until it is evicted, which
    happens when it reaches the head of the queue and a fresh block is needed."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV pool needs at least one block of at least one slot")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._by_hash: dict[int, int] = {}
        self.num_prefix_hits = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds, including those kept only for prefix reuse (they can be evicted)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered under a prefix hash, held or not."""
        return len(self._by_hash)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self._free)

    def append(self, seq: Sequence, num_new_tokens: int) -> list[int]:
        """Grow the block table so `num_new_tokens` more tokens have slots; returns the new block ids."""
        needed = self.blocks_needed(seq, num_new_tokens)
        assert needed <= len(self._free), "append without can_append"
        new_ids = [self._take_free() for _ in range(needed)]
        seq.block_table.extend(new_ids)
        return new_ids

    def claim_cached_prefix(self, seq: Sequence) -> int:
        """For a sequence with no blocks yet: reuse the cached blocks of its longest known full-block
        prefix and mark those tokens computed. At least one token is left to compute, since the
        step that computes the last token is the one that yields logits. Returns tokens reused."""
        assert not seq.block_table, "claim_cached_prefix on a sequence that holds blocks"
        token_ids = seq.token_ids
        parent: int | None = None
        for index in range((len(token_ids) - 1) // self.block_size):
            chunk = tuple(token_ids[index * self.block_size:(index + 1) * self.block_size])
            parent = block_hash(parent, chunk)
            block_id = self._by_hash.get(parent)
            if block_id is None or self._blocks[block_id].token_ids != chunk:
                break
            self._ref(block_id)
            seq.block_table.append(block_id)
        seq.num_cached_blocks = len(seq.block_table)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        self.num_prefix_hits += seq.num_computed_tokens
        return seq.num_computed_tokens

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks that became full and computed, so later sequences can share them."""
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_size
        if num_full <= seq.num_cached_blocks:
            return
        token_ids = seq.token_ids
        for index in range(seq.num_cached_blocks, num_full):
            block = self._blocks[seq.block_table[index]]
            parent = self._blocks[seq.block_table[index - 1]].prefix_hash if index else None
            chunk = tuple(token_ids[index * self.block_size:(index + 1) * self.block_size])
            digest = block_hash(parent, chunk)
            block.token_ids = chunk
            block.prefix_hash = digest
            self._by_hash.setdefault(digest, block.block_id)
        seq.num_cached_blocks = max(seq.num_cached_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references, last block first, so a prefix's tail is evicted before its head."""
        for block_id in reversed(seq.block_table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.num_cached_blocks = 0
        seq.num_computed_tokens = 0

    def _ref(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _take_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.prefix_hash is not None:
            if self._by_hash.get(block.prefix_hash) == block_id:
                del self._by_hash[block.prefix_hash]
            block.prefix_hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id
