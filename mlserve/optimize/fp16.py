"""FP16 conversion for CUDA: weights and activations in half precision, inputs and outputs kept
FP32 so clients send what they sent before. On CPU, ONNX Runtime has few FP16 kernels and the result
is slower, so the pass runs only for a CUDA device."""

from __future__ import annotations

from pathlib import Path

from mlserve.optimize import onnx_graph
from mlserve.optimize.base import Artifact, Options, PassUnavailable, Source, onnx_chain, onnx_source


class Fp16Pass:
    """FP32 ONNX -> FP16 ONNX with FP32 inputs and outputs."""

    name = "fp16"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        if not options.device.startswith("cuda") and not options.allow_cpu_fp16:
            raise PassUnavailable("FP16 is for CUDA (set device = cuda); ONNX Runtime on CPU runs it slower")
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx_graph.load(onnx_source(source)), keep_io_types=True)
        # The converter appends its input casts after the nodes that read them: valid for ONNX
        # Runtime, which sorts the graph, but not for the strict checker.
        onnx_graph.save(model, out / "model.onnx", check=False)
        return Artifact(self.name, out, "onnx", onnx_chain(source, self.name))
