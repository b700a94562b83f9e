"""Every pass on a small model: each candidate is checked against a torch run of the source network
(outside mlserve), and against what the pass promises (INT8 ops, fewer channels, FP16 weights)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlserve.optimize import create_pass, parse_passes
from mlserve.optimize.base import Options, PassUnavailable
from mlserve.optimize.source import open_source
from tests.optimize.models import network, write_data, write_export, write_torchscript


@pytest.fixture
def source(tmp_path):
    write_torchscript(tmp_path / "models")
    data = write_data(tmp_path / "val.npz")
    work = tmp_path / "work"
    work.mkdir()
    return open_source(tmp_path / "models", "tiny", None, None, data, work)


def _torch_outputs(x: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return network(**kwargs)(torch.from_numpy(x)).numpy()


def _ort_outputs(path, x: np.ndarray, name: str = "x") -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


def _run(name, source, tmp_path, options=Options()):
    out = tmp_path / name
    out.mkdir()
    return create_pass(name).run(source, options, out)


def _exported(source, tmp_path):
    return _run("export", source, tmp_path)


def test_export_from_torchscript_matches_the_source_network(source, tmp_path):
    artifact = _exported(source, tmp_path)
    x = source.data["x"]
    got = _ort_outputs(artifact.folder / "model.onnx", x)
    np.testing.assert_allclose(got, _torch_outputs(x), atol=1e-5, rtol=1e-4)
    session = ort.InferenceSession(str(artifact.folder / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["x"] and [o.name for o in session.get_outputs()] == ["y"]
    assert source.onnx_path == artifact.folder / "model.onnx"


def test_export_from_torch_export_program_keeps_its_tensor_names(tmp_path):
    write_export(tmp_path / "models")
    x = np.random.default_rng(3).standard_normal((40, 16)).astype(np.float32)
    (tmp_path / "work").mkdir()
    name = open_source(tmp_path / "models", "tiny_pt2", None, None, _npz(tmp_path, x), tmp_path / "work")
    artifact = _exported(name, tmp_path)
    session = ort.InferenceSession(str(artifact.folder / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == [s.name for s in name.outputs]
    got = session.run(None, {name.inputs[0].name: x})[0]
    np.testing.assert_allclose(got, _torch_outputs(x), atol=1e-5, rtol=1e-4)


def _npz(tmp_path, x):
    """The validation set under the input name the exported program gives its argument."""
    program = torch.export.export(network(), (torch.zeros(2, 16),))
    np.savez(tmp_path / "val_pt2.npz", **{program.graph_signature.user_inputs[0]: x})
    return tmp_path / "val_pt2.npz"


def test_graph_opt_keeps_outputs(source, tmp_path):
    _exported(source, tmp_path)
    artifact = _run("graph_opt", source, tmp_path)
    x = source.data["x"]
    np.testing.assert_allclose(_ort_outputs(artifact.folder / "model.onnx", x), _torch_outputs(x), atol=1e-5, rtol=1e-4)


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("name, op", [("int8_dynamic", "DynamicQuantizeLinear"), ("int8_static", "QuantizeLinear")])
def test_int8_passes_quantize_and_stay_close(source, tmp_path, name, op):
    exported = _exported(source, tmp_path)
    artifact = _run(name, source, tmp_path)
    path = artifact.folder / "model.onnx"
    assert op in _ops(path) or "DynamicQuantizeMatMul" in _ops(path)
    assert path.stat().st_size < (exported.folder / "model.onnx").stat().st_size / 2
    x = source.data["x"]
    got, want = _ort_outputs(path, x), _torch_outputs(x)
    assert np.max(np.abs(got - want)) < 0.2 * np.max(np.abs(want))  # INT8 output steps: range / 255
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9


@pytest.mark.parametrize("name", ["int8_dynamic", "int8_static"])
def test_int8_weights_cannot_saturate_the_avx2_kernel(source, tmp_path, name):
    """x86 without VNNI sums pairs of u8 x s8 products in an int16 (VPMADDUBSW), which saturates past
    32767: the weights must stay within 7 bits, and the fast path must agree with ORT's exact one."""
    _exported(source, tmp_path)
    path = _run(name, source, tmp_path).folder / "model.onnx"
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("weight_quantized")]
    assert weights and all(2 * 255 * int(np.abs(w.astype(np.int32)).max()) <= 32767 for w in weights)
    x = source.data["x"]
    outputs = []
    for exact in ("0", "1"):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.x64quantprecision", exact)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"x": x})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_int8_static_outputs_are_not_clipped_to_the_calibrated_range(source, tmp_path):
    """Calibration reads the first 256 rows; the other rows reach outputs beyond that range, which a
    quantized graph output would clip. The output stays FP32, so they come through."""
    _exported(source, tmp_path)
    path = _run("int8_static", source, tmp_path).folder / "model.onnx"
    model = onnx.load(str(path))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers["y"] != "DequantizeLinear"
    x = source.data["x"]
    got, want = _ort_outputs(path, x), _torch_outputs(x)
    calibrated, beyond = want[:256].max(), want[256:].max()
    assert beyond > calibrated  # the data has rows past the calibrated range
    assert got[256:].max() > calibrated + (beyond - calibrated) / 2


def test_fp16_is_for_cuda_and_converts_the_weights(source, tmp_path):
    _exported(source, tmp_path)
    with pytest.raises(PassUnavailable, match="CUDA"):
        _run("fp16", source, tmp_path)
    out = tmp_path / "fp16_cpu"
    out.mkdir()
    artifact = create_pass("fp16").run(source, Options(allow_cpu_fp16=True), out)
    model = onnx.load(str(artifact.folder / "model.onnx"))
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    x = source.data["x"]
    np.testing.assert_allclose(_ort_outputs(artifact.folder / "model.onnx", x), _torch_outputs(x), atol=2e-2, rtol=2e-2)


def test_structured_pruning_removes_the_weak_channels_and_shrinks_the_weights(tmp_path):
    weak = 16  # of 64: exactly the 25% the pass removes, so the outputs barely move
    write_torchscript(tmp_path / "models", weak=weak)
    (tmp_path / "work").mkdir()
    src = open_source(tmp_path / "models", "tiny", None, None, write_data(tmp_path / "val.npz"), tmp_path / "work")
    exported = _exported(src, tmp_path)
    artifact = _run("prune", src, tmp_path, Options(sparsity=0.25))
    shapes = sorted(tuple(t.dims) for t in onnx.load(str(artifact.folder / "model.onnx")).graph.initializer)
    assert shapes == sorted([(16, 48), (48,), (48, 48), (48,), (48, 4), (4,)])
    assert artifact.num_bytes < 0.75 * exported.num_bytes
    x = src.data["x"]
    want = _torch_outputs(x, weak=weak)
    np.testing.assert_allclose(_ort_outputs(artifact.folder / "model.onnx", x), want, atol=1e-2)


def test_onnx_passes_need_the_export_first(source, tmp_path):
    with pytest.raises(PassUnavailable, match="export"):
        _run("int8_dynamic", source, tmp_path)


def test_pass_names_are_checked_and_export_runs_first():
    assert parse_passes("int8_dynamic,export") == ("export", "int8_dynamic")
    with pytest.raises(ValueError, match="nope"):
        parse_passes("export,nope")


def test_a_published_onnx_version_of_a_torchscript_model_is_read_as_onnx(source, tmp_path):
    """Its model.toml still says torchscript; the version's optimization.json names its own backend."""
    artifact = _exported(source, tmp_path)
    version = tmp_path / "models" / "tiny" / "2"
    version.mkdir()
    shutil.copy(artifact.folder / "model.onnx", version / "model.onnx")
    (version / "optimization.json").write_text(json.dumps({"backend": "onnx"}))
    (tmp_path / "work2").mkdir()
    again = open_source(tmp_path / "models", "tiny", None, None, tmp_path / "val.npz", tmp_path / "work2")
    assert again.version == 2 and again.backend == "onnx" and again.onnx_path == version / "model.onnx"


def test_the_harness_gates_on_cosine_when_asked(tmp_path):
    from mlserve.optimize.evaluate import Budget
    from mlserve.optimize.gate import GateSettings
    from mlserve.optimize.pipeline import OptimizeRequest, run
    from tests.optimize.models import write_onnx

    write_onnx(tmp_path / "models")
    request = OptimizeRequest(
        "tiny_onnx", tmp_path / "models", data=write_data(tmp_path / "val.npz"), passes=("graph_opt", "prune"),
        options=Options(sparsity=0.9), budget=Budget(latency_s=0.05), publish=False,
        gate=GateSettings(max_top1_drop=None, max_metric_drop=None, min_cosine=0.999, min_gain=1.0),
    )
    rows = {r.name: r for r in run(request).rows}
    assert rows["source"].figures.cosine == pytest.approx(1.0)
    assert rows["graph_opt"].status == "passed" and rows["graph_opt"].figures.cosine > 0.99999
    assert rows["prune"].status == "rejected" and "cosine" in rows["prune"].reason
