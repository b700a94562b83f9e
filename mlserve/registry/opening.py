"""The one way to open a version folder: `open_version` picks the backend that reads it (the
optimization marker first), refuses what the trust rule of registry/safety.py refuses, places it on a
device, loads and warms it up, and returns its `Runtime`: a batched one (tensors in, tensors out) or
a generative one (an LLM, with its tokenizer, vocabulary size and context length as typed fields).

The server's loader, `mlserve batch` and `mlserve optimize` all open versions through here, so none
of them can skip the trust check or read an optimized version with the wrong backend. The blocking
steps (reading files, loading engines, warm-up) run on the caller's executor; placement is the
caller's (the loader's may evict idle models; a version run by itself takes `Alone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncContextManager, AsyncIterator, Callable, Protocol, TypeVar, Union

import numpy as np

from mlserve.engine import Backend, create_backend
from mlserve.engine.base import infer_backend_name, version_backend
from mlserve.errors import ModelLoadError
from mlserve.registry.placement import device_alone
from mlserve.registry.safety import check_version_folder, check_version_trusted
from mlserve.registry.warmup import warm_up
from mlserve.spec import ModelConfig, ModelInfo

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from mlserve.engine.llm.backend import LLMBackend
    from mlserve.engine.llm.tokenizer import LLMTokenizer

GENERATIVE_BACKENDS = frozenset({"llm"})
"""Backends whose versions generate text through the LLM engine instead of a batcher."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Trust:
    """What may run code when loaded: a trusted model or repository, and (separately) uploads."""

    model: bool = False
    """--trust-repository, or the model's `trusted = true`: covers the repository's own versions."""
    uploads: bool = False
    """[registry] trust_uploads: covers versions that arrived by upload (they carry UPLOAD_MARKER)."""


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """A fetched version folder and what decides how it opens."""

    label: str
    """"model/version", for messages."""
    config: ModelConfig
    folder: Path
    trust: Trust
    max_bytes: int
    """The most the folder's files may hold ([registry] max_artifact_bytes)."""


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a version runs and the most GPU memory it may take there (None: no cap)."""

    device: str
    memory_cap_bytes: int | None = None


class Placement(Protocol):
    """Chooses a device for a version once its backend is known, and measures what its load takes."""

    async def place(self, backend: str) -> Placed: ...

    def measuring(self, device: str) -> AsyncContextManager[Callable[[], int | None]]: ...


@dataclass(frozen=True, slots=True)
class Alone:
    """Placement of a version run by itself (a batch file, an optimization run): `auto` resolved as
    the server would with nothing else loaded; nothing reserved, nothing measured."""

    requested: str

    async def place(self, backend: str) -> Placed:
        return Placed(device_alone(self.requested, backend))

    def measuring(self, device: str) -> AsyncContextManager[Callable[[], int | None]]:
        return _not_measured()


@contextlib.asynccontextmanager
async def _not_measured() -> AsyncIterator[Callable[[], int | None]]:
    yield lambda: None


@dataclass(slots=True)
class OpenStage:
    """Which step an open is at, for the caller to name the step that failed (fetch is the caller's)."""

    name: str = "load"


@dataclass(frozen=True, slots=True)
class OpenFigures:
    """How the open went: seconds to load and to warm up, warm-up runs, GPU bytes the load measured."""

    load_s: float
    warmup_s: float
    warmup_runs: int
    measured_gpu_bytes: int | None


@dataclass(frozen=True, slots=True)
class BatchedRuntime:
    """A version that takes tensors and answers tensors: ONNX, TorchScript, torch.export, TensorRT,
    embeddings. The server puts a batcher in front of it; `mlserve batch` calls it directly."""

    backend_name: str
    backend: Backend
    info: ModelInfo
    device: str
    figures: OpenFigures
    max_seq_length: int | None = None
    """An embedding model's longest input in tokens; None for tensor models."""
    vocab_size: int | None = None
    """An embedding model's vocabulary size (token ids must lie below it); None for tensor models."""
    runs_concurrently: bool = False
    """Two batches may run at once on two threads (the background thread runs beside live batches)."""

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch straight on the backend, past any batcher (blocking: run it off the loop)."""
        return self.backend.infer(inputs)

    def close(self) -> None:
        """Free the engine (blocking: run it off the loop)."""
        self.backend.unload()


@dataclass(frozen=True, slots=True)
class GenerativeRuntime:
    """A version that generates text (backend llm): the server runs it on an LLMEngine, never a batcher."""

    backend_name: str
    backend: LLMBackend
    info: ModelInfo
    device: str
    figures: OpenFigures
    tokenizer: LLMTokenizer
    vocab_size: int
    """The model's vocabulary (its logits' width): every token id a request names or the model samples
    lies below it. The one vocabulary size of the version."""
    max_model_len: int
    """The context length: prompt and generated tokens of one sequence together."""

    def close(self) -> None:
        """Free the engine (blocking: run it off the loop)."""
        self.backend.unload()

    @property
    def max_seq_length(self) -> int:
        return self.max_model_len


Runtime = Union[BatchedRuntime, GenerativeRuntime]

BackendOpener = Callable[[str, ModelConfig, Path, str, Trust, int | None], Backend]
"""open_backend's signature: (backend name, config, folder, device, trust, GPU memory cap)."""


def version_backend_name(label: str, config: ModelConfig, folder: Path, max_bytes: int) -> str:
    """The backend that reads this version: the optimization marker's, else model.toml's, else the
    one its files imply. Checks the folder's size and links first. `label`: "model/version"."""
    check_version_folder(folder, max_bytes)
    name = version_backend(folder) or config.backend or infer_backend_name(folder)
    if name is None:
        raise ModelLoadError(f"{label}: no model file found and no backend set in model.toml")
    return name


def open_backend(name: str, config: ModelConfig, folder: Path, device: str, trust: Trust,
                 memory_cap_bytes: int | None = None) -> Backend:
    """Refuse what the trust rule refuses (before any file is opened), then build and load the
    backend. `memory_cap_bytes`: the most GPU memory placement allows it. open_version calls this for
    versions; `mlserve optimize` also calls it for the candidate artifacts it measures."""
    check_version_trusted(name, folder, trust.model, trust.uploads)
    backend = create_backend(name, config)
    if memory_cap_bytes is not None and hasattr(backend, "memory_cap_bytes"):
        backend.memory_cap_bytes = memory_cap_bytes
    backend.load(folder, device)
    return backend


async def open_version(files: VersionFiles, placement: Placement, executor: Executor | None = None,
                       stage: OpenStage | None = None, warm: bool = True,
                       load: BackendOpener = open_backend) -> Runtime:
    """Pick the backend, check trust, place, load and warm up (`warm`: False only to read a version's
    tensors). Blocking steps run on `executor` (None: the loop's default). On failure nothing stays
    loaded and `stage` names the step (load, placement, warmup); placement's reservation is the
    caller's to release. `load` is open_backend, or a stand-in that wraps it (tests)."""
    stage = stage if stage is not None else OpenStage()
    loop = asyncio.get_running_loop()

    def run(fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        return loop.run_in_executor(executor, fn, *args)

    stage.name = "load"
    name = await run(version_backend_name, files.label, files.config, files.folder, files.max_bytes)
    stage.name = "placement"
    placed = await placement.place(name)
    stage.name = "load"
    started = time.monotonic()
    async with placement.measuring(placed.device) as taken:
        backend = await run(load, name, files.config, files.folder, placed.device, files.trust,
                            placed.memory_cap_bytes)
        loaded = time.monotonic()
        try:
            _check_background(name, backend, files, placed.device)
            stage.name = "warmup"
            runs = await run(warm_up, backend, files.config, files.folder) if warm else 0
            measured = await run(taken)
        except BaseException:
            await run(backend.unload)
            raise
    figures = OpenFigures(loaded - started, time.monotonic() - loaded, runs, measured)
    return _runtime(name, backend, placed.device, figures)


def _runtime(name: str, backend: Backend, device: str, figures: OpenFigures) -> Runtime:
    """The typed runtime of a loaded backend: the registry reads its backend's fields here, once, so
    nothing above asks a backend for them by name."""
    info = backend.info
    if name in GENERATIVE_BACKENDS:
        llm: Any = backend  # an LLMBackend (not imported here: it would import torch)
        return GenerativeRuntime(name, llm, info, device, figures, llm.tokenizer,
                                 llm.runner.shape.vocab_size, llm.max_model_len)
    return BatchedRuntime(name, backend, info, device, figures, getattr(backend, "max_seq_length", None),
                          getattr(backend, "vocab_size", None), getattr(backend, "runs_concurrently", False))


def _check_background(name: str, backend: Backend, files: VersionFiles, device: str) -> None:
    """`[batching] background_thread = true` needs an engine that runs two batches at once;
    `background_process = true` a batching tensor model on the CPU (jobs/child.py)."""
    batching = files.config.batching
    if batching.background_process and (name in GENERATIVE_BACKENDS or batching.max_batch_size <= 0
                                        or device != "cpu"):
        raise ModelLoadError(
            f"{files.label}: background_process = true, but this version is not a batching tensor model on the "
            f"CPU (backend {name}, device {device}, max_batch_size {batching.max_batch_size}); remove the key "
            "or set it to false")
    can_run_two = batching.max_batch_size > 0 and getattr(backend, "runs_concurrently", False)
    if batching.background_thread and not can_run_two:
        raise ModelLoadError(
            f"{files.label}: background_thread = true, but this version's engine cannot run two batches at once "
            "(ONNX on CPU with intra_op_threads = 1 and max_batch_size > 0 can); remove the key or set it to false")
