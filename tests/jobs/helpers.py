"""Inputs for batch runs, the onnxruntime reference, and reading outputs back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from tests.server_process import ROOT


def mlp_rows(num_rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((num_rows, 768), dtype=np.float32)


def reference(model_file: Path, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """onnxruntime straight on the artifact, outside mlserve, at the model's batch size."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["y"], {"x": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def write_jsonl(path: Path, x: np.ndarray, bad: dict[int, bytes] | None = None) -> None:
    bad = bad or {}
    with open(path, "wb") as fh:
        for i, row in enumerate(x):
            fh.write(bad.get(i) or orjson.dumps({"x": row.tolist()}))
            fh.write(b"\n")


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def batch_command(repo: Path, model: str, src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mlserve", "batch", "--models", str(repo), "--model", model,
            "--input", str(src), "--output", str(dst), "--no-progress", *extra]


def run_batch(repo: Path, model: str, src: Path, dst: Path, *extra: str,
              timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(batch_command(repo, model, src, dst, *extra), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
