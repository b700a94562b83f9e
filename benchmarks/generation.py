"""Generation benchmark: mlserve (continuous batching, paged KV cache) and Hugging Face `generate` on
static batches, driven by the same closed-loop client over the same workload.

    .venv/bin/python -m benchmarks.generation --model tiny-llama --clients 32 --requests 256
    .venv/bin/python -m benchmarks.generation --model mid-llama --clients 32 --requests 128 --cores 0-7

Each of `clients` clients sends its next request when its previous answer is complete. Both sides stream
tokens to that client, which stamps each one on arrival: time to first token runs from the moment the
request was sent (so it includes any wait behind an earlier batch), inter-token latency from one token's
arrival to the next. KV waste is counted by each side as it runs: mlserve's engine counters
(mlserve_llm_kv_slot_steps_*), and the dense cache's geometry at every step of `generate`. Both sides run
on the same cores (--cores, inherited by the server process) with the same torch thread count. Raw
figures go to benchmarks/results/generation.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server_process import MlserveProcess  # noqa: E402

MODEL_TOML = """\
device = "{device}"

[llm]
max_model_len = {max_model_len}
block_size = {block_size}
kv_cache_mb = {kv_cache_mb}
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


Stream = Callable[[Job], AsyncIterator[object]]


async def _client(stream: Stream, queue: asyncio.Queue, timings: Timings) -> None:
    """One closed-loop client: its requests one after another; every streamed item is one token."""
    while not queue.empty():
        job: Job = queue.get_nowait()
        sent = last = time.perf_counter()
        tokens = 0
        async for _ in stream(job):
            now = time.perf_counter()
            (timings.itl if tokens else timings.ttft).append(now - (last if tokens else sent))
            last = now
            tokens += 1
        assert tokens == job.max_tokens, f"{tokens} tokens for {job.max_tokens}"
        timings.output_tokens += tokens


async def drive(stream: Stream, jobs: list[Job], clients: int) -> Timings:
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    timings = Timings()
    started = time.perf_counter()
    await asyncio.gather(*(_client(stream, queue, timings) for _ in range(clients)))
    timings.wall_s = time.perf_counter() - started
    return timings


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics") as resp:
        families = text_string_to_metric_families(resp.read().decode())
    return sum(s.value for f in families for s in f.samples if s.name == name)


def _http_stream(session, url: str, model: str) -> Stream:
    async def stream(job: Job) -> AsyncIterator[object]:
        body = {"model": model, "prompt": job.prompt, "max_tokens": job.max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True}
        async with session.post(url, json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    yield line
    return stream


async def _drive_mlserve(url: str, model: str, jobs: list[Job], clients: int) -> tuple[Timings, Timings]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        stream = _http_stream(session, f"{url}/v1/completions", model)
        await drive(stream, jobs[:clients], clients)  # warm-up
        base = [_metric(url, f"mlserve_llm_kv_slot_steps_{k}_total") for k in ("allocated", "used")]
        timings = await drive(stream, jobs, clients)
        allocated, used = (_metric(url, f"mlserve_llm_kv_slot_steps_{k}_total") - b
                           for k, b in zip(("allocated", "used"), base))
    timings.kv_waste = 1 - used / allocated if allocated else 0.0
    return timings


def run_mlserve(repo: Path, model: str, jobs: list[Job], clients: int, threads: int, block_size: int,
                kv_cache_mb: int, device: str = "cpu") -> Timings:
    """The server with the context the workload needs (decode graphs on CUDA attend over all of it)."""
    longest = max(len(j.prompt) + j.max_tokens for j in jobs)
    (repo / model / "model.toml").write_text(MODEL_TOML.format(
        block_size=block_size, kv_cache_mb=kv_cache_mb, device=device, max_model_len=-(-longest // 64) * 64))
    env = {"OMP_NUM_THREADS": str(threads), "MLSERVE_SERVER_LOG_LEVEL": "warning"}
    server = MlserveProcess(repo, log_path=repo / "mlserve.log", env=env).wait_ready(timeout=600)
    try:
        return asyncio.run(_drive_mlserve(server.url, model, jobs, clients))
    finally:
        server.stop()


def _hf_model(folder: Path, device: str):
    """The HF model in the dtype mlserve's engine picks on `device` (fp32 on CPU, bf16 on CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mlserve.engine.llm.runner import pick_dtype

    dtype = pick_dtype(torch.device(device))
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()


def run_static(folder: Path, jobs: list[Job], batch_size: int, threads: int, device: str = "cpu") -> Timings:
    import torch

    from benchmarks.static_batching import StaticBatchServer
    from mlserve.engine.llm.memory import keep_freed_memory

    keep_freed_memory()  # the allocator setting the server uses, so both sides get it
    torch.set_num_threads(threads)
    model = _hf_model(folder, device)

    async def go() -> Timings:
        server = StaticBatchServer(model, batch_size, model.config.eos_token_id)
        server.start()
        stream = lambda job: server.stream(job.prompt, job.max_tokens)  # noqa: E731
        await drive(stream, jobs[:batch_size], batch_size)  # warm-up
        base_alloc, base_used = server.kv_slot_steps_allocated, server.kv_slot_steps_used
        timings = await drive(stream, jobs, batch_size)
        allocated = server.kv_slot_steps_allocated - base_alloc
        timings.kv_waste = 1 - (server.kv_slot_steps_used - base_used) / allocated
        await server.stop()
        return timings

    return asyncio.run(go())


def decode_steps(folder: Path, batch: int, threads: int, context: int = 128, repeats: int = 20,
                 device: str = "cpu") -> dict:
    """One decode step at `batch` sequences of `context` tokens, in-process: mlserve's engine runner over
    paged blocks against the HF model's dense step with its cache, the same weights, threads and cores."""
    import torch
    from transformers import DynamicCache

    from mlserve.engine.llm.runner import ModelRunner
    from mlserve.spec import LLMSettings, SeqChunk

    torch.set_num_threads(threads)
    block = 16
    settings = LLMSettings.parse({"block_size": block, "num_kv_blocks": batch * (context // block + 1)})
    runner = ModelRunner(folder, device, settings)
    per_seq = context // block + 1
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
    runner.run([SeqChunk(str(i), tuple([5] * context), 0, tables[i], True) for i in range(batch)])
    chunks = [SeqChunk(str(i), (7,), context, tables[i], True) for i in range(batch)]
    engine_s = _best_of(lambda: runner.run(chunks), repeats)
    model = _hf_model(folder, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        cache = DynamicCache()
        ids = torch.full((batch, context), 5, device=device)
        model(ids, past_key_values=cache, use_cache=True)
        step_ids = torch.full((batch, 1), 7, device=device)
        position = torch.full((batch, 1), context, device=device)

        def hf_step():
            model(step_ids, past_key_values=cache, use_cache=True, position_ids=position)
            sync()

        hf_s = _best_of(hf_step, repeats, after=lambda: cache.crop(-1))  # the same context every time
    return {"batch": batch, "context": context, "engine_ms": engine_s * 1000, "hf_ms": hf_s * 1000}


def _best_of(call, repeats: int, after=None) -> float:
    """Median seconds of `call`; `after` (untimed) runs after each one."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        if after is not None:
            after()
    return float(np.median(times))


def _row(name: str, t: Timings) -> str:
    ttft, itl = np.asarray(t.ttft) * 1000, np.asarray(t.itl) * 1000
    return (f"{name:<28} {t.output_tokens / t.wall_s:>9.1f} {np.percentile(ttft, 50):>9.1f} {np.percentile(ttft, 99):>9.1f} "
            f"{np.percentile(itl, 50):>8.2f} {np.percentile(itl, 99):>8.2f} {100 * t.kv_waste:>8.2f}%")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny-llama", "tiny-gpt2", "mid-llama"), default="tiny-llama")
    parser.add_argument("--cores", default="", help="CPU list both sides are pinned to, e.g. 0-7 (default: all)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(32, 256), metavar=("MIN", "MAX"))
    parser.add_argument("--output-tokens", type=int, nargs=2, default=(16, 224), metavar=("MIN", "MAX"))
    parser.add_argument("--outputs", choices=("longtail", "uniform"), default="longtail",
                        help="output length distribution (see workload())")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-cache-mb", type=int, default=0, help="KV pool of the server (default: 64, mid-llama 2048)")
    parser.add_argument("--step-only", action="store_true", help="only the in-process decode-step comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where both sides run: cpu, or cuda (bf16 on both)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "generation.json",
                        help="JSON file the run is appended to")
    return parser


def main() -> None:
    args = _parser().parse_args()
    from benchmarks.mid_llama import write_mid_llama
    from mlserve.examples_llm import write_tiny_gpt2, write_tiny_llama

    if args.cores:
        os.sched_setaffinity(0, _cpu_list(args.cores))  # the server process inherits it
    writers = {"tiny-llama": write_tiny_llama, "tiny-gpt2": write_tiny_gpt2, "mid-llama": write_mid_llama}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        folder = repo / args.model / "1"
        folder.mkdir(parents=True)
        writers[args.model](folder)
        step = (decode_steps(folder, args.clients, args.threads, device=args.device)
                if args.model != "tiny-gpt2" else None)
        if step is not None:
            print(f"decode step at batch {args.clients}, context {step['context']}: engine {step['engine_ms']:.2f} ms, "
                  f"HF dense {step['hf_ms']:.2f} ms, ratio {step['engine_ms'] / step['hf_ms']:.2f}x", flush=True)
        if args.step_only:
            return _save(args, None, None, step, None, None)
        ours, static = _serve_both(args, repo, folder)
    print(f"{'':<28} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'KV waste':>9}")
    print(f"{'':<28} {'':>9} {'(ms)':>9} {'(ms)':>9} {'(ms)':>8} {'(ms)':>8}")
    print(_row("mlserve (continuous, paged)", ours))
    print(_row(f"HF generate (static x{args.clients})", static))
    ratio = ours.output_tokens / ours.wall_s / (static.output_tokens / static.wall_s)
    ttft_ratio = np.percentile(ours.ttft, 99) / np.percentile(static.ttft, 99)
    print(f"throughput ratio: {ratio:.2f}x   TTFT p99 ratio: {ttft_ratio:.2f}")
    _save(args, ours, static, step, ratio, ttft_ratio)


def _serve_both(args, repo: Path, folder: Path) -> tuple[Timings, Timings]:
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    jobs = workload(args.requests, vocab, args.seed, tuple(args.prompt_tokens), tuple(args.output_tokens),
                    args.outputs)
    print(f"{args.model}: {args.requests} requests from {args.clients} concurrent clients, prompts "
          f"{args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, outputs {args.output_tokens[0]}-"
          f"{args.output_tokens[1]} tokens ({args.outputs}, mean {sum(j.max_tokens for j in jobs) / len(jobs):.0f}), "
          f"{args.threads} torch thread(s), cores {sorted(os.sched_getaffinity(0))}", flush=True)
    kv_cache_mb = args.kv_cache_mb or (2048 if args.model == "mid-llama" else 64)
    ours = run_mlserve(repo, args.model, jobs, args.clients, args.threads, args.block_size, kv_cache_mb, args.device)
    return ours, run_static(folder, jobs, args.clients, args.threads, args.device)


def _cpu_list(text: str) -> set[int]:
    cores = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def _save(args, ours: Timings | None, static: Timings | None, step, ratio, ttft_ratio) -> None:
    path = args.results
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append({
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
        "mlserve": asdict(ours) if ours else None, "static": asdict(static) if static else None, "throughput_ratio": ratio, "ttft_p99_ratio": ttft_ratio,
        "decode_step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    path.write_text(json.dumps(runs, indent=1))
    print(f"raw results appended to {path}")


if __name__ == "__main__":
    main()
