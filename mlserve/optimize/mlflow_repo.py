"""`mlserve optimize --models mlflow://host:port`: the job runs on a local mirror of the one registered
model, and the winner is registered back as a new model version.

The mirror holds the model.toml the MLflow store makes (the champion's tag and signature), the
fetched source version (the `@champion` unless --version names one) and an empty folder per other
version. The published folder is registered (registry/mlflow_publish.py) with its
`optimization.json` as an artifact and as tags: `mlserve.optimization` (the whole record, when it
fits MLflow's 5000 characters), `mlserve.backend`, `mlserve.passes`, `mlserve.winner`,
`mlserve.objective`, and the lineage: `mlserve.source_version` (and the new run's
`mlserve.source_run_id`). The source version's `mlserve.toml` tag is copied, so the new version keeps
its settings when it becomes the champion. With `--rollout ALIAS` (`challenger`) that alias is
pointed at the new version: a server following the registry rolls it out as the champion's
`[challenger]` table says.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mlserve.config import load_config
from mlserve.engine.base import VERSION_BACKEND_FILE
from mlserve.errors import ModelNotFound
from mlserve.registry.mlflow import TOML_TAG, MlflowStore
from mlserve.registry.mlflow_publish import MAX_TAG_VALUE, Registration, register
from mlserve.optimize.jobs import Published
from mlserve.optimize.mirror import Mirror, write_mirror
from mlserve.registry.mlflow_toml import ALIAS  # noqa: F401 - the command line checks --rollout with it


def is_mlflow(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(("mlflow://", "mlflows://"))


def _store(uri: str, root: Path) -> MlflowStore:
    registry = load_config(overrides={"registry": {"models": uri}}).registry
    return MlflowStore(uri, root / ".cache", registry)


async def _mirror(uri: str, model: str, version: int | None, root: Path) -> tuple[Path, int]:
    store = _store(uri, root)
    try:
        await store.refresh(model)
        numbers = [int(v) for v in await store.list_versions(model)]
        chosen = version if version is not None else store.champion(model)
        if chosen is None:
            raise ModelNotFound(f"registered model {model!r} has no @{store.alias} in {store.describe()}: "
                                "give --version")
        if chosen not in numbers:
            raise ModelNotFound(f"registered model {model!r} has no READY version {chosen} in {store.describe()}")
        return await write_mirror(store, model, numbers, chosen, root), chosen
    finally:
        await store.close()


async def _register(uri: str, model: str, folder: Path, source_version: int, alias: str | None,
                    root: Path) -> int:
    store = _store(uri, root)
    try:
        await store.refresh(model)
        return await register_version(store, model, folder, source_version, alias)
    finally:
        await store.close()


async def register_version(store: MlflowStore, model: str, folder: Path, source_version: int,
                           alias: str | None) -> int:
    """Register a published version folder with its record and lineage as tags (the source's
    `mlserve.toml` tag copied), then point `alias` at it; returns MLflow's version number. `store`
    has listed `model` (the source's tags are read from that listing)."""
    record = json.loads(await asyncio.to_thread((folder / VERSION_BACKEND_FILE).read_text))
    tags = optimization_tags(record)
    source_toml = store.version_tags(model, source_version).get(TOML_TAG)
    if source_toml:
        tags[TOML_TAG] = source_toml
    description = f"optimized by mlserve from version {source_version}: {', '.join(record.get('passes', []))}"
    version = await register(store, Registration(model, folder, tags, description, source_version))
    if alias:
        await store.set_alias(model, alias, version)
    return version


class MlflowMirror(Mirror):
    """An automatic run's copy of a registered model (the served `@champion` version, and the
    model.toml the store makes for it). The winner is registered as a new model version, then the
    server's registry follower takes it from there: with the section's rollout steps it becomes the
    `@challenger` (rolled out as the champion's [challenger] table, made from those steps, says);
    without, the `@champion`, so it serves once loaded, as a local repository's winner does."""

    _store: MlflowStore
    alias: str = ""
    """Set after `open`: the alias the registered winner gets."""

    async def upload(self, version: int) -> Published:
        """Register the winner, unless a version optimized from the same source was registered
        meanwhile (by another server following the registry, whose run ledger is its own): then
        nothing is registered and no alias moves (that server deployed its version)."""
        folder = self.root / self._model / str(version)
        source = int(json.loads(await asyncio.to_thread((folder / VERSION_BACKEND_FILE).read_text))["source_version"])
        found = await published_in_registry(self._store, self._model, source)  # lists the model again
        if found is not None:
            return Published(found, {"registered": found, "alias": None,
                                     "note": f"version {found} was registered from version {source} before this "
                                             "run ended (by another server); nothing registered"})
        registered = await register_version(self._store, self._model, folder, source, self.alias)
        return Published(registered, {"registered": registered, "alias": self.alias})


async def published_in_registry(store: MlflowStore, model: str, source_version: int) -> int | None:
    """The version an earlier attempt registered from `source_version`, if one did before a stop
    (its `mlserve.source_version` and `mlserve.winner` tags)."""
    await store.refresh(model)
    for name in await store.list_versions(model):
        tags = store.version_tags(model, int(name))
        if int(name) > source_version and tags.get("mlserve.source_version") == str(source_version) \
                and "mlserve.winner" in tags:
            return int(name)
    return None


def optimization_tags(record: dict) -> dict[str, str]:
    """optimization.json as model version tags: the whole record when it fits, and its key fields."""
    tags = {"mlserve.backend": str(record.get("backend", "")), "mlserve.passes": ",".join(record.get("passes", [])),
            "mlserve.winner": str(record.get("winner", "")), "mlserve.objective": str(record.get("objective", ""))}
    whole = json.dumps(record, separators=(",", ":"))
    if len(whole) <= MAX_TAG_VALUE:
        tags["mlserve.optimization"] = whole
    return tags


def mirror(uri: str, model: str, version: int | None, root: Path) -> tuple[Path, int]:
    """A local repository holding what the job needs; returns its root and the source version."""
    return asyncio.run(_mirror(uri, model, version, root))


def register_published(uri: str, model: str, folder: Path, source_version: int, alias: str | None,
                       root: Path) -> int:
    """Register a published version folder; returns MLflow's version number."""
    return asyncio.run(_register(uri, model, folder, source_version, alias, root))
