"""The fast lane as a front on the internet: keep-alive and pipelining, hand-over of what it does not
serve, size refused before reading, slow heads and bodies, slow readers, the connection bound and
the drain on SIGTERM. A real mlserve process, a raw socket per client."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest

from mlserve.examples import write_identity_onnx
from tests.server.fault_models import WaitForFile, set_flag, write_model
from tests.server.http import metric_value, wait_for
from tests.server.raw_http import RawConnection, request_bytes
from tests.server_process import MlserveProcess

FP32 = "/v2/models/identity_fp32/infer"
TIMEOUTS = {"MLSERVE_SERVER_HEADER_TIMEOUT_S": "1", "MLSERVE_SERVER_BODY_TIMEOUT_S": "1",
            "MLSERVE_SERVER_KEEPALIVE_TIMEOUT_S": "3", "MLSERVE_SERVER_MAX_CONNECTIONS": "24",
            "MLSERVE_SERVER_MAX_BODY_BYTES": str(8 << 20)}


def infer(req_id: str, rows: int = 1) -> bytes:
    body = {"id": req_id, "inputs": [{"name": "x", "shape": [rows, 3], "datatype": "FP32", "data": [0.5] * 3 * rows}]}
    return request_bytes("POST", FP32, json.dumps(body).encode())


BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).encode()


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:])) + b"0\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "identity_fp32" / "1" / "model.onnx", "FP32")
    (root / "identity_fp32" / "model.toml").write_text("max_batch_size = 0\n")  # large requests, one run each
    proc = MlserveProcess(root, log_path=tmp_path_factory.mktemp("logs") / "log", env=TIMEOUTS).wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def _lane_connections(server) -> float:
    return metric_value(server.url, "mlserve_http_connections_total", front="lane")


def test_keep_alive_serves_many_requests_on_one_lane_connection(server):
    before = _lane_connections(server)
    conn = RawConnection(server.port)
    ids = [json.loads(conn.call(infer(f"k{i}")).body)["id"] for i in range(20)]
    conn.close()
    assert ids == [f"k{i}" for i in range(20)]
    wait_for(lambda: _lane_connections(server) == before + 1, "the connection to have been the lane's to its end")


def test_pipelined_requests_are_answered_in_order_across_the_hand_over(server):
    """Lane requests, then one for aiohttp, then more: all in one write, all answered in order."""
    conn = RawConnection(server.port)
    conn.send(b"".join([infer("p0"), infer("p1", rows=50), infer("p2"), request_bytes("GET", "/v2/health/live"),
                        infer("p3"), infer("p4")]))
    answers = [conn.read_answer() for _ in range(6)]
    conn.close()
    assert [a.status for a in answers] == [200] * 6
    assert [json.loads(a.body).get("id") for a in answers] == ["p0", "p1", "p2", None, "p3", "p4"]
    assert json.loads(answers[3].body) == {"live": True}


@pytest.mark.parametrize("raw", [
    request_bytes("POST", FP32, b"", {"Transfer-Encoding": "chunked"}) + _chunked(BODY),
    request_bytes("POST", FP32, BODY, {"Expect": "100-continue"}),
    request_bytes("POST", FP32, BODY, version="HTTP/1.0"),
    request_bytes("POST", FP32.replace("identity_fp32", "identity%5Ffp32"), BODY),
], ids=["chunked", "expect-100", "http-1.0", "percent-encoded path"])
def test_what_the_lane_does_not_serve_aiohttp_answers(server, raw):
    conn = RawConnection(server.port)
    answer = conn.call(raw)
    if answer.status == 100:
        answer = conn.read_answer()
    conn.close()
    assert answer.status == 200, answer
    assert json.loads(answer.body)["outputs"][0]["data"] == [1.0, 2.0, 3.0]


def test_a_body_over_the_limit_is_refused_from_its_head_and_the_connection_closed(server):
    conn = RawConnection(server.port)
    answer = conn.call(request_bytes("POST", FP32, headers={"Content-Length": str(1 << 30)}))
    assert answer.status == 413 and answer.headers["connection"] == "close"
    assert conn.is_closed_by_server()


def test_a_slow_head_gets_408_and_is_closed(server):
    conn = RawConnection(server.port, timeout=15)
    conn.send(b"POST " + FP32.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    answer = conn.read_answer()
    assert answer.status == 408 and b"request head" in answer.body
    assert time.monotonic() - started < 5
    assert conn.is_closed_by_server()


def test_a_stalled_body_gets_408_and_is_closed(server):
    conn = RawConnection(server.port, timeout=15)
    conn.send(request_bytes("POST", FP32, headers={"Content-Length": "100"}) + b'{"inputs": ')
    answer = conn.read_answer()
    assert answer.status == 408 and b"request body" in answer.body
    assert conn.is_closed_by_server()


def test_an_idle_keep_alive_connection_is_closed(server):
    conn = RawConnection(server.port, timeout=15)
    assert conn.call(infer("idle")).status == 200
    started = time.monotonic()
    assert conn.is_closed_by_server()
    assert 2 < time.monotonic() - started < 8


def test_a_client_that_does_not_read_stops_being_served(server):
    """Pipelined requests whose answers are larger than they are, never read: once the transport's
    write buffer is over its mark the lane stops reading and serving, so the server answers only
    what the socket buffers hold (without backpressure it would serve all and buffer every answer);
    once the client reads, every answer arrives."""
    values = np.full((4000, 3), 0.123456789, dtype=np.float32)  # 48 KB in binary, ~130 KB as JSON
    header = json.dumps({"inputs": [{"name": "x", "shape": [4000, 3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": values.nbytes}}]}).encode()
    request = request_bytes("POST", FP32, header + values.tobytes(), {"Inference-Header-Content-Length": str(len(header))})
    total = 300
    before = _answered(server)
    conn = RawConnection(server.port, timeout=60, rcvbuf=32 * 1024)
    sender = threading.Thread(target=conn.sock.sendall, args=(request * total,))
    sender.start()
    wait_for(lambda: _answered(server) > before, "the first answers")
    wait_for(lambda: _is_steady(lambda: _answered(server)), "the server to stop serving a client that reads nothing")
    assert _answered(server) - before < total / 2
    assert [conn.read_answer().status for _ in range(total)] == [200] * total
    sender.join()
    conn.close()


def _answered(server) -> float:
    return metric_value(server.url, "mlserve_requests_total", model="identity_fp32", code="200")


def _is_steady(read, for_s: float = 1.0) -> bool:
    first = read()
    time.sleep(for_s)
    return read() == first


def test_connections_past_the_bound_get_503_and_are_closed(server):
    held = [RawConnection(server.port) for _ in range(24)]
    try:
        for conn in held[:2]:  # one lane connection handed to aiohttp counts as well
            conn.call(request_bytes("GET", "/v2/health/live"))
        extra = RawConnection(server.port)
        answer = extra.read_answer()
        assert answer.status == 503 and b"24 connections" in answer.body and answer.headers["retry-after"] == "1"
        assert extra.is_closed_by_server()
    finally:
        for conn in held:
            conn.close()
    wait_for(lambda: _status_on_new_connection(server) == 200, "a new connection to be taken once others closed")


def _status_on_new_connection(server) -> int:
    conn = RawConnection(server.port)
    try:
        return conn.call(infer("after")).status
    finally:
        conn.close()


def test_sigterm_answers_in_flight_lane_requests_and_closes_idle_connections(tmp_path):
    flag = tmp_path / "release"
    set_flag(flag, b"\x00")
    repo = tmp_path / "repo"
    write_model(repo, "held", WaitForFile(str(flag)), max_batch_size=0)
    server = MlserveProcess(repo, log_path=tmp_path / "log").wait_ready()
    try:
        idle = RawConnection(server.port, timeout=10)
        busy = RawConnection(server.port)
        body = json.dumps({"id": "held", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                      "data": [1.0, 2.0, 3.0]}]}).encode()
        busy.send(request_bytes("POST", "/v2/models/held/infer", body))
        wait_for(lambda: metric_value(server.url, "mlserve_in_flight_requests", model="held") == 1,
                 "the held request to be running")
        server.signal(signal.SIGTERM)
        assert idle.is_closed_by_server()
        set_flag(flag, b"\x01")
        answer = busy.read_answer()
        assert answer.status == 200 and json.loads(answer.body)["id"] == "held"
        assert answer.headers["connection"] == "close"
        assert busy.is_closed_by_server()
    finally:
        set_flag(flag, b"\x01")
        code = server.stop()
    assert code == 0, server.log()
