"""Distillation: a smaller student trained to match the source's outputs. BERT-style encoders
(a `config.json` beside the ONNX) get a student with half the layers, the first and the top ones
(distill_encoder.py); MLPs
get a narrower one (this module).

Applies where the FP32 ONNX is a plain chain MatMul [+ Add bias] -> activation -> ... -> MatMul
[+ Add bias] (any source the export pass reads). The student keeps the depth and keeps
`distill_width` of each hidden layer's channels, initialized from the teacher's most important
ones (the prune pass's in-norm x out-norm rule), then trains with Adam on the mean squared error
to the teacher's outputs. Its inputs are the validation rows with fresh Gaussian noise of 0.1 x each
column's standard deviation at every step (the augmentation), so the exact rows the gate judges
are never trained on. `distill_steps` steps at most, seeded (`distill_seed`): the same data gives
the same student, unless `distill_time_s` cuts the training short (the notes say so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlserve.optimize import onnx_graph
from mlserve.optimize.base import (
    Artifact, Options, PassFailed, PassUnavailable, Source, onnx_chain, onnx_source, torch_threads,
)
from mlserve.optimize.distill_encoder import distill_encoder, is_encoder_source
from mlserve.optimize.pause import CLOCK
from mlserve.optimize.prune import Site, prune_site

ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "Gelu", "LeakyRelu")
BATCH_ROWS = 256
NOISE = 0.1
"""Augmentation noise, as a share of each input column's standard deviation."""


class DistillPass:
    """FP32 ONNX MLP -> a student with `distill_width` of each hidden layer, trained on the teacher's outputs;
    a BERT encoder -> a student with half the layers (the first and the top ones)."""

    name = "distill"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        import torch

        if is_encoder_source(source):
            return distill_encoder(source, options, out, self.name)
        model = onnx_graph.load(onnx_source(source))
        onnx_graph.gemm_to_matmul(model)
        layers, activations = mlp_chain(model)
        if len(layers) < 2:
            raise PassUnavailable("distillation needs at least one hidden layer")
        if len(source.inputs) != 1 or len(source.outputs) != 1:
            raise PassUnavailable("distillation takes models with one input and one output")
        x = next(iter(source.data.values())).astype(np.float32)
        weights = _student_init(layers, options.distill_width)
        torch.manual_seed(options.distill_seed)
        student = _student(weights, activations)
        teacher = _student(layers, activations)
        with torch_threads(1):
            steps, stopped = _train(student, teacher, x, options)
        torch.onnx.export(student.eval(), (torch.from_numpy(x[:2]),), str(out / "model.onnx"), dynamo=False,
                          input_names=[source.inputs[0].name], output_names=[source.outputs[0].name],
                          dynamic_axes={source.inputs[0].name: {0: "batch"}, source.outputs[0].name: {0: "batch"}})
        widths = [int(w.shape[1]) for w, _ in weights[:-1]]
        return Artifact(self.name, out, "onnx", onnx_chain(source, self.name),
                        {"hidden_widths": widths, "teacher_widths": [int(w.shape[1]) for w, _ in layers[:-1]],
                         "steps": steps, "stopped_by_time_budget": stopped, "seed": options.distill_seed})


def mlp_chain(model) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], list[str]]:
    """The (weight [in, out], bias) of each layer and the activation after each hidden one; refuses
    any graph that is not a plain chain from the one input to the one output."""
    from onnx import numpy_helper

    inits = {name: numpy_helper.to_array(t) for name, t in onnx_graph.initializers(model).items()}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise PassUnavailable("distillation takes an MLP with one input and one output")
    current, layers, activations = inputs[0], [], []
    for node in model.graph.node:
        other = [n for n in node.input if n != current]
        if node.op_type == "MatMul" and list(node.input[:1]) == [current] and other and other[0] in inits \
                and inits[other[0]].ndim == 2 and len(activations) == len(layers):
            layers.append((inits[other[0]].astype(np.float32), None))
        elif node.op_type == "Add" and current in node.input and len(other) == 1 and other[0] in inits \
                and inits[other[0]].ndim == 1 and layers and layers[-1][1] is None:
            layers[-1] = (layers[-1][0], inits[other[0]].astype(np.float32))
        elif node.op_type in ACTIVATIONS and list(node.input) == [current] and len(activations) == len(layers) - 1:
            activations.append(node.op_type)
        else:
            raise PassUnavailable(f"not an MLP chain (MatMul, Add, activation): found {node.op_type}")
        current = node.output[0]
    if current != model.graph.output[0].name or len(activations) != len(layers) - 1:
        raise PassUnavailable("not an MLP chain: the last layer must be a MatMul [+ Add] giving the output")
    return layers, activations


def _student_init(layers, width: float) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Each hidden layer narrowed to `width` of its channels, the teacher's most important ones kept."""
    arrays = {f"w{i}": w for i, (w, _) in enumerate(layers)}
    arrays |= {f"b{i}": b for i, (_, b) in enumerate(layers) if b is not None}
    for i in range(len(layers) - 1):
        site = Site("matmul", f"w{i}", f"b{i}" if f"b{i}" in arrays else None, f"w{i + 1}")
        arrays |= prune_site(site, arrays, 1.0 - width)
    return [(arrays[f"w{i}"], arrays.get(f"b{i}")) for i in range(len(layers))]


def _student(weights, activations):
    import torch

    acts = {"Relu": torch.nn.ReLU, "Tanh": torch.nn.Tanh, "Sigmoid": torch.nn.Sigmoid, "Gelu": torch.nn.GELU,
            "LeakyRelu": torch.nn.LeakyReLU}
    modules = []
    for i, (w, b) in enumerate(weights):
        linear = torch.nn.Linear(w.shape[0], w.shape[1], bias=b is not None)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            if b is not None:
                linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        if i < len(activations):
            modules.append(acts[activations[i]]())
    return torch.nn.Sequential(*modules)


def _train(student, teacher, x: np.ndarray, options: Options) -> tuple[int, bool]:
    """Adam on the MSE to the teacher's outputs over noisy copies of the rows; (steps run, cut by time)."""
    import torch

    generator = torch.Generator().manual_seed(options.distill_seed)
    rows = torch.from_numpy(x.reshape(len(x), -1))
    scale = NOISE * rows.std(0, keepdim=True).clamp_min(1e-6)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    deadline = CLOCK.now() + options.distill_time_s
    teacher.eval()
    for step in range(options.distill_steps):
        if CLOCK.now() > deadline:
            return step, True
        pick = torch.randint(0, len(rows), (min(BATCH_ROWS, len(rows)),), generator=generator)
        batch = rows[pick] + torch.randn(len(pick), rows.shape[1], generator=generator) * scale
        with torch.no_grad():
            target = teacher(batch)
        loss = torch.nn.functional.mse_loss(student(batch), target)
        if not torch.isfinite(loss):
            raise PassFailed(f"distillation diverged at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return options.distill_steps, False
