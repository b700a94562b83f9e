"""Counting answered inference requests, one way for every protocol: `mlserve_requests_total` by model,
version, protocol and final status, and the latency of the successful ones.

Label sets stay bounded: a model the server does not hold is counted as `_unknown` (a client cannot
grow the series by sending names), a version it does not hold as "". Bound children are kept for the
label sets seen, up to `MAX_BOUND`; past that they are looked up each time.
"""

from __future__ import annotations

import time
from typing import Any

from mlserve.dataplane.plane import DataPlane
from mlserve.monitor.metrics import Metrics
from mlserve.spec.version import version_number

MAX_BOUND = 4096
"""Label sets whose metric children are kept bound, per protocol."""


class RequestCounter:
    """Counts each answered request once, with its final status, under one protocol's label."""

    def __init__(self, plane: DataPlane, metrics: Metrics, protocol: str) -> None:
        self._plane = plane
        self._metrics = metrics
        self._protocol = protocol
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def count(self, model: str, version: str, code: int, started: float) -> None:
        """One answered request; `started` is its time.monotonic() at arrival (latency is kept for 200s)."""
        children = self._children.get((model, version, code))
        if children is None:
            children = self._bind(model, version, code)
        children[0].inc()
        if code == 200:
            children[1].observe(time.monotonic() - started)

    def _bind(self, model: str, version: str, code: int) -> tuple[Any, Any]:
        served = self._plane.find(model)
        label_model, label_version = model, version
        if served is None:
            label_model, label_version = "_unknown", ""
        elif version_number(version) not in served.versions:
            label_version = ""
        children = (
            self._metrics.requests.labels(label_model, label_version, self._protocol, str(code)),
            self._metrics.request_latency.labels(label_model, label_version),
        )
        if served is not None and len(self._children) < MAX_BOUND:
            self._children[(model, version, code)] = children
        return children
