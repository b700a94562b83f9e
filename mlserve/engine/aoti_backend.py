"""AOTInductor packages (.pt2 compiled ahead of time by torch's inductor): a shared library per
model, run without Python-level graph interpretation.

A package holds compiled native code, so loading one is running code from the repository: the
loader refuses it unless the model is trusted (registry/safety.py, as for TorchScript). Tensor names and shapes come from
`aoti.json` beside the package (written by `mlserve optimize`) unless model.toml declares them.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlserve.engine.torch_backend import _TorchBackend
from mlserve.errors import ModelLoadError
from mlserve.spec import TensorSpec

TENSORS_FILE = "aoti.json"


def _specs(raw: list) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in raw)


class AotInductorBackend(_TorchBackend):
    """One AOTInductor package, loaded with torch._inductor.aoti_load_package."""

    platform = "pytorch_aoti"
    patterns = ("*.pt2",)

    def _read(self, artifact: Path):
        if self._device.type != "cpu":
            raise ModelLoadError(f"{artifact}: mlserve compiles AOTInductor packages for CPU only")
        import torch

        runner = torch._inductor.aoti_load_package(str(artifact))
        tensors = artifact.parent / TENSORS_FILE
        if not tensors.is_file():
            return runner, (), ()
        try:
            described = json.loads(tensors.read_text())
            return runner, _specs(described["inputs"]), _specs(described["outputs"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{tensors}: {exc}") from exc
