"""Live p99 at half capacity, without and with an automatic optimization run in progress.

One mlserve serves the seed MLP `mlp` (768-1024-1024-10, ONNX). Its capacity is measured first
(closed loop, 16 connections, one row per request); then an open loop at half that rate (latency
from each request's scheduled send time) runs three windows of the same length: no run; an
automatic run in progress (version 1 of model `auto`, whose model.toml says `[optimize]
on_new_version = true`, uploaded through Triton's load API with its validation rows; the run
starts with no further request, in a child process at idle priority, and is `running` for the
whole window); no run again, after it finished. The p99 ratio is the run window's over the mean
of the two windows without.

The run yields to live load (optimize/yielding.py): under this load the server holds its child
stopped, so the run's window shows it `waiting: live load`, and it finishes after the load ends.
Each window also reports the CPU seconds the server and the run's child used (from /proc), which a
shared host's noise does not change much, and the host's load average when it began.

    .venv/bin/python -m benchmarks.optimize_live [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def _run(url: str) -> dict | None:
    answer = call(f"{url}/admin/models/auto/optimize")
    return answer.body["runs"][0] if answer.status == 200 and answer.body["runs"] else None


def _run_state(url: str) -> str | None:
    run = _run(url)
    return run["state"] if run is not None else None


def _cpu_s(pid: int | None) -> float:
    """User and system CPU seconds of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured_window(infer: str, rate: float, seconds: float, server_pid: int, worker_pid: int | None) -> dict:
    load = os.getloadavg()[0]
    server, worker = _cpu_s(server_pid), _cpu_s(worker_pid)
    result = _open_window(infer, rate, seconds)
    return {**result, "server_cpu_s": _cpu_s(server_pid) - server, "load": load,
            "worker_cpu_s": _cpu_s(worker_pid) - worker if worker_pid is not None else 0.0}


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
            pid = server.proc.pid
            rows = [("no run", _measured_window(infer, rate, seconds, pid, None))]
            _upload(server.url, made)
            _wait_state(server.url, {"running"}, 60.0)
            worker = call(f"{server.url}/admin/jobs/{_run(server.url)['job_id']}").body["pid"]
            rows.append(("automatic run in progress", _measured_window(infer, rate, seconds, pid, worker)))
            run = _run(server.url)
            state_after = f"{run['state']}, waiting: {run['waiting']}, stopped {run['paused_s']} s"
            final = _wait_state(server.url, {"published", "no_winner", "failed"}, 600.0)
            rows.append(("no run (after)", _measured_window(infer, rate, seconds, pid, None)))
        finally:
            server.stop()
    print(f"live: mlp, 1 row per request, capacity {capacity:,.0f} req/s (closed loop, 16 connections); open loop "
          f"at {rate:,.0f} req/s, {seconds:.0f} s per window; the run was {state_after} at the end of its window "
          f"and ended {final!r}")
    print("| window | req/s | p50 ms | p99 ms | errors | server CPU s | run's child CPU s | load avg |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in rows:
        errors = sum(n for status, n in result["statuses"].items() if status != 200) + result["sent"] - result["completed"]
        print(f"| {name} | {result['req_per_s']:,.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} | {errors} "
              f"| {result['server_cpu_s']:.2f} | {result['worker_cpu_s']:.2f} | {result['load']:.1f} |")
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
