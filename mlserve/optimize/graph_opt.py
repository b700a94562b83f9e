"""ONNX Runtime's offline graph optimization: constant folding, node fusions, redundant nodes gone,
saved as a model file so the server skips that work at load."""

from __future__ import annotations

from pathlib import Path

from mlserve.optimize.base import Artifact, Options, Source, onnx_chain, onnx_source


class GraphOptPass:
    """FP32 ONNX -> the same network after ORT's extended (portable) graph optimizations."""

    name = "graph_opt"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        import onnxruntime as ort

        settings = ort.SessionOptions()
        # EXTENDED, not ALL: ALL adds layout transforms tied to this machine's CPU.
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        settings.optimized_model_filepath = str(out / "model.onnx")
        ort.InferenceSession(str(onnx_source(source)), settings, providers=["CPUExecutionProvider"])
        return Artifact(self.name, out, "onnx", onnx_chain(source, self.name))
