"""A split changed in model.toml takes effect on SIGHUP, under load, without a failed request."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.routing.conftest import COMMON
from tests.routing.models import write_scale_onnx
from tests.routing.test_traffic_e2e import X, _infer, _versions_of, _within_binomial
from tests.server_process import MlserveProcess

TRAFFIC = '\n[traffic]\nsplit = {{ "1" = {a}, "2" = {b} }}\nsticky_key = "header:X-User-Id"\nsalt = "hup"\n'


@pytest.fixture()
def hup_server(tmp_path):
    root = tmp_path / "repo"
    for version, scale in ((1, 1.0), (2, 2.0)):
        write_scale_onnx(root / "ab" / str(version) / "model.onnx", scale)
    (root / "ab" / "model.toml").write_text(COMMON + TRAFFIC.format(a=90, b=10))
    server = MlserveProcess(root, log_path=tmp_path / "log").wait_ready()
    yield server, root
    assert server.stop() == 0, server.log()


def _wait_for_weight(server, users: list[str], share: float, timeout: float = 20.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = _versions_of(server, "ab", users)
        count = sum(v == "2" for v in seen.values())
        if _within_binomial(count, len(users), share) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def test_sighup_applies_a_new_split_without_failing_a_request(hup_server):
    server, root = hup_server
    users = [f"user-{i}" for i in range(400)]
    before = _versions_of(server, "ab", users)
    assert _within_binomial(sum(v == "2" for v in before.values()), len(users), 0.10)
    failures: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, _, _ = _infer(server, "ab", X)
            if status != 200:
                failures.append(status)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        (root / "ab" / "model.toml").write_text(COMMON + TRAFFIC.format(a=50, b=50))
        server.signal(signal.SIGHUP)
        after = _wait_for_weight(server, users, 0.50)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert not failures, failures
    assert _within_binomial(sum(v == "2" for v in after.values()), len(users), 0.50), after
    moved = [u for u in users if before[u] != after[u]]
    assert moved and all(before[u] == "1" and after[u] == "2" for u in moved), "only 1 -> 2 moves as weight ramps"
