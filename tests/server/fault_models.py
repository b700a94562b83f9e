"""TorchScript models that misbehave on purpose, written by the tests (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

TS_TOML = """\
backend = "torchscript"
trusted = true
max_batch_size = {max_batch_size}
max_queue_delay_us = {delay_us}
{extra}
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 3]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 3]
"""


class Raiser(torch.nn.Module):
    """y = 2x; raises on any negative input."""

    def forward(self, x):
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return x * 2


class OutOfMemory(torch.nn.Module):
    """y = 2x; a batch of more than two rows asks the allocator for a petabyte."""

    def forward(self, x):
        if x.size(0) > 2:
            big = torch.empty([281474976710656])
            x = x + big[0] * 0
        return x * 2


class Spinner(torch.nn.Module):
    """y = 2x after spinning x[0, 0] loop iterations (1 to 10 us each, as the JIT warms up and the
    machine allows): a model that hangs for as long as its input says."""

    def forward(self, x):
        n = int(x[0, 0].item())
        acc = torch.zeros(1)
        for _ in range(n):
            acc = acc + 1.0
        return x * 2 + acc[0] * 0


class WaitForFile(torch.nn.Module):
    """y = 2x once the first byte of the file at `path` is non-zero: a model that holds every batch
    until the test lets it go. The file is re-read each turn (its size argument depends on the loop
    counter, so the JIT cannot hoist the read out of the loop); replace it atomically, never rewrite
    it in place, or a turn may read it empty."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x):
        turns = 0
        while int(torch.from_file(self.path, False, 1 + turns * 0, dtype=torch.uint8)[0]) == 0:
            turns += 1
        return x * 2


def set_flag(path: Path, value: bytes) -> None:
    """Replace the WaitForFile flag atomically (a turn of the model must never read it empty)."""
    staged = path.with_suffix(".staged")
    staged.write_bytes(value)
    os.replace(staged, path)


def write_model(root: Path, name: str, module: torch.nn.Module, max_batch_size: int = 8,
                delay_us: int = 0, extra: str = "") -> None:
    folder = root / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(folder / "model.pt"))
    (root / name / "model.toml").write_text(TS_TOML.format(max_batch_size=max_batch_size, delay_us=delay_us, extra=extra))


def reference(module: torch.nn.Module, x) -> "torch.Tensor":
    """The module's own answer row by row, outside the server."""
    with torch.inference_mode():
        return torch.cat([module(torch.from_numpy(row[None])) for row in x]).numpy()
