"""Each backend against a direct run of the same artifact."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mlserve.engine import create_backend, infer_backend_name
from mlserve.errors import ModelLoadError
from mlserve.examples import write_mlp_onnx, write_mlp_torchscript
from mlserve.spec import ModelConfig, TensorSpec, parse_model_config


class TwoHeads(torch.nn.Module):
    def forward(self, x, n):
        return x.sum(dim=1, keepdim=True) * 2, n + 1


def test_onnx_backend_matches_onnxruntime(tmp_path):
    write_mlp_onnx(tmp_path / "model.onnx", seed=4)
    backend = create_backend(infer_backend_name(tmp_path), ModelConfig())
    backend.load(tmp_path, "cpu")
    x = np.random.default_rng(0).standard_normal((5, 768), dtype=np.float32)
    expected = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(backend.infer({"x": x})["y"], expected, rtol=1e-6, atol=1e-6)
    assert backend.info.inputs == (TensorSpec("x", "FP32", (-1, 768)),)


def test_torch_export_backend_reads_tensors_from_the_program(tmp_path):
    batch = torch.export.Dim("batch")
    example = (torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.int64))
    program = torch.export.export(TwoHeads(), example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    assert infer_backend_name(tmp_path) == "torch_export"
    backend = create_backend("torch_export", ModelConfig())
    backend.load(tmp_path, "cpu")
    assert [s.datatype for s in backend.info.inputs] == ["FP32", "INT64"]
    assert backend.info.inputs[0].shape == (-1, 3)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    n = np.arange(4, dtype=np.int64).reshape(4, 1)
    out = backend.infer({s.name: v for s, v in zip(backend.info.inputs, (x, n))})
    ref = TwoHeads()(torch.from_numpy(x), torch.from_numpy(n))
    np.testing.assert_allclose(out["output_0"], ref[0].numpy())
    np.testing.assert_array_equal(out["output_1"], ref[1].numpy())


def test_torchscript_backend_needs_declared_tensors(tmp_path):
    write_mlp_torchscript(tmp_path / "model.pt", seed=1)
    with pytest.raises(ModelLoadError, match="declare"):
        create_backend("torchscript", ModelConfig()).load(tmp_path, "cpu")
    config = parse_model_config({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 768]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
    })
    backend = create_backend("torchscript", config)
    backend.load(tmp_path, "cpu")
    x = np.ones((2, 768), np.float32)
    expected = torch.jit.load(str(tmp_path / "model.pt"))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(backend.infer({"x": x})["y"], expected, rtol=1e-6, atol=1e-6)


def test_declared_tensors_must_agree_with_the_onnx_file(tmp_path):
    write_mlp_onnx(tmp_path / "model.onnx", seed=4)
    config = parse_model_config({"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 768]}]})
    with pytest.raises(ModelLoadError, match="INT64"):
        create_backend("onnx", config).load(tmp_path, "cpu")


def test_cuda_without_a_device_is_a_clear_load_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    write_mlp_onnx(tmp_path / "model.onnx", seed=4)
    with pytest.raises(ModelLoadError, match="cuda"):
        create_backend("onnx", ModelConfig()).load(tmp_path, "cuda")


@pytest.mark.gpu
def test_onnx_on_cuda_matches_cpu(tmp_path):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA execution provider")
    write_mlp_onnx(tmp_path / "model.onnx", seed=4)
    backend = create_backend("onnx", ModelConfig())
    backend.load(tmp_path, "cuda")
    x = np.ones((3, 768), np.float32)
    expected = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(backend.infer({"x": x})["y"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnx", "torchscript", "torch_export", "embedding", "aoti"])
def test_an_llm_section_on_a_model_that_does_not_generate_is_refused_naming_it(backend):
    config = parse_model_config({"llm": {"max_num_seqs": 8}})
    with pytest.raises(ModelLoadError, match=r"model.toml sets \[llm\], which only generation models"):
        create_backend(backend, config)
    create_backend(backend, parse_model_config({"llm": {}}))  # an empty section asks for nothing
    assert create_backend("llm", config) is not None
