"""The S3 store against a real moto server, and a real mlserve process serving s3:// and swapping on SIGHUP."""

from __future__ import annotations

import asyncio
import hashlib
import signal

import numpy as np
import pytest

from mlserve.errors import ModelNotFound
from mlserve.registry.s3 import S3Store, parse_s3_uri
from mlserve.registry.store import StoreError
from tests.registry.conftest import reset_moto
from tests.registry.helpers import index, infer, post, reference, wait_until, write_model, write_version
from tests.registry.s3util import upload
from tests.server_process import MlserveProcess


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_uri("s3:///x")


def _store(endpoint: str, tmp_path) -> S3Store:
    return S3Store("s3://models/prod", tmp_path / "cache", endpoint_url=endpoint, region="us-east-1")


def test_store_lists_fetches_verifies_and_caches(moto_server, s3_env, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", [1, 2])
    upload(moto_server, "models", "prod", repo, create=True)

    async def run():
        store = _store(moto_server, tmp_path)
        try:
            await store.refresh()
            assert await store.list_models() == ["m"]
            assert await store.list_versions("m") == ["1", "2"]
            assert "max_batch_size" in await store.read_text("m", "model.toml")
            stat = await store.stat("m", 2)
            folder = await store.fetch("m", 2)
            again = await store.fetch("m", 2)
            with pytest.raises(ModelNotFound):
                await store.stat("m", 7)
            return stat, folder, again
        finally:
            await store.close()

    stat, folder, again = asyncio.run(run())
    local = repo / "m" / "2" / "model.onnx"
    assert (folder / "model.onnx").read_bytes() == local.read_bytes()
    assert stat.num_bytes == local.stat().st_size
    assert again == folder  # unchanged fingerprint: the cache is reused
    assert not [p for p in folder.parent.iterdir() if "partial" in p.name]


def test_checksum_mismatch_never_publishes_a_folder(moto_server, s3_env, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", [1])
    good = hashlib.sha256((repo / "m" / "1" / "model.onnx").read_bytes()).hexdigest()
    (repo / "m" / "1" / "SHA256SUMS").write_text(f"{good}  model.onnx\n")
    upload(moto_server, "models", "prod", repo, create=True)
    write_model(repo, "n", [1])
    (repo / "n" / "1" / "SHA256SUMS").write_text(f"{'0' * 64}  model.onnx\n")
    upload(moto_server, "models", "prod", repo)

    async def run():
        store = _store(moto_server, tmp_path)
        try:
            await store.refresh()
            ok = await store.fetch("m", 1)
            with pytest.raises(StoreError, match="sha256"):
                await store.fetch("n", 1)
            return ok
        finally:
            await store.close()

    ok = asyncio.run(run())
    assert (ok / "model.onnx").is_file()
    leftovers = list((tmp_path / "cache" / "models" / "prod" / "n").iterdir())
    assert leftovers == [], f"a failed download left {leftovers}"


def _x() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)


def _serving(server, repo, version: int) -> bool:
    status, body = infer(server.url, "m", _x())
    if status != 200 or body["model_version"] != str(version):
        return False
    out = np.asarray(body["outputs"][0]["data"], np.float32).reshape(2, 4)
    np.testing.assert_allclose(out, reference(repo, "m", version, _x()), rtol=1e-6)
    return True


def test_serves_s3_repository_and_swaps_on_sighup(moto_server, s3_env, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", [1])
    upload(moto_server, "models", "prod", repo, create=True)
    server = MlserveProcess(
        "s3://models/prod", "--s3-endpoint", moto_server, log_path=tmp_path / "mlserve.log",
        env={**s3_env, "HOME": str(tmp_path / "home")},
    ).wait_ready(60)
    try:
        assert _serving(server, repo, 1)
        write_version(repo, "m", 2)
        upload(moto_server, "models", "prod", repo)
        server.signal(signal.SIGHUP)
        wait_until(lambda: _serving(server, repo, 2), timeout=30)
        rows = index(server.url)
        assert [(r["version"], r["state"]) for r in rows if r["name"] == "m"] == [("2", "READY")]
        assert "reconcile (signal)" in server.log()
        cached = list((tmp_path / "home" / ".cache" / "mlserve" / "models" / "prod" / "m").iterdir())
        assert sorted(p.name.split("-")[0] for p in cached) == ["1", "2"]
    finally:
        assert server.stop() == 0, server.log()


def test_unreachable_repository_changes_nothing_and_the_next_reload_retries(s3_env, tmp_path):
    from moto.server import ThreadedMotoServer

    from tests.server_process import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    reset_moto(endpoint)
    repo = tmp_path / "repo"
    write_model(repo, "m", [1])
    upload(endpoint, "models", "down", repo, create=True)
    server = MlserveProcess("s3://models/down", "--s3-endpoint", endpoint, log_path=tmp_path / "mlserve.log",
                            env={**s3_env, "HOME": str(tmp_path / "home")}).wait_ready(60)
    try:
        assert _serving(server, repo, 1)
        write_version(repo, "m", 2)
        upload(endpoint, "models", "down", repo)
        moto.stop()  # the repository goes away; moto keeps its buckets in this process
        status, _ = _post_reload(server)
        assert status == 200
        assert "unreadable, nothing changed" in server.log()
        assert _serving(server, repo, 1)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        _post_reload(server)
        assert _serving(server, repo, 2)
    finally:
        assert server.stop() == 0, server.log()
        moto.stop()


def _post_reload(server):
    return post(f"{server.url}/v2/repository/index", "")


def test_the_download_cache_keeps_a_bounded_number_of_versions_per_model(moto_server, s3_env, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", [1, 2, 3])
    write_model(repo, "other", [1])
    upload(moto_server, "models", "prod", repo, create=True)

    def cached(model: str) -> list[str]:
        folder = tmp_path / "cache" / "models" / "prod" / model
        return sorted(p.name.split("-")[0] for p in folder.iterdir())

    async def run():
        store = S3Store("s3://models/prod", tmp_path / "cache", endpoint_url=moto_server, region="us-east-1",
                        keep_versions=2)
        try:
            await store.refresh()
            await store.fetch("other", 1)
            seen = []
            for version in (1, 2, 3):
                await store.fetch("m", version)
                seen.append(cached("m"))
            await store.fetch("m", 2)  # a cache hit counts as a use: 3 is now the oldest
            await store.fetch("m", 1)
            seen.append(cached("m"))
            return seen
        finally:
            await store.close()

    seen = asyncio.run(run())
    assert seen == [["1"], ["1", "2"], ["2", "3"], ["1", "2"]]
    assert cached("other") == ["1"]  # another model's folders are not this model's budget
