"""The served table's plain state: each model, its versions and their states, pin and history."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum, auto
from pathlib import Path

from mlserve.registry.repository import ModelEntry
from mlserve.registry.serving import Serving
from mlserve.spec import ModelInfo


class VersionState(Enum):
    LOADING = auto()
    READY = auto()
    UNLOADING = auto()
    UNAVAILABLE = auto()


RESIDENT_STATES = frozenset({VersionState.LOADING, VersionState.READY, VersionState.UNLOADING})


@dataclass(slots=True)
class ServedVersion:
    """One version of one model as the server holds it, whatever its state.

    Once loaded it holds its `serving` (registry/serving.py): a BatchedServing (runtime, batcher,
    response cache) or a GenerativeServing (runtime, LLM engine); callers ask which by type."""

    model: str
    version: int
    state: VersionState = VersionState.LOADING
    reason: str = ""
    fingerprint: str = ""
    serving: Serving | None = None
    """What serves the opened version; None while it loads and after it failed. A retired version
    keeps it (stopped, its runtime freed) so that its info and lengths stay readable for answers
    still going out."""
    path: Path | None = None
    """The local folder the version was loaded from (for a remote store: its cache folder)."""
    num_bytes: int = 0
    """Size of the version's files: the estimate the memory budget counts."""
    device: str = ""
    """Where it runs (cpu, cuda:N), once placed."""
    gpu_bytes: int = 0
    """GPU memory it holds: measured at load, else declared or estimated (0 on the CPU)."""
    is_retryable: bool = False
    """A failure the next reconcile should try again (the store was unreachable), not a bad artifact."""
    is_freed: bool = False
    """Retired: its serving stopped and its runtime freed (once)."""

    @property
    def is_ready(self) -> bool:
        return self.state is VersionState.READY

    @property
    def num_queued(self) -> int:
        """Requests (for a generative version: sequences) waiting to be scheduled; 0 when not loaded."""
        return self.serving.num_queued if self.serving is not None else 0

    @property
    def num_in_flight(self) -> int:
        """Requests queued or running; 0 when not loaded."""
        return self.serving.num_in_flight if self.serving is not None else 0

    @property
    def is_idle(self) -> bool:
        """Nothing queued or running: no batch in flight and no generation streaming."""
        return self.num_in_flight == 0

    @property
    def info(self) -> ModelInfo | None:
        return self.serving.runtime.info if self.serving is not None else None

    # The two below are the runtime's typed fields, so that routing asks the version, never its backend.
    @property
    def max_seq_length(self) -> int | None:
        """Longest input in tokens: an LLM's context length, an embedding model's max_seq_length; else None."""
        return self.serving.runtime.max_seq_length if self.serving is not None else None

    @property
    def vocab_size(self) -> int | None:
        """Token ids must lie below this: an LLM's or an embedding model's vocabulary size; else None."""
        return self.serving.runtime.vocab_size if self.serving is not None else None


@dataclass(frozen=True, slots=True)
class Artifact:
    """Where a version once loaded from, so rollback and pin can load it again without the store."""

    path: Path
    fingerprint: str
    num_bytes: int


@dataclass(slots=True)
class ServedModel:
    """A model and its versions; the router asks it which version answers unversioned requests."""

    entry: ModelEntry
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    pinned: int | None = None
    """Set by pin or rollback: this version answers while it is ready, whatever the policy says."""
    history: list[int] = field(default_factory=list)
    """Versions that answered unversioned requests, in the order they took over."""
    artifacts: dict[int, Artifact] = field(default_factory=dict)
    is_unloaded: bool = False
    """Unloaded on request: reconcile and first requests leave it alone until it is loaded again."""
    last_used: float = 0.0
    num_waiting: int = 0
    """Requests waiting for this model's first load; it is not evicted under them."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held for every transition of this model (load, swap, unload, pin, eviction)."""

    @property
    def name(self) -> str:
        return self.entry.name

    def ready_versions(self) -> list[int]:
        return sorted(v for v, sv in self.versions.items() if sv.is_ready)

    def default_version(self) -> int | None:
        """The pinned version while it is ready, else the newest ready one (one pass: every request asks)."""
        pinned = self.versions.get(self.pinned) if self.pinned is not None else None
        if pinned is not None and pinned.is_ready:
            return self.pinned
        newest = None
        for version, sv in self.versions.items():  # a plain loop: a generator and max() cost 3x as much
            if sv.is_ready and (newest is None or version > newest):
                newest = version
        return newest

    def previous_version(self) -> int | None:
        """The version that answered before the current one (what rollback goes back to)."""
        current = self.default_version()
        for version in reversed(self.history):
            if version != current:
                return version
        return None

    @property
    def is_resident(self) -> bool:
        return any(sv.state in RESIDENT_STATES for sv in self.versions.values())

    @property
    def is_idle(self) -> bool:
        return self.num_waiting == 0 and all(sv.is_idle for sv in self.versions.values())

    @property
    def resident_bytes(self) -> int:
        return sum(sv.num_bytes for sv in self.versions.values() if sv.state in RESIDENT_STATES)

    def status_reason(self) -> str:
        """Why a model with no version entries serves nothing, for the repository index."""
        if self.is_unloaded:
            return "unloaded by request; POST /v2/repository/models/%s/load loads it" % self.name
        return "not loaded; the first request loads it"
