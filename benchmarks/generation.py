"""Generation benchmark: N concurrent streaming clients against a real mlserve process (continuous
batching, paged KV cache), side by side with Hugging Face `generate` on static padded batches of the
same model and the same workload.

    .venv/bin/python -m benchmarks.generation --clients 32 --requests 256

Prints output tokens/s, time to first token and inter-token latency (p50/p99), and KV waste
(allocated but unused token slots / allocated) for both."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server_process import MlserveProcess  # noqa: E402

MODEL_TOML = """\
[llm]
block_size = {block_size}
kv_cache_mb = 64
max_num_seqs = 64
max_num_batched_tokens = 512
"""


@dataclass(frozen=True, slots=True)
class Job:
    prompt: list[int]
    max_tokens: int


@dataclass(slots=True)
class Timings:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    wall_s: float = 0.0
    kv_waste: float = 0.0


def workload(count: int, vocab: int, seed: int, prompt_range: tuple[int, int], output_range: tuple[int, int],
             outputs: str = "longtail") -> list[Job]:
    """Prompt lengths uniform in prompt_range. Output lengths either uniform in output_range, or
    long-tailed like chat traffic (log-normal, median a fifth of the way up the range, clipped to it):
    most answers are short and a few are long."""
    rng = random.Random(seed)
    low, high = output_range
    jobs = []
    for _ in range(count):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_range))]
        if outputs == "uniform":
            length = rng.randint(low, high)
        else:
            length = int(min(high, max(low, rng.lognormvariate(math.log(low + (high - low) / 5), 1.0))))
        jobs.append(Job(prompt, length))
    return jobs


async def _client(session, url: str, model: str, queue: asyncio.Queue, timings: Timings) -> None:
    """One client: its requests one after another, streamed; every chunk carries one token."""
    while not queue.empty():
        job: Job = queue.get_nowait()
        body = {"model": model, "prompt": job.prompt, "max_tokens": job.max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True}
        sent = last = time.perf_counter()
        tokens = 0
        async with session.post(url, json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                now = time.perf_counter()
                (timings.itl if tokens else timings.ttft).append(now - (last if tokens else sent))
                last = now
                tokens += 1
        assert tokens == job.max_tokens, f"{tokens} chunks for {job.max_tokens} tokens"
        timings.output_tokens += tokens


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics") as resp:
        families = text_string_to_metric_families(resp.read().decode())
    return sum(s.value for f in families for s in f.samples if s.name == name)


async def _drive(url: str, model: str, jobs: list[Job], clients: int) -> Timings:
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    timings = Timings()
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        await asyncio.gather(*(_client(session, url, model, queue, timings) for _ in range(clients)))
    timings.wall_s = time.perf_counter() - started
    return timings


def run_mlserve(repo: Path, model: str, jobs: list[Job], clients: int, threads: int, block_size: int) -> Timings:
    (repo / model / "model.toml").write_text(MODEL_TOML.format(block_size=block_size))
    env = {"OMP_NUM_THREADS": str(threads), "MLSERVE_SERVER_LOG_LEVEL": "warning"}
    server = MlserveProcess(repo, log_path=repo / "mlserve.log", env=env).wait_ready()
    url = f"{server.url}/v1/completions"
    try:
        asyncio.run(_drive(url, model, jobs[:clients], clients))  # warm-up
        base_alloc = _metric(server.url, "mlserve_llm_kv_slot_steps_allocated_total")
        base_used = _metric(server.url, "mlserve_llm_kv_slot_steps_used_total")
        timings = asyncio.run(_drive(url, model, jobs, clients))
        allocated = _metric(server.url, "mlserve_llm_kv_slot_steps_allocated_total") - base_alloc
        used = _metric(server.url, "mlserve_llm_kv_slot_steps_used_total") - base_used
        timings.kv_waste = 1 - used / allocated if allocated else 0.0
    finally:
        server.stop()
    return timings


def run_static(folder: Path, jobs: list[Job], batch_size: int, threads: int) -> Timings:
    """HF generate over fixed batches of `batch_size` requests, left-padded; every row decodes until the
    batch's longest request is done, and a batch starts when the previous one has finished. A separate
    one-token generate of each batch times its prefill, which gives TTFT; ITL is the mean decode step."""
    import torch
    from transformers import AutoModelForCausalLM

    from mlserve.engine.llm.memory import keep_freed_memory

    keep_freed_memory()  # the allocator setting the server uses, so both sides get it
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pad = model.config.eos_token_id
    timings = Timings()
    allocated = used = 0
    _generate(model, jobs[:batch_size], pad, 2)  # warm-up
    for begin in range(0, len(jobs), batch_size):
        batch = jobs[begin:begin + batch_size]
        longest, new = max(len(j.prompt) for j in batch), max(j.max_tokens for j in batch)
        prefill_s = _generate(model, batch, pad, 1)
        total_s = _generate(model, batch, pad, new)
        step_s = (total_s - prefill_s) / max(1, new - 1)
        for job in batch:
            timings.ttft.append(timings.wall_s + prefill_s)
            timings.itl.extend([step_s] * (job.max_tokens - 1))
            timings.output_tokens += job.max_tokens
        timings.wall_s += total_s
        allocated += len(batch) * (longest + new)
        used += sum(len(j.prompt) + j.max_tokens for j in batch)
    timings.kv_waste = 1 - used / allocated
    return timings


def _generate(model, batch: list[Job], pad: int, new_tokens: int) -> float:
    import torch

    longest = max(len(j.prompt) for j in batch)
    ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, job in enumerate(batch):
        ids[row, longest - len(job.prompt):] = torch.tensor(job.prompt)
        mask[row, longest - len(job.prompt):] = 1
    started = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad, eos_token_id=None)
    return time.perf_counter() - started


def _row(name: str, t: Timings) -> str:
    ttft, itl = np.asarray(t.ttft) * 1000, np.asarray(t.itl) * 1000
    return (f"{name:<28} {t.output_tokens / t.wall_s:>9.1f} {np.percentile(ttft, 50):>9.1f} {np.percentile(ttft, 99):>9.1f} "
            f"{np.percentile(itl, 50):>8.2f} {np.percentile(itl, 99):>8.2f} {100 * t.kv_waste:>8.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny-llama", "tiny-gpt2"), default="tiny-llama")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(32, 256), metavar=("MIN", "MAX"))
    parser.add_argument("--output-tokens", type=int, nargs=2, default=(16, 224), metavar=("MIN", "MAX"))
    parser.add_argument("--outputs", choices=("longtail", "uniform"), default="longtail",
                        help="output length distribution (see workload())")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from mlserve.examples_llm import write_tiny_gpt2, write_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        folder = repo / args.model / "1"
        folder.mkdir(parents=True)
        (write_tiny_llama if args.model == "tiny-llama" else write_tiny_gpt2)(folder)
        vocab = __import__("json").loads((folder / "config.json").read_text())["vocab_size"]
        jobs = workload(args.requests, vocab, args.seed, tuple(args.prompt_tokens), tuple(args.output_tokens),
                        args.outputs)
        print(f"{args.model}: {args.requests} requests from {args.clients} concurrent clients, prompts "
              f"{args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, outputs {args.output_tokens[0]}-"
              f"{args.output_tokens[1]} tokens ({args.outputs}, mean {sum(j.max_tokens for j in jobs) / len(jobs):.0f}), "
              f"{args.threads} torch thread(s), cpu count {os.cpu_count()}",
              flush=True)
        ours = run_mlserve(repo, args.model, jobs, args.clients, args.threads, args.block_size)
        static = run_static(folder, jobs, args.clients, args.threads)
    print(f"{'':<28} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'KV waste':>9}")
    print(f"{'':<28} {'':>9} {'(ms)':>9} {'(ms)':>9} {'(ms)':>8} {'(ms)':>8}")
    print(_row("mlserve (continuous, paged)", ours))
    print(_row(f"HF generate (static x{args.clients})", static))
    print(f"throughput ratio: {ours.output_tokens / ours.wall_s / (static.output_tokens / static.wall_s):.2f}x")


if __name__ == "__main__":
    main()
