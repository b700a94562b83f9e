"""The Backend protocol every engine implements, and the artifact-kind table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from mlserve.spec import ModelInfo
from mlserve.spec.mlmodel import read_mlmodel

# Which files in a version folder mean which backend (the first match wins).
ARTIFACT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("modules.json", "embedding"),  # a sentence-transformers folder, even with its encoder.onnx beside it
    ("*.onnx", "onnx"),
    ("*.pt2", "torch_export"),
    ("*.pt", "torchscript"),
    ("*.ts", "torchscript"),
    ("*.plan", "tensorrt"),
    ("config.json", "llm"),
)


Tensors = dict[str, np.ndarray]
StoppableInfer = Callable[[Tensors, Callable[[Callable[[], None]], None]], Tensors]
"""infer(inputs, arm): the backend calls `arm(stop)` before its run starts; `stop()` from another
thread makes the run raise soon after (batching/leash.py; ONNX Runtime's `stoppable_infer`)."""


class Backend(Protocol):
    """One loaded model version on one device. Synchronous: it never awaits and knows no batching."""

    def load(self, path: Path, device: str) -> None:
        """Read the artifact in the version folder `path` onto `device`."""

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: input name -> array, to output name -> array (same leading size)."""

    def unload(self) -> None:
        """Free what load took."""

    @property
    def info(self) -> ModelInfo:
        """Platform name and tensor specs, known after load."""


VERSION_BACKEND_FILE = "optimization.json"
"""Written by `mlserve optimize` into the versions it publishes; its "backend" key names the engine
for that version alone (an ONNX or AOTInductor version of a model whose model.toml names another)."""


def version_backend(version_dir: Path) -> str | None:
    """The backend a version folder names for itself, if any: its optimization.json, else the flavor
    of an MLflow `MLmodel` file (ModelLoadError naming a flavor mlserve does not serve)."""
    marker = version_dir / VERSION_BACKEND_FILE
    if not marker.is_file():
        mlmodel = read_mlmodel(version_dir)
        return mlmodel.backend_in(version_dir) if mlmodel is not None else None
    try:
        backend = json.loads(marker.read_text()).get("backend")
    except (ValueError, AttributeError, OSError):
        return None
    return backend if isinstance(backend, str) else None


def infer_backend_name(version_dir: Path) -> str | None:
    for pattern, name in ARTIFACT_PATTERNS:
        if any(version_dir.glob(pattern)):
            return name
    return None


def find_artifact(version_dir: Path, patterns: tuple[str, ...]) -> Path:
    """The one artifact file of a kind in a version folder; model.* is preferred when there are several."""
    found = sorted(p for pattern in patterns for p in version_dir.glob(pattern) if p.is_file())
    if not found:
        raise FileNotFoundError(f"no {' or '.join(patterns)} file in {version_dir}")
    preferred = [p for p in found if p.stem == "model"]
    return (preferred or found)[0]
