"""model.toml [torch] precision: TorchScript and torch.export forwards under CPU autocast, checked
against the fp32 forward of the same artifact; every other backend refuses the key at load.

Tolerances, as a share of the largest |reference| output of the MLP (768-1024-1024-10): bf16 keeps
8 mantissa bits (relative step 2^-8 = 0.4% per rounding), measured 0.5% here, allowed 2%; fp16
keeps 11 (0.05%), measured 0.06%, allowed 0.3%. Each must also differ from fp32, or autocast
did not run."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from mlserve.engine import create_backend
from mlserve.errors import ModelLoadError
from mlserve.examples import MLP_TS_TOML, write_mlp_onnx, write_mlp_torchscript
from mlserve.spec import parse_model_config
from tests.server.inproc import app_client, config_for

MLP_TENSORS = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 768]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
}
TOLERANCE = {"bf16": 2e-2, "fp16": 3e-3}


class ScaleAndCount(torch.nn.Module):
    """A float head through a matmul (autocast lowers it) and an integer head (autocast leaves it)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 4)

    def forward(self, x, n):
        return self.linear(x), n * 3


def _mlp_reference(folder, x: np.ndarray) -> np.ndarray:
    return torch.jit.load(str(folder / "model.pt"))(torch.from_numpy(x)).detach().numpy()


def _backend(name: str, folder, precision: str | None, tensors: dict | None = None):
    raw = dict(tensors or {})
    if precision is not None:
        raw["torch"] = {"precision": precision}
    backend = create_backend(name, parse_model_config(raw))
    backend.load(folder, "cpu")
    return backend


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_torchscript_autocast_is_close_to_fp32(tmp_path, precision):
    write_mlp_torchscript(tmp_path / "model.pt", seed=1)
    backend = _backend("torchscript", tmp_path, precision, MLP_TENSORS)
    for rows in (1, 64, 7):
        x = np.random.default_rng(rows).standard_normal((rows, 768), dtype=np.float32)
        y, ref = backend.infer({"x": x})["y"], _mlp_reference(tmp_path, x)
        assert y.dtype == np.float32 and y.shape == ref.shape
        error = np.abs(y - ref).max() / np.abs(ref).max()
        assert 0 < error <= TOLERANCE[precision], error


def test_fp32_is_the_plain_forward(tmp_path):
    write_mlp_torchscript(tmp_path / "model.pt", seed=2)
    x = np.random.default_rng(0).standard_normal((8, 768), dtype=np.float32)
    for precision in ("fp32", None):
        y = _backend("torchscript", tmp_path, precision, MLP_TENSORS).infer({"x": x})["y"]
        np.testing.assert_array_equal(y, _mlp_reference(tmp_path, x))


def save_scale_and_count(folder) -> ScaleAndCount:
    """ScaleAndCount exported with a dynamic batch to folder/model.pt2; returns the module."""
    torch.manual_seed(0)
    module = ScaleAndCount().eval()
    batch = torch.export.Dim("batch")
    example = (torch.zeros(2, 16), torch.zeros(2, 1, dtype=torch.int64))
    program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(folder / "model.pt2"))
    return module


def test_torch_export_autocast_casts_outputs_back_to_their_declared_dtypes(tmp_path):
    module = save_scale_and_count(tmp_path)
    backend = _backend("torch_export", tmp_path, "bf16")
    x = np.random.default_rng(3).standard_normal((5, 16), dtype=np.float32)
    n = np.arange(5, dtype=np.int64).reshape(5, 1)
    out = backend.infer({s.name: v for s, v in zip(backend.info.inputs, (x, n))})
    ref_float, ref_int = (t.detach().numpy() for t in module(torch.from_numpy(x), torch.from_numpy(n)))
    assert out["output_0"].dtype == np.float32 and out["output_1"].dtype == np.int64
    error = np.abs(out["output_0"] - ref_float).max() / np.abs(ref_float).max()
    assert 0 < error <= TOLERANCE["bf16"], error
    np.testing.assert_array_equal(out["output_1"], ref_int)


@pytest.mark.parametrize("backend", ["onnx", "tensorrt", "llm", "embedding", "aoti"])
def test_other_backends_refuse_the_key(backend):
    config = parse_model_config({"torch": {"precision": "fp32"}})
    with pytest.raises(ModelLoadError, match=r"\[torch\] precision"):
        create_backend(backend, config)


async def _serve(root) -> tuple[dict[str, dict], dict]:
    async with app_client(config_for(root)) as client:
        response = await client.post("/v2/repository/index", json={"reload": False})
        rows = {row["name"]: row for row in await response.json()}
        x = np.random.default_rng(5).standard_normal((3, 768), dtype=np.float32)
        body = {"inputs": [{"name": "x", "shape": [3, 768], "datatype": "FP32", "data": x.ravel().tolist()}]}
        response = await client.post("/v2/models/ts_bf16/infer", json=body)
        assert response.status == 200, await response.text()
        answer = await response.json()
    return rows, {"x": x, "y": np.array(answer["outputs"][0]["data"], np.float32).reshape(3, 10)}


def test_served_bf16_model_and_refusals_name_the_key(tmp_path):
    write_mlp_torchscript(tmp_path / "ts_bf16" / "1" / "model.pt", seed=1)
    (tmp_path / "ts_bf16" / "model.toml").write_text(MLP_TS_TOML + '[torch]\nprecision = "bf16"\n')
    write_mlp_onnx(tmp_path / "onnx_bf16" / "1" / "model.onnx", seed=1)
    (tmp_path / "onnx_bf16" / "model.toml").write_text('[torch]\nprecision = "bf16"\n')
    write_mlp_torchscript(tmp_path / "ts_int8" / "1" / "model.pt", seed=1)
    (tmp_path / "ts_int8" / "model.toml").write_text(MLP_TS_TOML + '[torch]\nprecision = "int8"\n')
    rows, served = asyncio.run(_serve(tmp_path))
    assert rows["ts_bf16"]["state"] == "READY"
    for name, reason in (("onnx_bf16", "[torch] precision, which only"), ("ts_int8", "[torch] precision must be")):
        assert rows[name]["state"] == "UNAVAILABLE" and reason in rows[name]["reason"], rows[name]
    ref = _mlp_reference(tmp_path / "ts_bf16" / "1", served["x"])
    error = np.abs(served["y"] - ref).max() / np.abs(ref).max()
    assert 0 < error <= TOLERANCE["bf16"], error
