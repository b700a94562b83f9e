"""Page-locked host staging for the copies between numpy batches and a CUDA device.

A copy from pageable host memory to the GPU goes through a driver bounce buffer and blocks the
calling thread; from page-locked memory it is one DMA that can run while the thread queues the
forward. Pinning is slow (a system call and a page-table walk per allocation), so each worker thread
keeps its staging tensors and reuses them batch after batch, growing one only when a bigger batch
comes. Without CUDA nothing may be pinned (torch.empty(pin_memory=True) fails), and the torch
backend on CPU does not stage at all: it reads the numpy arrays in place.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch


def _capacity(numel: int, min_capacity: int) -> int:
    """Elements to allocate for `numel`: the next power of two, so growth happens a few times at most."""
    return max(min_capacity, 1 << max(0, numel - 1).bit_length())


@functools.lru_cache(maxsize=None)
def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype that shares numpy's `dtype` memory layout."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class PinnedPool:
    """Host staging tensors of one worker thread, one per key ("in:x", "out:y"), each a flat buffer of
    one dtype grown to the largest batch seen. Page-locked when `pin_memory` is set."""

    def __init__(self, pin_memory: bool, min_capacity: int = 1024) -> None:
        self._pin_memory = pin_memory
        self._min_capacity = min_capacity
        self._buffers: dict[str, torch.Tensor] = {}
        self.num_allocations = 0

    def take(self, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor of `shape` over this key's buffer. It stays valid until the next `take` of the same
        key, which may overwrite it: read it out (or wait for its copy) before asking again."""
        numel = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            size = _capacity(numel, self._min_capacity)
            buffer = torch.empty(size, dtype=dtype, pin_memory=self._pin_memory)
            self._buffers[key] = buffer
            self.num_allocations += 1
        return buffer[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        """Host memory the pool holds (page-locked when pinning)."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


class DeviceCopier:
    """Moves one batch to `device` and its outputs back through the calling thread's PinnedPool.

    Order per batch: to_device for each input (host copy into staging, then an asynchronous copy
    to the device), the forward, then to_host, which queues every device-to-staging copy, waits
    once on the stream and copies each answer out of staging into an array of its own, so no
    answer aliases a buffer the next batch overwrites. sync() after a failed forward keeps the next
    batch from writing staging that a queued copy still reads."""

    def __init__(self, device: torch.device, pin_memory: bool, min_capacity: int = 1024) -> None:
        self.device = device
        self._pin_memory = pin_memory
        self._min_capacity = min_capacity
        self._local = threading.local()

    @property
    def pool(self) -> PinnedPool:
        """The calling thread's pool (worker threads never share staging)."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = PinnedPool(self._pin_memory, self._min_capacity)
        return pool

    def to_device(self, name: str, array: np.ndarray) -> torch.Tensor:
        staged = self.pool.take(f"in:{name}", torch_dtype(array.dtype), array.shape)
        np.copyto(staged.numpy(), array, casting="no")
        return staged.to(self.device, non_blocking=True)

    def to_host(self, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        pool = self.pool
        staged = {}
        for name, tensor in tensors.items():
            staged[name] = pool.take(f"out:{name}", tensor.dtype, tuple(tensor.shape))
            staged[name].copy_(tensor, non_blocking=True)
        self.sync()
        return {name: t.numpy().copy() for name, t in staged.items()}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
