"""PyTorch backends: TorchScript (.pt/.ts) and torch.export programs (.pt2), on CPU or CUDA."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mlserve.engine.base import find_artifact
from mlserve.engine.pinned import DeviceCopier
from mlserve.engine.spec_check import merge_specs
from mlserve.engine.threads import use_process_threads
from mlserve.errors import ModelLoadError
from mlserve.spec import ModelConfig, ModelInfo, TensorSpec

_TORCH_TO_DATATYPE = {
    torch.bool: "BOOL",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.uint8: "UINT8",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}
_DATATYPE_TO_TORCH = {v: k for k, v in _TORCH_TO_DATATYPE.items()}


def _resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device is {device} but torch sees no CUDA device")
    return torch.device(device)


class _TorchBackend:
    """Shared by both artifact kinds: positional inputs in declared order, outputs named in order."""

    platform = "pytorch"
    patterns: tuple[str, ...] = ()

    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._module: Callable[..., Any] | None = None
        self._device = torch.device("cpu")
        self._info: ModelInfo | None = None
        self._copier: DeviceCopier | None = None
        """Pinned staging for the copies in and out; None on CPU."""
        dtype_name = config.torch.autocast_dtype_name
        self._autocast_dtype: torch.dtype | None = getattr(torch, dtype_name) if dtype_name else None

    def _read(self, artifact: Path) -> tuple[Callable[..., Any], tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        raise NotImplementedError

    def load(self, path: Path, device: str) -> None:
        self._device = _resolve_device(device)
        use_process_threads(self._config.intra_op_threads, str(path))
        artifact = find_artifact(path, self.patterns)
        try:
            module, inputs, outputs = self._read(artifact)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{artifact}: {exc}") from exc
        inputs, outputs = merge_specs(self._config, inputs, outputs)
        if not inputs or not outputs:
            raise ModelLoadError(f"{artifact}: declare [[inputs]] and [[outputs]] in model.toml for this backend")
        for spec in (*inputs, *outputs):
            if spec.datatype not in _TORCH_TO_DATATYPE.values():
                raise ModelLoadError(f"tensor {spec.name!r}: torch cannot take datatype {spec.datatype}")
        self._module = module
        self._info = ModelInfo(self.platform, inputs, outputs, self._config.batching.max_batch_size)
        if self._device.type == "cuda":
            self._copier = DeviceCopier(self._device, pin_memory=True)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._module is not None and self._info is not None, "infer before load"
        if self._copier is None:  # CPU: torch reads the numpy arrays in place, no staging
            args = [torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in self._info.inputs]
            return {name: t.detach().numpy() for name, t in self._forward(args).items()}
        try:
            args = [self._copier.to_device(s.name, inputs[s.name]) for s in self._info.inputs]
            return self._copier.to_host(self._forward(args))
        finally:
            self._copier.sync()

    def _forward(self, args: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the module (under autocast when [torch] precision asks) and name its outputs; with
        autocast, each output comes back in its declared datatype."""
        assert self._module is not None and self._info is not None
        autocast = (
            torch.autocast(self._device.type, dtype=self._autocast_dtype)
            if self._autocast_dtype is not None else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            result = self._module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[s.name] for s in self._info.outputs)
        if len(result) != len(self._info.outputs):
            raise RuntimeError(f"model returned {len(result)} outputs, {len(self._info.outputs)} declared")
        if self._autocast_dtype is None:
            return {s.name: t for s, t in zip(self._info.outputs, result)}
        return {s.name: t.to(_DATATYPE_TO_TORCH[s.datatype]) for s, t in zip(self._info.outputs, result)}

    def unload(self) -> None:
        self._module = None
        self._copier = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def info(self) -> ModelInfo:
        assert self._info is not None, "info before load"
        return self._info


class TorchScriptBackend(_TorchBackend):
    """A TorchScript archive; its tensors must be declared in model.toml."""

    platform = "pytorch_libtorch"
    patterns = ("*.pt", "*.ts")

    def _read(self, artifact: Path):
        module = torch.jit.load(str(artifact), map_location=self._device)
        module.eval()
        return module, (), ()


def _meta_spec(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor) or value.dtype not in _TORCH_TO_DATATYPE:
        raise ModelLoadError(f"tensor {name!r} of the exported program has no servable dtype")
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, _TORCH_TO_DATATYPE[value.dtype], shape)


class TorchExportBackend(_TorchBackend):
    """A torch.export program (.pt2); tensors come from its signature unless model.toml declares them."""

    platform = "pytorch_export"
    patterns = ("*.pt2",)

    def _read(self, artifact: Path):
        program = torch.export.load(str(artifact))
        module = program.module().to(self._device)
        graph = program.graph
        user_inputs = set(program.graph_signature.user_inputs)
        placeholders = [n for n in graph.nodes if n.op == "placeholder" and n.name in user_inputs]
        inputs = tuple(_meta_spec(n.name, n.meta.get("val")) for n in placeholders)
        output_node = next(n for n in graph.nodes if n.op == "output")
        values = output_node.args[0] if isinstance(output_node.args[0], (tuple, list)) else [output_node.args[0]]
        outputs = tuple(_meta_spec(f"output_{i}", v.meta.get("val")) for i, v in enumerate(values))
        return module, inputs, outputs
