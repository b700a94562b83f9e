"""Tiny ONNX models for the traffic tests: a scaled identity, and one that fails on some inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlserve.examples import _model, _save

WIDTH = 3
TABLE = 4
"""The failing model gathers x[:, 0] from a table of this size: x[:, 0] outside -4..3 errors."""


def write_scale_onnx(path: Path, scale: float) -> None:
    """y = x * scale, FP32 [-1, 3]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(np.array(scale, dtype=np.float32), "k")],
    )
    _save(_model(graph), path)


def write_failing_onnx(path: Path, scale: float) -> None:
    """y = x * scale + table[int(x[:, 0])] with a zero table: right answers while x[:, 0] lies in
    -4..3, an out-of-range Gather (the engine raises) otherwise."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gather", ["x", "zero"], ["first"], axis=1),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),
        helper.make_node("Unsqueeze", ["picked", "one"], ["column"]),
        helper.make_node("Mul", ["x", "k"], ["scaled"]),
        helper.make_node("Add", ["scaled", "column"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.zeros(TABLE, dtype=np.float32), "table"),
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "k"),
        ],
    )
    _save(_model(graph), path)
