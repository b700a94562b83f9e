"""DataPlane: the read side of the door protocol handlers go through.

Handlers ask it for a model, the models in name order, the repository index and a version's
statistics instead of reading the loader's table themselves; admin changes go through
`ModelControl` (control.py). Reads only: it changes nothing and owns no state beyond the loader.
"""

from __future__ import annotations

from typing import Any

from mlserve.errors import ModelNotFound
from mlserve.monitor.stats import VersionStats
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.served import ServedModel


class DataPlane:
    """The loader's models, read one way for every protocol."""

    def __init__(self, loader: HotSwapLoader) -> None:
        self._loader = loader

    def find(self, name: str) -> ServedModel | None:
        return self._loader.models.get(name)

    def model(self, name: str) -> ServedModel:
        """The model, or ModelNotFound in Triton's wording (404 over HTTP, NOT_FOUND over gRPC)."""
        served = self._loader.models.get(name)
        if served is None:
            raise ModelNotFound.unknown(name)
        return served

    def has(self, name: str) -> bool:
        return name in self._loader.models

    def names(self) -> list[str]:
        return sorted(self._loader.models)

    def items(self) -> list[tuple[str, ServedModel]]:
        """(name, model) in name order."""
        return sorted(self._loader.models.items())

    def served(self) -> list[ServedModel]:
        """Every model, in the loader's order (a copy, safe to walk while a load adds one)."""
        return list(self._loader.models.values())

    def is_serving(self) -> bool:
        """Whether any version has a request queued or running now (a batch job's batch counts: it
        holds the engine too); what optimize runs yield to (optimize/yielding.py)."""
        return any(not sv.is_idle for served in list(self._loader.models.values())
                   for sv in list(served.versions.values()))

    def num_ready_versions(self) -> int:
        return sum(len(m.ready_versions()) for m in self._loader.models.values())

    def scan_errors(self) -> list[tuple[str, str]]:
        """(folder name, reason) for every model folder the last scan could not read, in name order."""
        return sorted(self._loader.scan_errors.items())

    def stats(self, model: str, version: str) -> VersionStats:
        return self._loader.stats.get(model, version)

    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        """Triton's repository index: every version and its state, a row for a model with no versions
        and for each folder that could not be read (their `version` is ""), in name order."""
        rows = []
        for name, served in self.items():
            for version, sv in sorted(served.versions.items()):
                rows.append({"name": name, "version": str(version), "state": sv.state.name, "reason": sv.reason})
            if not served.versions:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": served.status_reason()})
        for name, reason in self.scan_errors():
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows
