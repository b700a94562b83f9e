"""The [torch] section of a model's model.toml: how a TorchScript or torch.export model computes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlserve.spec.table import parse_table

PRECISIONS = ("fp32", "bf16", "fp16")
TORCH_BACKENDS = ("torchscript", "torch_export")
"""The backends that read [torch]; any other backend refuses a model.toml that sets it."""


@dataclass(frozen=True, slots=True)
class TorchSettings:
    """Autocast precision of the forward pass; None = not set (plain fp32, no autocast)."""

    precision: str | None = None
    """fp32 | bf16 | fp16: bf16 and fp16 run the forward under torch.autocast on the model's device
    (CUDA or CPU) and cast floating outputs back to their declared datatype."""

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"[torch] precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def is_set(self) -> bool:
        return self.precision is not None

    @property
    def autocast_dtype_name(self) -> str | None:
        """"bfloat16" or "float16" when the forward runs under autocast, else None."""
        return {"bf16": "bfloat16", "fp16": "float16"}.get(self.precision or "")

    @classmethod
    def parse(cls, raw: Any) -> TorchSettings:
        """From model.toml's [torch] table (None = all defaults); ValueError names the bad key."""
        return parse_table(cls, raw, "[torch]")
