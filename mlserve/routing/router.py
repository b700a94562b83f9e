"""Picks the version that answers a request."""

from __future__ import annotations

from mlserve.errors import ModelNotFound, ModelNotReady
from mlserve.registry.loader import HotSwapLoader, ServedModel, ServedVersion


class Router:
    """An explicit version is honoured as asked; otherwise the newest ready version answers."""

    def __init__(self, loader: HotSwapLoader) -> None:
        self._loader = loader

    def model(self, name: str) -> ServedModel:
        served = self._loader.models.get(name)
        if served is None:
            raise ModelNotFound(f"unknown model {name!r}")
        return served

    def version(self, name: str, version: str) -> ServedVersion:
        served = self.model(name)
        if not version.isdigit() or int(version) not in served.versions:
            known = ", ".join(str(v) for v in sorted(served.versions)) or "none"
            raise ModelNotFound(f"model {name!r} has no version {version!r} (loaded: {known})")
        return served.versions[int(version)]

    def pick(self, name: str, version: str | None) -> ServedVersion:
        if version:
            chosen = self.version(name, version)
            if not chosen.is_ready:
                raise ModelNotReady(f"model {name!r} version {version} is {chosen.state.name.lower()}")
            return chosen
        served = self.model(name)
        default = served.default_version()  # newest ready, or the pinned / rolled-back one
        if default is None:
            raise ModelNotReady(f"model {name!r} has no ready version")
        return served.versions[default]
