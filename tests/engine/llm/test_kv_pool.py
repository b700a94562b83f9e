"""The KV pool: sized from a share of free memory by default, its maximum context logged, and a
model whose pool cannot hold one sequence of max_model_len refused instead of silently shortened."""

from __future__ import annotations

import logging

import pytest
import torch

from mlserve.engine.llm.backend import LLMBackend
from mlserve.engine.llm.model import ModelShape
from mlserve.engine.llm.runner import num_blocks_for
from mlserve.errors import ModelLoadError
from mlserve.spec import LLMSettings, ModelConfig

# A 7B Llama: 32 layers, 32 KV heads of 128 in bf16 take 512 KiB of K and V per token.
SEVEN_B = ModelShape("llama", 32000, 4096, 32, 32, 32, 128, 11008, 4096, 1e-5, 10000.0, False, 2)


def test_the_default_pool_is_a_share_of_free_memory_not_a_fixed_64_mb():
    per_token = 2 * 32 * 32 * 128 * 2
    free = 40 * 2**30
    blocks = num_blocks_for(SEVEN_B, LLMSettings(), torch.bfloat16, free)
    assert blocks == (free // 2) // (16 * per_token)  # half of 40 GiB: 40,960 tokens, not 128
    assert blocks * 16 >= 4096
    assert num_blocks_for(SEVEN_B, LLMSettings(kv_cache_mb=64), torch.bfloat16, free) * 16 == 128
    # never more than max_num_seqs full-length sequences need, however much memory is free
    assert num_blocks_for(SEVEN_B, LLMSettings(max_num_seqs=2), torch.bfloat16, 2**50) == 2 * 4096 // 16


def _load(test_repo, **llm) -> LLMBackend:
    backend = LLMBackend(ModelConfig(backend="llm", llm=LLMSettings(**llm)))
    backend.load(test_repo / "tiny-llama" / "1", "cpu")
    return backend


def test_the_loaded_pool_and_its_maximum_context_are_logged(test_repo, caplog):
    with caplog.at_level(logging.INFO, logger="mlserve.llm"):
        backend = _load(test_repo)
    assert backend.max_model_len == 512  # the model's whole context
    assert backend.runner.num_blocks == 64 * 512 // 16  # max_num_seqs sequences of it: the cap, not 64 MB
    assert "max context 512 tokens, 64 such sequences at once" in caplog.text


@pytest.mark.parametrize("llm, needle", [
    ({"num_kv_blocks": 8}, "holds 128 tokens (8 blocks"),
    ({"kv_memory_fraction": 1e-9}, "less than one sequence of max_model_len 512"),
    ({"num_kv_blocks": 8, "max_model_len": 256}, "less than one sequence of max_model_len 256"),
    ({"max_model_len": 1024}, "max_model_len 1024 is over the model's context of 512"),
])
def test_a_pool_that_cannot_hold_one_full_sequence_is_refused(test_repo, llm, needle):
    with pytest.raises(ModelLoadError) as caught:
        _load(test_repo, **llm)
    assert needle in str(caught.value)


def test_a_pool_that_holds_the_configured_context_loads(test_repo):
    assert _load(test_repo, num_kv_blocks=8, max_model_len=128).max_model_len == 128


def test_the_pool_stays_within_the_memory_placement_allows_the_version(test_repo):
    """On a GPU placement hands the backend the most it may take (mlserve's share left on the device);
    the weights count against it and the pool takes kv_memory_fraction of the rest."""
    free = _load(test_repo)
    weights = sum(p.numel() * p.element_size() for p in free.runner.model.parameters())
    per_block = free.runner.kv_bytes // free.runner.num_blocks
    backend = LLMBackend(ModelConfig(backend="llm", llm=LLMSettings()))
    backend.memory_cap_bytes = weights + 2 * 64 * per_block  # room for 128 blocks; half of it is the pool's
    backend.load(test_repo / "tiny-llama" / "1", "cpu")
    assert backend.runner.num_blocks == 64 < free.runner.num_blocks
    backend.memory_cap_bytes = weights + 2 * 16 * per_block  # 16 blocks: 256 tokens, less than one sequence
    with pytest.raises(ModelLoadError, match="less than one sequence of max_model_len 512"):
        backend.load(test_repo / "tiny-llama" / "1", "cpu")
