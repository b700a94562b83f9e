"""Picks the version that answers a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlserve.errors import ModelNotFound, ModelNotReady
from mlserve.registry.loader import HotSwapLoader, ServedModel, ServedVersion
from mlserve.spec.version import parse_version

if TYPE_CHECKING:
    from mlserve.routing.manager import TrafficManager


class Router:
    """An explicit version is honoured as asked; otherwise the model's split (when it has one) or
    the newest ready version answers, unless that version's breaker sends it to a fallback."""

    def __init__(self, loader: HotSwapLoader, traffic: TrafficManager | None = None) -> None:
        self._loader = loader
        self._traffic = traffic

    def model(self, name: str) -> ServedModel:
        served = self._loader.models.get(name)
        if served is None:
            raise ModelNotFound.unknown(name)
        return served

    def version(self, name: str, version: str) -> ServedVersion:
        served = self.model(name)
        number = parse_version(version)
        if number not in served.versions:
            known = ", ".join(str(v) for v in sorted(served.versions)) or "none"
            raise ModelNotFound.unknown(name, version, f" (loaded: {known})")
        return served.versions[number]

    def pick(
        self, name: str, version: str | None, key: str | None = None, *, routed: bool = False,
        default: int | None = None,
    ) -> ServedVersion:
        """`routed` is set for inference requests only: then the split, breakers and fallbacks apply
        (metadata reads must not take breaker probes). `key` is the sticky key, None for a random draw;
        `default` is the model's default version when the caller has just looked it up."""
        if version:
            chosen = self.version(name, version)
            if not chosen.is_ready:
                raise ModelNotReady(f"model {name!r} version {version} is {chosen.state.name.lower()}")
            return chosen
        served = self.model(name)
        if default is None or not (served.versions.get(default) and served.versions[default].is_ready):
            default = served.default_version()  # newest ready, or the pinned / rolled-back one
        if default is None:
            raise ModelNotReady(f"model {name!r} has no ready version")
        chosen = served.versions[default]
        if self._traffic is None or not routed:
            return chosen
        return self._traffic.route(served, chosen, key)
