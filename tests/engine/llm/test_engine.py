"""The LLM engine in-process against Hugging Face `generate`: greedy tokens must match exactly, with
many prompts in one continuous batch, with shared prefixes, and with a pool small enough to preempt."""

from __future__ import annotations

import asyncio

import pytest

from mlserve.batching.llm_engine import LLMEngine, StepStats
from mlserve.engine.llm.backend import LLMBackend
from mlserve.spec import LLMSettings, ModelConfig, SamplingParams
from tests.engine.llm.streams import run_each
from tests.reference import hf_greedy, mixed_prompts

MAX_TOKENS = 24


def _engine(test_repo, name: str, observer=None, **llm) -> LLMEngine:
    backend = LLMBackend(ModelConfig(llm=LLMSettings(**llm)))
    backend.load(test_repo / name / "1", "cpu")
    return LLMEngine(backend, name, observer)


async def _run_all(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    return await run_each(engine, [(p, params) for p in prompts])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("llm", [{}, {"num_kv_blocks": 24, "max_num_batched_tokens": 64, "max_model_len": 384}],
                         ids=["roomy", "preempting"])
def test_greedy_matches_transformers_generate(test_repo, hf_models, name, llm):
    engine = _engine(test_repo, name, **llm)
    prompts = mixed_prompts(engine.backend.tokenizer.vocab_size, 18, seed=len(name))
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    got = asyncio.run(_run_all(engine, prompts, params))
    for prompt, tokens in zip(prompts, got):
        assert tokens == hf_greedy(hf_models[name], prompt, MAX_TOKENS), f"prompt of {len(prompt)} tokens"
    blocks = engine.scheduler.block_manager
    assert blocks.num_used_blocks == 0
    assert blocks.num_prefix_hits > 0
    if "num_kv_blocks" in llm:
        assert engine.scheduler.num_preemptions > 0


def test_a_seed_reproduces_a_sampled_generation(test_repo):
    prompts = [[5, 6, 7, 8], [9, 10], [5, 6, 7, 8]]
    params = SamplingParams(max_tokens=16, temperature=1.0, top_k=50, top_p=0.9, seed=1234, ignore_eos=True)
    first = asyncio.run(_run_all(_engine(test_repo, "tiny-llama"), prompts, params))
    second = asyncio.run(_run_all(_engine(test_repo, "tiny-llama"), prompts[:1], params))
    assert first[0] == first[2] == second[0]
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    unseeded = SamplingParams(max_tokens=16, temperature=1.0, ignore_eos=True)
    reference = asyncio.run(_run_all(_engine(test_repo, "tiny-llama"), prompts[:1], greedy))[0]
    samples = asyncio.run(_run_all(_engine(test_repo, "tiny-llama"), prompts[:1] * 4, unseeded))
    assert any(s != reference for s in samples), "sampling at temperature 1 should not always be greedy"
    top1 = SamplingParams(max_tokens=16, temperature=1.0, top_k=1, ignore_eos=True)
    assert asyncio.run(_run_all(_engine(test_repo, "tiny-llama"), prompts[:1], top1))[0] == reference


@pytest.mark.gpu
def test_the_engine_runs_on_cuda_in_half_precision(test_repo, hf_models):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = LLMBackend(ModelConfig())
    backend.load(test_repo / "tiny-llama" / "1", "cuda")
    engine = LLMEngine(backend, "tiny-llama-cuda")
    prompts = mixed_prompts(backend.tokenizer.vocab_size, 16, seed=5)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    got = asyncio.run(_run_all(engine, prompts, params))
    assert all(len(tokens) == 8 for tokens in got)
    # bf16/fp16 rounding may flip near-ties, so only the first token is compared, and not for every prompt.
    agree = sum(tokens[0] == hf_greedy(hf_models["tiny-llama"], p, 1)[0] for p, tokens in zip(prompts, got))
    assert agree >= 12, f"first tokens agree with fp32 transformers for {agree} of 16 prompts"
    assert engine.scheduler.block_manager.num_used_blocks == 0


def test_each_step_is_reported_to_the_observer(test_repo):
    """The engine hands every step's StepStats to its observer; over a run they add up to what was
    asked and generated, and the last one shows an empty pool."""
    steps: list[StepStats] = []
    engine = _engine(test_repo, "tiny-llama", steps.append, num_kv_blocks=24, max_num_batched_tokens=64,
                     max_model_len=384)
    prompts = mixed_prompts(engine.backend.tokenizer.vocab_size, 8, seed=3)
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    got = asyncio.run(_run_all(engine, prompts, params))
    assert sum(s.num_prompt_tokens for s in steps) == sum(len(p) for p in prompts)
    assert sum(len(s.first_token_s) for s in steps) == len(prompts)
    assert sum(len(s.first_token_s) + len(s.token_gap_s) for s in steps) == sum(len(t) for t in got)
    assert sum(s.num_preempted for s in steps) == engine.scheduler.num_preemptions
    assert all(s.kv_slots_used <= s.kv_slots_allocated for s in steps)
    assert steps[-1].num_running == 0 and steps[-1].num_used_blocks == 0
    assert steps[-1].num_free_blocks == engine.scheduler.block_manager.num_free_blocks
