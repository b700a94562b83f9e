"""Tensors as every layer describes them: v2 datatypes, a named tensor's spec, what a loaded version exposes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Open Inference Protocol datatype -> numpy dtype name (BYTES are object arrays of bytes).
DATATYPE_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_DATATYPE: dict[str, str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output: v2 datatype and full shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPE_TO_NUMPY:
            raise ValueError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}")
        if any(d < -1 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: dimensions must be >= -1")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a loaded version tells the world: its backend's platform name and tensors."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    utf8_strings: bool = False
    """BYTES tensors must hold UTF-8 text (ONNX strings)."""
