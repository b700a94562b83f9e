"""Placement through a real server. Without a GPU: a model asking for cuda is UNAVAILABLE with the
reason, `auto` runs on the CPU (and says so in /status and in Triton's model config), and a model.toml
that sets GPU memory for a CPU model is refused naming the key. With one (marked gpu): `auto` lands on
the GPU, its memory is measured and exported, and a model larger than mlserve's share is refused with
the figures."""

from __future__ import annotations

import json
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import numpy as np
import pytest
import torch

from tests.registry.helpers import MODEL_TOML, WIDTH, index, infer, reference, write_model
from tests.server_process import serving

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-a-GPU answers")
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
        import tritonclient.http as httpclient  # here: the GPU check's machine runs the gpu test alone, without it

        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        config = client.get_model_config("anywhere")
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        assert config["parameters"]["device"]["string_value"] == "cpu"
        assert "model anywhere version 1 ready (startup; onnxruntime_onnx on cpu" in server.log()


def _gpu_memory(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"{url}/metrics") as resp:
        text = resp.read().decode()
    return {(s.labels["model"], s.labels["device"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "mlserve_model_gpu_memory_bytes"}


@pytest.mark.gpu
def test_on_a_gpu_auto_places_measures_and_refuses_what_does_not_fit(tmp_path):
    from mlserve.examples import MLP_TS_TOML, write_mlp_torchscript

    repo = tmp_path / "repo"
    total_mb = torch.cuda.mem_get_info(0)[1] / 2**20
    write_mlp_torchscript(repo / "anywhere" / "1" / "model.pt", seed=1)
    (repo / "anywhere" / "model.toml").write_text('device = "auto"\n' + MLP_TS_TOML)
    write_mlp_torchscript(repo / "too_big" / "1" / "model.pt", seed=1)
    (repo / "too_big" / "model.toml").write_text(f'device = "cuda"\ngpu_memory_mb = {total_mb * 0.6:.0f}\n' + MLP_TS_TOML)
    with serving(repo, "--gpu-memory-fraction", "0.5", log_path=tmp_path / "log") as server:
        rows = {row["name"]: row for row in index(server.url)}
        assert rows["anywhere"]["state"] == "READY", rows
        assert rows["too_big"]["state"] == "UNAVAILABLE"
        assert "more than mlserve's share of any GPU" in rows["too_big"]["reason"]
        assert "cuda:0 has" in rows["too_big"]["reason"]
        x = np.random.default_rng(5).standard_normal((3, 768)).astype(np.float32)
        status, body = infer(server.url, "anywhere", x)
        assert status == 200, body
        module = torch.jit.load(str(repo / "anywhere" / "1" / "model.pt"))
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(body["outputs"][0]["data"], np.float32).reshape(3, -1), expected,
                                   rtol=1e-4, atol=1e-4)
        memory = _gpu_memory(server.url)
        assert memory.get(("anywhere", "cuda:0"), 0) > 0, memory
        assert re.search(r"model anywhere version 1 ready \(startup; \w+ on cuda:0", server.log())
