"""ONNX Runtime backend: CPU, or the CUDA execution provider when asked for and present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from mlserve.engine.base import find_artifact
from mlserve.engine.spec_check import merge_specs
from mlserve.errors import ModelLoadError
from mlserve.spec import ModelConfig, ModelInfo, TensorSpec

_ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(node: ort.NodeArg) -> TensorSpec:
    if node.type not in _ORT_TO_DATATYPE:
        raise ModelLoadError(f"tensor {node.name!r} has type {node.type}, which mlserve cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, _ORT_TO_DATATYPE[node.type], shape)


class OnnxBackend:
    """One ONNX model version in an onnxruntime InferenceSession."""

    def __init__(self, config: ModelConfig, trust_repository: bool = False) -> None:
        self._config = config
        self._session: ort.InferenceSession | None = None
        self._info: ModelInfo | None = None
        self._string_inputs: frozenset[str] = frozenset()

    def load(self, path: Path, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelLoadError("device is cuda but this onnxruntime has no CUDAExecutionProvider")
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        artifact = find_artifact(path, ("*.onnx",))
        try:
            self._session = ort.InferenceSession(str(artifact), options, providers=providers)
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelLoadError(f"{artifact}: {exc}") from exc
        inputs = tuple(_spec(n) for n in self._session.get_inputs())
        outputs = tuple(_spec(n) for n in self._session.get_outputs())
        inputs, outputs = merge_specs(self._config, inputs, outputs)
        self._info = ModelInfo(
            "onnxruntime_onnx", inputs, outputs, self._config.batching.max_batch_size, utf8_strings=True
        )
        self._string_inputs = frozenset(s.name for s in inputs if s.datatype == "BYTES")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "infer before load"
        feed = {
            name: (_bytes_to_str(array) if name in self._string_inputs else array)
            for name, array in inputs.items()
        }
        names = [o.name for o in self._info.outputs]
        results = self._session.run(names, feed)
        return {name: (_str_to_bytes(r) if r.dtype == object else r) for name, r in zip(names, results)}

    def unload(self) -> None:
        self._session = None

    @property
    def info(self) -> ModelInfo:
        assert self._info is not None, "info before load"
        return self._info


def _bytes_to_str(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in array.flat]
    return out


def _str_to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in array.flat]
    return out
