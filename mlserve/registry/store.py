"""The Store protocol: where a model repository's files live (a local folder, an S3 bucket)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Store(Protocol):
    """Lists models and versions and makes a version's files available as a local folder."""

    def list_models(self) -> list[str]:
        """Names of the model folders, unvalidated."""

    def list_versions(self, model: str) -> list[str]:
        """Names of the entries under a model folder that may be versions, unvalidated."""

    def read_text(self, model: str, name: str) -> str | None:
        """A small file in the model folder (model.toml), or None when absent."""

    def local_path(self, model: str, version: int) -> Path:
        """A local folder holding the version's files (for a remote store: fetched and verified first)."""

    def fingerprint(self, model: str, version: int) -> str:
        """Changes whenever the version's files change."""

    def describe(self) -> str:
        """The repository's location, for logs."""
