"""Three real mlserve replicas on loopback behind a real nginx (deploy/local/), all reading one S3
repository on a moto server: traffic spreads over every replica, sticky splits agree whichever replica
answers, a version pushed to S3 (and its rollback) reaches every replica, and neither a rolling
restart nor an nginx reload under steady load loses a request."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import pytest

from mlserve.examples import write_identity_onnx
from tests.deploy.cluster import S3_ENV, SteadyLoad, infer, load_replicas_module, poll
from tests.server_process import ROOT, free_port

NO_NGINX = "nginx not installed (Debian package nginx-light; `make test` installs it when run as root)"
pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason=NO_NGINX)
BUCKET, PREFIX = "replicas", "repo"
POLL_S = 0.5
AB_TOML = """version_policy = { all = true }
[traffic]
split = { "1" = 50, "2" = 50 }
sticky_key = "header:X-User-Id"
"""


def _write_repository(root: Path) -> Path:
    write_identity_onnx(root / "m" / "1" / "model.onnx", "FP32")
    write_identity_onnx(root / "m" / "2" / "model.onnx", "FP32")  # pushed later by a test
    write_identity_onnx(root / "ab" / "1" / "model.onnx", "FP32")
    write_identity_onnx(root / "ab" / "2" / "model.onnx", "FP32")
    (root / "ab" / "model.toml").write_text(AB_TOML)
    return root


def _upload(s3, root: Path, relative: str) -> None:
    for path in sorted((root / relative).rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{path.relative_to(root)}", Body=path.read_bytes())


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server holding models m (version 1) and ab (versions 1 and 2, a sticky split)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    root = _write_repository(tmp_path_factory.mktemp("repo"))
    for relative in ("m/1", "ab"):
        _upload(client, root, relative)
    yield endpoint, client, root
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    endpoint = s3[0]
    replicas = load_replicas_module().Replicas(
        ["--models", f"s3://{BUCKET}/{PREFIX}", "--s3-endpoint", endpoint, "--poll-interval", str(POLL_S)],
        num_replicas=3, workdir=tmp_path_factory.mktemp("replicas"),
        env={**S3_ENV, "PYTHONPATH": str(ROOT), "MLSERVE_LIMITS_SHUTDOWN_DELAY_S": "0.5"},
    )
    try:
        yield replicas.start()
    finally:
        codes = replicas.stop()
    assert codes == [0, 0, 0], _logs(replicas)


def _logs(replicas) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(replicas.workdir.glob("*.log")))


def test_nginx_spreads_requests_over_every_replica(cluster):
    answers = [infer(cluster.url, "m") for _ in range(60)]
    assert {a.status for a in answers} == {200}
    upstreams = {f"127.0.0.1:{r.port}" for r in cluster.replicas}
    seen = [a.upstream for a in answers]
    assert set(seen) == upstreams
    assert min(seen.count(u) for u in upstreams) >= 10, seen  # round robin, not all on one


def test_sticky_split_agrees_across_replicas(cluster):
    versions = {}
    for n in range(24):
        user = f"user-{n}"
        direct = {infer(r.url, "ab", user).version for r in cluster.replicas}
        via_nginx = {infer(cluster.url, "ab", user).version for _ in range(3)}
        assert len(direct | via_nginx) == 1, (user, direct, via_nginx)
        versions[user] = direct.pop()
    assert set(versions.values()) == {"1", "2"}, versions  # the split really splits


def _serving(replicas, version: str):
    return lambda: all(infer(r.url, "m").version == version for r in replicas)


def test_pushed_version_and_rollback_reach_every_replica(cluster, s3):
    _, client, root = s3
    assert _serving(cluster.replicas, "1")()
    with SteadyLoad(cluster.url, "m") as load:
        load.wait_for(20)
        _upload(client, root, "m/2")
        pushed_s = poll(_serving(cluster.replicas, "2"), timeout=60)
        client.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/m/2/model.onnx")
        rolled_back_s = poll(_serving(cluster.replicas, "1"), timeout=60)
        load.wait_for(20)
    assert not load.failures, (load.answers, load.failures[:5], _logs(cluster))
    print(f"every replica served the pushed version in {pushed_s:.1f} s, the rollback in {rolled_back_s:.1f} s "
          f"(poll interval {POLL_S} s); {load.total} requests, none failed")


def _children(pid: int) -> set[str]:
    return set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def test_nginx_reload_under_load_drops_nothing(cluster):
    workers = _children(cluster.nginx.pid)
    assert workers
    with SteadyLoad(cluster.url, "m") as load:
        load.wait_for(20)
        cluster.reload_nginx()
        poll(lambda: _children(cluster.nginx.pid).isdisjoint(workers), timeout=30)
        load.wait_for(20)
    assert not load.failures, (load.answers, load.failures[:5])


def test_rolling_restart_under_load_drops_nothing(cluster):
    old_pids = [r.proc.pid for r in cluster.replicas]
    with SteadyLoad(cluster.url, "m") as load:
        load.wait_for(20)
        codes = cluster.rolling_restart()
        load.wait_for(30)
    assert codes == [0, 0, 0], _logs(cluster)
    assert [r.proc.pid for r in cluster.replicas] != old_pids
    assert not load.failures, (load.answers, load.failures[:5], _logs(cluster))
    assert load.total >= 100
    assert {f"127.0.0.1:{r.port}" for r in cluster.replicas} <= set(load.upstreams)
    print(f"rolling restart of 3 replicas: {load.total} requests through nginx, none failed")
