"""BlockManager: exact block ids, reference counts, prefix sharing and eviction order."""

from __future__ import annotations

from mlserve.engine.llm.kv_cache import BlockManager
from mlserve.engine.llm.sequence import Sequence
from mlserve.spec import SamplingParams


def _seq(req_id: str, tokens: list[int]) -> Sequence:
    return Sequence(req_id, tokens, SamplingParams())


def _compute(manager: BlockManager, seq: Sequence, num_tokens: int) -> list[int]:
    new = manager.append(seq, num_tokens)
    seq.num_computed_tokens += num_tokens
    manager.cache_full_blocks(seq)
    return new


def test_blocks_are_allocated_as_a_sequence_grows_and_freed_at_the_end():
    manager = BlockManager(num_blocks=8, block_size=4)
    seq = _seq("a", list(range(10)))
    assert manager.blocks_needed(seq, 10) == 3
    assert _compute(manager, seq, 10) == [0, 1, 2]
    assert manager.num_used_blocks == 3 and manager.num_free_blocks == 5
    seq.output_token_ids += [10, 11]
    assert _compute(manager, seq, 2) == []  # slots 10 and 11 are in block 2
    seq.output_token_ids.append(12)
    assert _compute(manager, seq, 1) == [3]
    manager.free(seq)
    assert manager.num_used_blocks == 0 and manager.num_free_blocks == 8


def test_full_blocks_are_shared_by_a_common_prefix_with_reference_counts():
    manager = BlockManager(num_blocks=8, block_size=4)
    first = _seq("a", list(range(9)))
    _compute(manager, first, 9)  # blocks 0, 1 full; 2 partial
    second = _seq("b", list(range(8)) + [99, 98])
    assert manager.claim_cached_prefix(second) == 8
    assert second.block_table == [0, 1]
    assert _compute(manager, second, 2) == [3]
    assert manager.num_used_blocks == 4
    manager.free(first)
    assert manager.num_used_blocks == 3  # blocks 0 and 1 are still held by `second`
    manager.free(second)
    assert manager.num_used_blocks == 0


def test_the_last_prompt_token_is_always_left_to_compute():
    manager = BlockManager(num_blocks=8, block_size=4)
    _compute(manager, _seq("a", list(range(8))), 8)
    again = _seq("b", list(range(8)))
    assert manager.claim_cached_prefix(again) == 4  # not 8: the step over token 7 yields the logits
    assert again.block_table == [0]


def test_freed_prefix_blocks_stay_reusable_until_evicted_oldest_first():
    manager = BlockManager(num_blocks=4, block_size=2)
    seq = _seq("a", [1, 2, 3, 4, 5])
    _compute(manager, seq, 5)  # blocks 0 [1,2], 1 [3,4], 2 [5]
    manager.free(seq)  # free queue: 3, 2, 1, 0 (the tail of a prefix goes first)
    assert manager.num_free_blocks == 4 and manager.num_cached_blocks == 2
    reuse = _seq("b", [1, 2, 3, 4, 7])
    assert manager.claim_cached_prefix(reuse) == 4 and reuse.block_table == [0, 1]
    manager.free(reuse)
    fresh = _seq("c", [9] * 6)
    assert _compute(manager, fresh, 6) == [3, 2, 1]  # block 1 [3,4] is evicted before block 0 [1,2]
    assert manager.num_cached_blocks == 4  # [1,2] and the three full blocks of `fresh`
    probe = _seq("d", [1, 2, 3, 4, 5])
    assert manager.claim_cached_prefix(probe) == 2 and probe.block_table == [0]


def test_can_append_reports_a_full_pool():
    manager = BlockManager(num_blocks=2, block_size=4)
    seq = _seq("a", list(range(8)))
    assert manager.can_append(seq, 8)
    assert not manager.can_append(seq, 9)
    _compute(manager, seq, 8)
    other = _seq("b", [50])
    assert not manager.can_append(other, 1)
