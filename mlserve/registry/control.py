"""Triton's explicit model control on the loader: load, unload, pin, unpin and rollback, each under
the model's lock and within the memory budget, refused at once with the reason when it cannot be done."""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncContextManager, Awaitable, Callable

from mlserve.errors import InvalidInput, ModelLoadError, ModelNotFound
from mlserve.monitor.metrics import Metrics
from mlserve.registry import repository
from mlserve.registry.served import ServedModel
from mlserve.registry.store import Store, VersionStat

log = logging.getLogger("mlserve.loader")


class ExplicitControl:
    """The admin half of HotSwapLoader (mixed into it): what the repository API and the admin routes call.

    The annotations below name what it uses of its host, so this module need not import the loader
    (which imports it): the loader sets each of them in its constructor or defines it as a method."""

    store: Store
    models: dict[str, ServedModel]
    scan_errors: dict[str, str]
    overrides: dict[str, dict[str, Any]]
    _metrics: Metrics
    _sync_model: Callable[..., Awaitable[None]]
    _ensure_version: Callable[..., Awaitable[None]]
    _unload_version: Callable[[ServedModel, int, str], Awaitable[None]]
    _stat: Callable[[ServedModel, int], Awaitable[VersionStat]]
    _estimate_bytes: Callable[[ServedModel], Awaitable[int]]
    _room: Callable[..., AsyncContextManager[None]]

    def _model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ModelNotFound.unknown(name)
        return served

    async def load(self, name: str, source: str, force: bool = False,
                   override: dict[str, Any] | None = None) -> ServedModel:
        """Triton's load: read the model folder again and load what its policy wants; `force`
        rebuilds unchanged versions too, each swapped in when ready. `override` (a model.toml
        table) stands in for the folder's model.toml from this load until the next load without
        one or an unload; it is never written. Setting or clearing one rebuilds every version."""
        await self.store.refresh(name)
        entry = await repository.read_entry(self.store, name, override)
        served = self.models.setdefault(name, ServedModel(entry))
        served.entry = entry
        async with self._room(served, await self._estimate_bytes(served), is_strict=True):
            had_override = self.overrides.pop(name, None) is not None
            if override is not None:
                self.overrides[name] = override
            force = force or had_override or override is not None
            served.is_unloaded = False
            self.scan_errors.pop(name, None)
            async with served.lock:
                await self._sync_model(served, source, force)
        served.last_used = time.monotonic()
        if served.default_version() is None:
            reasons = "; ".join(f"{v}: {sv.reason}" for v, sv in sorted(served.versions.items()) if sv.reason)
            raise ModelLoadError(f"model {name!r} failed to load: {reasons or 'no version is available'}")
        log.info("model %s loaded (%s)", name, source)
        return served

    async def unload(self, name: str, source: str) -> None:
        """Triton's unload: every version drains and is freed; reconcile leaves it unloaded."""
        served = self._model(name)
        self.overrides.pop(name, None)
        async with served.lock:
            served.is_unloaded, served.pinned = True, None
            for version in list(served.versions):
                await self._unload_version(served, version, source)
        log.info("model %s unloaded (%s)", name, source)

    async def pin(self, name: str, version: int, source: str, action: str = "pinned") -> ServedModel:
        """Route unversioned requests to `version` (loaded first if needed) until unpinned."""
        served = self._model(name)
        if served.is_unloaded:
            raise InvalidInput(f"model {name!r} is unloaded; load it first")
        if version not in served.entry.versions and version not in served.artifacts:
            raise ModelNotFound(f"model {name!r} has no version {version}")
        async with self._room(served, await self._bytes_with(served, version), is_strict=True):
            return await self._pin_locked(served, version, source, action)

    async def _bytes_with(self, served: ServedModel, version: int) -> int:
        """What `served` holds once `version` is loaded beside what it has resident."""
        current = served.versions.get(version)
        if current is not None and current.is_ready:
            return served.resident_bytes
        return served.resident_bytes + (await self._stat(served, version)).num_bytes

    async def _pin_locked(self, served: ServedModel, version: int, source: str, action: str) -> ServedModel:
        name = served.name
        async with served.lock:
            previous = served.pinned
            served.pinned = version
            await self._ensure_version(served, version, source, force=False)
            chosen = served.versions.get(version)
            if chosen is None or not chosen.is_ready:
                served.pinned = previous
                await self._sync_model(served, source)
                raise ModelLoadError(f"model {name!r} version {version} cannot serve: "
                                     f"{chosen.reason if chosen else 'not found'}")
            await self._sync_model(served, source)
        self._metrics.transitions.labels(action, label(source)).inc()
        log.info("model %s %s to version %d (%s)", name, action, version, source)
        return served

    async def unpin(self, name: str, source: str) -> ServedModel:
        served = self._model(name)
        async with served.lock:
            served.pinned = None
            if not served.is_unloaded:
                await self._sync_model(served, source)
        self._metrics.transitions.labels("unpinned", label(source)).inc()
        log.info("model %s unpinned; its version policy decides again (%s)", name, source)
        return served

    async def rollback(self, name: str, source: str) -> ServedModel:
        """Serve the version that answered before the current one again (kept warm, or reloaded
        from where it was fetched), pinned so the next reconcile does not undo it."""
        served = self._model(name)
        target = served.previous_version()
        if target is None:
            raise InvalidInput(f"model {name!r} has no previous version to roll back to")
        return await self.pin(name, target, source, action="rolled back")


def label(source: str) -> str:
    """The kind of trigger (signal, api, poll, ...) without who asked, for bounded metric labels."""
    return source.split(" ", 1)[0]
