"""The local-folder store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlserve.errors import ModelNotFound
from mlserve.registry.store import VersionStat, fingerprint_of, verify_checksums


class LocalStore:
    """A model repository in a folder on this machine. Symlinks that leave it are not followed."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ModelNotFound(f"{path.relative_to(self.root)} leaves the model repository")
        return resolved

    async def refresh(self, model: str | None = None) -> None:
        """The folder is always current; nothing to snapshot."""

    async def list_models(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a folder")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def list_versions(self, model: str) -> list[str]:
        folder = self._inside(self.root / model)
        if not folder.is_dir():
            raise ModelNotFound(f"no model folder {model!r} in the repository")
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    async def read_text(self, model: str, name: str) -> str | None:
        path = self._inside(self.root / model / name)
        return path.read_text() if path.is_file() else None

    async def stat(self, model: str, version: int) -> VersionStat:
        return await asyncio.to_thread(self._stat, model, version)

    def _stat(self, model: str, version: int) -> VersionStat:
        """Relative path, size and mtime of every file: cheap, and it moves on any rewrite."""
        folder = self._folder(model, version)
        files = {}
        for path in folder.rglob("*"):
            if path.is_file():
                stat = path.stat()
                files[str(path.relative_to(folder))] = (stat.st_size, str(stat.st_mtime_ns))
        return fingerprint_of(files)

    async def fetch(self, model: str, version: int) -> Path:
        folder = self._folder(model, version)
        await asyncio.to_thread(verify_checksums, folder)
        return folder

    def _folder(self, model: str, version: int) -> Path:
        folder = self._inside(self.root / model / str(version))
        if not folder.is_dir():
            raise ModelNotFound(f"model {model!r} has no version folder {version} in the repository")
        return folder

    def describe(self) -> str:
        return str(self.root)

    async def close(self) -> None:
        pass
