"""Structured pruning: whole hidden channels removed, so the weight matrices really shrink.

A channel is prunable where one layer makes it and the next reads it, with only an elementwise
activation between: MatMul [+ Add bias] -> act -> MatMul, or Conv -> act -> Conv (no groups). Each
channel's importance is the norm of its incoming weights times the norm of its outgoing weights;
the lowest `sparsity` share goes from the first layer's outputs, its bias, and the second layer's
inputs. Works on the FP32 ONNX, so any source the export pass reads can be pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlserve.optimize import onnx_graph
from mlserve.optimize.base import Artifact, Options, PassUnavailable, Source, onnx_chain, onnx_source

_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Gelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid",
                          "HardSwish", "Softplus", "Mish", "Identity"})


@dataclass(frozen=True, slots=True)
class Site:
    """One prunable channel set: the producing weight (and bias) and the consuming weight."""

    kind: str
    """matmul or conv."""
    weight_in: str
    bias: str | None
    weight_out: str


class PrunePass:
    """FP32 ONNX -> the same network with `sparsity` of each prunable hidden layer's channels gone."""

    name = "prune"

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        model = onnx_graph.load(onnx_source(source))
        onnx_graph.gemm_to_matmul(model)
        sites = find_sites(model)
        if not sites:
            raise PassUnavailable("no prunable layer pair (MatMul/Conv -> activation -> MatMul/Conv)")
        arrays = {name: _array(t) for name, t in onnx_graph.initializers(model).items()}
        kept = {}
        for site in sites:
            for name, array in prune_site(site, arrays, options.sparsity).items():
                arrays[name] = array
                onnx_graph.replace_initializer(model, name, array)
            kept[site.weight_in] = int(arrays[site.weight_in].shape[1 if site.kind == "matmul" else 0])
        del model.graph.value_info[:]  # stale hidden sizes; ONNX Runtime infers them again
        onnx_graph.save(model, out / "model.onnx")
        return Artifact(self.name, out, "onnx", onnx_chain(source, self.name),
                        {"sparsity": options.sparsity, "kept_channels": kept})


def _array(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def find_sites(model) -> list[Site]:
    inits, users = onnx_graph.initializers(model), onnx_graph.consumers(model)
    outputs = {o.name for o in model.graph.output}

    def only_user(tensor: str):
        found = users.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    sites = []
    for node in model.graph.node:
        kind = _kind(node, inits)
        if kind is None:
            continue
        current, bias = node.output[0], None
        nxt = only_user(current)
        if nxt is not None and kind == "matmul" and nxt.op_type == "Add" and _is_bias(nxt, current, inits):
            bias = next(n for n in nxt.input if n != current)
            current, nxt = nxt.output[0], only_user(nxt.output[0])
        if kind == "conv" and len(node.input) > 2:
            bias = node.input[2]
        if nxt is None or nxt.op_type not in _ACTIVATIONS:
            continue
        last = only_user(nxt.output[0])
        if last is not None and _kind(last, inits) == kind and last.input[0] == nxt.output[0]:
            sites.append(Site(kind, node.input[1], bias, last.input[1]))
    return _independent(sites, users)


def _kind(node, inits) -> str | None:
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    if node.op_type == "MatMul" and len(inits[node.input[1]].dims) == 2:
        return "matmul"
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    if node.op_type == "Conv" and groups == 1:
        return "conv"
    return None


def _is_bias(add, current: str, inits) -> bool:
    other = next((n for n in add.input if n != current), None)
    return other in inits and len(inits[other].dims) == 1


def _independent(sites: list[Site], users) -> list[Site]:
    """Drop sites whose weights are shared with another node (pruning them would change it too)."""
    return [s for s in sites if all(len(users.get(w, [])) == 1 for w in (s.weight_in, s.weight_out))]


def prune_site(site: Site, arrays: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """The new arrays for one site: the channels with the largest in-norm x out-norm kept, in order."""
    w_in, w_out = arrays[site.weight_in], arrays[site.weight_out]
    if site.kind == "matmul":  # w_in [in, hidden], w_out [hidden, out]
        norms_in, norms_out = np.linalg.norm(w_in, axis=0), np.linalg.norm(w_out, axis=1)
    else:  # w_in [hidden, c, kh, kw], w_out [out, hidden, kh, kw]
        norms_in = np.linalg.norm(w_in.reshape(w_in.shape[0], -1), axis=1)
        norms_out = np.linalg.norm(np.moveaxis(w_out, 1, 0).reshape(w_out.shape[1], -1), axis=1)
    hidden = len(norms_in)
    num_keep = max(1, int(round(hidden * (1.0 - sparsity))))
    keep = np.sort(np.argsort(norms_in * norms_out)[hidden - num_keep:])
    result = {site.weight_in: np.ascontiguousarray(w_in[:, keep] if site.kind == "matmul" else w_in[keep]),
              site.weight_out: np.ascontiguousarray(w_out[keep] if site.kind == "matmul" else w_out[:, keep])}
    if site.bias is not None:
        result[site.bias] = np.ascontiguousarray(arrays[site.bias][keep])
    return result
