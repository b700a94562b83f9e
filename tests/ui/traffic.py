"""Traffic for the status page tests: split requests with feedback, a shifted feature, one completion."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np

SHIFTED_COLUMN = 2
DRIFT_ROWS = 300


@dataclass
class Driven:
    """What was sent, counted on the client side."""

    mlp_by_version: dict[str, int] = field(default_factory=dict)
    drifty_x: np.ndarray | None = None


def call(url: str, body=None, method: str | None = None, token: str | None = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _infer_body(x: np.ndarray, req_id: str) -> dict:
    return {"id": req_id, "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                      "data": x.ravel().tolist()}]}


def drive(url: str, token: str | None = None, num_mlp: int = 40, with_llm: bool = True) -> Driven:
    driven = Driven()
    rng = np.random.default_rng(5)
    for i in range(num_mlp):
        status, body, _ = call(f"{url}/v2/models/mlp/infer", _infer_body(rng.random((1, 768), np.float32), f"r{i}"),
                               token=token)
        assert status == 200, body
        version = body["model_version"]
        driven.mlp_by_version[version] = driven.mlp_by_version.get(version, 0) + 1
        status, body, _ = call(f"{url}/v2/models/mlp/feedback", {"id": f"r{i}", "value": int(version == "2")},
                               token=token)
        assert status == 200, body
    x = rng.standard_normal((DRIFT_ROWS, 4)).astype(np.float32)
    x[:, SHIFTED_COLUMN] += 3.0
    for start in range(0, DRIFT_ROWS, 50):
        status, body, _ = call(f"{url}/v2/models/drifty/infer", _infer_body(x[start : start + 50], f"d{start}"),
                               token=token)
        assert status == 200, body
    driven.drifty_x = x
    if with_llm:
        status, body, _ = call(f"{url}/v1/completions", {"model": "tiny-gpt2", "prompt": "the sea is",
                                                         "max_tokens": 8, "temperature": 0}, token=token)
        assert status == 200, body
    return driven


def wait_for(predicate, url: str, token: str | None = None, timeout: float = 30.0) -> dict:
    """Poll GET /status until predicate(overview) holds; the last overview on timeout fails the test."""
    deadline = time.monotonic() + timeout
    overview = None
    while time.monotonic() < deadline:
        status, overview, _ = call(f"{url}/status", token=token)
        assert status == 200, overview
        if predicate(overview):
            return overview
        time.sleep(0.2)
    raise AssertionError(f"/status never satisfied the condition in {timeout} s: {json.dumps(overview)[:3000]}")


def model(overview: dict, name: str) -> dict:
    return next(m for m in overview["models"] if m["name"] == name)


def version(overview: dict, name: str, v: str) -> dict:
    return next(x for x in model(overview, name)["versions"] if x["version"] == v)
