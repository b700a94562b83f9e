"""Bounded soak: a real mlserve process under steady mixed traffic for minutes, sampling its RSS.

    .venv/bin/python -m benchmarks.soak [--seconds 180] [--clients 8] [--sample-s 5] [--warmup 0.25] [--no-lane]

Traffic per client, round robin: a JSON infer on mlp (2 rows of 768), a binary-tensor infer on
mlp, a request with a bad shape (400), an unknown model (404) and a metadata read, all with an
API key, so authentication, limits, decoding, batching and error paths are all exercised.
The infer requests keep their own connections, so the fast lane serves them for the whole run (a
connection that carries any other request is handed to aiohttp for good); the metadata reads go
over a second pool, to aiohttp. `--no-lane` serves everything with aiohttp (`fast_lane = false`).
Prints RSS and requests served per sample, then the least-squares RSS slope after warm-up and the
connections each front closed (mlserve_http_connections).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import re
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np

from tests.server_process import ROOT, MlserveProcess

GROWTH_LIMIT_MIB_PER_MIN = 1.0


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def _requests(token: str):
    x = np.random.default_rng(0).standard_normal((2, 768), dtype=np.float32)
    auth = {"Authorization": f"Bearer {token}"}
    json_body = json.dumps({"inputs": [{"name": "x", "shape": [2, 768], "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}).encode()
    header = json.dumps({"inputs": [{"name": "x", "shape": [2, 768], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    binary_headers = {**auth, "Inference-Header-Content-Length": str(len(header)),
                      "Content-Type": "application/octet-stream"}
    bad = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).encode()
    return [
        ("POST", "/v2/models/mlp/infer", json_body, auth, 200),
        ("POST", "/v2/models/mlp/infer", header + x.tobytes(), binary_headers, 200),
        ("POST", "/v2/models/mlp/infer", bad, auth, 400),
        ("POST", "/v2/models/nope/infer", bad, auth, 404),
        ("GET", "/v2/models/mlp", None, auth, 200),
    ]


async def _drive(url: str, token: str, clients: int, stop_at: float, counts: dict[str, int]) -> None:
    plan = _requests(token)
    async with aiohttp.ClientSession() as lane, aiohttp.ClientSession() as other:
        async def client(offset: int) -> None:
            i = offset
            while time.monotonic() < stop_at:
                method, path, body, headers, expected = plan[i % len(plan)]
                session = lane if path.endswith("/infer") else other
                async with session.request(method, url + path, data=body, headers=headers) as resp:
                    await resp.read()
                    counts["served" if resp.status == expected else "unexpected"] += 1
                i += 1
        await asyncio.gather(*(client(k) for k in range(clients)))


def _connections_by_front(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.findall(r'^mlserve_http_connections_total\{front="(\w+)"\} (\S+)$', text, re.M)
    return {front: float(value) for front, value in found}


async def _sample(pid: int, stop_at: float, every: float, counts: dict[str, int], rows: list) -> None:
    started = time.monotonic()
    while time.monotonic() < stop_at:
        rows.append((time.monotonic() - started, _rss_mib(pid), counts["served"], counts["unexpected"]))
        print(f"{rows[-1][0]:8.1f} s  {rows[-1][1]:8.1f} MiB  {rows[-1][2]:9d} served  {rows[-1][3]:5d} unexpected",
              flush=True)
        await asyncio.sleep(every)


def _slope_mib_per_min(rows: list, warmup: float) -> tuple[float, float]:
    after = [r for r in rows if r[0] >= rows[-1][0] * warmup]
    t = np.array([r[0] for r in after]) / 60
    rss = np.array([r[1] for r in after])
    slope = float(np.polyfit(t, rss, 1)[0]) if len(after) > 2 else 0.0
    return slope, float(rss[-1] - rss[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of the run left out of the trend")
    parser.add_argument("--no-lane", action="store_true", help="serve with [server] fast_lane = false")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlserve-soak-"))
    subprocess.run([sys.executable, "-m", "mlserve", "examples", str(work / "models")], check=True, cwd=ROOT,
                   capture_output=True)
    keys = work / "keys.json"
    token = subprocess.run([sys.executable, "-m", "mlserve", "keys", "create", "--file", str(keys), "--name", "soak"],
                           check=True, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    env = {"MLSERVE_SERVER_FAST_LANE": "false"} if args.no_lane else None
    proc = MlserveProcess(work / "models", "--auth-keys", str(keys), log_path=work / "mlserve.log",
                          env=env).wait_ready()
    counts = {"served": 0, "unexpected": 0}
    rows: list = []
    stop_at = time.monotonic() + args.seconds

    async def run() -> None:
        await asyncio.gather(_drive(proc.url, token, args.clients, stop_at, counts),
                             _sample(proc.proc.pid, stop_at, args.sample_s, counts, rows))

    try:
        asyncio.run(run())
        rows.append((args.seconds, _rss_mib(proc.proc.pid), counts["served"], counts["unexpected"]))
        fronts = _connections_by_front(proc.url)
    finally:
        code = proc.stop()
    slope, growth = _slope_mib_per_min(rows, args.warmup)
    print(f"\nserved {counts['served']} requests in {args.seconds:.0f} s ({counts['served'] / args.seconds:.0f}/s), "
          f"{counts['unexpected']} unexpected statuses, exit code {code}")
    print(f"front: {'aiohttp only (fast_lane = false)' if args.no_lane else 'fast lane'}; connections closed by "
          f"front: {', '.join(f'{k} {v:.0f}' for k, v in sorted(fronts.items())) or 'none counted'}")
    print(f"RSS after warm-up: slope {slope:+.2f} MiB/min, change {growth:+.1f} MiB "
          f"(limit {GROWTH_LIMIT_MIB_PER_MIN} MiB/min)")
    ok = abs(slope) < GROWTH_LIMIT_MIB_PER_MIN and counts["unexpected"] == 0 and code == 0
    print("no growth trend" if ok else "FAILED: growth trend, unexpected statuses or a bad exit")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
