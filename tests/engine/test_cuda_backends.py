"""The CUDA paths against the CPU answers of the same artifacts: torch through pinned staging (fp32
and bf16 autocast), ONNX Runtime through IO binding. Every test needs a CUDA device (`gpu`).

Tolerances, as a share of the largest |CPU fp32| output: fp32 on CUDA 1e-4 (cuBLAS sums in
another order; TF32 is off for matmuls by default), bf16 autocast 2e-2 (as on CPU, see
test_torch_precision.py), ONNX Runtime CUDA 1e-4."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mlserve.engine import create_backend
from mlserve.engine.onnx_backend import OnnxBackend
from mlserve.engine.pinned import DeviceCopier
from mlserve.examples import write_mlp_onnx, write_mlp_torchscript
from mlserve.spec import ModelConfig, parse_model_config
from tests.engine.test_onnx_binding import BATCH_SIZES, NUMERIC, _values
from tests.engine.test_torch_precision import MLP_TENSORS, TOLERANCE, save_scale_and_count
from tests.models import write_doubling_onnx

pytestmark = pytest.mark.gpu


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _torchscript(folder, device: str, precision: str | None = None):
    raw = dict(MLP_TENSORS, torch={"precision": precision}) if precision else dict(MLP_TENSORS)
    backend = create_backend("torchscript", parse_model_config(raw))
    backend.load(folder, device)
    return backend


def _needs_ort_cuda() -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (the CPU wheel is installed)")


def test_pinned_pool_on_cuda_pins_and_reuses():
    copier = DeviceCopier(torch.device("cuda"), pin_memory=True)
    for rows in (4, 2, 4):
        x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
        on_device = copier.to_device("x", x)
        assert on_device.is_cuda
        answers = copier.to_host({"y": on_device * 2})
        np.testing.assert_array_equal(answers["y"], x * 2)
    assert copier.pool.num_allocations == 2  # "in:x" and "out:y", reused by every batch
    assert copier.pool.take("in:x", torch.float32, (4, 3)).is_pinned()


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_torchscript_on_cuda_matches_cpu(tmp_path, precision):
    write_mlp_torchscript(tmp_path / "model.pt", seed=1)
    cpu, cuda = _torchscript(tmp_path, "cpu"), _torchscript(tmp_path, "cuda", precision)
    tolerance = TOLERANCE[precision] if precision else 1e-4
    for rows in BATCH_SIZES:
        x = np.random.default_rng(rows).standard_normal((rows, 768), dtype=np.float32)
        got, ref = cuda.infer({"x": x})["y"], cpu.infer({"x": x})["y"]
        assert got.dtype == np.float32
        assert _relative_error(got, ref) <= tolerance


def test_cuda_answers_survive_the_next_batch(tmp_path):
    write_mlp_torchscript(tmp_path / "model.pt", seed=1)
    cuda = _torchscript(tmp_path, "cuda")
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((16, 768), dtype=np.float32) for _ in range(2))
    first = cuda.infer({"x": x1})["y"]
    kept = first.copy()
    second = cuda.infer({"x": x2})["y"]
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second) and not np.array_equal(first, second)


def test_torch_export_bf16_on_cuda_matches_cpu(tmp_path):
    save_scale_and_count(tmp_path)
    cpu = create_backend("torch_export", ModelConfig())
    cpu.load(tmp_path, "cpu")
    cuda = create_backend("torch_export", parse_model_config({"torch": {"precision": "bf16"}}))
    cuda.load(tmp_path, "cuda")
    x = np.random.default_rng(3).standard_normal((9, 16), dtype=np.float32)
    n = np.arange(9, dtype=np.int64).reshape(9, 1)
    feed = {s.name: v for s, v in zip(cpu.info.inputs, (x, n))}
    got, ref = cuda.infer(feed), cpu.infer(feed)
    assert got["output_0"].dtype == np.float32
    assert _relative_error(got["output_0"], ref["output_0"]) <= TOLERANCE["bf16"]
    np.testing.assert_array_equal(got["output_1"], ref["output_1"])


def test_onnx_cuda_binds_by_default_and_matches_cpu(tmp_path):
    _needs_ort_cuda()
    write_mlp_onnx(tmp_path / "model.onnx", seed=4)
    cuda, cpu = OnnxBackend(ModelConfig()), OnnxBackend(ModelConfig())
    cuda.load(tmp_path, "cuda")
    cpu.load(tmp_path, "cpu")
    assert cuda.is_io_bound
    for rows in BATCH_SIZES:
        x = np.random.default_rng(rows).standard_normal((rows, 768), dtype=np.float32)
        assert _relative_error(cuda.infer({"x": x})["y"], cpu.infer({"x": x})["y"]) <= 1e-4


@pytest.mark.parametrize("datatype", NUMERIC)
def test_onnx_cuda_binding_every_datatype(tmp_path, datatype):
    _needs_ort_cuda()
    write_doubling_onnx(tmp_path / "model.onnx", datatype)
    cuda = OnnxBackend(ModelConfig())
    cuda.load(tmp_path, "cuda")
    rng = np.random.default_rng(11)
    for rows in BATCH_SIZES:
        x = _values(datatype, rows, rng)
        np.testing.assert_array_equal(cuda.infer({"x": x})["y"], ~x if datatype == "BOOL" else x + x)
