"""SIGTERM with gRPC calls in flight: they finish, new calls are refused, the process exits 0."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.server.http import call
from tests.server_process import MlserveProcess, free_port


def _queued(url: str) -> float:
    for family in text_string_to_metric_families(call(f"{url}/metrics").body):
        for sample in family.samples:
            if sample.name == "mlserve_queue_depth" and sample.labels.get("model") == "slow":
                return sample.value
    return 0.0


def test_sigterm_finishes_in_flight_grpc_calls(test_repo, tmp_path):
    port = free_port()
    server = MlserveProcess(test_repo, "--grpc-port", str(port), log_path=tmp_path / "log").wait_ready()
    target = f"127.0.0.1:{port}"

    def infer_slow() -> np.ndarray:
        inp = grpcclient.InferInput("x", [1, 1024], "FP32")
        inp.set_data_from_numpy(np.ones((1, 1024), np.float32))
        return grpcclient.InferenceServerClient(target).infer("slow", [inp], client_timeout=120).as_numpy("y")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(infer_slow) for _ in range(4)]
        deadline = time.monotonic() + 30
        while _queued(server.url) < 2:  # one running, the others waiting behind it
            assert time.monotonic() < deadline, "the slow calls never queued"
            time.sleep(0.02)
        code = server.stop()
        results = [f.result(timeout=120) for f in futures]
    assert code == 0, server.log()
    for y in results:
        np.testing.assert_allclose(y, np.ones((1, 1024), np.float32))  # the slow model is x @ I, repeated
    assert "stopped" in server.log()


def test_a_grpc_port_in_use_is_a_one_line_error_and_exit_2(tmp_path):
    import socket
    import subprocess
    import sys

    from mlserve.examples import write_identity_onnx
    from tests.server_process import ROOT

    write_identity_onnx(tmp_path / "repo" / "m" / "1" / "model.onnx", "FP32")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "mlserve", "start", "--models", str(tmp_path / "repo"), "--port", str(free_port()),
             "--grpc-port", str(port)], capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"gRPC cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
