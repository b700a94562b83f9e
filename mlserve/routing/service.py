"""The protocol-neutral core both HTTP protocol layers call: validate, route, batch, answer."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from mlserve.batching.dynamic import SchedulePolicy
from mlserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader, ServedVersion
from mlserve.monitor.hub import Monitor, Observation
from mlserve.registry.spec import DATATYPE_TO_NUMPY, ModelInfo
from mlserve.routing.generate import GenerateRequest, GenerationRun, start_generation
from mlserve.routing.generation import GenerationCatalog
from mlserve.routing.manager import TrafficManager
from mlserve.routing.router import Router

# Errors that say nothing about the version that was picked: they neither trip nor heal a breaker.
_CLIENT_ERRORS = (InvalidInput, ModelNotFound, ModelNotReady)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One decoded inference request: tensors by input name, plus what the client asked of it."""

    model: str
    version: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    req_id: str | None = None
    outputs: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    """HTTP headers, for a sticky routing key taken from a header."""


@dataclass(frozen=True, slots=True)
class InferResponse:
    """Outputs by name, and which version produced them."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    req_id: str | None = None


def _check_utf8(name: str, array: np.ndarray) -> None:
    for value in array.flat:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: this model takes UTF-8 text in BYTES tensors") from None


def validate_inputs(info: ModelInfo, request: InferRequest) -> int:
    """Check names, datatypes and shapes against the model; return the batch rows (1 when unbatched)."""
    expected = {s.name: s for s in info.inputs}
    unknown = set(request.inputs) - set(expected)
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


class InferenceService:
    """Routes a request to a version, queues it on that version's batcher, returns the chosen outputs."""

    def __init__(self, loader: HotSwapLoader, metrics: Metrics | None = None) -> None:
        self.loader = loader
        self.traffic = TrafficManager(loader, metrics or Metrics())
        self.router = Router(loader, self.traffic)
        self.generation = GenerationCatalog(loader, self.router)
        self.monitor: Monitor | None = None
        """Fed every answered request (drift, prediction log); its `observe` never blocks."""

    async def infer(self, request: InferRequest) -> InferResponse:
        await self.loader.ensure_loaded(request.model)  # lazy or evicted models load on first use
        key = None
        if request.version is None:
            key = self.traffic.sticky_key(self.router.model(request.model), request.headers, request.parameters)
        served = self.router.pick(request.model, request.version, key, routed=True)
        req_id = request.req_id or os.urandom(16).hex()
        started = time.monotonic()
        try:
            inputs, outputs = await self._run(served, request)
        except _CLIENT_ERRORS:
            self.traffic.release(served)
            raise
        except Exception:
            self.traffic.record(request.model, served, req_id, time.monotonic() - started, False, request.version is None)
            raise
        self.traffic.record(request.model, served, req_id, time.monotonic() - started, True, request.version is None)
        self.traffic.shadow(self.router.model(served.model), served.version, inputs, outputs)
        if self.monitor is not None:
            self.monitor.observe(Observation(
                served.model, str(served.version), req_id, inputs, outputs,
                time.monotonic() - started, "request" if request.version else "router",
            ))
        names = request.outputs if request.outputs is not None else tuple(s.name for s in served.info.outputs)
        datatypes = {s.name: s.datatype for s in served.info.outputs}
        return InferResponse(
            served.model, str(served.version), {n: outputs[n] for n in names},
            {n: datatypes[n] for n in names}, req_id,
        )

    async def generate(self, request: GenerateRequest) -> GenerationRun:
        """Start a generation on the version the router picks; iterate the run's `events()`."""
        return await start_generation(self, request)

    async def _run(self, served: ServedVersion, request: InferRequest):
        info = served.info
        rows = validate_inputs(info, request)
        if request.outputs is not None:
            known = {s.name for s in info.outputs}
            missing = [o for o in request.outputs if o not in known]
            if missing:
                raise InvalidInput(f"unknown output(s) {missing}; model {request.model!r} has {sorted(known)}")
        inputs = {
            s.name: request.inputs[s.name].astype(DATATYPE_TO_NUMPY[s.datatype], copy=False) for s in info.inputs
        }
        outputs = await _answer(served, inputs, rows, schedule_policy(request.parameters))
        return inputs, outputs


def _non_negative_int(parameters: dict[str, Any], name: str) -> int | None:
    value = parameters.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameter {name!r} must be a non-negative integer, got {value!r}")
    return value


_DEFAULT_POLICY = SchedulePolicy()


def schedule_policy(parameters: dict[str, Any]) -> SchedulePolicy:
    """Triton's schedule-policy request parameters: `priority` (1 = highest) and `timeout` in microseconds."""
    if "priority" not in parameters and "timeout" not in parameters:
        return _DEFAULT_POLICY
    return SchedulePolicy(_non_negative_int(parameters, "priority"), _non_negative_int(parameters, "timeout"))


async def _answer(served: ServedVersion, inputs: dict[str, np.ndarray], rows: int, policy: SchedulePolicy):
    """The version's response cache when it has one (a hit never reaches the batcher), else the batcher."""
    cache = served.cache
    if cache is None:
        return await served.batcher.submit(inputs, rows, policy)
    key = cache.key(inputs)
    outputs = cache.get(key)
    if outputs is None:
        outputs = await served.batcher.submit(inputs, rows, policy)
        cache.put(key, outputs)
    return outputs
