"""Placement through a real server on a machine without a GPU: a model asking for cuda is UNAVAILABLE
with the reason, `auto` runs on the CPU (and says so in /status and in Triton's model config), and a
model.toml that sets GPU memory for a CPU model is refused naming the key."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from tests.registry.helpers import MODEL_TOML, WIDTH, index, infer, reference, write_model
from tests.server_process import serving

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-a-GPU answers")


def test_device_requests_are_honoured_or_refused_with_the_reason(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "on_gpu", [1], 'device = "cuda:1"\n' + MODEL_TOML)
    write_model(repo, "anywhere", [1], 'device = "auto"\ngpu_memory_mb = 256\n' + MODEL_TOML)
    write_model(repo, "default", [1])
    write_model(repo, "contradiction", [1], 'device = "cpu"\ngpu_memory_mb = 256\n' + MODEL_TOML)
    with serving(repo, "--device", "auto", "--gpu-memory-fraction", "0.8", log_path=tmp_path / "log") as server:
        rows = {row["name"]: row for row in index(server.url)}
        assert rows["on_gpu"]["state"] == "UNAVAILABLE"
        assert rows["on_gpu"]["reason"] == ("placement failed: device is cuda:1 but mlserve sees no such GPU "
                                            "(visible: none)")
        assert rows["contradiction"]["state"] == "UNAVAILABLE"
        assert "gpu_memory_mb is set but device is cpu" in rows["contradiction"]["reason"]
        x = np.random.default_rng(3).standard_normal((3, WIDTH)).astype(np.float32)
        for name in ("anywhere", "default"):
            assert rows[name]["state"] == "READY"
            status, body = infer(server.url, name, x)
            assert status == 200, body
            np.testing.assert_array_equal(np.asarray(body["outputs"][0]["data"], np.float32).reshape(x.shape),
                                          reference(repo, name, 1, x))
        with urllib.request.urlopen(f"{server.url}/status") as resp:
            overview = json.loads(resp.read())
        devices = {m["name"]: [(v["device"], v["gpu_memory_bytes"]) for v in m["versions"]] for m in overview["models"]}
        assert devices["anywhere"] == [("cpu", 0)] and devices["default"] == [("cpu", 0)]
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        config = client.get_model_config("anywhere")
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        assert config["parameters"]["device"]["string_value"] == "cpu"
        assert "model anywhere version 1 ready (startup; onnxruntime_onnx on cpu" in server.log()
