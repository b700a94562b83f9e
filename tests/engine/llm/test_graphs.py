"""Decode steps replayed on static, padded buffers (mlserve/engine/llm/graphs.py) against the eager
step: on CPU through the static-replay kind (the same buffers, padding and fixed-width masks a CUDA
graph uses, without the graph), on CUDA with real CUDA graphs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from mlserve.batching.llm_engine import LLMEngine
from mlserve.batching.llm_metrics import LLMStepMetrics
from mlserve.engine.llm.backend import LLMBackend
from mlserve.engine.llm.graphs import GraphKind, StepMode
from mlserve.monitor.metrics import Metrics
from mlserve.spec import LLMSettings, ModelConfig, SamplingParams, SeqChunk
from tests.engine.llm.streams import run_each
from tests.reference import hf_greedy

# Six sequences with different prompt lengths and output lengths: decode batches shrink 6, 5, 4, 3, 2, 1,
# so with sizes (1, 2, 4) captured, 6 and 5 run eagerly, 3 is padded to 4, and prefill steps run eagerly.
PROMPT_LENGTHS = (1, 5, 17, 33, 9, 70)
MAX_TOKENS = (20, 6, 14, 9, 3, 17)
SIZES = (1, 2, 4)


def _backend(test_repo, name: str, device: str = "cpu", **llm) -> LLMBackend:
    backend = LLMBackend(ModelConfig(llm=LLMSettings(**llm)))
    backend.load(test_repo / name / "1", device)
    return backend


def _prompts(vocab_size: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % (vocab_size - 3) + 3 for j in range(n)] for i, n in enumerate(PROMPT_LENGTHS)]


async def _generate(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in MAX_TOKENS]
    return await run_each(engine, list(zip(prompts, params)))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_padded_static_decode_matches_eager_token_for_token(test_repo, hf_models, name):
    eager = _backend(test_repo, name, max_num_seqs=8)
    static = _backend(test_repo, name, max_num_seqs=8)
    static.runner.capture_decode_graphs(SIZES, GraphKind.STATIC)
    prompts = _prompts(eager.tokenizer.vocab_size)
    want = asyncio.run(_generate(LLMEngine(eager, f"{name}-eager"), prompts))
    got = asyncio.run(_generate(LLMEngine(static, f"{name}-static"), prompts))
    assert got == want
    for prompt, tokens, max_tokens in zip(prompts, got, MAX_TOKENS):
        assert tokens == hf_greedy(hf_models[name], prompt, max_tokens), f"prompt of {len(prompt)} tokens"
    runner = static.runner
    assert runner.num_graph_steps > 0 and runner.num_eager_steps > 0
    assert runner.graphs.num_padded_rows > 0, "no step was padded up to a captured size"
    assert eager.runner.num_graph_steps == 0


def _prefilled(test_repo, prompts: list[list[int]], sizes: tuple[int, ...] | None, device: str = "cpu",
               kind: GraphKind = GraphKind.STATIC, blocks_per_seq: int = 4):
    """A tiny-llama runner with `prompts` computed into its pool, and the decode chunks that follow them."""
    backend = _backend(test_repo, "tiny-llama", device, num_kv_blocks=32, cuda_graphs=False)
    if sizes:
        backend.runner.capture_decode_graphs(sizes, kind)
    n = blocks_per_seq
    tables = [tuple(range(n * i, n * i + n)) for i in range(len(prompts))]
    backend.runner.run([SeqChunk(str(i), tuple(p), 0, tables[i], True) for i, p in enumerate(prompts)])
    decode = [SeqChunk(str(i), (11 + i,), len(p), tables[i], True) for i, p in enumerate(prompts)]
    return backend.runner, decode


def test_padding_rows_touch_only_the_reserved_block(test_repo):
    """Three sequences replayed at size 4 give the eager logits, and the pool's blocks hold the same K/V
    afterwards: the padding row wrote only the block past the pool."""
    prompts = [[5, 6, 7], [8] * 20, [9, 10, 11, 12, 13, 14, 15, 16, 17]]
    graphed, decode = _prefilled(test_repo, prompts, (2, 4))
    eager, _ = _prefilled(test_repo, prompts, None)
    got, want = graphed.run(decode), eager.run(decode)
    assert graphed.last_step_mode is StepMode.GRAPH and eager.last_step_mode is StepMode.EAGER
    assert graphed.graphs.num_padded_rows == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    pool_slots = graphed.num_blocks * graphed.block_size
    for (k_g, v_g), (k_e, v_e) in zip(graphed.kv_caches, eager.kv_caches):
        torch.testing.assert_close(k_g[:pool_slots], k_e[:pool_slots], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(v_g[:pool_slots], v_e[:pool_slots], rtol=1e-6, atol=1e-6)
        assert k_g[pool_slots:].abs().sum() > 0, "the padding row's K went to the reserved block"


def test_a_step_replays_the_narrowest_block_table_width_that_holds_its_longest_sequence(test_repo):
    """tiny-llama's 512-token context is 32 blocks of 16: widths 4, 8, 16 and 32 are captured per size.
    Short sequences attend over 4 blocks, not 32; a 100-token one needs 7 blocks, so 8."""
    short, long = [[5, 6, 7], [9] * 20], [[5, 6, 7], [8] * 100]
    for prompts, width in ((short, 4), (long, 8)):
        graphed, decode = _prefilled(test_repo, prompts, (2,), blocks_per_seq=8)
        eager, _ = _prefilled(test_repo, prompts, None, blocks_per_seq=8)
        got, want = graphed.run(decode), eager.run(decode)
        assert graphed.graphs.layout.widths == (4, 8, 16, 32) and graphed.graphs.num_graphs == 4
        assert graphed.last_step_mode is StepMode.GRAPH and graphed.graphs.last_width == width
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_steps_the_graphs_cannot_take_run_eagerly(test_repo):
    prompts = [[5, 6, 7], [8] * 20, [9, 10, 11]]
    runner, decode = _prefilled(test_repo, prompts, (1, 2))
    runner.run(decode)  # three sequences: over the largest captured size
    assert runner.last_step_mode is StepMode.EAGER
    runner.run(decode[:2])
    assert runner.last_step_mode is StepMode.GRAPH
    mixed = [decode[0], SeqChunk("p", (3, 4, 5), 0, tuple(range(20, 24)), True)]  # a prompt beside a decode
    runner.run(mixed)
    assert runner.last_step_mode is StepMode.EAGER
    assert (runner.num_graph_steps, runner.num_eager_steps) == (1, 3)  # the prefill above counts too


def test_graph_and_eager_steps_are_counted_per_mode(test_repo):
    metrics = Metrics()
    backend = _backend(test_repo, "tiny-llama", max_num_seqs=8)
    backend.runner.capture_decode_graphs(SIZES, GraphKind.STATIC)
    engine = LLMEngine(backend, "tiny-llama-1", LLMStepMetrics(metrics, "tiny-llama", "1"))
    asyncio.run(_generate(engine, _prompts(backend.tokenizer.vocab_size)))
    counted = _steps_counted(metrics)
    assert counted == {"graph": backend.runner.num_graph_steps, "eager": backend.runner.num_eager_steps}
    assert counted["graph"] > 0 and counted["eager"] > 0


def _steps_counted(metrics: Metrics) -> dict[str, float]:
    """mlserve_llm_steps_total by mode, as a scrape reads it."""
    counted = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            if sample.name == "mlserve_llm_steps_total":
                counted[sample.labels["mode"]] = sample.value
    return counted


def test_graph_settings_are_checked_and_capped():
    assert LLMSettings().cuda_graphs is True
    assert LLMSettings(max_num_seqs=48).graph_batch_sizes == (1, 2, 4, 8, 16, 32, 48)
    parsed = LLMSettings.parse({"cuda_graph_batch_sizes": [8, 1, 8, 4], "max_num_seqs": 6})
    assert parsed.graph_batch_sizes == (1, 4, 6)
    for raw, reason in [
        ({"cuda_graphs": "yes"}, "[llm] cuda_graphs must be true or false"),
        ({"cuda_graph_batch_sizes": []}, "[llm] cuda_graph_batch_sizes must be a non-empty list"),
        ({"cuda_graph_batch_sizes": [4, 0]}, "[llm] cuda_graph_batch_sizes must be a non-empty list"),
        ({"cuda_graph_batch_sizes": [1.5]}, "[llm] cuda_graph_batch_sizes must be a list of ints"),
        ({"cuda_graph_batch_sizes": 8}, "[llm] cuda_graph_batch_sizes must be a list of ints"),
    ]:
        with pytest.raises(ValueError) as caught:
            LLMSettings.parse(raw)
        assert reason in str(caught.value), str(caught.value)


def test_a_cpu_model_decodes_eagerly_whatever_the_setting(test_repo):
    backend = _backend(test_repo, "tiny-llama", cuda_graphs=True)
    assert backend.runner.graphs is None


def test_the_gpu_benchmark_dry_runs_on_cpu(test_repo, tmp_path):
    """benchmarks/llm_gpu.py with a tiny model on CPU: both modes, every point stepped to its tokens,
    the graph mode's decode steps all replayed and the eager mode's none."""
    out = tmp_path / "llm_gpu.json"
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.llm_gpu", "--model", str(test_repo / "tiny-llama" / "1"), "--device", "cpu",
         "--seqs", "1", "4", "--tokens", "8", "--out", str(out)],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert result["graphs"]["graph_kind"] == "static" and result["graphs"]["captured_sizes"] == [1, 2, 4]
    for mode, graph_steps in (("eager", 0), ("graphs", 7)):
        points = result[mode]["points"]
        assert [p["seqs"] for p in points] == [1, 4]
        for point in points:
            assert point["decode_steps"] == 7 and point["decode_tok_s"] > 0 and point["ttft_s_mean"] > 0
            assert point["graph_steps"] == graph_steps and point["eager_steps"] == 8 - graph_steps
    assert set(result["decode_speedup_graphs_over_eager"]) == {"1", "4"}


@pytest.mark.gpu
def test_cuda_graph_decode_matches_eager_on_cuda(test_repo):
    """Real CUDA graphs (the default on CUDA) against the same padded step run eagerly (static replay):
    a graph replays exactly those kernels, so the tokens must be equal, and the graph steps are counted."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    graphed = _backend(test_repo, "tiny-llama", "cuda", max_num_seqs=8, cuda_graph_batch_sizes=SIZES)
    assert graphed.runner.graphs is not None and graphed.runner.graphs.kind is GraphKind.CUDA
    static = _backend(test_repo, "tiny-llama", "cuda", max_num_seqs=8, cuda_graphs=False)
    static.runner.capture_decode_graphs(SIZES, GraphKind.STATIC)
    prompts = _prompts(graphed.tokenizer.vocab_size)
    metrics = Metrics()
    got = asyncio.run(_generate(LLMEngine(graphed, "g", LLMStepMetrics(metrics, "tiny-llama", "1")), prompts))
    want = asyncio.run(_generate(LLMEngine(static, "s"), prompts))
    assert got == want
    assert graphed.runner.num_graph_steps == static.runner.num_graph_steps > 0
    assert graphed.runner.graphs.num_padded_rows > 0
    assert _steps_counted(metrics) == {"graph": graphed.runner.num_graph_steps,
                                       "eager": graphed.runner.num_eager_steps}


@pytest.mark.gpu
def test_cuda_graph_logits_match_the_eager_step_on_cuda(test_repo):
    """The padded graph step against the plain eager step (which attends over fewer masked keys, so
    bf16 sums may round differently): the same logits within bf16 tolerance over two steps, and the
    pool's blocks untouched by the padding row."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    prompts = [[5, 6, 7], [8] * 20, [9, 10, 11, 12, 13, 14, 15, 16, 17]]
    graphed, decode = _prefilled(test_repo, prompts, (2, 4), "cuda", GraphKind.CUDA)
    eager, _ = _prefilled(test_repo, prompts, None, "cuda")
    for _ in range(2):  # the second replay reads the K/V the first one wrote
        got, want = graphed.run(decode), eager.run(decode)
        assert graphed.last_step_mode is StepMode.GRAPH
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2)
        decode = [SeqChunk(c.req_id, (int(t),), c.start + 1, c.block_table, True)
                  for c, t in zip(decode, want.argmax(-1))]
    pool_slots = graphed.num_blocks * graphed.block_size
    for (k_g, _), (k_e, _) in zip(graphed.kv_caches, eager.kv_caches):
        torch.testing.assert_close(k_g[:pool_slots].float(), k_e[:pool_slots].float(), rtol=5e-2, atol=5e-2)
