"""TensorRT backend for serialized engines (.plan). Import-guarded: loading fails with a clear
reason where the tensorrt package or a CUDA device is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlserve.errors import ModelLoadError
from mlserve.spec import ModelConfig, ModelInfo

try:
    import tensorrt  # noqa: F401

    TENSORRT_AVAILABLE = True
except ImportError:
    TENSORRT_AVAILABLE = False


class TensorRTBackend:
    """A TensorRT engine plan on one CUDA device."""

    def __init__(self, config: ModelConfig) -> None:
        self._config = config

    def load(self, path: Path, device: str) -> None:
        if not TENSORRT_AVAILABLE:
            raise ModelLoadError("backend tensorrt needs the tensorrt package (pip install 'mlserve[gpu]')")
        raise ModelLoadError("the tensorrt backend is not built yet in this release")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ModelLoadError("tensorrt backend not loaded")

    def unload(self) -> None:
        pass

    @property
    def info(self) -> ModelInfo:
        raise ModelLoadError("tensorrt backend not loaded")
