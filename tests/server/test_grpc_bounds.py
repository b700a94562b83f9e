"""gRPC's request-level bounds against a real server and grpc's own clients: a stream that is never
read holds a bounded number of requests, a stream's key is checked again after a keys-file reload,
and malformed requests are INVALID_ARGUMENT, never INTERNAL or UNKNOWN."""

from __future__ import annotations

import queue
import signal
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlserve.examples import write_identity_onnx
from mlserve.server.proto import grpc_service_pb2 as pb
from mlserve.server.proto import grpc_service_pb2_grpc as pb_grpc
from tests.server.http import call, metric_value, wait_for
from tests.server.test_auth import keys_cli, make_key
from tests.server_process import free_port, serving

WIDTH = 65536  # 256 KiB of FP32 per request and per answer
WINDOW = 4


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "wide" / "1" / "model.onnx", "FP32", width=WIDTH)
    write_identity_onnx(root / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    tokens = {"reader": make_key(keys_file, "reader", "--scopes", "infer"),
              "temp": make_key(keys_file, "temp", "--scopes", "infer")}
    config = tmp_path_factory.mktemp("config") / "mlserve.toml"
    config.write_text(f"[limits]\nmax_in_flight = {WINDOW}\ngrpc_stream_window = {WINDOW}\n"
                      "not_ready_when_saturated = true\n")
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "log"
    with serving(root, "--auth-keys", str(keys_file), "--grpc-port", str(port), "--config", str(config),
                 log_path=log) as proc:
        proc.tokens, proc.keys_file, proc.grpc_target = tokens, keys_file, f"127.0.0.1:{port}"
        yield proc


def _auth(server, name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {server.tokens[name]}"),)


def _request(model: str, width: int, req_id: str) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, id=req_id)
    message.inputs.add(name="x", datatype="FP32", shape=[1, width])
    message.raw_input_contents.append(np.full((1, width), 1.5, dtype=np.float32).tobytes())
    return message


def _unary(server, name: str = "reader") -> grpcclient.InferResult:
    inp = grpcclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    client = grpcclient.InferenceServerClient(server.grpc_target)
    return client.infer("identity", [inp], headers={"authorization": f"Bearer {server.tokens[name]}"})


def _unary_refused_for_load(server) -> bool:
    try:
        _unary(server)
    except InferenceServerException as error:
        assert error.status() == "StatusCode.UNAVAILABLE" and "in flight" in error.message(), error.message()
        return True
    return False


def _served(server, model: str) -> float:
    return metric_value(server.url, "mlserve_requests_total", model=model, protocol="grpc", code="200")


def _saturated(server) -> bool:
    """Every in-flight slot is held (`not_ready_when_saturated`): asked over the open health route,
    which takes no slot, so asking cannot make the stream's own requests find the server full."""
    return call(server.url + "/v2/health/ready").status == 503


def test_a_stream_that_is_never_read_holds_a_bounded_number_of_requests(guarded):
    """100 requests of 256 KiB and no reads: the stream's requests keep their in-flight slots until
    their answers are written (so the server's 4 slots fill and a unary call is refused), the server
    stops reading the stream, and so only a handful of requests are ever computed. Cancelling the
    stream gives every slot back."""
    channel = grpc.insecure_channel(guarded.grpc_target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    before = _served(guarded, "wide")
    stream = stub.ModelStreamInfer(iter([_request("wide", WIDTH, str(i)) for i in range(100)]),
                                   metadata=_auth(guarded, "reader"))
    try:
        wait_for(lambda: _saturated(guarded), "the unread stream to hold every in-flight slot")
        # A bound is shown over a span of time: 3 s in which the server, unbounded, would read and
        # compute all 100 (it does in under one).
        watch_until = time.monotonic() + 3
        while time.monotonic() < watch_until:
            served = _served(guarded, "wide") - before
            assert served <= WINDOW + 40, served
        assert served >= WINDOW and _unary_refused_for_load(guarded), "the stream's slots were given back unread"
    finally:
        stream.cancel()
        channel.close()
    wait_for(lambda: not _unary_refused_for_load(guarded), "the cancelled stream to give its slots back")


def _unary_status(server, name: str) -> str:
    try:
        _unary(server, name)
    except InferenceServerException as error:
        return error.status()
    return "OK"


def test_a_stream_is_refused_at_its_next_request_once_its_key_is_revoked(guarded):
    """Revoke + SIGHUP: unary calls are refused, and so is the open stream's next request (the stream
    ends with UNAUTHENTICATED), not only new streams."""
    outgoing: queue.Queue = queue.Queue()
    channel = grpc.insecure_channel(guarded.grpc_target)
    answers = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
        iter(outgoing.get, None), metadata=_auth(guarded, "temp"))
    try:
        outgoing.put(_request("identity", 3, "before"))
        first = next(answers)
        assert first.error_message == "" and first.infer_response.id == "before"
        done = keys_cli("revoke", "--file", str(guarded.keys_file), "temp")
        assert done.returncode == 0, done.stderr
        guarded.signal(signal.SIGHUP)
        wait_for(lambda: _unary_status(guarded, "temp") == "StatusCode.UNAUTHENTICATED", "the revocation to apply")
        outgoing.put(_request("identity", 3, "after"))
        with pytest.raises(grpc.RpcError) as caught:
            next(answers)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value
        assert "not valid" in caught.value.details()
    finally:
        outgoing.put(None)
        channel.close()
    assert _unary_status(guarded, "reader") == "OK"
