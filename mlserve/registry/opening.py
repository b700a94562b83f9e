"""The one way to open a version folder: which backend reads it, whether it may be opened at all
(the trust rule of registry/safety.py), and the backend built and loaded on its device.

The server's loader, `mlserve batch` and `mlserve optimize` all open versions through here, so none
of them can skip the trust check or read an optimized version with the wrong backend. Everything
here blocks (it reads files and loads engines): callers run it on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlserve.engine import Backend, create_backend
from mlserve.engine.base import infer_backend_name, version_backend
from mlserve.errors import ModelLoadError
from mlserve.registry.safety import check_version_folder, check_version_trusted
from mlserve.spec import ModelConfig


@dataclass(frozen=True, slots=True)
class Trust:
    """What may run code when loaded: a trusted model or repository, and (separately) uploads."""

    model: bool = False
    """--trust-repository, or the model's `trusted = true`: covers the repository's own versions."""
    uploads: bool = False
    """[registry] trust_uploads: covers versions that arrived by upload (they carry UPLOAD_MARKER)."""


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
    backend. `memory_cap_bytes`: the most GPU memory placement allows it."""
    check_version_trusted(name, folder, trust.model, trust.uploads)
    backend = create_backend(name, config)
    if memory_cap_bytes is not None and hasattr(backend, "memory_cap_bytes"):
        backend.memory_cap_bytes = memory_cap_bytes
    backend.load(folder, device)
    return backend
