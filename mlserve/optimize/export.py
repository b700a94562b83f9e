"""Export to ONNX with torch's exporters, checked against the source on the validation set.

TorchScript archives go through the TorchScript exporter (the one that takes a ScriptModule);
torch.export programs through the torch.export-based exporter. Tensor names stay those the source
serves under, and the batch dimension stays dynamic, so the ONNX version answers the same requests.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mlserve.engine.base import find_artifact
from mlserve.optimize.base import Artifact, Options, PassFailed, PassUnavailable, Source

ATOL, RTOL = 1e-4, 1e-3
"""How close the export must match the source: it is the same network, only rounding differs."""
_CHECK_ROWS = 64


class ExportPass:
    """TorchScript / torch.export -> FP32 ONNX. Later ONNX passes start from its result."""

    name = "export"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        import torch

        if source.backend == "onnx":
            raise PassUnavailable("the source is ONNX already")
        path = out / "model.onnx"
        sample = tuple(torch.from_numpy(a) for a in source.rows(0, 2).values())
        names_in = [s.name for s in source.inputs]
        names_out = [s.name for s in source.outputs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if source.backend == "torchscript":
                _export_script(source, sample, names_in, names_out, path)
            else:
                _export_program(source, sample, names_in, names_out, path)
        _check(source, path)
        source.onnx_path = path
        return Artifact(self.name, out, "onnx", (self.name,))


def _export_script(source: Source, sample, names_in, names_out, path: Path) -> None:
    import torch

    module = torch.jit.load(str(find_artifact(source.folder, ("*.pt", "*.ts"))), map_location="cpu").eval()
    axes = {n: {0: "batch"} for n in (*names_in, *names_out)}
    torch.onnx.export(module, sample, str(path), dynamo=False, input_names=names_in, output_names=names_out,
                      dynamic_axes=axes, opset_version=17)


def _export_program(source: Source, sample, names_in, names_out, path: Path) -> None:
    import torch

    program = torch.export.load(str(find_artifact(source.folder, ("*.pt2",))))
    try:
        onnx_program = torch.onnx.export(program, sample, dynamo=True, input_names=names_in,
                                         output_names=names_out, verbose=False)
    except ImportError as exc:
        raise PassUnavailable(f"torch's torch.export-based ONNX exporter needs onnxscript ({exc})") from None
    onnx_program.save(str(path))


def _check(source: Source, path: Path) -> None:
    """The export answers like the source on the first validation rows, or the pass fails."""
    from mlserve.registry.opening import Trust, open_backend

    feed = source.rows(0, min(_CHECK_ROWS, source.num_rows))
    expected = _run(open_backend(source.backend, source.config, source.folder, "cpu", source.trust), feed)
    actual = _run(open_backend("onnx", source.config, path.parent, "cpu", Trust()), feed)
    for name, want in expected.items():
        got = actual[name]
        if got.shape != want.shape or not np.allclose(got, want, atol=ATOL, rtol=RTOL):
            worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
            raise PassFailed(f"exported output {name!r} differs from the source (max abs diff {worst:.3g})")


def _run(backend, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return backend.infer(feed)
    finally:
        backend.unload()
