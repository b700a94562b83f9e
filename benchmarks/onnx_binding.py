"""ONNX Runtime on CPU: plain session.run against IO binding, per batch, side by side in one run.
The CUDA path binds always; this says whether CPU should too.

    python -m benchmarks.onnx_binding --batch 1 64 256 --seconds 1
prints one JSON object {batch: {run_us, binding_us, binding_over_run}}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson


def _per_call_us(infer, feed, seconds: float) -> float:
    for _ in range(20):
        infer(feed)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        infer(feed)
        calls += 1
    return (time.perf_counter() - started) / calls * 1e6


def compare(batches: list[int], seconds: float, rounds: int) -> dict[int, dict[str, float]]:
    """Best of `rounds` alternating runs of each path, so a busy machine hurts both alike."""
    from mlserve.engine.onnx_backend import OnnxBackend
    from mlserve.examples import write_mlp_onnx
    from mlserve.spec import ModelConfig

    folder = Path(tempfile.mkdtemp())
    write_mlp_onnx(folder / "model.onnx", seed=1)
    backends = {}
    for label, binding in (("run_us", False), ("binding_us", True)):
        backends[label] = OnnxBackend(ModelConfig(), io_binding=binding)
        backends[label].load(folder, "cpu")
    results = {}
    for batch in batches:
        feed = {"x": np.random.default_rng(0).standard_normal((batch, 768), dtype=np.float32)}
        best = {label: min(_per_call_us(b.infer, feed, seconds) for _ in range(rounds)) for label, b in backends.items()}
        results[batch] = {**best, "binding_over_run": best["binding_us"] / best["run_us"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = compare(args.batch, args.seconds, args.rounds)
    print(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode())


if __name__ == "__main__":
    main()
