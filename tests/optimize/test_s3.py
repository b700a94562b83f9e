"""Optimization on an S3 repository against a real S3 server (moto): `mlserve optimize --models
s3://...` uploads the published version beside the source and a server reading the bucket serves it;
a server reading the bucket optimizes a version that arrives by its poll on its own, and uploads the
winner as the next version."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.optimize.models import write_data, write_onnx, write_torchscript
from tests.optimize.runs import wait_finished_run
from tests.registry.conftest import S3_ENV, moto_server  # noqa: F401 - the S3 store tests' fixture
from tests.registry.s3util import read_keys, upload
from tests.server.http import call, infer_body, output
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


AUTO_TOML = """max_batch_size = 32
[optimize]
on_new_version = true
passes = ["int8_dynamic"]
data = "val.npz"
objective = "size"
max_top1_drop = 0.2
timing_s = 0.05
"""


def _version_files(tmp_path) -> dict[str, bytes]:
    """Version 1 of the model as files: an ONNX MLP, its validation rows, and SHA256SUMS (first, so
    a poll that lists the version mid-upload finds files missing and loads it on a later pass)."""
    folder = write_onnx(tmp_path / "made", "mlp")
    files = {"model.onnx": (folder / "model.onnx").read_bytes(),
             "val.npz": write_data(tmp_path / "val.npz").read_bytes()}
    sums = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n" for name, body in sorted(files.items()))
    return {"SHA256SUMS": sums.encode(), **files}


async def _put(endpoint: str, files: dict[str, bytes]) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        for key, body in files.items():
            await s3.put_object(Bucket="models", Key=key, Body=body)


def test_a_version_arriving_by_the_s3_poll_is_optimized_and_the_winner_uploaded_as_the_next(
        tmp_path, moto_server, monkeypatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    asyncio.run(_create_bucket(moto_server))
    asyncio.run(_put(moto_server, {"repo/auto/model.toml": AUTO_TOML.encode()}))
    cache = tmp_path / "cache"
    with serving("s3://models/repo", "--s3-endpoint", moto_server, "--poll-interval", "0.3",
                 log_path=tmp_path / "server.log",
                 env={**S3_ENV, "MLSERVE_REGISTRY_CACHE_DIR": str(cache)}) as server:
        files = _version_files(tmp_path)
        asyncio.run(_put(moto_server, {f"repo/auto/1/{name}": body for name, body in files.items()}))
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["source_version"] == 1, run
        assert run["published_version"] == 2 and run["winner"] == "int8_dynamic", run
        assert run["deployment"]["loaded"] is True
        keys = asyncio.run(_keys(moto_server, "repo/auto/2/"))
        assert keys == [f"repo/auto/2/{n}" for n in ("SHA256SUMS", "model.onnx", "optimization.json", "val.npz")]
        lineage = json.loads(asyncio.run(read_keys(moto_server, "repo/auto/2/optimization.json"))[
            "repo/auto/2/optimization.json"])
        assert lineage["source_version"] == 1 and lineage["passes"] == ["int8_dynamic"]
        x = np.load(tmp_path / "val.npz")["x"][:4]
        answer = call(f"{server.url}/v2/models/auto/versions/2/infer", infer_body(x))
        assert answer.status == 200 and output(answer).shape == (4, 4)
        assert not list(Path(tempfile.gettempdir()).glob(f"mlserve-job-{server.proc.pid}-mirror-*"))
        # the version the run uploaded, found by the next polls too, never starts a run of its own
        assert [r["source_version"] for r in call(f"{server.url}/admin/models/auto/optimize").body["runs"]] == [1]
    record = cache / "optimize-runs" / "models" / "repo" / "auto" / "1.json"
    assert json.loads(record.read_text())["state"] == "published"
    with serving("s3://models/repo", "--s3-endpoint", moto_server, log_path=tmp_path / "again.log",
                 env={**S3_ENV, "MLSERVE_REGISTRY_CACHE_DIR": str(cache)}) as server:
        runs = call(f"{server.url}/admin/models/auto/optimize").body["runs"]
        assert [(r["source_version"], r["state"]) for r in runs] == [(1, "published")]
    assert asyncio.run(_keys(moto_server, "repo/auto/3/")) == []


async def _create_bucket(endpoint: str) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        await s3.create_bucket(Bucket="models")
