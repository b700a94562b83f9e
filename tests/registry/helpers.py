"""Tiny versioned models whose outputs say which version answered, a load generator, HTTP helpers."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mlserve.examples import _model, _save

WIDTH = 4
MODEL_TOML = """\
max_batch_size = 8
max_queue_delay_us = 500
version_policy = { latest = 1 }

[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 4]
"""


def version_offset(version: int) -> np.ndarray:
    """Per-version weights: every version adds a different vector."""
    return (np.arange(WIDTH, dtype=np.float32) + 1) * np.float32(10 * version)


def write_version(root: Path, model: str, version: int, width: int = WIDTH) -> Path:
    """root/model/version/model.onnx computing y = x + version_offset(version), x: FP32 [-1, width]."""
    from onnx import TensorProto, helper, numpy_helper

    offset = np.resize(version_offset(version), width).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], f"{model}_v{version}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(offset, "c")],
    )
    path = root / model / str(version) / "model.onnx"
    _save(_model(graph), path)
    return path


def write_model(root: Path, model: str, versions: list[int], toml: str = MODEL_TOML) -> None:
    for version in versions:
        write_version(root, model, version)
    (root / model / "model.toml").write_text(toml)


def reference(root: Path, model: str, version: int, x: np.ndarray) -> np.ndarray:
    """The version's output from onnxruntime directly (the file as written, before the server saw it)."""
    session = ort.InferenceSession(str(root / model / str(version) / "model.onnx"))
    return session.run(None, {"x": x})[0]


def infer_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def post(url: str, body: bytes | str = b"", timeout: float = 60) -> tuple[int, dict | list]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def infer(url: str, model: str, x: np.ndarray) -> tuple[int, dict]:
    return post(f"{url}/v2/models/{model}/infer", infer_body(x))


def index(url: str) -> list[dict]:
    return post(f"{url}/v2/repository/index", '{"reload": false}')[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


@dataclass(slots=True)
class Answer:
    """One request as the load generator saw it."""

    sent_at: float
    done_at: float
    status: int
    version: int | None
    output: np.ndarray | None
    error: str = ""


@dataclass
class LoadGenerator:
    """Threads that keep sending unversioned requests over keep-alive connections until stopped."""

    port: int
    model: str
    x: np.ndarray
    num_threads: int = 6
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.num_threads)]
        self._body = infer_body(self.x)
        self._live: list[list[Answer]] = []

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def answers_live(self) -> list[Answer]:
        """Answers so far, while the threads still run."""
        with self._lock:
            return [a for part in self._live for a in list(part)]

    def wait_answers(self, count: int, since: float = 0.0, timeout: float = 60.0) -> None:
        """Block until `count` requests sent after `since` (time.monotonic) have their answers."""
        deadline = time.monotonic() + timeout
        while (seen := sum(a.sent_at > since for a in self.answers_live())) < count:
            assert time.monotonic() < deadline, f"{seen} of {count} answers after {timeout} s"
            time.sleep(0.01)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        mine: list[Answer] = []
        with self._lock:
            self._live.append(mine)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                conn.request("POST", f"/v2/models/{self.model}/infer", self._body,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = json.loads(resp.read())
                done = time.monotonic()
                if resp.status == 200:
                    first = payload["outputs"][0]
                    out = np.asarray(first["data"], np.float32).reshape(first["shape"])
                    mine.append(Answer(sent, done, 200, int(payload["model_version"]), out))
                else:
                    mine.append(Answer(sent, done, resp.status, None, None, str(payload)))
            except Exception as exc:  # a dropped connection is a failure too
                mine.append(Answer(sent, time.monotonic(), 0, None, None, f"{type(exc).__name__}: {exc}"))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()
        with self._lock:
            self.answers.extend(mine)
