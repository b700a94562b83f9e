"""`mlserve optimize --models s3://bucket/prefix`: the job runs on a local mirror of the one model,
and the published version is uploaded back.

The mirror holds the model's model.toml, the fetched (checksum-verified) source version, and an empty
folder per other version, so the next version number is computed as for a local repository.
SHA256SUMS is uploaded first: a server that scans the bucket mid-upload finds files missing from the
list, refuses the version as a retryable fetch failure, and loads it whole on a later pass.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.optimize.mirror import write_mirror
from mlserve.registry.s3 import S3Store
from mlserve.registry.store import CHECKSUM_FILE


def _store(uri: str, endpoint: str | None, cache: Path) -> S3Store:
    return S3Store(uri, cache, endpoint or None)


async def _numbers(store: S3Store, model: str) -> list[int]:
    await store.refresh(model)
    return sorted(int(v) for v in await store.list_versions(model) if v.isdigit() and str(int(v)) == v and int(v) > 0)


async def _mirror(uri: str, endpoint: str | None, model: str, version: int | None, root: Path) -> Path:
    store = _store(uri, endpoint, root / ".cache")
    try:
        numbers = await _numbers(store, model)
        chosen = version if version is not None else (numbers[-1] if numbers else None)
        if chosen not in numbers:
            raise ModelNotFound(f"model {model!r} has no version {chosen} in {uri}")
        return await write_mirror(store, model, numbers, chosen, root)
    finally:
        await store.close()


async def _upload(uri: str, endpoint: str | None, model: str, folder: Path, root: Path) -> None:
    store = _store(uri, endpoint, root / ".cache")
    try:
        if int(folder.name) in await _numbers(store, model):
            raise InvalidInput(f"version {folder.name} of {model!r} appeared in {uri} meanwhile; nothing uploaded")
        files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name != CHECKSUM_FILE)
        for path in files:
            await store.put(model, f"{folder.name}/{path.relative_to(folder).as_posix()}", path.read_bytes())
    finally:
        await store.close()


def mirror(uri: str, endpoint: str | None, model: str, version: int | None, root: Path) -> Path:
    """A local repository holding just what the job needs; returns its root."""
    return asyncio.run(_mirror(uri, endpoint, model, version, root))


def upload(uri: str, endpoint: str | None, model: str, folder: Path, root: Path) -> None:
    """Copy a published version folder to the bucket."""
    asyncio.run(_upload(uri, endpoint, model, folder, root))
