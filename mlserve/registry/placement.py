"""Where a version runs, and the GPU memory each one holds.

A version's `device` is cpu, cuda, cuda:N or auto. A GPU version needs memory: what its model.toml
declares (`gpu_memory_mb`), else an estimate from its files, and once loaded, what the driver saw it
take (load and warm-up, measured one load per device at a time). mlserve uses at most
`gpu_memory_fraction` of each GPU; auto picks the GPU with the most room left. A version that fits
nowhere, even after idle models on the GPU leave (least recently used first), is refused with the
figures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from mlserve.engine.devices import CudaInventory, DeviceMemory, Inventory, canonical
from mlserve.errors import ModelLoadError
from mlserve.spec import ModelConfig

log = logging.getLogger("mlserve.placement")

WORKSPACE_BYTES = 64 * 2**20
"""Added to a GPU estimate made from the files: activations, the runtime's workspace."""
ESTIMATE_FACTOR = 1.25
"""Files-to-device growth assumed when a model declares no gpu_memory_mb."""


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.0f} MiB"


class NoRoom(ModelLoadError):
    """No GPU has room for the version: the message has the figures. Retryable when models leaving
    could make room; not when the version is larger than mlserve's share of every GPU it may use."""

    def __init__(self, message: str, is_retryable: bool = True) -> None:
        super().__init__(message)
        self.is_retryable = is_retryable


@dataclass(slots=True)
class Holding:
    """GPU memory one loaded (or loading) version holds."""

    model: str
    label: str
    device: str
    num_bytes: int
    is_loading: bool = True
    """Reserved for a load in progress: not yet in the driver's free figure."""


def gpu_need(config: ModelConfig, file_bytes: int) -> tuple[int, str]:
    """Bytes a version is expected to take on a GPU, and where the figure comes from."""
    if config.gpu_memory_mb is not None:
        return int(config.gpu_memory_mb * 2**20), "declared"
    return int(file_bytes * ESTIMATE_FACTOR) + WORKSPACE_BYTES, "estimated"


class GpuLedger:
    """What each version holds on which GPU, and what is left of mlserve's share of each."""

    def __init__(self, inventory: Inventory, fraction: float) -> None:
        self.inventory = inventory
        self.fraction = fraction
        self.holdings: dict[int, Holding] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def used(self, device: str) -> int:
        return sum(h.num_bytes for h in self.holdings.values() if h.device == device)

    def room(self, gpu: DeviceMemory, pending: int = 0) -> int:
        """Bytes a new version may take on `gpu`: the smaller of mlserve's share left and what the driver
        says is free, less what loads in progress have reserved but not yet allocated."""
        return min(int(gpu.total * self.fraction) - self.used(gpu.name), gpu.free - pending)

    def choose(self, requested: str, backend: str, need: int, source: str) -> str:
        """The device a version goes to, or NoRoom / ModelLoadError saying why not."""
        if requested == "cpu":
            return "cpu"
        gpus = self.inventory.gpus()
        if requested == "auto":
            if not gpus or not self.inventory.runs_on_gpu(backend):
                return "cpu"
            candidates = gpus
        else:
            device = canonical(requested)
            candidates = [g for g in gpus if g.name == device]
            if not candidates:
                seen = ", ".join(g.name for g in gpus) or "none"
                raise ModelLoadError(f"device is {requested} but mlserve sees no such GPU (visible: {seen})")
        pending = {g.name: self._pending(g.name) for g in candidates}
        best = max(candidates, key=lambda g: self.room(g, pending[g.name]))
        if self.room(best, pending[best.name]) >= need:
            return best.name
        raise NoRoom(self._no_room(candidates, need, source, pending))

    def _pending(self, device: str) -> int:
        """Reserved by versions still loading (their allocations are not yet in the driver's figure)."""
        return sum(h.num_bytes for h in self.holdings.values() if h.device == device and h.is_loading)

    def _no_room(self, gpus: list[DeviceMemory], need: int, source: str, pending: dict[str, int]) -> str:
        parts = [
            f"{g.name} has {_mib(max(0, self.room(g, pending[g.name])))} left of mlserve's share "
            f"({self.fraction:g} of {_mib(g.total)}; {_mib(self.used(g.name))} held by loaded models, "
            f"{_mib(g.free)} free on the device)"
            for g in gpus
        ]
        why = ("declared in model.toml" if source == "declared"
               else f"{source} from its files; set gpu_memory_mb in model.toml to declare it")
        return f"needs {_mib(need)} of GPU memory ({why}) and no GPU has room: {'; '.join(parts)}"

    def share_left(self, device: str) -> int | None:
        """What a version placed on `device` may take at most (the LLM engine sizes its KV pool within
        it); None on the CPU."""
        if not device.startswith("cuda"):  # no GPU to ask about (and no torch import for a CPU version)
            return None
        for gpu in self.inventory.gpus():
            if gpu.name == device:
                return max(0, self.room(gpu, self._pending(device)))
        return None

    def could_fit(self, requested: str, need: int) -> bool:
        """Whether `need` fits in mlserve's share of some candidate GPU were it empty."""
        device = None if requested == "auto" else canonical(requested)
        return any(int(g.total * self.fraction) >= need for g in self.inventory.gpus() if device in (None, g.name))

    def reserve(self, key: int, model: str, label: str, device: str, num_bytes: int) -> None:
        if device != "cpu":
            self.holdings[key] = Holding(model, label, device, num_bytes)

    def settle(self, key: int, measured: int | None, declared: bool) -> Holding | None:
        """The load finished: keep the measured figure when there is one, else the reservation."""
        holding = self.holdings.get(key)
        if holding is None:
            return None
        if measured is not None and measured > 0:
            if declared and measured > holding.num_bytes * 1.1:
                log.warning("%s took %s on %s, more than the gpu_memory_mb it declares (%s)", holding.label,
                            _mib(measured), holding.device, _mib(holding.num_bytes))
            holding.num_bytes = measured
        holding.is_loading = False
        return holding

    def release(self, key: int) -> Holding | None:
        return self.holdings.pop(key, None)

    @contextlib.asynccontextmanager
    async def measuring(self, device: str) -> AsyncIterator[Callable[[], int | None]]:
        """Serialize loads on one GPU and yield a function giving the bytes the load took so far."""
        if device == "cpu":
            yield lambda: None
            return
        lock = self._locks.setdefault(device, asyncio.Lock())
        async with lock:
            before = await asyncio.to_thread(self.inventory.free_bytes, device)

            def taken() -> int | None:
                after = self.inventory.free_bytes(device)
                return None if before is None or after is None else max(0, before - after)

            yield taken


async def place(ledger: GpuLedger, requested: str, backend: str, need: int, source: str,
                evict: Callable[[str | None], Awaitable[bool]]) -> str:
    """Choose a device; while none has room, ask `evict` to free an idle model on the GPU asked for
    (None: any GPU) and try again. Raises NoRoom once nothing more can leave."""
    while True:
        try:
            return ledger.choose(requested, backend, need, source)
        except NoRoom as exc:
            if not ledger.could_fit(requested, need):
                raise NoRoom(f"{exc}; that is more than mlserve's share of any GPU it may use",
                             is_retryable=False) from None
            if not await evict(None if requested == "auto" else canonical(requested)):
                raise


def device_alone(requested: str, backend: str, inventory: Inventory | None = None) -> str:
    """Where a model run by itself goes (a batch file, an optimization run): `auto` resolved as the
    server would with nothing else loaded (the GPU with the most free memory, else the CPU); cpu,
    cuda and cuda:N as written."""
    if requested != "auto":
        return requested
    inventory = inventory or CudaInventory()
    gpus = inventory.gpus()
    if not gpus or not inventory.runs_on_gpu(backend):
        return "cpu"
    return max(gpus, key=lambda g: g.free).name
