"""The example MLP served on a GPU and on the CPU by the same server, side by side.

    python -m benchmarks.gpu_serving --device cuda --rows 1 64 256 --clients 64 --seconds 10

One mlserve process serves two copies of the example MLP (TorchScript, the same weights): `mlp_cpu`
on the CPU and `mlp_gpu` on `--device`. For each request size (rows per request) a closed loop of
`--clients` keep-alive connections sends binary-tensor requests to each in turn. Prints one JSON
object: req/s, rows/s, p50 and p99 per device and size, and GPU/CPU ratios; `--json FILE` saves it.
With `--device cpu` both copies run on the CPU (the dry run of benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

from mlserve.examples import MLP_SIZES, write_mlp_torchscript

ROOT = Path(__file__).resolve().parents[1]
MODEL_TOML = """\
device = "{device}"
trusted = true
max_batch_size = {max_batch}
max_queue_delay_us = 500

[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, {width}]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, {classes}]
"""


def write_repo(root: Path, device: str, max_batch: int) -> None:
    for name, where in (("mlp_cpu", "cpu"), ("mlp_gpu", device)):
        write_mlp_torchscript(root / name / "1" / "model.pt", seed=0)
        (root / name / "model.toml").write_text(MODEL_TOML.format(
            device=where, max_batch=max_batch, width=MLP_SIZES[0], classes=MLP_SIZES[-1]))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(repo: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlserve", "start", "--models", str(repo), "--port", str(port), "--grpc-port", "0",
         "--log-level", "warning"], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlserve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            rows = _index(url)
        except OSError:
            rows = []
        if rows and all(row["state"] == "READY" for row in rows):
            return process, url
        if any(row["state"] == "UNAVAILABLE" for row in rows):
            process.kill()
            raise RuntimeError(f"a model did not load: {rows}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"mlp_gpu not ready in time: {log.read_text()[-2000:]}")


def _index(url: str) -> list[dict]:
    request = urllib.request.Request(f"{url}/v2/repository/index", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return orjson.loads(resp.read())


def request_body(rows: int) -> tuple[bytes, str]:
    x = np.random.default_rng(rows).standard_normal((rows, MLP_SIZES[0]), dtype=np.float32)
    header = orjson.dumps({
        "inputs": [{"name": "x", "shape": [rows, MLP_SIZES[0]], "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    })
    return header + x.tobytes(), str(len(header))


async def closed_loop(url: str, body: bytes, header_length: str, clients: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    headers = {"Inference-Header-Content-Length": header_length, "Content-Type": "application/octet-stream"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client(until: float) -> None:
            nonlocal failures
            while time.perf_counter() < until:
                sent = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client(time.perf_counter() + min(1.0, seconds / 4)) for _ in range(clients)))
        latencies.clear()  # warm-up done
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    lat = np.asarray(latencies)
    return {"rps": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "failures": failures}


def run(device: str, rows: list[int], clients: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlserve-gpu-") as tmp:
        repo = Path(tmp) / "repo"
        write_repo(repo, device, max(rows) * 4)
        process, url = start_server(repo, Path(tmp) / "mlserve.log")
        try:
            table: dict = {"device": device, "clients": clients, "seconds": seconds, "points": []}
            for size in rows:
                body, header_length = request_body(size)
                for model in ("mlp_cpu", "mlp_gpu"):
                    point = asyncio.run(closed_loop(f"{url}/v2/models/{model}/infer", body, header_length,
                                                    clients, seconds))
                    point.update(model=model, rows=size, rows_per_s=point["rps"] * size)
                    table["points"].append(point)
                    print(orjson.dumps(point).decode(), file=sys.stderr, flush=True)
        finally:
            process.terminate()
            process.wait(60)
    by = {(p["model"], p["rows"]): p for p in table["points"]}
    table["gpu_over_cpu"] = {str(size): by[("mlp_gpu", size)]["rps"] / by[("mlp_cpu", size)]["rps"] for size in rows}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="where mlp_gpu runs (cpu for a dry run)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256], help="rows per request")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(args.device, args.rows, args.clients, args.seconds)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
