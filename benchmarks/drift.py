"""Throughput with drift statistics on vs off, side by side.

Starts two mlserve processes over the same repository, one with drift on (the default) and one with
MLSERVE_MONITOR_DRIFT=false, and drives them in alternating rounds with the same closed-loop load
(N concurrent connections posting KServe v2 JSON requests), so machine noise hits both alike.
Prints requests/s, client-side latency and server CPU time per request (from the server's own
mlserve_process_cpu_seconds_total, which contention on a shared machine disturbs far less than
throughput) per model and mode, and the on/off ratios of both.

    .venv/bin/python -m benchmarks.drift [--rounds 3] [--seconds 5] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from mlserve.examples import write_examples, write_identity_onnx
from mlserve.monitor import features
from mlserve.monitor.drift import DriftMonitor
from mlserve.spec import DriftSettings
from tests.server_process import MlserveProcess

MODELS = {
    # name: (columns, rows per request)
    "mlp": (768, 1),
    "narrow": (16, 1),
}


def write_repository(root: Path) -> Path:
    write_examples(root)
    write_identity_onnx(root / "narrow" / "1" / "model.onnx", "FP32", width=16)
    return root


def request_body(columns: int, rows: int) -> bytes:
    x = np.random.default_rng(0).standard_normal((rows, columns)).astype(np.float32)
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, columns],
                                     "data": x.ravel().tolist()}]})


async def _worker(session: aiohttp.ClientSession, url: str, body: bytes, until: float, latencies: list[float]) -> int:
    errors = 0
    while time.monotonic() < until:
        started = time.monotonic()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            await resp.read()
            if resp.status != 200:
                errors += 1
        latencies.append(time.monotonic() - started)
    return errors


async def drive(url: str, body: bytes, concurrency: int, seconds: float) -> tuple[float, list[float], int]:
    """Closed loop for `seconds`: returns requests/s, latencies and the error count."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(50):  # warm the connections and the drift reference
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
        latencies: list[float] = []
        started = time.monotonic()
        until = started + seconds
        errors = await asyncio.gather(*[_worker(session, url, body, until, latencies) for _ in range(concurrency)])
        elapsed = time.monotonic() - started
    return len(latencies) / elapsed, latencies, sum(errors)


def _drift_seen(url: str, model: str) -> str:
    """Proof that the 'on' server measured drift: its window and the observations it dropped."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/drift", timeout=10) as resp:
        report = orjson.loads(resp.read())
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    dropped = sum(s.value for s in families["mlserve_drift_dropped_observations"].samples
                  if s.name.endswith("_total") and s.labels.get("model") == model)
    return (f"drift on: status {report['status']}, {len(report['features'])} features, "
            f"{report['window_rows']} rows in the window, {dropped:.0f} observations dropped")


def worker_cost(model: str, columns: int, chunk: int, outputs: int = 10) -> float:
    """CPU microseconds the drift worker spends per request when `chunk` requests arrive in one
    wake-up (extraction + binning into the window), measured in this process with process_time."""
    rng = np.random.default_rng(0)
    settings = DriftSettings(reference_rows=1000)
    monitor = DriftMonitor(model, "1", settings, None)
    requests = [({"x": rng.standard_normal((1, columns)).astype(np.float32)},
                 {"y": rng.standard_normal((1, outputs)).astype(np.float32)}) for _ in range(4096)]
    def feed(group):
        inputs = {"x": np.concatenate([r[0]["x"] for r in group])}
        outs = {"y": np.concatenate([r[1]["y"] for r in group])}
        monitor.update(features.extract(inputs, outs, settings.max_columns))
    feed(requests[:1000])
    started = time.process_time()
    for i in range(0, len(requests), chunk):
        feed(requests[i : i + chunk])
    return (time.process_time() - started) / len(requests) * 1e6


def _cpu_seconds(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for family in text_string_to_metric_families(resp.read().decode()):
            if family.name == "mlserve_process_cpu_seconds":
                return family.samples[0].value
    raise RuntimeError("no mlserve_process_cpu_seconds_total")


def _ms(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1000 if values else float("nan")


def print_worker_cost() -> None:
    logging.getLogger("mlserve").setLevel(logging.ERROR)
    print("drift worker CPU per request (us), by requests binned per wake-up (every 100 ms):")
    print(f"{'model':<8} " + " ".join(f"{n:>8}" for n in (1, 8, 32, 128)))
    for model, (columns, _) in MODELS.items():
        outputs = 10 if model == "mlp" else columns
        print(f"{model:<8} " + " ".join(f"{worker_cost(model, columns, n, outputs):>8.1f}" for n in (1, 8, 32, 128)))


@dataclass(slots=True)
class ModeResult:
    """One server's rounds for one model."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu_ms_per_req: list[float] = field(default_factory=list)


def _bench_model(servers: dict, model: str, rounds: int, seconds: float, concurrency: int) -> dict[str, ModeResult]:
    columns, rows = MODELS[model]
    body = request_body(columns, rows)
    results = {mode: ModeResult() for mode in servers}
    for r in range(rounds):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            base = servers[mode].url
            cpu_before = _cpu_seconds(base)
            rate, latencies, errors = asyncio.run(drive(f"{base}/v2/models/{model}/infer", body, concurrency, seconds))
            cpu = _cpu_seconds(base) - cpu_before
            results[mode].rates.append(rate)
            results[mode].latencies.extend(latencies)
            results[mode].cpu_ms_per_req.append(cpu * 1000 / (len(latencies) + 50))
            if errors:
                print(f"  {model} drift {mode}: {errors} non-200 responses")
    return results


def _ratios(on: list[float], off: list[float]) -> str:
    per_round = ", ".join(f"{a / b:.3f}" for a, b in zip(on, off))
    return f"{statistics.median(on) / statistics.median(off):.3f} (per round: {per_round})"


def _print_model(model: str, results: dict[str, ModeResult], drift_seen: str) -> None:
    for mode, res in results.items():
        print(f"{model:<8} {mode:<5} {statistics.median(res.rates):>15.0f} {_ms(res.latencies, 0.5):>8.2f} "
              f"{_ms(res.latencies, 0.99):>8.2f} {statistics.median(res.cpu_ms_per_req):>11.3f}")
    print(f"{'':<8} {drift_seen}")
    on, off = results["on"], results["off"]
    print(f"{model:<8} on/off throughput: {_ratios(on.rates, off.rates)}")
    print(f"{model:<8} on/off server CPU per request: {_ratios(on.cpu_ms_per_req, off.cpu_ms_per_req)}")


def run(rounds: int, seconds: float, concurrency: int) -> None:
    print_worker_cost()
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "models")
        servers = {
            "on": MlserveProcess(repo, log_path=Path(tmp) / "on.log"),
            "off": MlserveProcess(repo, log_path=Path(tmp) / "off.log", env={"MLSERVE_MONITOR_DRIFT": "false"}),
        }
        try:
            for server in servers.values():
                server.wait_ready()
            print(f"{rounds} alternating rounds of {seconds:g} s, {concurrency} connections, JSON v2 requests")
            print(f"{'model':<8} {'drift':<5} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
            for model in MODELS:
                results = _bench_model(servers, model, rounds, seconds, concurrency)
                _print_model(model, results, _drift_seen(servers["on"].url, model))
        finally:
            for server in servers.values():
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    run(args.rounds, args.seconds, args.concurrency)


if __name__ == "__main__":
    main()
