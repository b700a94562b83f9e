"""SIGTERM: stop accepting, finish what is in flight, exit 0."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.server.fault_models import WaitForFile, write_model
from tests.server_process import MlserveProcess

NUM_REQUESTS = 4


def _infer(url: str) -> tuple[int, float]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]})
    req = urllib.request.Request(f"{url}/v2/models/held/infer", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, time.monotonic()
    except urllib.error.HTTPError as err:
        return err.code, time.monotonic()


def _queue_depth(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlserve_queue_depth" and sample.labels.get("model") == "held":
                return sample.value
    return 0.0


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _set_flag(path, value: bytes) -> None:
    staged = path.with_suffix(".staged")
    staged.write_bytes(value)
    os.replace(staged, path)


def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path):
    """The model holds every batch until the test releases it, after SIGTERM: one request runs and
    three wait in the queue when the signal arrives, and all four must still be answered."""
    flag = tmp_path / "release"
    _set_flag(flag, b"\x00")
    repo = tmp_path / "repo"
    write_model(repo, "held", WaitForFile(str(flag)), max_batch_size=0)
    server = MlserveProcess(repo, log_path=tmp_path / "log").wait_ready()
    try:
        with concurrent.futures.ThreadPoolExecutor(NUM_REQUESTS) as pool:
            futures = [pool.submit(_infer, server.url) for _ in range(NUM_REQUESTS)]
            _wait_for(lambda: _queue_depth(server.url) == NUM_REQUESTS - 1, "one request running, three queued")
            server.signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            _wait_for(lambda: "stopping: not ready" in server.log(), "the server to act on SIGTERM")
            assert not any(f.done() for f in futures), "a request was answered while the model was held"
            _set_flag(flag, b"\x01")
            results = [f.result() for f in futures]
    finally:
        _set_flag(flag, b"\x01")
        code = server.stop()
    assert code == 0, server.log()
    assert [status for status, _ in results] == [200] * NUM_REQUESTS, (results, server.log())
    assert all(done > signalled_at for _, done in results)
    assert "stopped" in server.log()
