"""Plain HTTP for the hardening tests: status, headers and JSON of any answer, errors included."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(url: str, body: Any = None, headers: dict[str, str] | None = None, method: str | None = None,
         timeout: float = 30, context=None) -> Answer:
    if body is None or isinstance(body, bytes) or hasattr(body, "__next__"):
        data = body  # an iterator goes out chunked, with no Content-Length
    else:
        data = json.dumps(body).encode()
    if data is not None:  # urllib would say form-urlencoded, which the server refuses (415)
        headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return Answer(resp.status, dict(resp.headers), _decode(resp.read()))
    except urllib.error.HTTPError as err:
        return Answer(err.code, dict(err.headers), _decode(err.read()))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def infer_body(x: np.ndarray, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}
    if parameters:
        body["parameters"] = parameters
    return body


def output(answer: Answer, name: str = "y") -> np.ndarray:
    out = next(o for o in answer.body["outputs"] if o["name"] == name)
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def metric_value(base_url: str, name: str, **labels: str) -> float:
    """One sample from /metrics (0 when absent), read with Prometheus's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.02) -> None:
    """Poll until `predicate()` is true; fail naming `what` after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def num_running(base_url: str, model: str) -> float:
    """Requests of `model` that a worker has taken (in flight, not waiting in the queue)."""
    in_flight = metric_value(base_url, "mlserve_in_flight_requests", model=model)
    return in_flight - metric_value(base_url, "mlserve_queue_depth", model=model)
