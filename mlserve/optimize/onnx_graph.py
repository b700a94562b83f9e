"""Small ONNX graph edits the passes share: Gemm to MatMul + Add, and initializer lookups."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np


INT8_REDUCE_RANGE = True
"""Both INT8 passes store weights in 7 bits ([-63, 63], per channel). x86 CPUs without VNNI (AVX2
only) multiply u8 activations by s8 weights with VPMADDUBSW, which sums each pair of products into
an int16 and saturates: 2 * 255 * 127 = 64770 does not fit, so full 8-bit weights give wrong sums
(a 0.25-of-range output error on the test MLP). 2 * 255 * 63 = 32130 fits, so a 7-bit artifact
computes the same on every CPU; the one bit less costs about 0.5% of range here."""


@contextlib.contextmanager
def quiet_quantizer():
    """onnxruntime.quantization logs its pre-processing advice on the root logger at WARNING on
    every call; the job's own table says what was done."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load(path: Path):
    import onnx

    return onnx.load(str(path))


def save(model, path: Path, check: bool = True) -> None:
    import onnx

    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))


def initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def consumers(model) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    table: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def replace_initializer(model, name: str, array: np.ndarray) -> None:
    from onnx import numpy_helper

    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return
    raise KeyError(name)


def gemm_to_matmul(model) -> int:
    """Rewrite each plain Gemm (constant weight, alpha = beta = 1, no transA) as MatMul [+ Add], with
    the weight stored [in, out]. INT8 dynamic quantization and pruning only read MatMul. Returns how
    many were rewritten."""
    from onnx import helper, numpy_helper

    inits, rewritten, nodes = initializers(model), 0, []
    shared = {name for name, users in consumers(model).items() if len(users) > 1}
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        weight = None if weight is not None and weight.name in shared else weight
        plain = (_attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
                 and not _attr(node, "transA", 0))
        if weight is None or not plain:
            nodes.append(node)
            continue
        if _attr(node, "transB", 0):
            replace_initializer(model, weight.name, numpy_helper.to_array(weight).T.copy())
        has_bias = len(node.input) > 2 and node.input[2]
        base = node.name or node.output[0]  # node names are optional in ONNX, unique when given
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight.name], [mm_out], name=base + "_mm"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=base + "_add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def float_graph_outputs(model) -> int:
    """Drop the QuantizeLinear -> DequantizeLinear pair that QDQ quantization puts on each graph output,
    so the last MatMul/Gemm/Conv writes FP32 itself. A quantized output is clipped to the range seen in
    the calibration rows and rounded to 255 steps; the caller gets neither, at no cost (the fused QGemm
    and QLinearConv kernels write FP32 directly). Returns how many outputs were freed."""
    producer = {name: node for node in model.graph.node for name in node.output}
    users = consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    dropped: set[int] = set()
    for name in graph_outputs:
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(users.get(q.output[0], [])) != 1:
            continue
        inner = q.input[0]
        source = producer.get(inner)
        if source is None or len(users.get(inner, [])) != 1 or inner in graph_outputs:
            continue
        source.output[list(source.output).index(inner)] = name
        dropped.update((id(q), id(dq)))
    kept = [node for node in model.graph.node if id(node) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    read = {name for node in model.graph.node for name in node.input}
    unread = [t for t in model.graph.initializer if t.name not in read]
    for tensor in unread:
        model.graph.initializer.remove(tensor)
    return len(dropped) // 2
