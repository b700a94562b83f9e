"""Live p99 at half capacity, without and with an automatic optimization run in progress.

One mlserve serves the seed MLP `mlp` (768-1024-1024-10, ONNX). Its capacity is measured first
(closed loop, 16 connections, one row per request); then an open loop at half that rate (latency
from each request's scheduled send time) runs three windows of the same length: no run; an
automatic run in progress (version 1 of model `auto`, whose model.toml says `[optimize]
on_new_version = true`, uploaded through Triton's load API with its validation rows; the run
starts with no further request, in a child process at idle priority, and is `running` for the
whole window); no run again, after it finished. The p99 ratio is the run window's over the mean
of the two windows without.

    .venv/bin/python -m benchmarks.optimize_live [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
import uvloop

from benchmarks.drift import drive, request_body
from benchmarks.openloop import OpenLoop, _request_bytes
from mlserve.examples import MLP_SIZES, MLP_TOML, write_mlp_onnx
from tests.server.http import call
from tests.server_process import MlserveProcess

AUTO_TOML = """max_batch_size = 64
[optimize]
on_new_version = true
passes = ["int8_dynamic", "int8_static", "prune", "distill"]
data = "val.npz"
max_top1_drop = 0.05
timing_s = 2.0
distill_time_s = 60
"""


def _capacity(url: str, seconds: float) -> float:
    rps, _, errors = asyncio.run(drive(url, request_body(MLP_SIZES[0], 1), 16, seconds))
    if errors:
        raise RuntimeError(f"{errors} errors while measuring capacity")
    return rps


def _open_window(url: str, rate: float, seconds: float) -> dict:
    host, port, request = _request_bytes(url, request_body(MLP_SIZES[0], 1), None)
    return uvloop.run(OpenLoop(host, port, request).run(rate, seconds))


def _run_state(url: str) -> str | None:
    answer = call(f"{url}/admin/models/auto/optimize")
    if answer.status != 200 or not answer.body["runs"]:
        return None
    return answer.body["runs"][0]["state"]


def _wait_state(url: str, wanted: set[str | None], timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while (state := _run_state(url)) not in wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the automatic run is {state!r} after {timeout_s} s, not one of {wanted}")
        time.sleep(0.2)
    return state


def _upload(url: str, folder: Path) -> None:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    client.load_model("auto", files={"file:1/model.onnx": (folder / "model.onnx").read_bytes(),
                                     "file:1/val.npz": (folder / "val.npz").read_bytes()})


def run_live(seconds: float = 15.0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, made = Path(tmp) / "models", Path(tmp) / "made"
        (root / "mlp" / "1").mkdir(parents=True)
        (root / "auto").mkdir()
        made.mkdir()
        write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=0)
        (root / "mlp" / "model.toml").write_text(MLP_TOML)
        (root / "auto" / "model.toml").write_text(AUTO_TOML)
        write_mlp_onnx(made / "model.onnx", seed=1)
        np.savez(made / "val.npz", x=np.random.default_rng(0).standard_normal((2000, MLP_SIZES[0]), dtype=np.float32))
        server = MlserveProcess(root, log_path=Path(tmp) / "server.log").wait_ready()
        try:
            infer = f"{server.url}/v2/models/mlp/infer"
            capacity = _capacity(infer, 5.0)
            rate = capacity / 2
            rows = [("no run", _open_window(infer, rate, seconds))]
            _upload(server.url, made)
            _wait_state(server.url, {"running"}, 60.0)
            rows.append(("automatic run in progress", _open_window(infer, rate, seconds)))
            state_after = _run_state(server.url)
            final = _wait_state(server.url, {"published", "no_winner", "failed"}, 600.0)
            rows.append(("no run (after)", _open_window(infer, rate, seconds)))
        finally:
            server.stop()
    print(f"live: mlp, 1 row per request, capacity {capacity:,.0f} req/s (closed loop, 16 connections); open loop "
          f"at {rate:,.0f} req/s, {seconds:.0f} s per window; the run was {state_after!r} at the end of its window "
          f"and ended {final!r}")
    print("| window | req/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|")
    for name, result in rows:
        errors = sum(n for status, n in result["statuses"].items() if status != 200) + result["sent"] - result["completed"]
        print(f"| {name} | {result['req_per_s']:,.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} | {errors} |")
    base = (rows[0][1]["p99_ms"] + rows[2][1]["p99_ms"]) / 2
    ratio = rows[1][1]["p99_ms"] / base
    print(f"\np99 with the run / without (mean of both windows without): {ratio:.2f}x "
          f"({'met' if ratio <= 1.2 else 'NOT met'}, target <= 1.2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    run_live(parser.parse_args().seconds)


if __name__ == "__main__":
    main()
