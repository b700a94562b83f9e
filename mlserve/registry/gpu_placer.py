"""The loader's side of placement: each version put on a device before it loads, its GPU memory
reserved, then settled to what the load measured, and released when it unloads. When a request waits
for a version that fits on no GPU, idle models leave the GPU first, least recently used first."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Callable, Mapping

from mlserve.engine.devices import empty_cache
from mlserve.monitor.metrics import Metrics
from mlserve.registry.opening import Placed
from mlserve.registry.placement import GpuLedger, gpu_need, place
from mlserve.registry.served import ServedModel, ServedVersion


class GpuPlacer:
    """Chooses devices and keeps the ledger of what each loaded version holds on which GPU."""

    def __init__(self, ledger: GpuLedger, models: Mapping[str, ServedModel],
                 evict: Callable[[ServedModel, str], Awaitable[None]], metrics: Metrics) -> None:
        self.ledger = ledger
        self._models = models
        self._evict = evict
        """Unloads every version of a model (under its lock), given why."""
        self._gauge = metrics.model_gpu_memory
        self._lock = asyncio.Lock()

    async def place(self, served: ServedModel, fresh: ServedVersion, requested: str, backend: str,
                    may_evict: bool) -> int | None:
        """Set `fresh.device` and reserve its GPU memory; returns the most it may take there (None on
        the CPU). A load a request waits for may evict idle models from the GPU; others report no room."""
        need, source = gpu_need(served.entry.config, fresh.num_bytes)

        async def evict(device: str | None) -> bool:
            return may_evict and await self._evict_idle(served, device)

        async with self._lock:
            fresh.device = await place(self.ledger, requested, backend, need, source, evict)
            cap = self.ledger.share_left(fresh.device)
            self.ledger.reserve(id(fresh), served.name, f"{served.name}/{fresh.version}", fresh.device, need)
        return cap

    def measuring(self, device: str):
        return self.ledger.measuring(device)

    def for_version(self, served: ServedModel, fresh: ServedVersion, requested: str, may_evict: bool) -> VersionPlacement:
        """open_version's placement of one version through this placer."""
        return VersionPlacement(self, served, fresh, requested, may_evict)

    def settle(self, served: ServedModel, fresh: ServedVersion, measured: int | None) -> None:
        """The version loaded: it holds what its load measured (else what it reserved)."""
        declared = served.entry.config.gpu_memory_mb is not None
        holding = self.ledger.settle(id(fresh), measured, declared)
        if holding is not None:
            fresh.gpu_bytes = holding.num_bytes
            self._gauge.labels(fresh.model, str(fresh.version), fresh.device).set(holding.num_bytes)

    def release(self, version: ServedVersion) -> None:
        holding = self.ledger.release(id(version))
        if holding is None:
            return
        empty_cache(holding.device)
        with contextlib.suppress(KeyError):
            self._gauge.remove(version.model, str(version.version), holding.device)

    async def _evict_idle(self, incoming: ServedModel, device: str | None) -> bool:
        """Unload the least recently used idle model holding memory on `device` (None: any GPU)."""
        holders = {h.model for h in self.ledger.holdings.values()
                   if not h.is_loading and (device is None or h.device == device)}
        victim = min((m for name, m in self._models.items()
                      if name in holders and name != incoming.name and m.is_idle and not m.lock.locked()),
                     key=lambda m: m.last_used, default=None)
        if victim is None:
            return False
        await self._evict(victim, f"to make room on {device or 'a GPU'} for {incoming.name}")
        return True


class VersionPlacement:
    """The loader's placement of one version (registry/opening.py's Placement): a device with room (a
    load a request waits for may evict idle models from the GPU), reserved in the ledger and measured
    while it loads."""

    def __init__(self, placer: GpuPlacer, served: ServedModel, fresh: ServedVersion, requested: str,
                 may_evict: bool) -> None:
        self._placer, self._served, self._fresh = placer, served, fresh
        self._requested, self._may_evict = requested, may_evict

    async def place(self, backend: str) -> Placed:
        cap = await self._placer.place(self._served, self._fresh, self._requested, backend, self._may_evict)
        return Placed(self._fresh.device, cap)

    def measuring(self, device: str):
        return self._placer.measuring(device)
