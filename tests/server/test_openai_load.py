"""End to end under pressure: a KV pool small enough to force preemption, shared prefixes, clients
that disconnect mid-stream, and a thousand requests after which every block is back in the pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.reference import hf_greedy, mixed_prompts
from tests.server.openai_helpers import client, metric, wait_for_idle
from tests.server_process import MlserveProcess

SMALL_POOL_TOML = """\
[llm]
block_size = 16
num_kv_blocks = 24
max_model_len = 384
max_num_seqs = 32
max_num_batched_tokens = 96
"""


@pytest.fixture(scope="module")
def small_pool_server(test_repo, tmp_path_factory):
    """tiny-llama alone, with a 24-block (384-slot) pool."""
    root = tmp_path_factory.mktemp("small_pool")
    shutil.copytree(test_repo / "tiny-llama" / "1", root / "tiny-llama" / "1")
    (root / "tiny-llama" / "model.toml").write_text(SMALL_POOL_TOML)
    proc = MlserveProcess(root, log_path=root / "mlserve.log").wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def test_greedy_under_preemption_and_shared_prefixes_matches_transformers(small_pool_server, test_repo):
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(test_repo / "tiny-llama" / "1", dtype=torch.float32).eval()
    prompts = mixed_prompts(model.config.vocab_size, 24, seed=11)
    api = client(small_pool_server)

    def ask(prompt):
        return api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=24, temperature=0,
                                      logprobs=0, extra_body={"ignore_eos": True})

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))
    for prompt, answer in zip(prompts, answers):
        expected = hf_greedy(model, prompt, 24)
        assert answer.usage.completion_tokens == 24
        assert answer.choices[0].text == _decode(test_repo, expected)
    assert metric(small_pool_server, "mlserve_llm_preemptions_total", "tiny-llama") > 0
    wait_for_idle(small_pool_server, "tiny-llama")


def _decode(test_repo, ids: list[int]) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(test_repo / "tiny-llama" / "1" / "tokenizer.json")).decode(ids)


def test_disconnected_streams_are_cancelled_and_free_their_blocks(small_pool_server):
    before = metric(small_pool_server, "mlserve_llm_generation_tokens_total", "tiny-llama")
    api = client(small_pool_server)
    for _ in range(6):
        stream = api.completions.create(model="tiny-llama", prompt="hello world", max_tokens=300, stream=True,
                                        extra_body={"ignore_eos": True})
        assert next(iter(stream)).choices[0].finish_reason is None
        stream.close()  # drops the connection mid-answer
    wait_for_idle(small_pool_server, "tiny-llama")
    generated = metric(small_pool_server, "mlserve_llm_generation_tokens_total", "tiny-llama") - before
    assert generated < 6 * 300 / 2, f"{generated} tokens: cancelled streams kept generating"


async def _hammer(url: str, num_requests: int, concurrency: int = 32) -> int:
    """Mixed requests over plain HTTP; every tenth is a stream the client hangs up on. Returns 200s."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    shared = "the model server keeps keys and values in blocks " * 3
    words = ["sky", "sea", "blue", "hello"]

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        prompt = (shared if i % 2 else "") + " ".join(words[(i * 7 + j) % 4] for j in range(1 + i % 13))
        body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 1 + i % 6, "temperature": 0.8, "seed": i}
        async with gate:
            if i % 10 == 3:
                async with session.post(url, json={**body, "max_tokens": 200, "stream": True}) as resp:
                    await resp.content.readline()
                    resp.close()  # hang up mid-answer
                    return resp.status
            async with session.post(url, json=body) as resp:
                await resp.read()
                return resp.status

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(one(session, i) for i in range(num_requests)))
    return sum(status == 200 for status in statuses)


def test_a_thousand_requests_leave_no_block_behind(small_pool_server):
    assert asyncio.run(_hammer(f"{small_pool_server.url}/v1/completions", 1000)) == 1000
    wait_for_idle(small_pool_server, "tiny-llama")
    assert metric(small_pool_server, "mlserve_llm_kv_blocks_used", "tiny-llama") == 0
    assert metric(small_pool_server, "mlserve_llm_kv_blocks_free", "tiny-llama") == 24
    assert metric(small_pool_server, "mlserve_llm_prompt_tokens_total", "tiny-llama") > 1000
