"""Model lifecycle benchmark: cold start (1, 10, 1,000 models, eager and lazy), swap time (SIGHUP to
the new version serving), and request latency during a swap against steady state.

    .venv/bin/python -m benchmarks.lifecycle [--quick]

Real `mlserve start` processes on 127.0.0.1, tiny ONNX models for the cold starts, the example
MLP (768-1024-1024-10) for swaps. Figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import signal
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from mlserve.examples import write_mlp_onnx
from tests.registry.helpers import WIDTH, LoadGenerator, infer, write_model
from tests.server_process import MlserveProcess

MLP_TOML = "max_batch_size = 16\nmax_queue_delay_us = 500\nversion_policy = { latest = 1 }\n"


def _say(line: str) -> None:
    print(line, flush=True)


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return float("nan")


def _repo(root: Path, num_models: int) -> Path:
    for i in range(num_models):
        write_model(root, f"m{i:04d}", [1])
    return root


def cold_start(root: Path, num_models: int, lazy: bool, logs: Path) -> dict:
    args = ["--lazy"] if lazy else []
    started = time.monotonic()
    server = MlserveProcess(root, *args, "--log-level", "warning", log_path=logs / f"cold-{num_models}-{lazy}.log")
    server.wait_ready(600)
    ready_s = time.monotonic() - started
    try:
        x = np.ones((1, WIDTH), np.float32)
        t0 = time.monotonic()
        status, _ = infer(server.url, "m0000", x)
        first_ms = (time.monotonic() - t0) * 1e3
        t0 = time.monotonic()
        infer(server.url, "m0000", x)
        second_ms = (time.monotonic() - t0) * 1e3
        assert status == 200
        return {
            "models": num_models, "mode": "lazy" if lazy else "eager", "ready_s": ready_s,
            "metric_s": _metric(server.url, "mlserve_cold_start_seconds"),
            "rss_mb": _metric(server.url, "mlserve_process_resident_memory_bytes") / 2**20,
            "first_ms": first_ms, "second_ms": second_ms,
        }
    finally:
        server.stop()


def touch_all(root: Path, num_models: int, budget: int, logs: Path) -> dict:
    """--lazy --max-loaded-models: every model requested once, 8 at a time."""
    server = MlserveProcess(root, "--lazy", "--max-loaded-models", str(budget), "--log-level", "warning",
                            log_path=logs / "touch.log").wait_ready(600)
    try:
        x = np.ones((1, WIDTH), np.float32)
        peak, started = 0.0, time.monotonic()

        def call(i: int) -> float:
            t0 = time.monotonic()
            status, _ = infer(server.url, f"m{i:04d}", x)
            assert status == 200
            return time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call, i) for i in range(num_models)]
            while not all(f.done() for f in futures):
                peak = max(peak, _metric(server.url, "mlserve_loaded_models"))
                time.sleep(0.05)
            latencies = [f.result() for f in futures]
        return {
            "models": num_models, "budget": budget, "total_s": time.monotonic() - started,
            "p50_ms": statistics.median(latencies) * 1e3, "peak_loaded": peak,
            "evictions": _metric(server.url, "mlserve_model_evictions_total"),
            "rss_mb": _metric(server.url, "mlserve_process_resident_memory_bytes") / 2**20,
        }
    finally:
        server.stop()


def _percentiles(values: list[float]) -> tuple[float, float, int]:
    if not values:
        return float("nan"), float("nan"), 0
    ordered = np.sort(np.asarray(values)) * 1e3
    return float(np.percentile(ordered, 50)), float(np.percentile(ordered, 99)), len(values)


def swaps(root: Path, num_swaps: int, logs: Path) -> dict:
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    server = MlserveProcess(root, "--log-level", "warning", log_path=logs / "swap.log").wait_ready(120)
    x = np.random.default_rng(0).standard_normal((1, 768)).astype(np.float32)
    swap_times, windows = [], []
    try:
        with LoadGenerator(server.port, "mlp", x, num_threads=4) as load:
            time.sleep(3.0)
            for version in range(2, 2 + num_swaps):
                write_mlp_onnx(root / "mlp" / str(version) / "model.onnx", seed=version)
                sent = time.monotonic()
                server.signal(signal.SIGHUP)
                deadline = sent + 120
                while not any(a.version == version for a in load.answers_live()):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"version {version} never answered")
                    time.sleep(0.005)
                first = min(a.done_at for a in load.answers_live() if a.version == version)
                swap_times.append(first - sent)
                time.sleep(2.0)  # the old version drains and unloads inside this window
                windows.append((sent, time.monotonic()))
                time.sleep(2.0)
        answers = load.answers
    finally:
        server.stop()
    failed = sum(a.status != 200 for a in answers)
    in_swap = [a.done_at - a.sent_at for a in answers if any(s <= a.sent_at <= e for s, e in windows)]
    steady = [a.done_at - a.sent_at for a in answers if not any(s <= a.sent_at <= e for s, e in windows)]
    return {"swap_ms": [t * 1e3 for t in swap_times], "steady": _percentiles(steady),
            "swap": _percentiles(in_swap), "failed": failed, "requests": len(answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 instead of 1,000 models, one swap")
    args = parser.parse_args()
    big = 100 if args.quick else 1000
    with tempfile.TemporaryDirectory(prefix="mlserve-lifecycle-") as tmp:
        tmp_path = Path(tmp)
        logs = tmp_path / "logs"
        logs.mkdir()
        _say("cold start: process start to /v2/health/ready (tiny ONNX models, warm-up at batch sizes 1 and 8)")
        _say(f"{'models':>7} {'mode':>6} {'ready s':>8} {'metric s':>9} {'RSS MiB':>8} {'1st req ms':>11} {'2nd req ms':>11}")
        for num_models in (1, 10, big):
            root = _repo(tmp_path / f"repo{num_models}", num_models)
            for lazy in (False, True):
                r = cold_start(root, num_models, lazy, logs)
                _say(f"{r['models']:>7} {r['mode']:>6} {r['ready_s']:>8.2f} {r['metric_s']:>9.2f} "
                      f"{r['rss_mb']:>8.0f} {r['first_ms']:>11.1f} {r['second_ms']:>11.1f}")
        budget = 50
        r = touch_all(tmp_path / f"repo{big}", big, budget, logs)
        _say(f"\nlazy, --max-loaded-models {budget}: {r['models']} models each requested once (8 clients)")
        _say(f"  total {r['total_s']:.1f} s, p50 request {r['p50_ms']:.1f} ms, peak loaded {r['peak_loaded']:.0f}, "
              f"evictions {r['evictions']:.0f}, RSS {r['rss_mb']:.0f} MiB")
        s = swaps(tmp_path / "swap", 1 if args.quick else 3, logs)
        _say("\nswap: SIGHUP to the first answer from the new MLP version (4 clients, steady load)")
        _say("  swap times ms: " + ", ".join(f"{t:.0f}" for t in s["swap_ms"]))
        _say(f"  {'':>10} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}")
        for label in ("steady", "swap"):
            p50, p99, n = s[label]
            _say(f"  {label:>10} {p50:>8.2f} {p99:>8.2f} {n:>9}")
        _say(f"  failed requests: {s['failed']} of {s['requests']}")


if __name__ == "__main__":
    main()
