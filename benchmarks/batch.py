"""Batch inference figures side by side in one run (issue targets in brackets):

1. offline rows/s over raw onnxruntime at the same batch size (in-process, same thread count) [>= 0.9],
   with `mlserve batch`'s own per-batch profile (read, engine, write, sync, checkpoint, in microseconds)
2. live p99 with an in-server job running / without, live load at half of capacity [<= 1.2]
3. job rows/s while that live load runs / job alone [>= 0.4], with the cores each part used in the last
   round (the server's event loop, its engine thread, its other threads, and this process, which
   sends the live load): on a 2-core host the live load's client and the server's loop share the
   cores with the job's engine
3b. job rows/s beside live load at full capacity (48 closed-loop clients sending 64 binary rows each:
    live rows fill every batch of the version's one live worker), its reason [> 0, "waiting: live
    load" when only the share's floor moves it], and the live rows/s of that load with the job over
    without it. With the background thread (batching/share.py) the job runs on what that load
    leaves of the host (the second core here), so it is not held to the floor and says so
Figures 2 to 3b run once per way the job's rows can run, on a server each, one after the other: at
the model's defaults (the job's rows in the live batches), with `background_thread = true`, and with
`background_process = true` (the whole job in a child process at the lowest CPU priority, off the
first CPU; its CPU is the "child" column of the cores used); `--ways` picks among them,
`--only-default` runs the first.
3c. the job path per part, in process (no HTTP, so no host noise from the load generator): the same
    job through a real batcher and ONNX Runtime, in full batches (no live traffic) and in the short
    batches the share rule gives it while live traffic is about; per batch, the engine's thread CPU
    per row and the engine's idle time between batches (the hand-off through the event loop). Half
    of the short batches' rate over the full batches' rate is what the rule guarantees at half
    capacity (batching/share.py) [>= 0.4]
4. peak RSS of `mlserve batch` over a large .npz minus its peak over a tiny one [< 500 MiB]

    .venv/bin/python -m benchmarks.batch [--rows 20000] [--rounds 3] [--round-s 10] [--big-mb 256]
                                         [--ways default thread process]

Rounds of 10 s give each p99 of figure 2 some 50 samples past it at the rates of a 2-core host;
rounds of 3 s left a handful, and p99 scattered by 2x from run to run. The load average (`uptime`)
is printed at the start and the end: figures taken under a load above the core count are not ones
to quote.

The MLP example (768 -> 1024 -> 1024 -> 10, max_batch_size 64) throughout. Live requests are one
row each, sent open-loop at a fixed rate by benchmarks.openloop's client (raw keep-alive
connections; each latency counts from the request's scheduled send time, so a late client or server
is charged for it); capacity is the closed-loop rate of 32 aiohttp clients. Until 2026-12-07 20:10
UTC the open-loop load was sent by a task per request on an aiohttp session: on a 2-core host that
client took half a core from the server and added its own scheduling to every latency (p99 at half
capacity 23-82 ms with that client, 5-7 ms with this one, on the same host and build). The job
commits every JOB_CHUNK_ROWS rows here, so its committed rows measure its rate within a round (a
commit costs four fsyncs: at 512 rows a chunk a host with slow fsync ran the job at its disk's pace,
not its engine's, and the ratio of figure 3 compared two disk-bound rates); it starts over
each round (`--job-mb` of input must last one round: about 1,000,000 rows on a fast host, once the
job has the background thread).

Figure 1's pairs alternate which side runs first; each side times the whole run from the model file
(raw: InferenceSession with mlserve's options, then session.run over the in-memory array; offline:
`run_offline` from the .npz to the .npz output, checkpoints and all). The ratio is the median of the
pairs' ratios, per wall second and per CPU-second of the process (all its threads: the one to read
on a host whose other work takes CPU from the benchmark).
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

from benchmarks.openloop import OpenLoop, _request_bytes
from benchmarks.shadow import _pct
from mlserve.examples import MLP_TOML, write_mlp_onnx
from tests.server_process import ROOT, MlserveProcess


JOB_CHUNK_ROWS = 1024
FULL_CLIENTS, FULL_ROWS = 48, 64
"""Figure 3b's live load: enough rows queued at every moment to fill every batch."""


def write_repo(root: Path) -> Path:
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    return root


def raw_rows_per_s(model: Path, x: np.ndarray, batch: int) -> tuple[float, float]:
    """Hand-written onnxruntime over the array in memory: the session options OnnxBackend uses for
    this model (intra_op_threads 1, inter_op 1, sequential), created inside the timing as the
    offline run creates its own. Rows per wall second and per CPU-second of this process."""
    started, cpu = time.perf_counter(), time.process_time()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    for i in range(0, len(x), batch):
        session.run(["y"], {"x": x[i:i + batch]})
    return len(x) / (time.perf_counter() - started), len(x) / (time.process_time() - cpu)


def offline_rows_per_s(repo: Path, src: Path, dst: Path):
    from mlserve.config import Config, RegistryConfig
    from mlserve.jobs.offline import OfflineArgs, run_offline
    from mlserve.jobs.runner import RunTimes

    args = OfflineArgs(str(repo), "mlp", 1, src, dst, overwrite=True, progress=False)
    times = RunTimes()
    with np.load(src) as data:
        num_rows = data["x"].shape[0]  # before the clock starts: loading the array is no part of the run
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run_offline(args, Config(registry=RegistryConfig(models=str(repo))), times=times))
    return num_rows / (time.perf_counter() - started), num_rows / (time.process_time() - cpu), times


def offline_pairs(repo: Path, root: Path, x: np.ndarray, num_pairs: int = 5) -> None:
    model = repo / "mlp" / "1" / "model.onnx"
    raw_rows_per_s(model, x[:640], 64)  # first-use costs of onnxruntime, paid by neither side
    pairs = []
    for i in range(num_pairs):
        if i % 2:
            offline, offline_cpu, times = offline_rows_per_s(repo, root / "in.npz", root / "out.npz")
            raw, raw_cpu = raw_rows_per_s(model, x, 64)
        else:
            raw, raw_cpu = raw_rows_per_s(model, x, 64)
            offline, offline_cpu, times = offline_rows_per_s(repo, root / "in.npz", root / "out.npz")
        pairs.append((offline / raw, raw, offline, times, offline_cpu / raw_cpu))
    ratio, raw, offline, times, _ = sorted(pairs, key=lambda p: p[0])[len(pairs) // 2]
    cpu_ratio = sorted(p[4] for p in pairs)[len(pairs) // 2]
    print(f"1. offline {offline:,.0f} rows/s, raw onnxruntime {raw:,.0f} rows/s at batch 64: ratio {ratio:.2f} "
          f"(median pair of {num_pairs}, order alternating; pair ratios "
          f"{', '.join(f'{p[0]:.2f}' for p in pairs)}); per CPU-second of the process: {cpu_ratio:.2f}")
    raw_us = 1e6 * 64 / raw
    parts = ", ".join(f"{name} {us:.0f}" for name, us in times.per_batch_us().items())
    print(f"   per batch of 64 rows, us: {parts}; engine waited on {1e6 * times.engine_wait_s / times.batches:.0f} "
          f"(the run loop, not the engine thread); raw: {raw_us:.0f} per batch all told; once per run: "
          f"prepare {1e3 * times.prepare_s:.1f} ms, finish {1e3 * times.finish_s:.1f} ms")


def peak_rss_mib(repo: Path, src: Path, dst: Path) -> float:
    """Peak RSS of one `mlserve batch` process (a fresh interpreter each time, so peaks do not mix)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    command = [sys.executable, "-m", "mlserve", "batch", "--models", str(repo), "--model", "mlp", "--input",
               str(src), "--output", str(dst), "--no-progress", "--overwrite", "--log-level", "warning"]
    out = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return int(out.stdout.split()[-1]) / 1024


def write_big_npz(path: Path, megabytes: int, repeat: bool = False) -> int:
    """An .npz of about `megabytes` written in slices (never held whole in memory); with `repeat`, one
    random slice over and over (fast to write: the job's input only needs to last)."""
    rows = megabytes * 2**20 // (768 * 4)
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, 768)}
    import zipfile

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_2_0(out, header)
            block = rng.standard_normal((8192, 768), dtype=np.float32).tobytes() if repeat else b""
            for start in range(0, rows, 8192):
                count = min(8192, rows - start)
                data = block[:count * 768 * 4] if repeat else rng.standard_normal((count, 768), dtype=np.float32).tobytes()
                out.write(data)
    return rows


async def capacity(session: aiohttp.ClientSession, url: str, body: bytes, seconds: float = 2.0,
                   clients: int = 32, headers: dict | None = None) -> float:
    done, stop_at = 0, time.perf_counter() + seconds
    headers = headers or {"Content-Type": "application/json"}

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                done += resp.status == 200

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def binary_body(x: np.ndarray) -> tuple[bytes, dict]:
    """A v2 request with its tensor in the binary extension: the server decodes it for almost nothing,
    so the engine, not the HTTP side, is what the full-capacity load saturates."""
    header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes(), {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))}


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float) -> list[float]:
    """Open-loop live load (benchmarks.openloop: raw keep-alive connections, a request every 1/rate s,
    latency from its scheduled send time); the latencies of its 200s, in seconds."""
    requests = [_request_bytes(url, body, None) for body in bodies]
    host, port = requests[0][0], requests[0][1]
    load = OpenLoop(host, port, [request for _, _, request in requests])
    result = await load.run(rate, seconds)
    if result["completed"] < result["sent"]:
        raise RuntimeError(f"{result['sent'] - result['completed']} live requests got no answer in time")
    return [latency for latency, status in zip(load.latencies, load.status_list) if status == 200]


async def job_rows(session: aiohttp.ClientSession, url: str) -> int:
    return (await job_view(session, url))["rows_done"]


async def job_view(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        return await resp.json()


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of process `pid` (/proc), by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def children_cpu_s(pid: int) -> float:
    """CPU seconds so far of the child processes of `pid` that still run (the background process)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            children = open(f"/proc/{pid}/task/{tid}/children").read().split()
        except FileNotFoundError:
            continue
        for child in children:
            try:
                stat = open(f"/proc/{child}/stat").read()
            except FileNotFoundError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class CpuSplit:
    """Cores used over a window by the server's event loop (its main thread), its busiest other thread
    (the engine's worker), the rest of its threads and its child processes (the background process),
    and by this process (the live load's client)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._threads, self._own, self._at = thread_cpu_s(pid), time.process_time(), time.perf_counter()
        self._children = children_cpu_s(pid)

    def cores(self) -> dict[str, float]:
        threads, own, wall = thread_cpu_s(self._pid), time.process_time(), time.perf_counter() - self._at
        used = {tid: (cpu - self._threads.get(tid, 0.0)) / wall for tid, cpu in threads.items()}
        loop = used.pop(self._pid, 0.0)
        engine = max(used.values(), default=0.0)
        return {"loop": loop, "engine": engine, "other": sum(used.values()) - engine,
                "child": max(0.0, children_cpu_s(self._pid) - self._children) / wall,
                "client": (own - self._own) / wall}


def _cores_text(split: dict[str, float]) -> str:
    return ", ".join(f"{name} {cores:.2f}" for name, cores in split.items())


async def live_rounds(args, server: MlserveProcess, batch: Path) -> dict:
    rng = np.random.default_rng(1)
    bodies = [json.dumps({"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32",
                                      "data": rng.standard_normal(768).astype(np.float32).tolist()}]}).encode()
              for _ in range(64)]
    infer = f"{server.url}/v2/models/mlp/infer"
    full_body, full_headers = binary_body(rng.standard_normal((FULL_ROWS, 768), dtype=np.float32))
    # each round starts the job over, so the input need only last one round's three phases
    job = {"model": "mlp", "input": "job.npz", "output": "job.npz.out.npz", "overwrite": True}
    results = {"without": [], "with": [], "job_live": [], "job_alone": [], "job_full": [], "reasons": [],
               "full_rows": [], "full_alone_rows": [], "cpu": {}}
    pid = server.proc.pid
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        await open_loop(infer, bodies, 100, 1.0)  # warm-up
        rate = await capacity(session, infer, bodies[0]) / 2
        for _ in range(args.rounds):
            results["full_alone_rows"].append(
                await capacity(session, infer, full_body, args.round_s, FULL_CLIENTS, full_headers) * FULL_ROWS)
            split = CpuSplit(pid)
            results["without"].append(await open_loop(infer, bodies, rate, args.round_s))
            results["cpu"]["live alone"] = split.cores()
            async with session.post(f"{server.url}/v2/batch/jobs", json=job) as resp:
                job_url = f"{server.url}/v2/batch/jobs/{(await resp.json())['id']}"
            while not await job_rows(session, job_url):  # its rate, not its start, is measured
                await asyncio.sleep(0.05)
            before, started, split = await job_rows(session, job_url), time.perf_counter(), CpuSplit(pid)
            await asyncio.sleep(args.round_s)
            results["job_alone"].append((await job_rows(session, job_url) - before) / (time.perf_counter() - started))
            results["cpu"]["job alone"] = split.cores()
            before, started, split = await job_rows(session, job_url), time.perf_counter(), CpuSplit(pid)
            results["with"].append(await open_loop(infer, bodies, rate, args.round_s))
            results["job_live"].append((await job_rows(session, job_url) - before) / (time.perf_counter() - started))
            results["cpu"]["both"] = split.cores()
            before, started = await job_rows(session, job_url), time.perf_counter()
            await _full_phase(session, server, job_url, full_body, full_headers, args.round_s, results)
            async with session.delete(job_url) as resp:
                await resp.read()
    results["rate"] = rate
    return results


async def _full_phase(session: aiohttp.ClientSession, server: MlserveProcess, job_url: str, body: bytes,
                      headers: dict, seconds: float, results: dict) -> None:
    """The full-capacity load beside the running job: job rows/s, live rows/s, the job's reasons."""
    before, started = await job_rows(session, job_url), time.perf_counter()
    full = asyncio.ensure_future(capacity(session, f"{server.url}/v2/models/mlp/infer", body, seconds,
                                          FULL_CLIENTS, headers))
    await asyncio.sleep(seconds / 4)  # the queue fills first
    while not full.done():
        results["reasons"].append((await job_view(session, job_url))["reason"])
        await asyncio.sleep(0.1)
    results["full_rows"].append(await full * FULL_ROWS)
    results["job_full"].append((await job_rows(session, job_url) - before) / (time.perf_counter() - started))
    view = await job_view(session, job_url)
    if view["state"] != "running":
        raise SystemExit(f"the job stopped within a round ({view['state']} {view['reason']!r}, "
                         f"{view['rows_done']} rows done): give it a larger --job-mb if it was done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows of the offline comparison")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-s", type=float, default=10.0)
    parser.add_argument("--big-mb", type=int, default=256, help="size of the input of the memory figure")
    parser.add_argument("--only-default", action="store_true",
                        help="figures 2 to 3b only at the model's defaults (same as --ways default)")
    parser.add_argument("--ways", nargs="+", choices=("default", "thread", "process"),
                        default=["default", "thread", "process"],
                        help="the ways background rows run for figures 2 to 3b (default: all three)")
    parser.add_argument("--job-mb", type=int, default=4096, help="size of the in-server job's input (one round's worth)")
    args = parser.parse_args()
    print(f"load at start: {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = write_repo(root / "models")
        x = np.random.default_rng(0).standard_normal((args.rows, 768), dtype=np.float32)
        np.savez(root / "in.npz", x=x)
        offline_pairs(repo, root, x)

        batch = root / "batch"
        batch.mkdir()
        write_big_npz(batch / "job.npz", args.job_mb, repeat=True)
        variants = {"default": ("in the live batches (the default)", MLP_TOML),
                    "thread": ("on the background thread (background_thread = true)",
                               MLP_TOML + "background_thread = true\n"),
                    "process": ("in a child process (background_process = true)",
                                MLP_TOML + "background_process = true\n")}
        for way in ["default"] if args.only_default else args.ways:
            label, variant_toml = variants[way]
            (repo / "mlp" / "model.toml").write_text(variant_toml)
            server = MlserveProcess(repo, "--batch-dir", str(batch), "--log-level", "warning",
                                    log_path=root / "server.log", env={"MLSERVE_JOBS_CHUNK_ROWS": str(JOB_CHUNK_ROWS)}).wait_ready()
            try:
                live = asyncio.run(live_rounds(args, server, batch))
            finally:
                server.stop()
            print(f"-- the job's rows {label}:")
            print_live(live)
        (repo / "mlp" / "model.toml").write_text(MLP_TOML)
        job_path_profile(repo, batch / "job.npz", min(args.round_s, 5.0))
        memory(args, repo, root, x)
    print(f"load at end: {_load()}")


def print_live(live: dict) -> None:
    without = [v for r in live["without"] for v in r]
    with_job = [v for r in live["with"] for v in r]
    print(f"2. live {live['rate']:.0f} req/s (half of capacity): p99 {_pct(without, .99):.2f} ms without a job, "
          f"{_pct(with_job, .99):.2f} ms with one: ratio {_pct(with_job, .99) / _pct(without, .99):.2f} "
          f"(p50 {_pct(without, .5):.2f} / {_pct(with_job, .5):.2f} ms)")
    alone, beside = float(np.median(live["job_alone"])), float(np.median(live["job_live"]))
    print(f"3. job {beside:,.0f} rows/s beside live load, {alone:,.0f} rows/s alone: ratio {beside / alone:.2f}")
    for phase, split in live["cpu"].items():  # the last round's
        print(f"   cores used, {phase}: {_cores_text(split)}")
    full_alone = float(np.median(live["full_alone_rows"]))
    print(f"3b. {_full_text(live)}; live rows/s without the job {full_alone:,.0f}: with / without "
          f"{float(np.median(live['full_rows'])) / full_alone:.2f}")


def _full_text(results: dict) -> str:
    reasons = results["reasons"]
    waiting = sum(r == "waiting: live load" for r in reasons)
    return (f"job {float(np.median(results['job_full'])):,.0f} rows/s beside live load at full capacity "
            f"({float(np.median(results['full_rows'])):,.0f} live rows/s, {FULL_CLIENTS} clients x {FULL_ROWS} "
            f"rows); its reason in {waiting} of {len(reasons)} samples: 'waiting: live load'; others: "
            f"{sorted(set(r for r in reasons if r != 'waiting: live load'))}")


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


def memory(args: argparse.Namespace, repo: Path, root: Path, x: np.ndarray) -> None:
    rows = write_big_npz(root / "big.npz", args.big_mb)
    np.savez(root / "tiny.npz", x=x[:64])
    small = peak_rss_mib(repo, root / "tiny.npz", root / "tiny.out.npz")
    big = peak_rss_mib(repo, root / "big.npz", root / "big.out.npz")
    print(f"4. peak RSS {big:.0f} MiB over a {args.big_mb} MiB input ({rows} rows), {small:.0f} MiB over 64 rows: "
          f"{big - small:.0f} MiB for streaming")


def job_path_profile(repo: Path, src: Path, seconds: float) -> None:
    """Figure 3c (see the module note)."""
    short = asyncio.run(_job_path(repo, src, seconds, short=True))
    full = asyncio.run(_job_path(repo, src, seconds, short=False))
    for name, run in (("full batches ", full), ("short batches", short)):
        print(f"3c. {name}: {run['rows_per_s']:,.0f} rows/s, {run['rows_per_batch']:.0f} rows a batch, engine "
              f"{run['engine_us_per_row']:.1f} us CPU a row, idle {run['idle_us']:.0f} us between batches, "
              f"engine busy {run['busy']:.2f}; the run loop waited {run['commit_wait_us']:.0f} us a batch on commits")
    rate = short["rows_per_s"] / full["rows_per_s"]
    cpu = full["engine_us_per_row"] / short["engine_us_per_row"]
    print(f"    short/full: {rate:.2f} in rows/s ({cpu:.2f} in engine CPU a row); guaranteed at half capacity: "
          f"{rate / 2:.2f} of the job's alone rate")


async def _job_path(repo: Path, src: Path, seconds: float, short: bool) -> dict:
    """One job over `src` through a real DynamicBatcher and OnnxBackend for `seconds`; with `short`,
    live traffic is marked as about all along (no live rows), so the rule gives the job short batches."""
    from mlserve.batching.dynamic import DynamicBatcher
    from mlserve.engine.onnx_backend import OnnxBackend
    from mlserve.jobs.runner import BatchRun, JobPlan
    from mlserve.jobs.sharing import BackgroundRows
    from mlserve.registry.served import ServedVersion, VersionState
    from mlserve.spec import ModelConfig

    config = ModelConfig()  # max_batch_size 64, as MLP_TOML
    backend = OnnxBackend(config)
    backend.load(repo / "mlp" / "1", "cpu")
    spans: list[tuple[float, float, float, int]] = []  # start, end, thread CPU, rows

    def infer(inputs):
        started, cpu = time.perf_counter(), time.thread_time()
        out = backend.infer(inputs)
        spans.append((started, time.perf_counter(), time.thread_time() - cpu, len(inputs["x"])))
        return out

    batcher = DynamicBatcher(infer, config.batching, "mlp")
    batcher.start()
    rows = BackgroundRows(ServedVersion("mlp", 1, VersionState.READY), batcher)
    plan = JobPlan("mlp", 1, backend.info, src, src.with_name("profile.npz"), chunk_rows=JOB_CHUNK_ROWS)
    run = BatchRun(plan, rows, infer_batches=rows.batches)
    await asyncio.to_thread(run.prepare, True)
    task = asyncio.ensure_future(run.run())
    stop_at = time.perf_counter() + 0.3 + seconds
    while time.perf_counter() < stop_at and not task.done():
        if short:
            batcher.share.note_live_waiting(time.monotonic())
        await asyncio.sleep(0.05)
        if len(spans) and spans[0][0] < stop_at - seconds:  # the first 0.3 s warm the run up
            spans[:] = [s for s in spans if s[0] >= stop_at - seconds]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    run.close()
    await batcher.stop()
    taken = spans[1:]
    if len(taken) < 2:
        raise SystemExit("figure 3c: the job ran out of rows before the profile: give it a larger --job-mb")
    wall = taken[-1][1] - taken[0][0]
    num_rows = sum(s[3] for s in taken)
    return {"rows_per_s": num_rows / wall, "rows_per_batch": num_rows / len(taken),
            "engine_us_per_row": 1e6 * sum(s[2] for s in taken) / num_rows,
            "idle_us": 1e6 * sum(b[0] - a[1] for a, b in zip(taken, taken[1:])) / (len(taken) - 1),
            "busy": sum(s[1] - s[0] for s in taken) / wall,
            "commit_wait_us": 1e6 * run.times.commit_wait_s / max(1, run.times.batches)}


if __name__ == "__main__":
    main()
