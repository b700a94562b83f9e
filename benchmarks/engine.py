"""The compute limit: the raw engine with no HTTP, samples/s at given batch sizes.

    python -m benchmarks.engine --model M.onnx --batch 1 64 --seconds 2
prints one JSON object {batch: {wall, per_cpu_s}}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import orjson


def samples_per_s(model_path: str, batches: list[int], seconds: float) -> dict[int, dict[str, float]]:
    """Samples per wall second and per CPU second of this process (the machine may be shared)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    width = session.get_inputs()[0].shape[1]
    results = {}
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, width), dtype=np.float32)
        for _ in range(10):
            session.run(None, {"x": x})
        runs, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            session.run(None, {"x": x})
            runs += 1
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        results[batch] = {"wall": runs * batch / wall, "per_cpu_s": runs * batch / max(cpu, 1e-9)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(orjson.dumps(samples_per_s(args.model, args.batch, args.seconds), option=orjson.OPT_NON_STR_KEYS).decode())


if __name__ == "__main__":
    main()
