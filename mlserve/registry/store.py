"""The Store protocol: where a model repository's files live (a local folder, an S3 bucket).

Every method is async so a remote store never blocks the event loop; the local store answers
from a thread where it touches the disk. A scan calls `refresh()` once and then reads the
snapshot it took, so a repository of thousands of models costs one listing, not thousands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlserve.errors import ModelLoadError

CHECKSUM_FILE = "SHA256SUMS"
"""Optional file in a version folder: `<sha256 hex>  <relative path>` per line (sha256sum's format)."""


class StoreError(ModelLoadError):
    """The repository could not be read (unreachable, a download cut short, a checksum mismatch)."""


@dataclass(frozen=True, slots=True)
class VersionStat:
    """What a version's files look like without fetching them."""

    fingerprint: str
    """Changes whenever any of the version's files change."""
    num_bytes: int
    """Total size of the version's files; the loader's memory estimate."""


class Store(Protocol):
    """Lists models and versions, and fetches a version's files into a local folder."""

    kind: str
    """local, s3 or mlflow: the `kind` label of mlserve_repository_up."""

    async def refresh(self, model: str | None = None) -> None:
        """Take a new snapshot of the listing (the whole repository, or one model's folder)."""

    async def list_models(self) -> list[str]:
        """Names of the model folders, unvalidated."""

    async def list_versions(self, model: str) -> list[str]:
        """Names of the entries under a model folder that may be versions, unvalidated."""

    async def read_text(self, model: str, name: str) -> str | None:
        """A small file in the model folder (model.toml), or None when absent."""

    async def stat(self, model: str, version: int) -> VersionStat:
        """Fingerprint and size of a version's files."""

    async def fetch(self, model: str, version: int) -> Path:
        """A local folder holding the version's complete, verified files."""

    def describe(self) -> str:
        """The repository's location, for logs."""

    async def close(self) -> None:
        """Release connections."""


def fingerprint_of(files: dict[str, tuple[int, str]]) -> VersionStat:
    """Relative path -> (size, change marker) for every file, to one stable fingerprint."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        size, marker = files[rel]
        digest.update(f"{rel}\0{size}\0{marker}\n".encode())
    return VersionStat(digest.hexdigest(), sum(size for size, _ in files.values()))


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksums(folder: Path) -> None:
    """Check every file named in the folder's SHA256SUMS (blocking: run it off the loop)."""
    sums = folder / CHECKSUM_FILE
    if not sums.is_file():
        return
    for line_no, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        expected, _, rel = line.strip().partition(" ")
        rel = rel.strip().lstrip("*")
        target = (folder / rel).resolve()
        if not rel or folder.resolve() not in target.parents:
            raise StoreError(f"{CHECKSUM_FILE}:{line_no}: bad entry {line!r}")
        if not target.is_file():
            raise StoreError(f"{CHECKSUM_FILE} names {rel}, which is missing")
        actual = sha256_file(target)
        if actual != expected.lower():
            raise StoreError(f"{rel}: sha256 {actual} does not match {CHECKSUM_FILE} ({expected})")
