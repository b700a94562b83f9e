"""Uploads through Triton's load API into an S3 repository (a real moto server and a real mlserve
process): the new version lands with its SHA256SUMS and serves; a broken one is deleted again."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys

import numpy as np

from tests.registry.helpers import infer, post, reference, write_model, write_version
from tests.registry.s3util import read_keys as _keys
from tests.registry.s3util import upload
from tests.server_process import ROOT, MlserveProcess


def _push(endpoint: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlserve", "push", "--models", "s3://models/prod", "--s3-endpoint", endpoint, *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )


def test_upload_into_s3_serves_and_a_broken_one_is_taken_back(moto_server, s3_env, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", [1])
    upload(moto_server, "models", "prod", repo, create=True)
    artifact = write_version(tmp_path / "staging", "m", 2)
    server = MlserveProcess(
        "s3://models/prod", "--s3-endpoint", moto_server, log_path=tmp_path / "mlserve.log",
        env={**s3_env, "HOME": str(tmp_path / "home")},
    ).wait_ready(60)
    try:
        content = artifact.read_bytes()
        status, body = post(f"{server.url}/v2/repository/models/m/load",
                            f'{{"parameters": {{"file:2/model.onnx": "{base64.b64encode(content).decode()}"}}}}')
        assert status == 200, body
        x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
        status, answer = infer(server.url, "m", x)
        assert status == 200 and answer["model_version"] == "2"
        got = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(2, 4)
        np.testing.assert_allclose(got, reference(tmp_path / "staging", "m", 2, x), rtol=1e-6)
        keys = asyncio.run(_keys(moto_server, "prod/m/2/"))
        marker = keys["prod/m/2/mlserve-upload.json"]
        assert keys["prod/m/2/SHA256SUMS"] == (f"{hashlib.sha256(marker).hexdigest()}  mlserve-upload.json\n"
                                               f"{hashlib.sha256(content).hexdigest()}  model.onnx\n").encode()
        status, body = post(f"{server.url}/v2/repository/models/m/load",
                            '{"parameters": {"file:3/model.onnx": "bm90IG9ubng="}}')
        assert status == 400 and "version 3" in body["error"], body
        assert asyncio.run(_keys(moto_server, "prod/m/3/")) == {}
        assert infer(server.url, "m", x)[1]["model_version"] == "2"
        pushed = _push(moto_server, s3_env, "--name", "m", str(artifact))
        assert pushed.returncode == 0 and "s3://models/prod/m/3" in pushed.stdout, pushed.stderr
        status, body = post(f"{server.url}/v2/repository/models/m/load")
        assert status == 200, body
        assert infer(server.url, "m", x)[1]["model_version"] == "3"
    finally:
        assert server.stop() == 0, server.log()


def test_two_writers_of_one_s3_version_one_wins_whole(moto_server, s3_env, tmp_path):
    """Two stores (two replicas) upload version 2 at once: the conditional put of SHA256SUMS lets
    exactly one write files, the other gets Conflict having written nothing; the version holds
    the winner's files and a SHA256SUMS that matches them."""
    from mlserve.errors import Conflict
    from mlserve.registry.s3 import S3Store
    from mlserve.registry.upload_s3 import write_upload_s3

    write_model(tmp_path / "repo", "m", [1])
    upload(moto_server, "models", "prod", tmp_path / "repo", create=True)

    async def race() -> list:
        stores = [S3Store("s3://models/prod", tmp_path / f"cache{n}", moto_server) for n in range(2)]
        try:
            uploads = [{2: {"model.onnx": bytes([n]) * 4096, f"only{n}.txt": b"x"}} for n in range(2)]
            outcomes = await asyncio.gather(*(write_upload_s3(s, "m", u, None, uploaded_by=f"replica {n}")
                                              for n, (s, u) in enumerate(zip(stores, uploads))),
                                            return_exceptions=True)
            await stores[0].put("m", "claim-test", b"1", if_absent=True)
            second = await asyncio.gather(stores[1].put("m", "claim-test", b"2", if_absent=True),
                                          return_exceptions=True)
            return [*outcomes, *second]
        finally:
            for store in stores:
                await store.close()

    first, second, claim = asyncio.run(race())
    assert isinstance(claim, Conflict), claim
    won = [n for n, o in enumerate((first, second)) if not isinstance(o, Exception)]
    lost = [o for o in (first, second) if isinstance(o, Exception)]
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], Conflict), (first, second)
    keys = asyncio.run(_keys(moto_server, "prod/m/2/"))
    n = won[0]
    assert sorted(keys) == sorted(f"prod/m/2/{rel}" for rel in
                                  ("SHA256SUMS", "mlserve-upload.json", "model.onnx", f"only{n}.txt"))
    assert keys["prod/m/2/model.onnx"] == bytes([n]) * 4096
    sums = {rel: digest for digest, rel in (line.split("  ") for line in keys["prod/m/2/SHA256SUMS"].decode().splitlines())}
    assert sums == {key.removeprefix("prod/m/2/"): hashlib.sha256(data).hexdigest()
                    for key, data in keys.items() if not key.endswith("SHA256SUMS")}


def test_racing_uploads_through_the_server_into_s3(moto_server, s3_env, tmp_path):
    """Two clients upload version 2 at once through one server: one 200, one 409, and the version
    on S3 is the winner's whole, with a SHA256SUMS that matches it."""
    import threading

    write_model(tmp_path / "repo", "m", [1])
    upload(moto_server, "models", "prod", tmp_path / "repo", create=True)
    contents = [write_version(tmp_path / f"staging{n}", "m", n + 2).read_bytes() for n in range(2)]
    server = MlserveProcess(
        "s3://models/prod", "--s3-endpoint", moto_server, log_path=tmp_path / "mlserve.log",
        env={**s3_env, "HOME": str(tmp_path / "home")},
    ).wait_ready(60)
    barrier, answers = threading.Barrier(2), [None, None]

    def send(n: int) -> None:
        body = f'{{"parameters": {{"file:2/model.onnx": "{base64.b64encode(contents[n]).decode()}"}}}}'
        barrier.wait()
        answers[n] = post(f"{server.url}/v2/repository/models/m/load", body, timeout=120)

    try:
        threads = [threading.Thread(target=send, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert sorted(status for status, _ in answers) == [200, 409], answers
        winner = contents[[status for status, _ in answers].index(200)]
        keys = asyncio.run(_keys(moto_server, "prod/m/2/"))
        assert keys["prod/m/2/model.onnx"] == winner
        sums = keys["prod/m/2/SHA256SUMS"].decode().splitlines()
        assert f"{hashlib.sha256(winner).hexdigest()}  model.onnx" in sums and len(sums) == 2
        assert infer(server.url, "m", np.ones((1, 4), np.float32))[1]["model_version"] == "2"
    finally:
        assert server.stop() == 0, server.log()
