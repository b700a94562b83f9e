"""Does shadowing slow the primary? Two servers side by side over the same MLP versions, one with
`shadow = { version = "2", percent = 100 }` and one without, driven at the same fixed request rate
in alternating rounds (so drift in machine load hits both alike); prints client-side latency
percentiles of the primary answers and the ratio.

    .venv/bin/python -m benchmarks.shadow [--rate 100] [--rounds 20] [--round-s 2]

Besides the pooled percentiles it prints the median over rounds of the per-round p99 ratio, which a
burst of load from elsewhere on a shared machine moves less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from mlserve.examples import write_mlp_onnx
from tests.server_process import MlserveProcess

TOML = 'version_policy = { all = true }\nmax_batch_size = 16\n\n[traffic]\nsplit = { "1" = 100 }\n'
SHADOW = 'shadow = { version = "2", percent = 100 }\n'


def write_repo(root: Path, shadow: bool) -> Path:
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    write_mlp_onnx(root / "mlp" / "2" / "model.onnx", seed=2)
    (root / "mlp" / "model.toml").write_text(TOML + (SHADOW if shadow else ""))
    return root


async def drive(session: aiohttp.ClientSession, url: str, bodies: list[bytes], rate: float, seconds: float) -> list[float]:
    """Open loop: one request every 1/rate s whatever the answers do; returns latencies of the 200s."""
    latencies: list[float] = []

    async def one(body: bytes) -> None:
        started = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            await resp.read()
            if resp.status == 200:
                latencies.append(time.perf_counter() - started)

    tasks, start = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    return latencies


def _pct(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1000


async def run(args: argparse.Namespace, servers: dict[str, MlserveProcess]) -> dict[str, list[list[float]]]:
    rng = np.random.default_rng(0)
    bodies = [
        json.dumps({"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32",
                                "data": rng.standard_normal(768).astype(np.float32).tolist()}]}).encode()
        for _ in range(64)
    ]
    results: dict[str, list[list[float]]] = {name: [] for name in servers}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        for name, server in servers.items():  # warm-up, not counted
            await drive(session, f"{server.url}/v2/models/mlp/infer", bodies, args.rate, 1.0)
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                url = f"{servers[name].url}/v2/models/mlp/infer"
                results[name].append(await drive(session, url, bodies, args.rate, args.round_s))
        async with session.get(f"{servers['shadow on'].url}/admin/models/mlp/traffic") as resp:
            shadow = (await resp.json())["shadow"]
    print(f"shadow copies: compared {shadow['compared']}, dropped {shadow['dropped']}, failed {shadow['failed']}, "
          f"agreement {shadow['agreement']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second per round")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--round-s", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers = {}
        try:
            for name, shadow in (("shadow off", False), ("shadow on", True)):
                repo = write_repo(root / name.replace(" ", "_"), shadow)
                servers[name] = MlserveProcess(repo, "--log-level", "warning", log_path=root / f"{name}.log").wait_ready()
            results = asyncio.run(run(args, servers))
        finally:
            for server in servers.values():
                server.stop()
    print(f"{args.rate:.0f} req/s, {args.rounds} alternating rounds of {args.round_s:.0f} s, 1x768 MLP, client-side")
    print(f"{'':12} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    pooled = {name: [x for part in rounds for x in part] for name, rounds in results.items()}
    for name, lat in pooled.items():
        print(f"{name:12} {len(lat):>6} {_pct(lat, .5):>8.3f} {_pct(lat, .9):>8.3f} {_pct(lat, .99):>8.3f}")
    off, on = pooled["shadow off"], pooled["shadow on"]
    print(f"p99 ratio on/off: {_pct(on, .99) / _pct(off, .99):.2f}   p50 ratio on/off: {_pct(on, .5) / _pct(off, .5):.2f}")
    per_round = [_pct(a, .99) / _pct(b, .99) for a, b in zip(results["shadow on"], results["shadow off"]) if a and b]
    print(f"median per-round p99 ratio on/off: {float(np.median(per_round)):.2f} over {len(per_round)} rounds")


if __name__ == "__main__":
    main()
