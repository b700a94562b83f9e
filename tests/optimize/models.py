"""Small deterministic models and validation sets for the optimize tests (written, never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZES = (16, 64, 64, 4)
TS_TOML = """\
backend = "torchscript"
trusted = true
max_batch_size = 32
version_policy = { all = true }

[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 16]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 4]
"""


def network(seed: int = 0, weak: int = 0):
    """An MLP 16-64-64-4; the first `weak` hidden units of each layer get near-zero weights, so a
    structured prune of exactly that many changes the outputs by little."""
    import torch

    torch.manual_seed(seed)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers).eval()
    if weak:
        with torch.no_grad():
            for linear in (net[0], net[2]):
                linear.weight[:weak] *= 1e-4
                linear.bias[:weak] *= 1e-4
    return net


def write_torchscript(root: Path, name: str = "tiny", weak: int = 0, trusted: bool = True) -> Path:
    import torch

    folder = root / name / "1"
    folder.mkdir(parents=True)
    torch.jit.trace(network(weak=weak), torch.zeros(1, SIZES[0])).save(str(folder / "model.pt"))
    toml = TS_TOML if trusted else TS_TOML.replace("trusted = true\n", "")
    (root / name / "model.toml").write_text(toml)
    return folder


def write_export(root: Path, name: str = "tiny_pt2") -> Path:
    import torch

    folder = root / name / "1"
    folder.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(network(), (torch.zeros(2, SIZES[0]),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "model.pt2"))
    (root / name / "model.toml").write_text("max_batch_size = 32\ntrusted = true\n")
    return folder


def write_data(path: Path, rows: int = 512, seed: int = 1, with_labels: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, SIZES[0])).astype(np.float32)
    arrays = {"x": x}
    if with_labels:
        import torch

        with torch.no_grad():
            arrays["labels"] = network()(torch.from_numpy(x)).argmax(1).numpy().astype(np.int64)
    np.savez(path, **arrays)
    return path


def write_onnx(root: Path, name: str = "tiny_onnx") -> Path:
    """The same network as ONNX, as a repository version (the source of ONNX-only runs)."""
    import torch

    folder = root / name / "1"
    folder.mkdir(parents=True)
    torch.onnx.export(network(), (torch.zeros(2, SIZES[0]),), str(folder / "model.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    (root / name / "model.toml").write_text("max_batch_size = 32\nversion_policy = { all = true }\n")
    return folder
