"""Test model repositories, written by the tests themselves (no downloads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from mlserve.examples import ONNX_TYPES, _model, _save, write_examples, write_identity_onnx

DATATYPES = tuple(ONNX_TYPES)


def write_slow_onnx(path: Path, width: int = 1024, depth: int = 600) -> None:
    """y = x @ W repeated `depth` times with one shared W: a model that takes a while per batch."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.eye(width, dtype=np.float32)
    nodes, current = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, "w"], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(weight, "w")],
    )
    _save(_model(graph), path)


def copy_models(source: Path, root: Path, names: tuple[str, ...] | None = None) -> Path:
    """Copies model folders (all of `source`'s, or `names`) into `root`: repositories built from the
    examples the session wrote once (the `examples` fixture), each its own files to change."""
    for name in names if names is not None else sorted(p.name for p in source.iterdir()):
        shutil.copytree(source / name, root / name)
    return root


def write_test_repository(root: Path, examples: Path | None = None) -> Path:
    """The examples (copied from `examples` when given), an identity model per datatype, a slow model,
    and two broken folders."""
    if examples is None:
        write_examples(root)
    else:
        copy_models(examples, root)
    for datatype in DATATYPES:
        write_identity_onnx(root / f"identity_{datatype.lower()}" / "1" / "model.onnx", datatype)
    write_slow_onnx(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "model.toml").write_text("max_batch_size = 0\nmax_queue_size = 8\n")
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    bad_toml = root / "badtoml" / "1"
    bad_toml.mkdir(parents=True)
    (root / "badtoml" / "model.toml").write_text("max_batch_size = 'many'\n")
    write_identity_onnx(bad_toml / "model.onnx", "FP32")
    return root


def write_pooling_onnx(path: Path, vocab: int = 1000, width: int = 32, seed: int = 0) -> None:
    """A sentence-embedding-shaped model: token ids [batch, seq] (seq varies per request) -> the
    mean of their embedding rows, [batch, width]; what an exported BERT-style encoder looks like
    to the batcher."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(seed).standard_normal((vocab, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["rows"], axis=0),
         helper.make_node("ReduceMean", ["rows"], ["embedding"], axes=[1], keepdims=0)],
        "pooling",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(table, "table")],
    )
    _save(_model(graph), path)


def write_doubling_onnx(path: Path, datatype: str, width: int = 3) -> None:
    """`y` = x + x (BOOL: `y` = not x) for input `x` of the given v2 datatype, shape [-1, width]:
    a model that computes in every datatype, so an answer that merely echoes its input fails."""
    from onnx import TensorProto, helper

    kind = getattr(TensorProto, ONNX_TYPES[datatype])
    node = (helper.make_node("Not", ["x"], ["y"]) if datatype == "BOOL"
            else helper.make_node("Add", ["x", "x"], ["y"]))
    graph = helper.make_graph(
        [node], f"doubling_{datatype.lower()}",
        [helper.make_tensor_value_info("x", kind, ["batch", width])],
        [helper.make_tensor_value_info("y", kind, ["batch", width])],
    )
    _save(_model(graph), path)
