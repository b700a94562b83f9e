"""benchmarks/gpu_check.sh end to end on the CPU (its --dry-run): every step runs, the eight result
files come back where the GPU machine's $OUT would return them, and the summary holds the issue's
targets beside the figures. On a GPU machine the same script runs the same steps at full size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_FILES = {"env.txt", "steps.log", "tests.log", "tests.xml", "mlp_serving.json", "llm_gpu.json",
                "generation.json", "summary.md"}


def test_the_gpu_check_dry_run_runs_every_step_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr + (out / "steps.log").read_text()
    for name in ("env", "tests", "mlp", "llama", "llm", "vs_hf", "summary"):
        assert f"{name}: exit 0" in done.stdout
    assert {p.name for p in out.iterdir()} == RESULT_FILES  # the device returns at most 8 files
    mlp = json.loads((out / "mlp_serving.json").read_text())
    assert {(p["model"], p["rows"]) for p in mlp["points"]} == {(m, r) for m in ("mlp_cpu", "mlp_gpu") for r in (1, 4)}
    assert all(p["failures"] == 0 and p["rps"] > 0 for p in mlp["points"])
    llm = json.loads((out / "llm_gpu.json").read_text())
    assert set(llm["decode_speedup_graphs_over_eager"]) == {"1", "2"}
    summary = (out / "summary.md").read_text()
    for target in ("| GPU tests |", "CUDA graphs / eager", "GPU / CPU, same server", "vs HF generate static batches"):
        assert target in summary
    assert "not run" not in summary
    # no CUDA here: every GPU test was collected and skipped, and the summary does not call that a pass
    assert "0 passed, 0 failed" in summary and "(NOT met)" in summary


def test_an_unknown_argument_is_refused():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
