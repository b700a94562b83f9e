"""Scanning a store into model entries: names, version numbers, model.toml."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from dataclasses import dataclass, field

from mlserve.errors import ModelLoadError
from mlserve.registry.store import Store
from mlserve.spec import MODEL_NAME, ModelConfig, parse_model_config
from mlserve.spec.version import version_number

log = logging.getLogger("mlserve.registry")

_MAX_PARALLEL_READS = 32


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model folder as found: its settings and every version number present."""

    name: str
    config: ModelConfig
    versions: tuple[int, ...]

    @property
    def served_versions(self) -> list[int]:
        return self.config.version_policy.select(list(self.versions))


@dataclass(slots=True)
class Scan:
    """Every model found in the repository, and the folders rejected with the reason."""

    models: dict[str, ModelEntry] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


async def _versions(store: Store, name: str) -> tuple[int, ...]:
    numbers = []
    for entry in await store.list_versions(name):
        if version_number(entry) is not None:
            numbers.append(int(entry))
    return tuple(sorted(numbers))


async def read_entry(store: Store, name: str) -> ModelEntry:
    """One model folder from the store's current snapshot."""
    if not MODEL_NAME.fullmatch(name):
        raise ModelLoadError(f"model folder {name!r} is not a valid model name ([a-z0-9][a-z0-9_.-]*)")
    text = await store.read_text(name, "model.toml")
    try:
        config = parse_model_config(tomllib.loads(text)) if text is not None else ModelConfig()
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{name}/model.toml: {exc}") from exc
    versions = await _versions(store, name)
    if not versions:
        raise ModelLoadError(f"model {name!r} has no version folders (positive integers such as 1/)")
    return ModelEntry(name, config, versions)


async def scan(store: Store) -> Scan:
    """Snapshot the store and read every model folder; a bad one is logged and reported, and never
    stops the others. An unreachable store raises, so the caller changes nothing."""
    await store.refresh()
    names = await store.list_models()
    limit = asyncio.Semaphore(_MAX_PARALLEL_READS)

    async def read(name: str) -> ModelEntry:
        async with limit:
            return await read_entry(store, name)

    entries = await asyncio.gather(*(read(n) for n in names), return_exceptions=True)
    result = Scan()
    for name, entry in zip(names, entries):
        if isinstance(entry, ModelEntry):
            result.models[name] = entry
        elif isinstance(entry, Exception):
            result.errors[name] = str(entry)
            log.error("model %s rejected: %s", name, entry)
        else:
            raise entry
    return result
