"""Scanning a store into model entries: names, version numbers, model.toml."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from mlserve.errors import ModelLoadError
from mlserve.registry.store import Store
from mlserve.spec import MAX_VERSION, MODEL_NAME, ModelConfig, parse_model_config
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
    """Version numbers of a model folder; a digits-only name out of range (0, leading zeros, past
    MAX_VERSION, non-ASCII digits) is skipped with a warning, never loaded."""
    numbers = []
    for entry in await store.list_versions(name):
        number = version_number(entry)
        if number is not None:
            numbers.append(number)
        elif entry.isdigit():
            log.warning("model %s: folder %r skipped: a version is a plain number in 1..%d", name, entry, MAX_VERSION)
    return tuple(sorted(numbers))


async def read_entry(store: Store, name: str, override: Mapping[str, Any] | None = None) -> ModelEntry:
    """One model folder from the store's current snapshot. `override`: a model.toml table that
    stands in for the folder's own model.toml (a config sent with a load; never written)."""
    if not MODEL_NAME.fullmatch(name):
        raise ModelLoadError(f"model folder {name!r} is not a valid model name ([a-z0-9][a-z0-9_.-]*)")
    try:
        if override is not None:
            config = parse_model_config(dict(override))
        else:
            text = await store.read_text(name, "model.toml")
            config = parse_model_config(tomllib.loads(text)) if text is not None else ModelConfig()
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        where = "the config sent with its load" if override is not None else "model.toml"
        raise ModelLoadError(f"{name}/{where}: {exc}") from exc
    versions = await _versions(store, name)
    if not versions:
        raise ModelLoadError(f"model {name!r} has no version folders (positive integers such as 1/)")
    return ModelEntry(name, config, versions)


async def scan(store: Store, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Scan:
    """Snapshot the store and read every model folder; a bad one is logged and reported, and never
    stops the others. An unreachable store raises, so the caller changes nothing. `overrides`: the
    in-memory configs that stand in for some models' model.toml (see `read_entry`)."""
    overrides = overrides or {}
    await store.refresh()
    names = await store.list_models()
    limit = asyncio.Semaphore(_MAX_PARALLEL_READS)

    async def read(name: str) -> ModelEntry:
        async with limit:
            return await read_entry(store, name, overrides.get(name))

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
