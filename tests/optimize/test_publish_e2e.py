"""`mlserve optimize` end to end: the CLI publishes a version that a real server picks up and serves
under load with no failed request; the gate turns a lossy candidate away and publishes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import torch
import tritonclient.http as httpclient

from tests.optimize.models import network, write_data, write_onnx, write_torchscript
from tests.server.http import call, infer_body
from tests.server_process import ROOT, serving


def _optimize(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mlserve", "optimize", "--timing-s", "0.1", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _wait_ready(url: str, version: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if call(f"{url}/v2/models/tiny/versions/{version}/ready").status == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"version {version} not ready after {timeout} s")


class _Load:
    """Unversioned requests from two threads until stopped; counts answers that were not 200."""

    def __init__(self, url: str, x: np.ndarray) -> None:
        self.url, self.body = url, infer_body(x[:4])
        self.num_ok = self.num_failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(2)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            ok = call(f"{self.url}/v2/models/tiny/infer", self.body).status == 200
            self.num_ok, self.num_failed = self.num_ok + ok, self.num_failed + (not ok)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def test_published_version_serves_under_load_and_carries_its_record(tmp_path):
    repo = tmp_path / "models"
    write_torchscript(repo)
    data = write_data(tmp_path / "val.npz")
    x = np.load(data)["x"]
    with serving(repo, log_path=tmp_path / "server.log") as server:
        with _Load(server.url, x) as load:
            done = _optimize("--models", str(repo), "--model", "tiny", "--data", str(data),
                             "--passes", "int8_dynamic", "--max-top1-drop", "0.05")
            assert done.returncode == 0, done.stderr
            assert "published" in done.stdout and "as version 2" in done.stdout, done.stdout
            server.signal(__import__("signal").SIGHUP)
            _wait_ready(server.url, 2)
            served_before = load.num_ok
            deadline = time.monotonic() + 30
            while load.num_ok < served_before + 50 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert load.num_failed == 0 and load.num_ok >= served_before + 50
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        request = httpclient.InferInput("x", list(x[:32].shape), "FP32")
        request.set_data_from_numpy(x[:32])
        got = client.infer("tiny", [request], model_version="2").as_numpy("y")
    folder = repo / "tiny" / "2"
    record = json.loads((folder / "optimization.json").read_text())
    assert record["source_version"] == 1 and record["backend"] == "onnx"
    assert record["winner"] in ("export", "int8_dynamic") and record["passes"][0] == "export"
    assert {c["name"] for c in record["candidates"]} == {"source", "export", "int8_dynamic"}
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"x": x[:32]})[0], atol=1e-5)
    with torch.no_grad():
        want = network()(torch.from_numpy(x[:32])).numpy()
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.95
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


def test_gate_rejects_a_lossy_candidate_and_publishes_nothing(tmp_path):
    repo = tmp_path / "models"
    write_onnx(repo)
    data = write_data(tmp_path / "val.npz", with_labels=True)
    done = _optimize("--models", str(repo), "--model", "tiny_onnx", "--data", str(data),
                     "--passes", "prune", "--sparsity", "0.9", "--max-top1-drop", "0.001")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "prune | rejected" in done.stdout and "nothing published" in done.stdout, done.stdout
    assert "top-1 agreement" in done.stdout
    assert sorted(p.name for p in (repo / "tiny_onnx").iterdir()) == ["1", "model.toml"]


def test_bad_flags_and_data_are_refused_by_name(tmp_path):
    repo = tmp_path / "models"
    write_onnx(repo)
    bad = _optimize("--models", str(repo), "--model", "tiny_onnx", "--passes", "export,warp")
    assert bad.returncode == 2 and "warp" in bad.stderr
    np.savez(tmp_path / "wrong.npz", z=np.zeros((4, 16), np.float32))
    wrong = _optimize("--models", str(repo), "--model", "tiny_onnx", "--data", str(tmp_path / "wrong.npz"))
    assert wrong.returncode == 2 and "'z'" in wrong.stderr
    missing = _optimize("--models", str(repo), "--model", "tiny_onnx")
    assert missing.returncode == 2 and "--data" in missing.stderr
    write_torchscript(repo, "untrusted", trusted=False)
    untrusted = _optimize("--models", str(repo), "--model", "untrusted", "--data", str(tmp_path / "wrong.npz"))
    assert untrusted.returncode == 2 and "TorchScript artifacts can run code" in untrusted.stderr


def test_cli_rollout_makes_the_published_version_a_canary(tmp_path):
    repo = tmp_path / "models"
    write_torchscript(repo)
    data = write_data(tmp_path / "val.npz")
    with serving(repo, log_path=tmp_path / "server.log") as server:
        done = _optimize("--models", str(repo), "--model", "tiny", "--data", str(data), "--passes", "graph_opt",
                         "--rollout", "10,100", "--server", server.url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rollout of version 2 started at 10.0%" in done.stdout, done.stdout
        rollout = call(f"{server.url}/admin/models/tiny/rollout").body["rollout"]
        assert rollout["version"] == "2" and rollout["stable"] == "1" and rollout["status"] == "running"
        state = call(f"{server.url}/admin/models/tiny").body
        assert state["pinned"] is None and 2 in state["ready_versions"]
    bad = _optimize("--models", str(repo), "--model", "tiny", "--rollout", "50,10", "--server", "http://x")
    assert bad.returncode == 2 and "non-decreasing" in bad.stderr


def test_a_file_is_measured_and_nothing_is_published(tmp_path):
    repo = tmp_path / "models"
    folder = write_onnx(repo)
    data = write_data(tmp_path / "val.npz")
    done = _optimize("--file", str(folder / "model.onnx"), "--model", "tiny_onnx", "--data", str(data),
                     "--passes", "int8_dynamic", "--objective", "size", "--max-top1-drop", "0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| int8_dynamic | passed |" in done.stdout, done.stdout
    assert "best candidate: int8_dynamic (not published)" in done.stdout, done.stdout
    assert sorted(p.name for p in (repo / "tiny_onnx").iterdir()) == ["1", "model.toml"]
