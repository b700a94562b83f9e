"""SIGTERM: stop accepting, finish what is in flight, exit 0."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
import urllib.error
import urllib.request

from tests.server.fault_models import WaitForFile, set_flag, write_model
from tests.server.http import metric_value, wait_for
from tests.server_process import MlserveProcess

NUM_REQUESTS = 4


def _infer(url: str) -> tuple[int, float]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]})
    req = urllib.request.Request(f"{url}/v2/models/held/infer", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, time.monotonic()
    except urllib.error.HTTPError as err:
        return err.code, time.monotonic()


def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path):
    """The model holds every batch until the test releases it, after SIGTERM: one request runs and
    three wait in the queue when the signal arrives, and all four must still be answered."""
    flag = tmp_path / "release"
    set_flag(flag, b"\x00")
    repo = tmp_path / "repo"
    write_model(repo, "held", WaitForFile(str(flag)), max_batch_size=0)
    server = MlserveProcess(repo, log_path=tmp_path / "log").wait_ready()
    try:
        with concurrent.futures.ThreadPoolExecutor(NUM_REQUESTS) as pool:
            futures = [pool.submit(_infer, server.url) for _ in range(NUM_REQUESTS)]
            wait_for(lambda: metric_value(server.url, "mlserve_queue_depth", model="held") == NUM_REQUESTS - 1,
                     "one request running, three queued")
            server.signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            wait_for(lambda: "stopping: not ready" in server.log(), "the server to act on SIGTERM")
            assert not any(f.done() for f in futures), "a request was answered while the model was held"
            set_flag(flag, b"\x01")
            results = [f.result() for f in futures]
    finally:
        set_flag(flag, b"\x01")
        code = server.stop()
    assert code == 0, server.log()
    assert [status for status, _ in results] == [200] * NUM_REQUESTS, (results, server.log())
    assert all(done > signalled_at for _, done in results)
    assert "stopped" in server.log()
