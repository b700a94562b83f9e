"""Engines behind one Backend protocol. Backends are imported on first use, so an ONNX-only
deployment never imports torch."""

from __future__ import annotations

import importlib

from mlserve.engine.base import Backend, infer_backend_name
from mlserve.errors import ModelLoadError
from mlserve.spec import LLMSettings, ModelConfig
from mlserve.spec.precision import TORCH_BACKENDS

_BACKEND_CLASSES = {
    "onnx": ("mlserve.engine.onnx_backend", "OnnxBackend"),
    "torchscript": ("mlserve.engine.torch_backend", "TorchScriptBackend"),
    "torch_export": ("mlserve.engine.torch_backend", "TorchExportBackend"),
    "tensorrt": ("mlserve.engine.tensorrt_backend", "TensorRTBackend"),
    "llm": ("mlserve.engine.llm.backend", "LLMBackend"),
    "embedding": ("mlserve.engine.embedding.backend", "EmbeddingBackend"),
    "aoti": ("mlserve.engine.aoti_backend", "AotInductorBackend"),
}


def create_backend(name: str, config: ModelConfig) -> Backend:
    if name not in _BACKEND_CLASSES:
        raise ValueError(f"no backend named {name!r}; known: {', '.join(sorted(_BACKEND_CLASSES))}")
    if config.torch.is_set and name not in TORCH_BACKENDS:
        raise ModelLoadError(
            f"model.toml sets [torch] precision, which only {' and '.join(TORCH_BACKENDS)} models read; "
            f"this version's backend is {name}"
        )
    if name != "llm" and config.llm != LLMSettings():
        raise ModelLoadError(f"model.toml sets [llm], which only generation models (backend llm) read; "
                             f"this version's backend is {name}")
    module_name, class_name = _BACKEND_CLASSES[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


__all__ = ["Backend", "create_backend", "infer_backend_name"]
