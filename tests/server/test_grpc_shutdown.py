"""SIGTERM with gRPC calls in flight: they finish, new calls are refused, the process exits 0."""

from __future__ import annotations

import concurrent.futures
import signal

import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.server.fault_models import WaitForFile, set_flag, write_model
from tests.server.http import call, wait_for
from tests.server_process import MlserveProcess, free_port


def _queued(url: str) -> float:
    for family in text_string_to_metric_families(call(f"{url}/metrics").body):
        for sample in family.samples:
            if sample.name == "mlserve_queue_depth" and sample.labels.get("model") == "held":
                return sample.value
    return 0.0



def test_sigterm_finishes_in_flight_grpc_calls(tmp_path):
    """The model holds every call until the test releases it after SIGTERM: one runs and three wait
    when the signal arrives, and all four are still answered."""
    flag = tmp_path / "release"
    set_flag(flag, b"\x00")
    write_model(tmp_path / "repo", "held", WaitForFile(str(flag)), max_batch_size=0)
    port = free_port()
    server = MlserveProcess(tmp_path / "repo", "--grpc-port", str(port), log_path=tmp_path / "log").wait_ready()
    target = f"127.0.0.1:{port}"
    x = np.arange(3, dtype=np.float32).reshape(1, 3)

    def infer_held() -> np.ndarray:
        inp = grpcclient.InferInput("x", [1, 3], "FP32")
        inp.set_data_from_numpy(x)
        return grpcclient.InferenceServerClient(target).infer("held", [inp], client_timeout=120).as_numpy("y")

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(infer_held) for _ in range(4)]
            wait_for(lambda: _queued(server.url) == 3, "one call running and three queued")
            server.signal(signal.SIGTERM)
            wait_for(lambda: "stopping: not ready" in server.log(), "the server to act on SIGTERM")
            assert not any(f.done() for f in futures), "a call was answered while the model was held"
            set_flag(flag, b"\x01")
            results = [f.result(timeout=120) for f in futures]
    finally:
        set_flag(flag, b"\x01")
        code = server.stop()
    assert code == 0, server.log()
    for y in results:
        np.testing.assert_array_equal(y, x * 2)
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
