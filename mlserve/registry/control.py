"""Triton's explicit model control on the loader: load, unload, pin, unpin and rollback, each under
the model's lock and within the memory budget, refused at once with the reason when it cannot be done."""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncContextManager, Mapping, Protocol

from mlserve.errors import InvalidInput, ModelLoadError, ModelNotFound
from mlserve.registry import repository
from mlserve.registry.repository import ModelEntry
from mlserve.registry.served import ServedModel
from mlserve.registry.store import Store


class ControlledLoader(Protocol):
    """The loader's transition methods explicit control works through (HotSwapLoader has them; each
    is documented there). Named here so this module need not import the loader, which holds it."""

    @property
    def store(self) -> Store: ...
    @property
    def models(self) -> Mapping[str, ServedModel]: ...
    def admit(self, entry: ModelEntry) -> ServedModel: ...
    def set_override(self, name: str, override: dict[str, Any] | None) -> bool: ...
    def clear_scan_error(self, name: str) -> None: ...
    def room(self, served: ServedModel, incoming_bytes: int, is_strict: bool) -> AsyncContextManager[None]: ...
    async def estimate_bytes(self, served: ServedModel) -> int: ...
    async def version_bytes(self, served: ServedModel, version: int) -> int: ...
    async def sync_model(self, served: ServedModel, source: str, force: bool = False) -> None: ...
    async def ensure_version(self, served: ServedModel, version: int, source: str) -> None: ...
    async def unload_version(self, served: ServedModel, version: int, source: str) -> None: ...
    def count_transition(self, action: str, source: str) -> None: ...

log = logging.getLogger("mlserve.loader")


class ExplicitControl:
    """Triton's explicit model control over one loader (`loader.control`): what the repository API,
    the admin routes and ModelControl call. It works through the loader's transition methods, never
    its private state, so the loader stays one object that owns its table."""

    def __init__(self, loader: ControlledLoader) -> None:
        self._loader = loader

    def _model(self, name: str) -> ServedModel:
        served = self._loader.models.get(name)
        if served is None:
            raise ModelNotFound.unknown(name)
        return served

    async def load(self, name: str, source: str, force: bool = False,
                   override: dict[str, Any] | None = None) -> ServedModel:
        """Triton's load: read the model folder again and load what its policy wants; `force`
        rebuilds unchanged versions too, each swapped in when ready. `override` (a model.toml
        table) stands in for the folder's model.toml from this load until the next load without
        one or an unload; it is never written. Setting or clearing one rebuilds every version."""
        loader = self._loader
        await loader.store.refresh(name)
        entry = await repository.read_entry(loader.store, name, override)
        served = loader.admit(entry)
        async with loader.room(served, await loader.estimate_bytes(served), is_strict=True):
            had_override = loader.set_override(name, override)
            force = force or had_override or override is not None
            served.is_unloaded = False
            loader.clear_scan_error(name)
            async with served.lock:
                await loader.sync_model(served, source, force)
        served.last_used = time.monotonic()
        if served.default_version() is None:
            reasons = "; ".join(f"{v}: {sv.reason}" for v, sv in sorted(served.versions.items()) if sv.reason)
            raise ModelLoadError(f"model {name!r} failed to load: {reasons or 'no version is available'}")
        log.info("model %s loaded (%s)", name, source)
        return served

    async def unload(self, name: str, source: str) -> None:
        """Triton's unload: every version drains and is freed; reconcile leaves it unloaded."""
        served = self._model(name)
        self._loader.set_override(name, None)
        async with served.lock:
            served.is_unloaded, served.pinned = True, None
            for version in list(served.versions):
                await self._loader.unload_version(served, version, source)
        log.info("model %s unloaded (%s)", name, source)

    async def pin(self, name: str, version: int, source: str, action: str = "pinned") -> ServedModel:
        """Route unversioned requests to `version` (loaded first if needed) until unpinned."""
        served = self._model(name)
        if served.is_unloaded:
            raise InvalidInput(f"model {name!r} is unloaded; load it first")
        if version not in served.entry.versions and version not in served.artifacts:
            raise ModelNotFound(f"model {name!r} has no version {version}")
        async with self._loader.room(served, await self._bytes_with(served, version), is_strict=True):
            return await self._pin_locked(served, version, source, action)

    async def _bytes_with(self, served: ServedModel, version: int) -> int:
        """What `served` holds once `version` is loaded beside what it has resident."""
        current = served.versions.get(version)
        if current is not None and current.is_ready:
            return served.resident_bytes
        return served.resident_bytes + await self._loader.version_bytes(served, version)

    async def _pin_locked(self, served: ServedModel, version: int, source: str, action: str) -> ServedModel:
        name = served.name
        async with served.lock:
            previous = served.pinned
            served.pinned = version
            await self._loader.ensure_version(served, version, source)
            chosen = served.versions.get(version)
            if chosen is None or not chosen.is_ready:
                served.pinned = previous
                await self._loader.sync_model(served, source)
                raise ModelLoadError(f"model {name!r} version {version} cannot serve: "
                                     f"{chosen.reason if chosen else 'not found'}")
            await self._loader.sync_model(served, source)
        self._loader.count_transition(action, source)
        log.info("model %s %s to version %d (%s)", name, action, version, source)
        return served

    async def unpin(self, name: str, source: str) -> ServedModel:
        served = self._model(name)
        async with served.lock:
            served.pinned = None
            if not served.is_unloaded:
                await self._loader.sync_model(served, source)
        self._loader.count_transition("unpinned", source)
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
