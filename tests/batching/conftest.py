from __future__ import annotations

from pathlib import Path

import pytest

import numpy as np

from mlserve.examples import _model, _save, write_mlp_onnx
from tests.server_process import serving

SLOW_SIDE = 96
SLOW_WIDTH = SLOW_SIDE * SLOW_SIDE
SLOW_STEPS = 1200


def write_busy_onnx(path: Path, side: int = SLOW_SIDE, steps: int = SLOW_STEPS) -> None:
    """y = x, after `steps` rounds of h = tanh(h @ h) on each row seen as a side x side matrix.

    One Loop node and no weights: slow per row, yet quick to load and small in memory.
    """
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "h_in"], ["mm"]), helper.make_node("Tanh", ["mm"], ["h_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None)],
    )
    constants = {
        "shape": np.array([-1, side, side], dtype=np.int64), "steps": np.array(steps, dtype=np.int64),
        "true": np.array(True), "axes": np.array([1, 2], dtype=np.int64), "one": np.array([1], dtype=np.int64),
        "zero": np.array(0.0, dtype=np.float32), "scale": np.array(0.01, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["h_raw"]),
        helper.make_node("Mul", ["h_raw", "scale"], ["h0"]),
        helper.make_node("Loop", ["steps", "true", "h0"], ["h_last"], body=body),
        helper.make_node("ReduceSum", ["h_last", "axes"], ["total"], keepdims=0),
        helper.make_node("Unsqueeze", ["total", "one"], ["column"]),
        helper.make_node("Mul", ["column", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "busy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", side * side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", side * side])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    _save(_model(graph), path)


def write_batching_repository(root: Path) -> Path:
    """Models configured for each batching behaviour under test."""
    write_mlp_onnx(root / "batched" / "1" / "model.onnx", seed=1)
    (root / "batched" / "model.toml").write_text("max_batch_size = 64\nmax_queue_delay_us = 2000\n")
    write_mlp_onnx(root / "lone" / "1" / "model.onnx", seed=1)
    (root / "lone" / "model.toml").write_text("max_batch_size = 64\nmax_queue_delay_us = 1000000\n")
    for version in (1, 2):
        write_mlp_onnx(root / "cached" / str(version) / "model.onnx", seed=version)
    (root / "cached" / "model.toml").write_text("cache_size = 8\nversion_policy = { all = true }\n")
    # y = x after a while of work per row: outputs are checkable and the engine stays busy.
    write_busy_onnx(root / "slowprio" / "1" / "model.onnx")
    (root / "slowprio" / "model.toml").write_text("max_batch_size = 0\npriority_levels = 2\nmax_queue_size = 16\npriority_aging_us = 60000000\n")
    write_busy_onnx(root / "slowfull" / "1" / "model.onnx")
    (root / "slowfull" / "model.toml").write_text("max_batch_size = 1\nmax_queue_size = 2\n")
    return root


@pytest.fixture(scope="module")
def batching_repo(tmp_path_factory):
    return write_batching_repository(tmp_path_factory.mktemp("batching-repo"))


@pytest.fixture(scope="module")
def batching_server(batching_repo, tmp_path_factory):
    with serving(batching_repo, log_path=tmp_path_factory.mktemp("logs") / "mlserve.log") as proc:
        yield proc
