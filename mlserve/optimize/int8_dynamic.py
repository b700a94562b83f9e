"""INT8 dynamic quantization: weights stored as INT8, activations quantized per batch at run time.
Needs no calibration data."""

from __future__ import annotations

from pathlib import Path

from mlserve.optimize import onnx_graph
from mlserve.optimize.base import Artifact, Options, PassUnavailable, Source, onnx_chain, onnx_source


class Int8DynamicPass:
    """FP32 ONNX -> MatMulInteger / DynamicQuantizeMatMul with per-channel INT8 weights (7 bits used, see
    onnx_graph.INT8_REDUCE_RANGE)."""

    name = "int8_dynamic"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = onnx_graph.load(onnx_source(source))
        # ORT quantizes MatMul dynamically but not Gemm, which torch's exporters emit for Linear.
        onnx_graph.gemm_to_matmul(model)
        if not any(n.op_type in ("MatMul", "Conv") for n in model.graph.node):
            raise PassUnavailable("no MatMul or Conv to quantize")
        staged = out / "fp32.onnx"
        onnx_graph.save(model, staged)
        with onnx_graph.quiet_quantizer():
            quantize_dynamic(
                staged, out / "model.onnx", weight_type=QuantType.QInt8, per_channel=True,
                reduce_range=onnx_graph.INT8_REDUCE_RANGE,
                extra_options={"WeightSymmetric": True, "MatMulConstBOnly": True},
            )
        staged.unlink()
        return Artifact(self.name, out, "onnx", onnx_chain(source, self.name))
