"""The protocol-neutral core both HTTP protocol layers call: validate, route, batch, answer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput
from mlserve.monitor.hub import Monitor, Observation
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.spec import DATATYPE_TO_NUMPY, ModelInfo
from mlserve.routing.router import Router


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

    def __init__(self, loader: HotSwapLoader) -> None:
        self.loader = loader
        self.router = Router(loader)
        self.monitor: Monitor | None = None
        """Fed every answered request (drift, prediction log); its `observe` never blocks."""

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.monotonic()
        served = self.router.pick(request.model, request.version)
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
        outputs = await served.batcher.submit(inputs, rows)
        names = request.outputs if request.outputs is not None else tuple(s.name for s in info.outputs)
        datatypes = {s.name: s.datatype for s in info.outputs}
        if self.monitor is not None:
            routed_by = "request" if request.version else "latest"
            self.monitor.observe(Observation(
                request.model, str(served.version), request.req_id, inputs, outputs,
                time.monotonic() - started, routed_by,
            ))
        return InferResponse(
            request.model, str(served.version), {n: outputs[n] for n in names},
            {n: datatypes[n] for n in names}, request.req_id,
        )
