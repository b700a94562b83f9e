"""DataPlane: the door every protocol handler goes through for inference and for reads.

One object for v2, gRPC, the OpenAI routes, the status page and batch jobs (MLServer's
`handlers/dataplane.py`, KServe's `DataPlane`): infer, generate, the embedding and tokenizer
questions, model cards, a model's metadata and readiness, the repository index, statistics, and the
traffic, experiment and rollout views. Admin changes go through `ModelControl` (control.py).

It owns nothing: each call is the loader's table, the `InferenceService` or its catalog and traffic
manager. The hot calls (`infer`, `generate`) are the service's own bound methods, set once here, so a
request through the door costs no extra await or frame.
"""

from __future__ import annotations

from typing import Any

from mlserve.errors import ModelNotFound
from mlserve.monitor.stats import VersionStats
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.served import ServedModel, ServedVersion
from mlserve.routing.service import InferenceService
from mlserve.spec.infer import ModelMetadata


class DataPlane:
    """The loader's models and the inference service, one way for every protocol."""

    def __init__(self, loader: HotSwapLoader, service: InferenceService) -> None:
        self._loader = loader
        self._router = service.router
        self._traffic = traffic = service.traffic
        catalog = service.catalog
        # Bound once: the hot path calls the service itself (see the module note).
        self.infer = service.infer
        """Route, validate, batch and answer one InferRequest (InferResponse)."""
        self.generate = service.generate
        """Start a generation (GenerationRun); `routed=False` for batch jobs (default version, unrecorded)."""
        self.cards = catalog.cards
        """The model cards of every generation and embedding model, in name order."""
        self.card = catalog.card
        self.embedding_vocab_size = catalog.embedding_vocab_size
        self.tokenize = catalog.tokenize
        self.detokenize = catalog.detokenize
        self.traffic_view = traffic.traffic_view
        """A model's split, its keys and who set them (as this replica last applied them)."""
        self.experiment_view = traffic.experiment_view
        self.rollout_view = traffic.rollout_view
        self.ensure_loaded = loader.ensure_loaded
        """Load a lazy or evicted model, as its first request does."""

    # -- the model table ---------------------------------------------------------------------------

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

    # -- one model, as the metadata routes ask ---------------------------------------------------------

    def version(self, name: str, version: str) -> ServedVersion:
        """That version, in whatever state; ModelNotFound names the loaded ones when it is not one."""
        return self._router.version(name, version)

    def pick(self, name: str, version: str | None) -> ServedVersion:
        """The ready version a read of `version` describes (None: the model's default). No split or
        breaker applies: a metadata read takes no probe from a version under test."""
        return self._router.pick(name, version)

    def metadata(self, name: str, version: str | None) -> ModelMetadata:
        info = self._router.pick(name, version).info
        assert info is not None, "a ready version knows its tensors"
        return ModelMetadata(name, tuple(str(v) for v in self.model(name).ready_versions()), info)

    def is_ready(self, name: str, version: str | None) -> bool:
        """That version is ready (an unknown one is ModelNotFound), or with none, any version is."""
        if version:
            return self._router.version(name, version).is_ready
        return bool(self.model(name).ready_versions())

    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        """Triton's repository index: every version and its state, a row for a model with no versions
        and for each folder that could not be read, in name order. A row with no version has no
        `version` key, over HTTP and gRPC alike (gRPC's message then reads it as "")."""
        rows: list[dict[str, Any]] = []
        for name, served in self.items():
            for version, sv in sorted(served.versions.items()):
                rows.append({"name": name, "version": str(version), "state": sv.state.name, "reason": sv.reason})
            if not served.versions:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": served.status_reason()})
        for name, reason in self.scan_errors():
            rows.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows

    # -- traffic, as the admin and status views read it -------------------------------------------------

    async def experiment(self, name: str) -> dict:
        """The experiment's view with every replica's counts taken in."""
        await self._traffic.refresh_experiment(name)
        return self._traffic.experiment_view(name)

    async def rollout(self, name: str) -> dict:
        """The rollout's view as the shared state has it now."""
        await self._traffic.refresh_rollout(name)
        return self._traffic.rollout_view(name)
