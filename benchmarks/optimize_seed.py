"""`mlserve optimize` on the seed MLP (768-1024-1024-10, ONNX and its TorchScript twin), one run.

Writes the example repository into a temporary folder, makes a validation set of 10,000 rows
(standard normal, fixed seed), and runs every CPU pass through the same harness the CLI uses:
throughput at batch 64 and latency at batch 1 with the model's serving threads (intra_op_threads =
1), top-1 agreement and max abs difference against the source, size on disk. Prints the results
table with each candidate's throughput as a ratio to the source's, measured side by side in one run.

    .venv/bin/python -m benchmarks.optimize_seed [--rows 10000] [--timing-s 2] [--source mlp|mlp_ts] [--passes ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from mlserve.examples import MLP_SIZES, write_examples
from mlserve.optimize import parse_passes
from mlserve.optimize.base import Options
from mlserve.optimize.evaluate import Budget
from mlserve.optimize.gate import GateSettings
from mlserve.optimize.pipeline import OptimizeRequest, run
from mlserve.optimize.table import render

PASSES = ("graph_opt", "int8_dynamic", "int8_static", "prune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--timing-s", type=float, default=2.0)
    parser.add_argument("--source", choices=("mlp", "mlp_ts"), default="mlp")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--passes", default=",".join(PASSES), help="e.g. aoti with --source mlp_ts (a slow compile)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        write_examples(root)
        data = Path(tmp) / "val.npz"
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.standard_normal((args.rows, MLP_SIZES[0]), dtype=np.float32))
        request = OptimizeRequest(
            model=args.source, models=root, version=1, data=data, passes=parse_passes(args.passes),
            options=Options(sparsity=args.sparsity), gate=GateSettings(max_top1_drop=0.01),
            budget=Budget(latency_s=args.timing_s), publish=False,
        )
        report = run(request, lambda event: None)
    print(f"source {args.source} v1, {args.rows} validation rows, batch 64, intra_op_threads 1")
    print(render(report))


if __name__ == "__main__":
    main()
