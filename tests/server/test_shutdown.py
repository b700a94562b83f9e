"""SIGTERM: stop accepting, finish what is in flight, exit 0."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

from tests.server_process import MlserveProcess


def _infer_slow(url: str) -> tuple[int, float]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [1.0] * 1024}]})
    req = urllib.request.Request(f"{url}/v2/models/slow/infer", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, time.monotonic()
    except urllib.error.HTTPError as err:
        return err.code, time.monotonic()


def test_sigterm_finishes_in_flight_requests_and_exits_zero(test_repo, tmp_path):
    server = MlserveProcess(test_repo, log_path=tmp_path / "log").wait_ready()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_infer_slow, server.url) for _ in range(4)]
        time.sleep(0.15)  # let them be accepted and queued behind the slow model
        signalled_at = time.monotonic()
        code = server.stop()
        results = [f.result() for f in futures]
    assert code == 0, server.log()
    assert [status for status, _ in results] == [200] * 4, (results, server.log())
    assert any(done > signalled_at for _, done in results), "no request was still in flight at SIGTERM"
    assert "stopped" in server.log()
