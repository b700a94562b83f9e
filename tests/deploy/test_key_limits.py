"""A key's limits held across three real replicas behind nginx sharing one redis-server
(deploy/local/replicas.py --state redis, every replica reading the same keys file): `--rps 30`
admits 30 a second across the cluster under 3x demand, a quota of 100 admits exactly 100
whichever replica answers, then 429 with the reason (`mlserve keys list --state` shows its use),
and `--concurrency 2` holds 2 requests in flight across the cluster, not 2 per replica."""

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
from prometheus_client.parser import text_string_to_metric_families

from mlserve.examples import write_identity_onnx
from tests.deploy.cluster import poll, redis_replicas
from tests.server.fault_models import WaitForFile, set_flag, write_model
from tests.server.test_auth import keys_cli, make_key

pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (Debian package redis-server)"),
]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}).encode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_identity_onnx(repo / "identity" / "1" / "model.onnx", "FP32")
    flag = tmp_path_factory.mktemp("flag") / "release"
    set_flag(flag, b"\x01")  # open while the replicas warm the model up
    write_model(repo, "held", WaitForFile(str(flag)), max_batch_size=0)
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    tokens = {
        "rate": make_key(keys_file, "rate", "--rps", "30"),
        "quota": make_key(keys_file, "quota", "--quota", "100", "--quota-period", "day"),
        "conc": make_key(keys_file, "conc", "--concurrency", "2"),
    }
    with redis_replicas(["--models", str(repo), "--auth-keys", str(keys_file)],
                        tmp_path_factory.mktemp("replicas")) as replicas:
        yield replicas, tokens, keys_file, flag


def _infer(url: str, token: str, model: str = "identity") -> tuple[int, str, str | None]:
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", BODY,
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, "", resp.headers.get("X-Mlserve-Upstream")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()).get("error", ""), exc.headers.get("X-Mlserve-Upstream")


def test_rps_30_admits_30_a_second_across_replicas_under_3x_demand(cluster):
    replicas, tokens, _, _ = cluster
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
    print(f"--rps 30, {rate} req/s for {seconds} s over 3 replicas: {dict(statuses)}, by replica {dict(upstreams)}")
    assert set(statuses) <= {200, 429}, statuses
    assert sum(statuses.values()) == rate * seconds
    assert 30 * seconds * 0.95 <= statuses[200] <= 30 * seconds * 1.05, statuses
    assert len([u for u in upstreams if u]) == 3, upstreams  # every replica took a share of the demand


def test_a_quota_of_100_admits_exactly_100_across_replicas_then_429_with_the_reason(cluster):
    replicas, tokens, keys_file, _ = cluster
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


def _held(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) if fam.name == "mlserve_in_flight_requests"
               for s in fam.samples if s.labels.get("model") == "held")


def test_concurrency_2_holds_two_requests_in_flight_across_replicas(cluster):
    replicas, tokens, _, flag = cluster
    set_flag(flag, b"\x00")  # the model now holds every request until the flag opens
    answers: list = []
    lock = threading.Lock()

    def client() -> None:
        answer = _infer(replicas.url, tokens["conc"], "held")
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=client) for _ in range(12)]
    try:
        for thread in threads:
            thread.start()
        # Each replica alone would hold 2 (6 in all): across the cluster 2 are held, 10 refused at once.
        # All 12 accounted for: 10 answered, 2 held by the model (read on each replica directly).
        poll(lambda: len(answers) >= 10 and sum(_held(r.url) for r in replicas.replicas) == 2, timeout=30)
        assert len(answers) == 10 and {status for status, _, _ in answers} == {429}, answers
        # A replica that holds both says so; one that holds none (there is always one) names the cluster.
        reasons = [answer[1] for answer in answers]
        assert all("2 requests in flight" in r for r in reasons), reasons
        assert any("limited to 2 requests in flight across replicas" in r for r in reasons), reasons
    finally:
        set_flag(flag, b"\x01")
        for thread in threads:
            thread.join(60)
    assert Counter(status for status, _, _ in answers) == {200: 2, 429: 10}
