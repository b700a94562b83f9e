"""What the machine's GPUs hold: each CUDA device's total and free memory, read from the driver, and
which backends can run on one. The loader places models from these figures (registry/placement.py).

The inventory is an object so placement can be exercised with a fixed one (`StaticInventory`) on a
machine with no GPU; the server reads the real one (`CudaInventory`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("mlserve.devices")

CPU_ONLY_BACKENDS = frozenset({"embedding", "aoti"})
"""Backends that run on the CPU alone: `device = "auto"` places them there."""

_TORCH_BACKENDS = frozenset({"torchscript", "torch_export", "llm"})


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """One GPU as the driver sees it now (bytes)."""

    name: str
    """cuda:N"""
    total: int
    free: int


class Inventory(Protocol):
    def gpus(self) -> list[DeviceMemory]:
        """Every visible GPU, cuda:0 first; empty on a machine without one."""

    def runs_on_gpu(self, backend: str) -> bool:
        """Whether this build of `backend` can run a model on a GPU here."""

    def free_bytes(self, device: str) -> int | None:
        """The device's free memory now; None for the CPU (loads there are not measured)."""


class CudaInventory:
    """The real GPUs, through torch's CUDA runtime (free memory as the driver reports it, so what other
    processes and other allocators, ONNX Runtime's included, hold is seen too)."""

    def __init__(self) -> None:
        self._num_gpus: int | None = None

    def _count(self) -> int:
        if self._num_gpus is None:
            try:
                import torch

                self._num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            except Exception as exc:  # a broken driver is "no GPU", said once
                log.warning("CUDA unusable, serving on the CPU only: %s", exc)
                self._num_gpus = 0
        return self._num_gpus

    def gpus(self) -> list[DeviceMemory]:
        if not self._count():
            return []
        import torch

        found = []
        for index in range(self._count()):
            free, total = torch.cuda.mem_get_info(index)
            found.append(DeviceMemory(f"cuda:{index}", int(total), int(free)))
        return found

    def runs_on_gpu(self, backend: str) -> bool:
        if not self._count() or backend in CPU_ONLY_BACKENDS:
            return False
        if backend == "onnx":
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        return backend in _TORCH_BACKENDS or backend == "tensorrt"

    def free_bytes(self, device: str) -> int | None:
        if not device.startswith("cuda") or not self._count():
            return None
        import torch

        torch.cuda.synchronize(device)
        return int(torch.cuda.mem_get_info(torch.device(device))[0])


class StaticInventory:
    """A fixed set of GPUs whose free memory is what was given, less what `take` recorded: placement
    exercised where there is no GPU (tests/registry/test_placement.py)."""

    def __init__(self, gpus: list[DeviceMemory]) -> None:
        self._gpus = {g.name: g for g in gpus}
        self.taken: dict[str, int] = {g.name: 0 for g in gpus}

    def gpus(self) -> list[DeviceMemory]:
        return [DeviceMemory(g.name, g.total, g.free - self.taken[g.name]) for g in self._gpus.values()]

    def runs_on_gpu(self, backend: str) -> bool:
        return bool(self._gpus) and backend not in CPU_ONLY_BACKENDS

    def free_bytes(self, device: str) -> int | None:
        gpu = self._gpus.get(device)
        return None if gpu is None else gpu.free - self.taken[device]

    def take(self, device: str, num_bytes: int) -> None:
        """Record an allocation on `device` (negative frees)."""
        self.taken[device] += num_bytes


def canonical(device: str) -> str:
    """cuda is cuda:0; the rest as written."""
    return "cuda:0" if device == "cuda" else device


def empty_cache(device: str) -> None:
    """Hand torch's cached blocks on `device` back to the driver, so the next placement sees them free."""
    if not device.startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        with torch.cuda.device(torch.device(device)):
            torch.cuda.empty_cache()
