"""INT8 static quantization in QDQ form: activation ranges calibrated once on validation rows, so no
range is computed per batch at run time. The graph's outputs stay FP32, so they are never clipped to
the calibrated range."""

from __future__ import annotations

from pathlib import Path

from mlserve.optimize import onnx_graph
from mlserve.optimize.base import Artifact, Options, Source, onnx_chain, onnx_source


class _Rows:
    """onnxruntime's CalibrationDataReader over the first validation rows, a batch at a time."""

    def __init__(self, source: Source, num_rows: int, batch: int = 32) -> None:
        stop = min(num_rows, source.num_rows)
        self._feeds = iter([source.rows(i, min(i + batch, stop)) for i in range(0, stop, batch)])

    def get_next(self):
        return next(self._feeds, None)


class Int8StaticPass:
    """FP32 ONNX -> QuantizeLinear/DequantizeLinear around MatMul, Gemm and Conv, per-channel weights (7 bits
    used, see onnx_graph.INT8_REDUCE_RANGE)."""

    name = "int8_static"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        staged = out / "qdq.onnx"
        with onnx_graph.quiet_quantizer():
            quantize_static(
                onnx_source(source), staged, _Rows(source, options.calibration_rows),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True, reduce_range=onnx_graph.INT8_REDUCE_RANGE, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        model = onnx_graph.load(staged)
        onnx_graph.float_graph_outputs(model)
        onnx_graph.save(model, out / "model.onnx")
        staged.unlink()
        for leftover in out.glob("*augmented*"):
            leftover.unlink()
        return Artifact(self.name, out, "onnx", onnx_chain(source, self.name),
                        {"calibration_rows": min(options.calibration_rows, source.num_rows)})
