"""The LLM engine alone (no HTTP, no detokenizing): decode tok/s at several numbers of concurrent
sequences with decode graphs on and off, and time to first token, on one model folder and device.

    .venv/bin/python -m benchmarks.llm_gpu --model DIR --device cuda --seqs 1 32 128 --tokens 64 --out r.json
    .venv/bin/python -m benchmarks.llm_gpu --model DIR --device cpu --seqs 1 4 --tokens 8   # a dry run

DIR is a Hugging Face folder as mlserve serves it (config.json, *.safetensors, tokenizer.json). The
model is loaded once per mode, both side by side (on CUDA with graphs on, loading captures them; on
CPU "on" means the static-replay kind: the same padded buffers without a graph). Each point adds
`seqs` sequences of `--prompt` random tokens at once and steps the engine (plan, forward, sample,
update) until every one has `--tokens` tokens: the first step prefills them all (its duration is
each one's time to first token), every later step is a decode step of all `seqs` sequences, timed
together as decode tok/s. Both engines run an untimed warm-up of each point before either is timed.
Prints one JSON object; --out also writes it to a file."""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlserve.batching.llm_engine import LLMEngine  # noqa: E402
from mlserve.engine.llm.backend import LLMBackend  # noqa: E402
from mlserve.engine.llm.graphs import GraphKind  # noqa: E402
from mlserve.engine.llm.sequence import Sequence  # noqa: E402
from mlserve.spec import LLMSettings, ModelConfig, SamplingParams  # noqa: E402

BLOCK_SIZE = 16


def settings_for(seqs: list[int], prompt: int, tokens: int, graphs: bool) -> LLMSettings:
    """A pool that holds every sequence of the largest point, a step budget that prefills them at once."""
    context = -(-(prompt + tokens) // BLOCK_SIZE) * BLOCK_SIZE
    most = max(seqs)
    return LLMSettings(
        block_size=BLOCK_SIZE, num_kv_blocks=most * context // BLOCK_SIZE, max_num_seqs=most,
        max_num_batched_tokens=max(most * prompt, 512), max_model_len=context, max_waiting=most,
        cuda_graphs=graphs,
    )


def load(folder: Path, device: str, settings: LLMSettings) -> tuple[LLMEngine, float, str]:
    """The engine (no thread: the benchmark steps it), the load time, and which graph kind runs."""
    started = time.perf_counter()
    backend = LLMBackend(ModelConfig(llm=settings))
    backend.load(folder, device)
    kind = "none"
    if settings.cuda_graphs:
        if backend.runner.graphs is None:
            backend.runner.capture_decode_graphs(settings.graph_batch_sizes, GraphKind.STATIC)
        kind = backend.runner.graphs.kind.name.lower()
    return LLMEngine(backend, folder.name), time.perf_counter() - started, kind


def run_point(engine: LLMEngine, seqs: int, prompt: int, tokens: int, seed: int) -> dict:
    """`seqs` sequences added at once, stepped to `tokens` tokens each."""
    runner, scheduler = engine.backend.runner, engine.scheduler
    rng = random.Random(seed)
    vocab = runner.shape.vocab_size
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    added = time.perf_counter()
    batch = [Sequence(f"{seed}-{i}", [rng.randrange(3, vocab) for _ in range(prompt)], params, arrival_s=added)
             for i in range(seqs)]
    for seq in batch:
        scheduler.add(seq)
    graph_before, eager_before = runner.num_graph_steps, runner.num_eager_steps
    first: dict[str, float] = {}
    steps = 0
    while len(first) < seqs:
        engine.step()
        now = time.perf_counter()
        first.update({s.req_id: now - added for s in batch if s.output_token_ids and s.req_id not in first})
    decode_started = time.perf_counter()
    while scheduler.has_work:
        engine.step()
        steps += 1
    decode_s = time.perf_counter() - decode_started
    decoded = sum(len(s.output_token_ids) - 1 for s in batch)
    assert all(len(s.output_token_ids) == tokens for s in batch), "a sequence stopped early"
    return {
        "seqs": seqs, "decode_tok_s": decoded / decode_s if decode_s else None, "decode_steps": steps,
        "step_ms": 1000 * decode_s / steps if steps else None,
        "ttft_s_mean": sum(first.values()) / seqs, "ttft_s_max": max(first.values()),
        "graph_steps": runner.num_graph_steps - graph_before, "eager_steps": runner.num_eager_steps - eager_before,
    }


def run_modes(folder: Path, device: str, args: argparse.Namespace) -> dict[str, dict]:
    """Both engines loaded side by side; at each point both warm up before either is timed."""
    modes = {}
    for name, graphs in (("eager", False), ("graphs", True)):
        settings = settings_for(args.seqs, args.prompt, args.tokens, graphs)
        engine, load_s, kind = load(folder, device, settings)
        sizes = list(settings.graph_batch_sizes) if graphs else []
        modes[name] = {"engine": engine, "load_s": load_s, "graph_kind": kind, "captured_sizes": sizes, "points": []}
    for index, seqs in enumerate(args.seqs):
        for mode in modes.values():
            run_point(mode["engine"], seqs, args.prompt, min(args.tokens, 4), seed=1000 + index)
        for mode in modes.values():
            mode["points"].append(run_point(mode["engine"], seqs, args.prompt, args.tokens, seed=index))
    for mode in modes.values():
        del mode["engine"]
    return modes


def describe(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a Hugging Face folder (config.json, ...)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seqs", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per sequence (>= 2)")
    parser.add_argument("--out", type=Path, help="also write the JSON object here")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.prompt < 1 or min(args.seqs) < 1:
        parser.error("--tokens must be >= 2, --prompt and --seqs >= 1")
    modes = run_modes(args.model, args.device, args)
    eager, graphs = modes["eager"], modes["graphs"]
    speedup = {
        str(g["seqs"]): g["decode_tok_s"] / e["decode_tok_s"]
        for g, e in zip(graphs["points"], eager["points"]) if g["decode_tok_s"] and e["decode_tok_s"]
    }
    result = {
        "model": str(args.model), "device": args.device, **describe(args.device),
        "prompt_tokens": args.prompt, "new_tokens": args.tokens, "eager": eager, "graphs": graphs,
        "decode_speedup_graphs_over_eager": speedup,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
