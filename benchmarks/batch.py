"""Batch inference figures side by side in one run (issue targets in brackets):

1. offline rows/s over raw onnxruntime at the same batch size (in-process, same thread count) [>= 0.8]
2. live p99 with an in-server job running / without, live load at half of capacity [<= 1.2]
3. job rows/s while that live load runs / job alone [>= 0.4]
3b. job rows/s beside live load at full capacity (192 closed-loop clients: live rows fill every batch) [> 0, reason "waiting: live load"]
4. peak RSS of `mlserve batch` over a large .npz minus its peak over a tiny one [< 500 MiB]

    .venv/bin/python -m benchmarks.batch [--rows 20000] [--rounds 3] [--round-s 3] [--big-mb 256]

The MLP example (768 -> 1024 -> 1024 -> 10, max_batch_size 64) throughout. Live requests are one
row each, sent open-loop at a fixed rate; capacity is the closed-loop rate of 32 clients. The job
commits every 512 rows here, so its committed rows measure its rate within a few-second round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort

from benchmarks.shadow import _pct, drive
from mlserve.examples import MLP_TOML, write_mlp_onnx
from tests.server_process import ROOT, MlserveProcess


def write_repo(root: Path) -> Path:
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    return root


def raw_rows_per_s(model: Path, x: np.ndarray, batch: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    for i in range(0, len(x), batch):
        session.run(["y"], {"x": x[i:i + batch]})
    return len(x) / (time.perf_counter() - started)


def offline_rows_per_s(repo: Path, src: Path, dst: Path) -> float:
    from mlserve.config import Config, RegistryConfig
    from mlserve.jobs.offline import OfflineArgs, run_offline

    args = OfflineArgs(str(repo), "mlp", 1, src, dst, overwrite=True, progress=False)
    started = time.perf_counter()
    asyncio.run(run_offline(args, Config(registry=RegistryConfig(models=str(repo)))))
    return np.load(src)["x"].shape[0] / (time.perf_counter() - started)


def peak_rss_mib(repo: Path, src: Path, dst: Path) -> float:
    """Peak RSS of one `mlserve batch` process (a fresh interpreter each time, so peaks do not mix)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    command = [sys.executable, "-m", "mlserve", "batch", "--models", str(repo), "--model", "mlp", "--input",
               str(src), "--output", str(dst), "--no-progress", "--overwrite", "--log-level", "warning"]
    out = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return int(out.stdout.split()[-1]) / 1024


def write_big_npz(path: Path, megabytes: int) -> int:
    """An .npz of about `megabytes` written in slices (never held whole in memory)."""
    rows = megabytes * 2**20 // (768 * 4)
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, 768)}
    import zipfile

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_2_0(out, header)
            for start in range(0, rows, 8192):
                out.write(rng.standard_normal((min(8192, rows - start), 768), dtype=np.float32).tobytes())
    return rows


async def capacity(session: aiohttp.ClientSession, url: str, body: bytes, seconds: float = 2.0,
                   clients: int = 32) -> float:
    done, stop_at = 0, time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                done += resp.status == 200

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def job_rows(session: aiohttp.ClientSession, url: str) -> int:
    return (await job_view(session, url))["rows_done"]


async def job_view(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        return await resp.json()


async def live_rounds(args, server: MlserveProcess, batch: Path) -> dict:
    rng = np.random.default_rng(1)
    bodies = [json.dumps({"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32",
                                      "data": rng.standard_normal(768).astype(np.float32).tolist()}]}).encode()
              for _ in range(64)]
    infer = f"{server.url}/v2/models/mlp/infer"
    job = {"model": "mlp", "input": "job.npz", "output": "job.npz.out.npz"}
    results = {"without": [], "with": [], "job_live": [], "job_alone": [], "job_full": [], "reasons": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        await drive(session, infer, bodies, 100, 1.0)  # warm-up
        rate = await capacity(session, infer, bodies[0]) / 2
        for _ in range(args.rounds):
            results["without"].append(await drive(session, infer, bodies, rate, args.round_s))
            async with session.post(f"{server.url}/v2/batch/jobs", json=job) as resp:
                job_url = f"{server.url}/v2/batch/jobs/{(await resp.json())['id']}"
            before, started = await job_rows(session, job_url), time.perf_counter()
            await asyncio.sleep(args.round_s)
            results["job_alone"].append((await job_rows(session, job_url) - before) / (time.perf_counter() - started))
            before, started = await job_rows(session, job_url), time.perf_counter()
            results["with"].append(await drive(session, infer, bodies, rate, args.round_s))
            results["job_live"].append((await job_rows(session, job_url) - before) / (time.perf_counter() - started))
            before, started = await job_rows(session, job_url), time.perf_counter()
            full = asyncio.ensure_future(capacity(session, infer, bodies[0], args.round_s, clients=192))
            await asyncio.sleep(args.round_s / 2)
            results["reasons"].append((await job_view(session, job_url))["reason"])
            await full
            results["job_full"].append((await job_rows(session, job_url) - before) / (time.perf_counter() - started))
            async with session.delete(job_url) as resp:
                await resp.read()  # the next round's resubmit resumes from the checkpoint
    results["rate"] = rate
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows of the offline comparison")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-s", type=float, default=3.0)
    parser.add_argument("--big-mb", type=int, default=256, help="size of the input of the memory figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = write_repo(root / "models")
        x = np.random.default_rng(0).standard_normal((args.rows, 768), dtype=np.float32)
        np.savez(root / "in.npz", x=x)
        pairs = [(raw_rows_per_s(repo / "mlp" / "1" / "model.onnx", x, 64),
                  offline_rows_per_s(repo, root / "in.npz", root / "out.npz")) for _ in range(3)]
        raw, offline = max(p[0] for p in pairs), max(p[1] for p in pairs)
        print(f"1. offline {offline:,.0f} rows/s, raw onnxruntime {raw:,.0f} rows/s at batch 64: "
              f"ratio {offline / raw:.2f} (best of 3 each)")

        batch = root / "batch"
        batch.mkdir()
        write_big_npz(batch / "job.npz", 512)
        server = MlserveProcess(repo, "--batch-dir", str(batch), "--log-level", "warning",
                                log_path=root / "server.log", env={"MLSERVE_JOBS_CHUNK_ROWS": "512"}).wait_ready()
        try:
            live = asyncio.run(live_rounds(args, server, batch))
        finally:
            server.stop()
        without = [v for r in live["without"] for v in r]
        with_job = [v for r in live["with"] for v in r]
        print(f"2. live {live['rate']:.0f} req/s (half of capacity): p99 {_pct(without, .99):.2f} ms without a job, "
              f"{_pct(with_job, .99):.2f} ms with one: ratio {_pct(with_job, .99) / _pct(without, .99):.2f} "
              f"(p50 {_pct(without, .5):.2f} / {_pct(with_job, .5):.2f} ms)")
        alone, beside = float(np.median(live["job_alone"])), float(np.median(live["job_live"]))
        print(f"3. job {beside:,.0f} rows/s beside live load, {alone:,.0f} rows/s alone: ratio {beside / alone:.2f}")
        print(f"3b. job {float(np.median(live['job_full'])):,.0f} rows/s beside live load at full capacity; "
              f"its reason mid-round: {sorted(set(live['reasons']))}")

        memory(args, repo, root, x)


def memory(args: argparse.Namespace, repo: Path, root: Path, x: np.ndarray) -> None:
    rows = write_big_npz(root / "big.npz", args.big_mb)
    np.savez(root / "tiny.npz", x=x[:64])
    small = peak_rss_mib(repo, root / "tiny.npz", root / "tiny.out.npz")
    big = peak_rss_mib(repo, root / "big.npz", root / "big.out.npz")
    print(f"4. peak RSS {big:.0f} MiB over a {args.big_mb} MiB input ({rows} rows), {small:.0f} MiB over 64 rows: "
          f"{big - small:.0f} MiB for streaming")


if __name__ == "__main__":
    main()
