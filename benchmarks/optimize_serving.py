"""Serving p99 while an optimize job runs in the same server, against no job, side by side.

Starts one mlserve over the example repository, drives `mlp` with a closed loop (N connections,
one row per request), and measures three windows of the same length: no job, an optimize job of
`mlp_ts` running (started through POST /admin/models/mlp_ts/optimize, publish off, so nothing
served changes), and no job again. The job runs in a child process at SCHED_IDLE and nice 19.

    .venv/bin/python -m benchmarks.optimize_serving [--seconds 10] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.drift import drive, request_body
from mlserve.examples import MLP_SIZES, write_examples
from tests.server_process import MlserveProcess

JOB = {"passes": ["int8_dynamic", "int8_static", "prune"], "data": "val.npz", "timing_s": 3.0, "publish": False}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _job_state(url: str, job_id: str) -> str:
    with urllib.request.urlopen(f"{url}/admin/jobs/{job_id}", timeout=30) as answer:
        return json.loads(answer.read())["state"]


def _wait_done(url: str, job_id: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _job_state(url, job_id) == "running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"optimize job {job_id} still running after {timeout_s} s")
        time.sleep(0.5)


def _window(url: str, concurrency: int, seconds: float) -> tuple[float, float, int]:
    rps, latencies, errors = asyncio.run(drive(f"{url}/v2/models/mlp/infer", request_body(MLP_SIZES[0], 1),
                                               concurrency, seconds))
    return rps, float(np.percentile(latencies, 99) * 1e3), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        write_examples(root)
        rng = np.random.default_rng(0)
        np.savez(root / "mlp_ts" / "1" / "val.npz", x=rng.standard_normal((2000, MLP_SIZES[0]), dtype=np.float32))
        server = MlserveProcess(root, log_path=Path(tmp) / "server.log").wait_ready()
        try:
            rows = [("no job", *_window(server.url, args.concurrency, args.seconds))]
            job = _post(f"{server.url}/admin/models/mlp_ts/optimize", JOB)
            rows.append(("optimize job running", *_window(server.url, args.concurrency, args.seconds)))
            state = _job_state(server.url, job["id"])
            _wait_done(server.url, job["id"])
            rows.append(("no job (after)", *_window(server.url, args.concurrency, args.seconds)))
        finally:
            server.stop()
    print(f"mlp, 1 row per request, {args.concurrency} connections, {args.seconds:.0f} s per window; "
          f"the job was {state} at the end of its window")
    print("| window | requests/s | p99 ms | errors |\n|---|---:|---:|---:|")
    for name, rps, p99, errors in rows:
        print(f"| {name} | {rps:,.0f} | {p99:.2f} | {errors} |")
    base = (rows[0][2] + rows[2][2]) / 2
    print(f"\np99 with the job / without (mean of both no-job windows): {rows[1][2] / base:.2f}x")


if __name__ == "__main__":
    main()
