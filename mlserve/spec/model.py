"""A model's model.toml, parsed once when the repository is scanned: top-level settings, batching,
version policy, tensors, and every section ([llm], [drift], [traffic], [warmup]) as typed fields.
A bad value anywhere fails the whole file with the key named, so the model is refused at load and
never served with a silent default.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserve.errors import ModelLoadError
from mlserve.spec.drift import DriftSettings
from mlserve.spec.llm import LLMSettings
from mlserve.spec.optimize import OptimizeSettings
from mlserve.spec.precision import TorchSettings
from mlserve.spec.table import MAX_LIST_ITEMS, between, parse_table
from mlserve.spec.tensor import TensorSpec
from mlserve.spec.traffic import TrafficSpec
from mlserve.spec.version import MAX_VERSION

BACKENDS = ("onnx", "torchscript", "torch_export", "tensorrt", "llm", "embedding")
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_HOUR_US = 3600 * 1_000_000
MAX_LATEST_VERSIONS = 256
MAX_TENSOR_RANK = 32
MAX_TENSOR_DIM = 2**31 - 1


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions of a model are served: the latest N, all, or a fixed list."""

    latest: int | None = 1
    all: bool = False
    specific: tuple[int, ...] = ()

    def select(self, versions: list[int]) -> list[int]:
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1):]

    @classmethod
    def parse(cls, raw: Any) -> VersionPolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ValueError("version_policy must be one of {latest = N}, {all = true}, {specific = [..]}")
        (key, value), = raw.items()
        if key == "latest" and isinstance(value, int) and not isinstance(value, bool) \
                and 1 <= value <= MAX_LATEST_VERSIONS:
            return cls(latest=value)
        if key == "all" and value is True:
            return cls(latest=None, all=True)
        if key == "specific" and isinstance(value, list) and 0 < len(value) <= MAX_LIST_ITEMS and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_VERSION for v in value
        ):
            return cls(latest=None, specific=tuple(value))
        raise ValueError(f"bad version_policy {raw!r}: latest in 1..{MAX_LATEST_VERSIONS}, or specific: "
                         f"1..{MAX_LIST_ITEMS} versions in 1..{MAX_VERSION}")


@dataclass(frozen=True, slots=True)
class BatchingSpec:
    """How requests to one model version are grouped into batches."""

    max_batch_size: int = field(default=64, metadata=between(0, 65536))
    """Rows per batch; 0 = no batching, one request per run and shapes are taken as given."""
    max_queue_delay_us: int = field(default=2000, metadata=between(0, 10_000_000))
    """Longest a queued request waits for company once others are waiting."""
    preferred_batch_sizes: tuple[int, ...] = field(default=(), metadata=between(1, 65536))
    max_queue_size: int = field(default=1024, metadata=between(1, 1_000_000))
    """Requests waiting per version before new ones get 429."""
    timeout_us: int = field(default=0, metadata=between(0, _HOUR_US))
    """Default longest wait in the queue before a 504; 0 = none. A request's `timeout` may only shorten it."""
    priority_levels: int = field(default=1, metadata=between(1, 1000))
    """Priority levels a request may name in its `priority` parameter; 1 is the highest."""
    default_priority_level: int | None = None
    """Level of a request that names none; None = the lowest level."""
    priority_aging_us: int = field(default=1_000_000, metadata=between(0, _HOUR_US))
    """A request that has waited this long is taken ahead of every level, so low levels never starve."""
    cache_size: int = field(default=0, metadata=between(0, 1_000_000))
    """Responses kept in this version's LRU cache, keyed by a hash of the input bytes; 0 = off."""
    shared_cache_ttl_s: float = field(default=300.0, metadata=between(0, 86400))
    """With cache_size on and a shared state store (redis): how long a computed response stays in the
    second, shared cache level that every replica reads; 0 = no shared level."""
    shared_cache_entries: int = field(default=10_000, metadata=between(1, 10_000_000))
    """Most responses of one version kept in the shared level; the oldest written go first."""
    shared_cache_max_bytes: int = field(default=1 << 20, metadata=between(1, 64 << 20))
    """Largest response (its output tensors' bytes) put in the shared level; a larger one is not stored."""
    background_share: float = 0.1
    """The least share of this version's rows that waiting background work (in-server jobs) gets
    under any live load (batching/share.py); 0 = only what live traffic leaves."""
    background_thread: bool = False
    """Background rows run in full batches on a worker thread of their own at the lowest OS priority,
    beside live batches rather than in them (batching/share.py). Only where the engine runs two
    batches at once (ONNX on CPU with intra_op_threads = 1); elsewhere true is refused at load."""
    background_process: bool = False
    """In-server jobs on this version without a priority of their own run whole in a child process at
    the lowest CPU priority (SCHED_IDLE) and off the first CPU, which opens the version a second time
    (its memory twice while a job runs): reading, the model and writing, none of it on the server's
    interpreter (jobs/child.py).
    Only for tensor models with max_batch_size > 0 on the CPU; elsewhere true is refused at load. Not
    with background_thread."""

    def __post_init__(self) -> None:
        if self.timeout_us < 0 or self.priority_aging_us < 0 or self.cache_size < 0:
            raise ValueError("timeout_us, priority_aging_us and cache_size must be >= 0")
        if self.priority_levels < 1:
            raise ValueError("priority_levels must be >= 1")
        if self.default_priority_level is not None and not 1 <= self.default_priority_level <= self.priority_levels:
            raise ValueError(f"default_priority_level must lie in 1..priority_levels ({self.priority_levels})")
        if self.max_batch_size < 0:
            raise ValueError("max_batch_size must be >= 0")
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us must be >= 0")
        if not 0.0 <= self.background_share <= 0.5:
            raise ValueError("background_share must lie in 0..0.5")
        if self.background_thread and self.background_process:
            raise ValueError("background_thread and background_process are both true: set one of them")
        if self.max_queue_size < 1:
            raise ValueError("max_queue_size must be >= 1")
        if any(s < 1 or (self.max_batch_size and s > self.max_batch_size) for s in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must lie in 1..max_batch_size")


@dataclass(frozen=True, slots=True)
class WarmupSpec:
    """The [warmup] section: which inputs and batch sizes a new version runs before it takes traffic."""

    enabled: bool = True
    file: str | None = None
    """An .npz in the version folder, one array per input; None = zeros from the input spec."""
    batch_sizes: tuple[int, ...] | None = field(default=None, metadata=between(1, 65536))
    """None = 1, the preferred sizes and max_batch_size."""

    def __post_init__(self) -> None:
        if self.batch_sizes is not None and not all(s >= 1 for s in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {list(self.batch_sizes)!r}")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Per-model settings from model.toml; every key optional."""

    backend: str | None = None
    device: str | None = None
    """cpu, cuda, cuda:N or auto; None = the server's default_device."""
    gpu_memory_mb: float | None = field(default=None, metadata=between(0, 16 * 2**20))
    """GPU memory a version takes (weights, workspace, KV pool), MiB; None = estimated from its files
    for placement, then measured at load."""
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    instances: int = field(default=1, metadata=between(1, 64))
    """Worker threads (or CUDA streams) for each version."""
    intra_op_threads: int = field(default=1, metadata=between(0, 256))
    """Threads the engine computes one batch with (0 = the engine's default)."""
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    hang_timeout_us: int | None = field(default=None, metadata=between(1, 24 * _HOUR_US))
    """A batch running longer than this is declared hung and its worker replaced; None = the guard's default."""
    llm: LLMSettings = field(default_factory=LLMSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    traffic: TrafficSpec = field(default_factory=TrafficSpec)
    warmup: WarmupSpec = field(default_factory=WarmupSpec)
    torch: TorchSettings = field(default_factory=TorchSettings)
    optimize: OptimizeSettings = field(default_factory=OptimizeSettings)
    """The [optimize] section: automatic optimization of each new version."""
    """The [torch] section (autocast precision); only TorchScript and torch.export models may set it."""
    trusted: bool = False
    """Artifacts that can run code when read (TorchScript, torch.export) may load for this model.
    The repository is the operator's: no route without the admin scope writes model.toml."""

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device is not None and not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        if self.gpu_memory_mb is not None:
            if isinstance(self.gpu_memory_mb, bool) or not isinstance(self.gpu_memory_mb, (int, float)) \
                    or self.gpu_memory_mb <= 0:
                raise ValueError(f"gpu_memory_mb must be a positive number, got {self.gpu_memory_mb!r}")
            if self.device == "cpu":
                raise ValueError("gpu_memory_mb is set but device is cpu: remove it, or set device to cuda or auto")
        if self.device == "cpu" and self.llm.cuda_graph_batch_sizes != LLMSettings().cuda_graph_batch_sizes:
            raise ValueError("[llm] cuda_graph_batch_sizes is set but device is cpu, which decodes without graphs: "
                             "remove it, or set device to cuda or auto")
        if self.instances < 1:
            raise ValueError("instances must be >= 1")
        if self.intra_op_threads < 0:
            raise ValueError("intra_op_threads must be >= 0")
        if self.hang_timeout_us is not None and self.hang_timeout_us < 1:
            raise ValueError(f"hang_timeout_us must be a positive integer, got {self.hang_timeout_us!r}")


_BATCHING_KEYS = (
    "max_batch_size", "max_queue_delay_us", "preferred_batch_sizes", "max_queue_size",
    "timeout_us", "priority_levels", "default_priority_level", "priority_aging_us", "cache_size", "background_share",
    "background_thread", "background_process", "shared_cache_ttl_s", "shared_cache_entries",
    "shared_cache_max_bytes",
)


def _tensor_specs(what: str):
    def parse(raw: Any) -> tuple[TensorSpec, ...]:
        if not isinstance(raw, list) or len(raw) > MAX_LIST_ITEMS:
            raise ValueError(f"[[{what}]] must be a list of at most {MAX_LIST_ITEMS} tables")
        specs = []
        for item in raw:
            if not isinstance(item, dict) or set(item) - {"name", "datatype", "shape"} or "name" not in item:
                raise ValueError(f"each [[{what}]] needs name, datatype and shape, got {item!r}")
            shape = item.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
                raise ValueError(f"[[{what}]] {item['name']!r}: shape must be a list of integers")
            if len(shape) > MAX_TENSOR_RANK or any(d > MAX_TENSOR_DIM for d in shape):
                raise ValueError(f"[[{what}]] {item['name']!r}: shape may have at most {MAX_TENSOR_RANK} "
                                 f"dimensions, each at most {MAX_TENSOR_DIM}")
            specs.append(TensorSpec(str(item["name"]), str(item.get("datatype", "")), tuple(shape)))
        return tuple(specs)

    return parse


_SECTIONS = {
    "version_policy": VersionPolicy.parse,
    "inputs": _tensor_specs("inputs"),
    "outputs": _tensor_specs("outputs"),
    "llm": LLMSettings.parse,
    "drift": DriftSettings.parse,
    "traffic": TrafficSpec.parse,
    "warmup": lambda raw: parse_table(WarmupSpec, raw, "[warmup]"),
    "torch": TorchSettings.parse,
    "optimize": OptimizeSettings.parse,
}


def parse_model_config(raw: dict[str, Any]) -> ModelConfig:
    """Turn a model.toml table into a ModelConfig; raises ValueError naming the bad key."""
    batching = parse_table(BatchingSpec, {k: v for k, v in raw.items() if k in _BATCHING_KEYS}, "")
    top = {k: v for k, v in raw.items() if k not in _BATCHING_KEYS}
    return parse_table(ModelConfig, top, "", convert=_SECTIONS, given={"batching": batching})


def read_model_config(path: Path) -> ModelConfig:
    """Read DIR/<model>/model.toml; a missing file means all defaults."""
    if not path.is_file():
        return ModelConfig()
    try:
        with open(path, "rb") as fh:
            return parse_model_config(tomllib.load(fh))
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
