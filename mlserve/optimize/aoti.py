"""Ahead-of-time compilation with torch's inductor: the source becomes an AOTInductor package (a
shared library and its weights) served by the `aoti` backend.

The program is exported again with a dynamic batch dimension (1..max batch size), so one package
serves every batch the batcher forms. TorchScript sources are converted to a torch.export program
first. The compile runs a C++ compiler: expect a minute or more for even a small model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from mlserve.engine.aoti_backend import TENSORS_FILE
from mlserve.engine.base import find_artifact
from mlserve.optimize.base import Artifact, Options, PassFailed, PassUnavailable, Source


def _program(source: Source, sample: tuple):
    import torch

    if source.backend == "torch_export":
        return torch.export.load(str(find_artifact(source.folder, ("*.pt2",))))
    if source.backend == "torchscript":
        from torch._export.converter import TS2EPConverter

        module = torch.jit.load(str(find_artifact(source.folder, ("*.pt", "*.ts"))), map_location="cpu")
        return TS2EPConverter(module, sample).convert()
    raise PassUnavailable("AOTInductor compiles torch models (TorchScript or .pt2), not ONNX")


class AotInductorPass:
    """TorchScript / torch.export -> AOTInductor package for CPU."""

    name = "aoti"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        import torch

        if options.device != "cpu":
            raise PassUnavailable("mlserve compiles AOTInductor packages for CPU only")
        max_batch = max(2, options.max_batch_size, source.config.batching.max_batch_size)
        sample = tuple(torch.from_numpy(a[:2].copy()) for a in source.rows(0, 2).values())
        if len(sample[0]) < 2:
            raise PassFailed("the validation set needs at least 2 rows to export a dynamic batch")
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(_program(source, sample).module(), sample,
                                          dynamic_shapes=tuple({0: batch} for _ in sample))
            torch._inductor.aoti_compile_and_package(program, package_path=str(out / "model.pt2"))
        tensors = {"inputs": [s.to_dict() for s in source.inputs], "outputs": [s.to_dict() for s in source.outputs]}
        (out / TENSORS_FILE).write_text(json.dumps(tensors))
        return Artifact(self.name, out, "aoti", (self.name,), {"max_batch_size": max_batch})
