"""The local-folder store."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mlserve.errors import ModelNotFound


class LocalStore:
    """A model repository in a folder on this machine. Symlinks that leave it are not followed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ModelNotFound(f"{path} leaves the model repository")
        return resolved

    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a folder")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list_versions(self, model: str) -> list[str]:
        folder = self._inside(self.root / model)
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def read_text(self, model: str, name: str) -> str | None:
        path = self._inside(self.root / model / name)
        return path.read_text() if path.is_file() else None

    def local_path(self, model: str, version: int) -> Path:
        return self._inside(self.root / model / str(version))

    def fingerprint(self, model: str, version: int) -> str:
        """sha256 over every file's relative path, size and mtime; cheap, and it moves on any rewrite."""
        folder = self.local_path(model, version)
        digest = hashlib.sha256()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def describe(self) -> str:
        return str(self.root)
