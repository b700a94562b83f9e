"""A key's limits held across three real replicas behind nginx sharing one redis-server
(deploy/local/replicas.py --state redis, every replica reading the same keys file): `--rps 30`
admits 30 a second across the cluster under 3x demand, and a quota of 100 admits exactly 100
whichever replica answers, then 429 with the reason; `mlserve keys list --state` shows its use."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from mlserve.examples import write_identity_onnx
from tests.deploy.cluster import load_replicas_module
from tests.server.test_auth import keys_cli, make_key
from tests.server_process import ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (Debian package redis-server)"),
]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}).encode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_identity_onnx(repo / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    tokens = {
        "rate": make_key(keys_file, "rate", "--rps", "30"),
        "quota": make_key(keys_file, "quota", "--quota", "100", "--quota-period", "day"),
    }
    replicas = load_replicas_module().Replicas(
        ["--models", str(repo), "--auth-keys", str(keys_file)], num_replicas=3,
        workdir=tmp_path_factory.mktemp("replicas"), state="redis",
        env={"PYTHONPATH": str(ROOT), "MLSERVE_LIMITS_SHUTDOWN_DELAY_S": "0.2"},
    )
    try:
        replicas.start()
        yield replicas, tokens, keys_file
    finally:
        codes = replicas.stop()
    assert codes == [0, 0, 0], "\n".join(p.read_text(errors="replace")[-3000:] for p in replicas.workdir.glob("*.log"))


def _infer(url: str, token: str) -> tuple[int, str, str | None]:
    req = urllib.request.Request(f"{url}/v2/models/identity/infer", BODY,
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, "", resp.headers.get("X-Mlserve-Upstream")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()).get("error", ""), exc.headers.get("X-Mlserve-Upstream")


def test_rps_30_admits_30_a_second_across_replicas_under_3x_demand(cluster):
    replicas, tokens, _ = cluster
    rate, seconds, num_threads = 90, 10, 15
    start = math.ceil(time.time()) + 1.02  # exactly ten per-second windows, not eleven partial ones
    statuses: Counter = Counter()
    upstreams: Counter = Counter()
    lock = threading.Lock()

    def client(offset: int) -> None:
        for i in range(offset, rate * seconds, num_threads):
            at = start + i / rate
            if (wait := at - time.time()) > 0:
                time.sleep(wait)
            status, _, upstream = _infer(replicas.url, tokens["rate"])
            with lock:
                statuses[status] += 1
                upstreams[upstream] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(statuses) <= {200, 429}, statuses
    assert sum(statuses.values()) == rate * seconds
    assert 30 * seconds * 0.95 <= statuses[200] <= 30 * seconds * 1.05, statuses
    assert len([u for u in upstreams if u]) == 3, upstreams  # every replica took a share of the demand


def test_a_quota_of_100_admits_exactly_100_across_replicas_then_429_with_the_reason(cluster):
    replicas, tokens, keys_file = cluster
    answers = [_infer(replicas.url, tokens["quota"]) for _ in range(130)]
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 100 and statuses[:100] == [200] * 100, Counter(statuses)
    assert statuses[100:] == [429] * 30
    assert "limited to 100 requests per day (quota used up)" in answers[-1][1]
    assert len({upstream for _, _, upstream in answers[:100]}) == 3  # admitted by every replica, counted once
    listed = keys_cli("list", "--file", str(keys_file), "--state", replicas.redis.url)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "name=quota" in line)
    assert "quota=100/day" in row and "quota_used=100" in row, row
