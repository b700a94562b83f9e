"""`mlserve optimize --models s3://...` against a real S3 server (moto): the published version is
uploaded beside the source and a server reading the bucket serves it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np

from tests.optimize.models import write_data, write_torchscript
from tests.registry.conftest import S3_ENV, moto_server  # noqa: F401 - the S3 store tests' fixture
from tests.registry.s3util import upload
from tests.server.http import call, infer_body
from tests.server_process import ROOT, serving


async def _keys(endpoint: str, prefix: str) -> list[str]:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        listed = await s3.list_objects_v2(Bucket="models", Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


def test_publishes_into_an_s3_repository(tmp_path, moto_server, monkeypatch):
    local = tmp_path / "local"
    folder = write_torchscript(local)
    write_data(folder / "reference.npz")
    env = {**os.environ, **S3_ENV, "PYTHONPATH": str(ROOT)}
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(key, None)
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    upload(moto_server, "models", "repo", local, create=True)
    done = subprocess.run(
        [sys.executable, "-m", "mlserve", "optimize", "--models", "s3://models/repo", "--s3-endpoint", moto_server,
         "--model", "tiny", "--passes", "graph_opt", "--timing-s", "0.1"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    keys = asyncio.run(_keys(moto_server, "repo/tiny/2/"))
    assert keys == [f"repo/tiny/2/{n}" for n in ("SHA256SUMS", "model.onnx", "optimization.json", "reference.npz")]
    x = np.load(folder / "reference.npz")["x"][:4]
    with serving("s3://models/repo", "--s3-endpoint", moto_server, log_path=tmp_path / "server.log",
                 env={**S3_ENV, "MLSERVE_REGISTRY_CACHE_DIR": str(tmp_path / "cache")}) as server:
        answer = call(f"{server.url}/v2/models/tiny/versions/2/infer", infer_body(x))
        assert answer.status == 200, answer.body
