"""The local mirror a remote repository's optimize job runs on: the model's model.toml, the fetched
source version, and an empty folder per other version (so the next version number is computed as
for a local repository)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlserve.registry.store import Store


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
