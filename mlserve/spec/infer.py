"""The words of an inference request, whatever protocol brought it: the decoded request, its answer,
a model's metadata, and the one request parameter the codecs check (Triton's `classification`).
Plain data: the protocol layers build them, the data plane answers them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from mlserve.errors import InvalidInput
from mlserve.spec.schedule import SchedulePolicy
from mlserve.spec.tensor import ModelInfo


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
    """Parameters not decoded into typed fields; only the routed model's sticky-key parameter may be here."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """HTTP headers, for a sticky routing key taken from a header."""
    policy: SchedulePolicy = field(default_factory=SchedulePolicy)
    """Priority, queue timeout and deadline, decoded once by the protocol layer."""
    class_counts: Mapping[str, int] = field(default_factory=dict)
    """Outputs to answer as their top k classes (Triton's classification extension), by name."""


@dataclass(frozen=True, slots=True)
class InferResponse:
    """Outputs by name, and which version produced them."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What v2's and gRPC's model metadata say of a model: its ready versions and the tensors of the
    version asked for (the default version when none was)."""

    name: str
    versions: tuple[str, ...]
    info: ModelInfo


def class_counts_from(name: str, parameters: Mapping[str, Any]) -> int | None:
    """The `classification` parameter of one requested output: a positive integer, or None."""
    k = parameters.get("classification")
    if k is None:
        return None
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"output {name!r}: 'classification' must be a positive integer, got {k!r}")
    return k
