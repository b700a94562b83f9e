"""The one interface every optimization pass implements, and the plain state passes share.

A pass takes the source (the model version to optimize, and its ONNX export once the export pass
has run) and writes one candidate artifact into a folder of its own. Evaluation, the gate and
publishing are the same for every candidate, so a pass knows nothing of them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from mlserve.registry.opening import Trust
from mlserve.spec import ModelConfig, TensorSpec


class PassUnavailable(Exception):
    """A pass cannot run here (a missing library, no GPU, a model it does not apply to)."""


class PassFailed(Exception):
    """A pass ran and its result is wrong or could not be made."""


@dataclass(frozen=True, slots=True)
class Options:
    """Knobs passes read; each is named on the command line."""

    sparsity: float = 0.3
    """Share of hidden channels structured pruning removes from each prunable layer."""
    calibration_rows: int = 256
    """Validation rows static quantization calibrates on."""
    max_batch_size: int = 64
    """Largest batch an artifact must accept (AOTInductor compiles for 1..this)."""
    device: str = "cpu"
    """Where the candidates will serve; FP16 and TensorRT need cuda."""
    distill_width: float = 0.5
    """Share of each hidden layer's channels the distilled student keeps."""
    distill_steps: int = 2000
    """Training steps of the student (batches of 256 noisy validation rows)."""
    distill_time_s: float = 60.0
    """Wall-time cap on the training; a run it cuts short says so in the candidate's notes."""
    distill_seed: int = 0
    allow_cpu_fp16: bool = False
    """Build the FP16 candidate on CPU too (for tests of the conversion; it measures slower there)."""


@dataclass(slots=True)
class Source:
    """The model version being optimized: its artifact, backend, settings and validation data."""

    model: str
    version: int | None
    """None when the source is a file given on the command line."""
    folder: Path
    """The version folder (or a folder holding just the given file)."""
    backend: str
    """onnx, torchscript or torch_export."""
    config: ModelConfig
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    data: dict[str, np.ndarray]
    """Validation inputs by input name, all with the same number of rows."""
    labels: np.ndarray | None = None
    onnx_path: Path | None = None
    """The FP32 ONNX form of the source: the artifact itself for ONNX, else set by the export pass."""
    work: Path = field(default_factory=Path)
    trust: Trust = field(default_factory=Trust)
    """What opening the source folder took (registry/opening.py): measuring it again takes the same."""
    """Scratch folder; each candidate gets a subfolder."""

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.data.values())))

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: array[start:stop] for name, array in self.data.items()}


@dataclass(frozen=True, slots=True)
class Artifact:
    """What a pass made: a folder the named backend loads, plus what it did."""

    pass_name: str
    folder: Path
    backend: str
    passes: tuple[str, ...]
    """The chain of passes that made it, the export included."""
    notes: dict = field(default_factory=dict)

    @property
    def num_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


class OptimizationPass(Protocol):
    """One way to make a candidate. `name` is what --passes accepts."""

    name: str

    def run(self, source: Source, options: Options, out: Path) -> Artifact:
        """Write the candidate into the empty folder `out`; raise PassUnavailable or PassFailed."""


def onnx_source(source: Source) -> Path:
    """The FP32 ONNX every ONNX-level pass starts from."""
    if source.onnx_path is None:
        raise PassUnavailable("needs the ONNX export of the source: add the export pass before it")
    return source.onnx_path


def onnx_chain(source: Source, name: str) -> tuple[str, ...]:
    return ("export", name) if source.backend != "onnx" else (name,)


@contextmanager
def torch_threads(count: int):
    """Torch's intra-op threads set to `count` for the block, then put back. Training passes use one:
    they run at idle priority beside serving, where threads that wait for each other at every
    operator stall whenever the scheduler takes one of them away (measured: 20 ms per small Linear
    with two threads on two busy cores, against well under 1 ms with one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
