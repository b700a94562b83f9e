"""Triton's statistics extension over HTTP and gRPC: counts equal the requests sent, both protocols
give the same numbers, and the JSON parses into Triton's ModelStatisticsResponse."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from mlserve.examples import write_identity_onnx
from tests.server.http import call
from tests.server_process import free_port, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "counted" / "1" / "model.onnx", "FP32")
    write_identity_onnx(root / "idle" / "1" / "model.onnx", "FP32")
    port = free_port()
    with serving(root, "--grpc-port", str(port), log_path=tmp_path_factory.mktemp("logs") / "log") as proc:
        proc.grpc_target = f"127.0.0.1:{port}"
        yield proc


def _send(server, num_http: int, num_grpc: int) -> None:
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    for i in range(num_http):  # one at a time: each request is its own batch
        inp = httpclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(np.full((2, 3), i, np.float32))
        http.infer("counted", [inp])
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    for i in range(num_grpc):
        inp = grpcclient.InferInput("x", [1, 3], "FP32")
        inp.set_data_from_numpy(np.full((1, 3), i, np.float32))
        grpc.infer("counted", [inp])


def test_counts_match_the_requests_sent_over_both_protocols(server):
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    before = http.get_inference_statistics("counted")["model_stats"][0]
    assert before["inference_count"] == 0 and before["execution_count"] == 0
    started_ms = time.time() * 1000
    _send(server, num_http=5, num_grpc=3)
    over_http = http.get_inference_statistics("counted")["model_stats"]
    assert [(s["name"], s["version"]) for s in over_http] == [("counted", "1")]
    stats = over_http[0]
    assert stats["inference_count"] == 5 * 2 + 3
    assert stats["execution_count"] == 8
    assert started_ms <= stats["last_inference"] <= time.time() * 1000
    infer = stats["inference_stats"]
    assert infer["success"]["count"] == 8 and infer["fail"]["count"] == 0
    assert infer["queue"]["count"] == 8 and infer["compute_infer"]["count"] == 8
    assert infer["success"]["ns"] >= infer["compute_infer"]["ns"] > 0
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]} == {1: 3, 2: 5}
    parsed = json_format.ParseDict({"model_stats": over_http}, service_pb2.ModelStatisticsResponse())
    assert parsed == grpc.get_inference_statistics("counted", "1")


def test_every_model_and_unknown_names(server):
    rows = call(f"{server.url}/v2/models/stats").body["model_stats"]
    assert [(r["name"], r["version"]) for r in rows] == [("counted", "1"), ("idle", "1")]
    assert call(f"{server.url}/v2/models/idle/versions/1/stats").body["model_stats"][0]["execution_count"] == 0
    assert call(f"{server.url}/v2/models/nope/stats").status == 404
    assert call(f"{server.url}/v2/models/idle/versions/9/stats").status == 404
    with pytest.raises(InferenceServerException) as excinfo:
        grpcclient.InferenceServerClient(server.grpc_target).get_inference_statistics("nope")
    assert excinfo.value.status() == "StatusCode.NOT_FOUND"
