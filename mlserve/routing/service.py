"""The protocol-neutral core both HTTP protocol layers call: validate, route, batch, answer."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import numpy as np

from mlserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader, ServedModel, ServedVersion
from mlserve.registry.serving import BatchedServing, GenerativeServing
from mlserve.monitor.hub import Monitor, Observation
from mlserve.routing.classification import check_class_counts, classify, read_labels
from mlserve.routing.generation.catalog import GenerationCatalog
from mlserve.routing.generation.run import GenerationRun, start_generation
from mlserve.spec import DATATYPE_TO_NUMPY, GenerationRequest, ModelInfo, TensorSpec
from mlserve.spec.infer import InferRequest, InferResponse
from mlserve.state import StateStore
from mlserve.routing.manager import TrafficManager
from mlserve.routing.router import Router

# Errors that say nothing about the version that was picked: they neither trip nor heal a breaker.
_CLIENT_ERRORS = (InvalidInput, ModelNotFound, ModelNotReady)


class RequestIds:
    """Random 128-bit request ids, 32 hex digits each; the OS's randomness is read 256 ids at a
    time, so the hot path makes one getrandom call per 256 requests instead of one per request."""

    __slots__ = ("_pool", "_at")

    _POOL_BYTES = 16 * 256

    def __init__(self) -> None:
        self._pool, self._at = b"", 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(self._POOL_BYTES), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


def _check_utf8(name: str, array: np.ndarray) -> None:
    for value in array.flat:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: this model takes UTF-8 text in BYTES tensors") from None


@dataclass(frozen=True, slots=True)
class _Contract:
    """What every request reads from a version's ModelInfo, derived once per ModelInfo."""

    info: ModelInfo
    inputs: dict[str, TensorSpec]
    dtypes: dict[str, np.dtype]
    """The numpy dtype each input is handed to the engine as."""
    outputs: tuple[str, ...]
    output_types: dict[str, str]

    @classmethod
    def of(cls, info: ModelInfo) -> _Contract:
        return cls(info, {s.name: s for s in info.inputs},
                   {s.name: np.dtype(DATATYPE_TO_NUMPY[s.datatype]) for s in info.inputs},
                   tuple(s.name for s in info.outputs), {s.name: s.datatype for s in info.outputs})


def validate_inputs(contract: _Contract, request: InferRequest) -> int:
    """Check names, datatypes and shapes against the model; return the batch rows (1 when unbatched)."""
    info, expected = contract.info, contract.inputs
    unknown = [name for name in request.inputs if name not in expected]
    if unknown:
        raise InvalidInput(f"unknown input(s) {sorted(unknown)}; model {request.model!r} takes {sorted(expected)}")
    rows: int | None = None
    for spec in info.inputs:
        if spec.name not in request.inputs:
            raise InvalidInput(f"missing input {spec.name!r} for model {request.model!r}")
        array = request.inputs[spec.name]
        datatype = request.datatypes[spec.name]
        if datatype != spec.datatype:
            raise InvalidInput(f"input {spec.name!r} must be {spec.datatype}, got {datatype}")
        if spec.shape and (
            len(array.shape) != len(spec.shape)
            or any(want not in (-1, got) for want, got in zip(spec.shape, array.shape))
        ):
            raise InvalidInput(f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(array.shape)}")
        if info.utf8_strings and datatype == "BYTES":
            _check_utf8(spec.name, array)
        if info.max_batch_size > 0:
            if array.ndim == 0 or array.shape[0] < 1:
                raise InvalidInput(f"input {spec.name!r} needs at least one row")
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(f"inputs disagree on the batch size: {spec.name!r} has {array.shape[0]} rows, others {rows}")
            rows = array.shape[0]
    return rows or 1


_MAX_CONTRACTS = 1024
"""ModelInfos whose contracts are kept (one per loaded version); past this the table starts over."""


class InferenceService:
    """Routes a request to a version, queues it on that version's batcher, returns the chosen outputs."""

    def __init__(self, loader: HotSwapLoader, metrics: Metrics | None = None, store: StateStore | None = None) -> None:
        self.loader = loader
        self.traffic = TrafficManager(loader, metrics or Metrics(), store=store)
        self.router = Router(loader, self.traffic)
        self.catalog = GenerationCatalog(loader, self.router)
        """Which versions generate or embed, their tokenizers and model cards."""
        self._labels: dict[tuple[str, int, str], tuple[str, ...]] = {}
        self._req_ids = RequestIds()
        self._contracts: dict[int, _Contract] = {}
        self.monitor: Monitor | None = None
        """Fed every answered request (drift, prediction log); its `observe` never blocks."""

    async def infer(self, request: InferRequest) -> InferResponse:
        model = self.router.model(request.model)
        default = model.default_version()
        if default is None:  # lazy or evicted models load on first use
            await self.loader.ensure_loaded(request.model)
        else:
            model.last_used = time.monotonic()
        key = self._sticky_key(model, request)
        served = self.router.pick(request.model, request.version, key, routed=True, default=default)
        req_id = request.req_id or self._req_ids.next()
        started = time.monotonic()
        routed = request.version is None
        try:
            inputs, outputs = await self._run(served, request)
        except _CLIENT_ERRORS:
            self.traffic.release(served)
            raise
        except asyncio.CancelledError:  # the client went away: nothing to judge, the probe slot is freed
            self.traffic.release(served)
            raise
        except Exception:  # model failures, hangs and deadlines alike count against the version
            self.traffic.record(request.model, served, req_id, time.monotonic() - started, False, routed)
            raise
        latency_s = time.monotonic() - started
        self.traffic.record(request.model, served, req_id, latency_s, True, routed)
        self.traffic.shadow(model if served.model == request.model else self.router.model(served.model),
                            served.version, inputs, outputs)
        if self.monitor is not None:
            self.monitor.observe(Observation(
                served.model, str(served.version), req_id, inputs, outputs, latency_s,
                "request" if request.version else "router",
            ))
        return self._respond(served, request, outputs, req_id)

    def _sticky_key(self, model: ServedModel, request: InferRequest) -> str | None:
        """The routing key for an unversioned request; any other leftover parameter is refused by name."""
        name = self.traffic.sticky_parameter(model)
        unknown = [k for k in request.parameters if k != name]
        if unknown:
            raise InvalidInput(f"parameter(s) {sorted(unknown)} are not supported by mlserve")
        if request.version is not None:
            return None
        return self.traffic.sticky_key(model, request.headers, request.parameters)

    def _contract(self, info: ModelInfo) -> _Contract:
        """By the ModelInfo object's identity (hashing one walks all its tensor specs)."""
        found = self._contracts.get(id(info))
        if found is not None and found.info is info:
            return found
        if len(self._contracts) >= _MAX_CONTRACTS:
            self._contracts.clear()
        found = self._contracts[id(info)] = _Contract.of(info)
        return found

    def _respond(self, served: ServedVersion, request: InferRequest, outputs: dict, req_id: str) -> InferResponse:
        contract = self._contract(served.info)
        if request.outputs is None:
            names, chosen_types = contract.outputs, dict(contract.output_types)
        else:
            names, datatypes = request.outputs, contract.output_types
            chosen_types = {n: datatypes[n] for n in names}
        chosen = {n: outputs[n] for n in names}
        if request.class_counts:
            self._classify(served, request.class_counts, chosen, chosen_types)
        return InferResponse(served.model, str(served.version), chosen, chosen_types, req_id)

    def _classify(self, served: ServedVersion, class_counts, outputs: dict, datatypes: dict) -> None:
        """Replace each classified output by its top k as BYTES (labels read once per version)."""
        key = (served.model, served.version, served.fingerprint)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = read_labels(served.path)
        for name, k in class_counts.items():
            outputs[name] = classify(outputs[name], k, labels, served.info.max_batch_size > 0)
            datatypes[name] = "BYTES"

    async def generate(self, request: GenerationRequest, routed: bool = True) -> GenerationRun:
        """The one way to generate: start on the version the router picks and iterate the run's
        `events()`. `routed` False (batch jobs): the model's default version, nothing recorded."""
        return await start_generation(self, request, routed)

    async def _run(self, served: ServedVersion, request: InferRequest):
        info = served.info
        contract = self._contract(info)
        rows = validate_inputs(contract, request)
        if request.class_counts:
            check_class_counts(info, request.class_counts)
        if request.outputs is not None:
            known = contract.output_types
            missing = [o for o in request.outputs if o not in known]
            if missing:
                raise InvalidInput(f"unknown output(s) {missing}; model {request.model!r} has {sorted(known)}")
        inputs = {name: request.inputs[name].astype(dtype, copy=False) for name, dtype in contract.dtypes.items()}
        return inputs, await _serving(served).infer(inputs, rows, request.policy)


def _serving(served: ServedVersion) -> BatchedServing:
    """The version's batcher and response cache. A generation version has none: its engine takes /v1
    requests only."""
    serving = served.serving
    if isinstance(serving, GenerativeServing):
        raise InvalidInput(f"model {served.model!r} is a generation model: use /v1/completions or "
                           "/v1/chat/completions")
    assert serving is not None, "the router picks ready versions only"
    return serving
