"""API keys and per-key limits over gRPC: the `authorization` metadata, the same keys file and
scopes as HTTP, a real server started with --auth-keys."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlserve.examples import write_identity_onnx
from tests.server.test_auth import make_key
from tests.server_process import free_port, serving

X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    tokens = {
        "reader": make_key(keys_file, "reader", "--scopes", "infer"),
        "ops": make_key(keys_file, "ops", "--scopes", "infer,admin"),
        "metered": make_key(keys_file, "metered", "--scopes", "infer", "--rps", "1"),
    }
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "log"
    with serving(root, "--auth-keys", str(keys_file), "--grpc-port", str(port), log_path=log) as proc:
        proc.tokens, proc.grpc_target = tokens, f"127.0.0.1:{port}"
        yield proc


def _infer(server, token: str | None):
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(X)
    headers = {"authorization": f"Bearer {token}"} if token else None
    return grpcclient.InferenceServerClient(server.grpc_target).infer("identity", [inp], headers=headers)


def _refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as excinfo:
        call()
    return excinfo.value


def test_health_is_open_and_inference_needs_a_key(secured):
    client = grpcclient.InferenceServerClient(secured.grpc_target)
    assert client.is_server_live() and client.is_server_ready()
    error = _refused(lambda: _infer(secured, None))
    assert error.status() == "StatusCode.UNAUTHENTICATED" and "API key is required" in error.message()
    error = _refused(lambda: _infer(secured, secured.tokens["reader"] + "x"))
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    np.testing.assert_array_equal(_infer(secured, secured.tokens["reader"]).as_numpy("y"), X)


def test_repository_calls_need_the_admin_scope(secured):
    client = grpcclient.InferenceServerClient(secured.grpc_target)
    reader = {"authorization": f"Bearer {secured.tokens['reader']}"}
    error = _refused(lambda: client.get_model_repository_index(headers=reader))
    assert error.status() == "StatusCode.PERMISSION_DENIED" and "'admin'" in error.message()
    ops = {"authorization": f"Bearer {secured.tokens['ops']}"}
    index = client.get_model_repository_index(headers=ops, as_json=True)["models"]
    assert [m["name"] for m in index] == ["identity"]


def test_per_key_rate_limit_holds(secured):
    outcomes = []
    for _ in range(4):
        try:
            _infer(secured, secured.tokens["metered"])
            outcomes.append("ok")
        except InferenceServerException as error:
            assert "rate" in error.message() or "per second" in error.message(), error.message()
            outcomes.append(error.status())
    assert outcomes[0] == "ok" and "StatusCode.RESOURCE_EXHAUSTED" in outcomes
