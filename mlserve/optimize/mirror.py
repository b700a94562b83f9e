"""The local mirror a remote repository's optimize job runs on: the model's model.toml, the fetched
source version, and an empty folder per other version (so the next version number is computed as
for a local repository). `write_mirror` serves the command line; `Mirror` a run inside the server,
with the publish of each kind of repository: `S3Mirror` here, `MlflowMirror` in mlflow_repo.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Self

from mlserve.optimize.jobs import JOB_FOLDER_PREFIX, Published
from mlserve.registry.s3 import S3Store
from mlserve.registry.store import CHECKSUM_FILE, Store


async def write_mirror(store: Store, model: str, numbers: list[int], chosen: int, root: Path) -> Path:
    """Mirror `model` from `store` under `root`/models, with version `chosen` fetched; returns the
    mirror's repository folder."""
    model_dir = root / "models" / model
    for number in numbers:
        (model_dir / str(number)).mkdir(parents=True)
    toml = await store.read_text(model, "model.toml")
    if toml is not None:
        (model_dir / "model.toml").write_text(toml)
    shutil.copytree(await store.fetch(model, chosen), model_dir / str(chosen), dirs_exist_ok=True)
    return root / "models"


class Mirror:
    """One in-server run's local copy of a model from a remote repository: the job runs on it and
    publishes into it; `upload` then publishes that version to the remote repository.

    The copy lives in a `mlserve-job-<server pid>-*` folder, so a server killed mid-run leaves debris
    the next start sweeps (optimize/jobs.py). Blocking file work runs in a thread, off the loop.
    """

    def __init__(self, store: Store, model: str, folder: Path) -> None:
        self._store, self._model, self.folder = store, model, folder

    @property
    def root(self) -> Path:
        """The mirror's repository folder."""
        return self.folder / "models"

    @classmethod
    async def open(cls, store: Store, model: str, version: int) -> Self:
        """Mirror `model` with `version` fetched (from the server's cache when it serves it)."""
        await store.refresh(model)
        numbers = sorted(int(v) for v in await store.list_versions(model) if v.isdigit() and str(int(v)) == v)
        if version not in numbers:
            raise FileNotFoundError(f"version {version} of {model!r} is no longer in {store.describe()}")
        toml = await store.read_text(model, "model.toml")
        fetched = await store.fetch(model, version)
        folder = Path(tempfile.mkdtemp(prefix=f"{JOB_FOLDER_PREFIX}{os.getpid()}-mirror-"))
        mirror = cls(store, model, folder)
        try:
            await asyncio.to_thread(_lay_out, mirror.root / model, numbers, version, toml, fetched)
        except BaseException:
            mirror.remove()
            raise
        return mirror

    async def upload(self, version: int) -> Published:
        raise NotImplementedError

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class S3Mirror(Mirror):
    """On an S3 repository the published version is uploaded to the bucket (SHA256SUMS first, as a
    conditional put: of two writers of one version number exactly one gets it, the other a
    Conflict), under the number it has in the mirror; the server then loads it as a local one."""

    _store: S3Store

    async def upload(self, version: int) -> Published:
        """Copy the published version folder to the bucket, its checksum list first (the claim)."""
        folder = self.root / self._model / str(version)
        files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name != CHECKSUM_FILE)
        for i, path in enumerate(files):
            body = await asyncio.to_thread(path.read_bytes)
            await self._store.put(self._model, f"{version}/{path.relative_to(folder).as_posix()}", body,
                                  if_absent=i == 0)
        return Published(version)


def _lay_out(model_dir: Path, numbers: list[int], chosen: int, toml: str | None, fetched: Path) -> None:
    for number in numbers:
        (model_dir / str(number)).mkdir(parents=True, exist_ok=True)
    if toml is not None:
        (model_dir / "model.toml").write_text(toml)
    shutil.copytree(fetched, model_dir / str(chosen), dirs_exist_ok=True)
