"""The start-up sweep of what a crashed writer left in a local model repository.

Versions are written under a hidden staging name and renamed into place (registry/upload.py:
`.upload-<version>-<random>`, its model.toml through `.model.toml.<random>`; optimize/publish.py:
`.optimize-<version>-<pid>`). A writer killed mid-way (`kill -9`, a lost machine) leaves its staging
behind, and an upload that created a new model leaves that model's folder, which then lists as a
model that never becomes available. At start the server removes such staging, and a model folder
left empty by that removal.

Another server may share the folder and be writing right now, so only staging untouched for
`stale_after_s` counts as debris (a writer touches its staging folder with every file it adds), and
never an optimize staging folder whose process still runs on this machine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from pathlib import Path

from mlserve.lifeline import is_alive
from mlserve.registry.local import LocalStore
from mlserve.registry.store import Store

log = logging.getLogger("mlserve.registry")

STALE_AFTER_S = 120.0
_STAGING = re.compile(r"\.upload-\d+-[0-9a-f]+|\.optimize-\d+-(?P<pid>\d+)|\.model\.toml\.[0-9a-f]+")


async def sweep_store(store: Store) -> None:
    """Sweep a local repository (an S3 one has no staging folders)."""
    if isinstance(store, LocalStore):
        await asyncio.to_thread(sweep_staging, store.root)


def sweep_staging(root: Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> list[Path]:
    """Blocking: remove stale staging in every model folder, and model folders it leaves empty;
    returns what was removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    for model in sorted(root.iterdir()) if root.is_dir() else []:
        if model.name.startswith(".") or model.is_symlink() or not model.is_dir():
            continue
        debris = [p for p in model.iterdir() if _is_debris(p, now - stale_after_s)]
        for path in debris:
            _remove(path)
            log.warning("removed staging a crashed writer left: %s", path)
        removed += debris
        if debris and not any(model.iterdir()):
            model.rmdir()
            removed.append(model)
            log.warning("removed model folder %s: an upload created it and never completed", model)
    return removed


def _is_debris(path: Path, older_than: float) -> bool:
    match = _STAGING.fullmatch(path.name)
    if match is None or path.lstat().st_mtime > older_than:
        return False
    pid = match.group("pid")
    return pid is None or not is_alive(int(pid))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
