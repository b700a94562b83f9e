"""An uploaded version that can run code (TorchScript) is not covered by its model's `trusted = true`
nor by --trust-repository: it loads only with --trust-uploads, and the server knows a version came
by upload across restarts (the marker the upload path writes into it), locally and on S3."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import torch

from mlserve.registry.safety import UPLOAD_MARKER
from tests.registry.helpers import index, post
from tests.registry.s3util import read_keys, upload
from tests.server_process import MlserveProcess, serving

TS_TOML = """\
{trusted}
max_batch_size = 8
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 3]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 2]
"""


def torchscript(seed: int) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2).eval()), buffer)
    return buffer.getvalue()


def write_ts_model(root, name: str, trusted: bool) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.pt").write_bytes(torchscript(1))
    (root / name / "model.toml").write_text(TS_TOML.format(trusted="trusted = true" if trusted else ""))


def upload_ts(url: str, model: str, version: int) -> tuple[int, dict]:
    content = base64.b64encode(torchscript(version)).decode()
    return post(f"{url}/v2/repository/models/{model}/load",
                json.dumps({"parameters": {f"file:{version}/model.pt": content}}))


def served_version(url: str, model: str) -> str:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
    status, answer = post(f"{url}/v2/models/{model}/infer", json.dumps(body))
    assert status == 200, answer
    return answer["model_version"]


def test_uploaded_torchscript_needs_trust_uploads_locally_and_across_restarts(tmp_path):
    root = tmp_path / "repo"
    write_ts_model(root, "ts", trusted=True)
    write_ts_model(root, "ts_repo", trusted=False)  # trusted only through --trust-repository
    with serving(root, "--trust-repository", log_path=tmp_path / "a.log") as server:
        for model in ("ts", "ts_repo"):
            status, body = upload_ts(server.url, model, 2)
            assert status == 400 and "trust_uploads" in body["error"], body
            assert not (root / model / "2").exists()
            assert served_version(server.url, model) == "1"
    with serving(root, "--trust-uploads", log_path=tmp_path / "b.log") as server:
        status, body = upload_ts(server.url, "ts", 2)
        assert status == 200, body
        assert served_version(server.url, "ts") == "2"
    assert json.loads((root / "ts" / "2" / UPLOAD_MARKER).read_text())["source"].startswith("api ")
    assert UPLOAD_MARKER in (root / "ts" / "2" / "SHA256SUMS").read_text()
    with serving(root, "--trust-repository", log_path=tmp_path / "c.log") as server:  # a restart without it
        rows = {(row["name"], row.get("version")): row for row in index(server.url)}
        refused = rows[("ts", "2")]
        assert refused["state"] == "UNAVAILABLE" and "trust_uploads" in refused["reason"], refused


def test_uploaded_torchscript_into_a_trusted_model_on_s3_is_refused(moto_server, s3_env, tmp_path):
    repo = tmp_path / "repo"
    write_ts_model(repo, "ts", trusted=True)
    upload(moto_server, "models", "prod", repo, create=True)
    server = MlserveProcess(
        "s3://models/prod", "--s3-endpoint", moto_server, "--trust-repository", log_path=tmp_path / "mlserve.log",
        env={**s3_env, "HOME": str(tmp_path / "home")},
    ).wait_ready(60)
    try:
        status, body = upload_ts(server.url, "ts", 2)
        assert status == 400 and "trust_uploads" in body["error"], body
        assert asyncio.run(read_keys(moto_server, "prod/ts/2/")) == {}
        assert served_version(server.url, "ts") == "1"
        x = np.ones((1, 3), np.float32)  # the model still computes version 1's answer
        status, answer = post(f"{server.url}/v2/models/ts/infer", json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}))
        torch.manual_seed(1)
        expected = torch.nn.Linear(3, 2)(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"]).reshape(1, 2), expected, rtol=1e-5)
    finally:
        assert server.stop() == 0, server.log()
