"""Hot swap under steady load, against a real mlserve process: zero failed requests, every answer
from a version that was ready, corrupt versions rejected, rollback and pin."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.registry.helpers import (
    WIDTH, LoadGenerator, index, infer, post, reference, wait_until, write_model, write_version,
)
from tests.server_process import MlserveProcess

X = np.random.default_rng(7).standard_normal((1, WIDTH)).astype(np.float32)


@pytest.fixture()
def repo(tmp_path):
    root = tmp_path / "repo"
    write_model(root, "m", [1])
    return root


@pytest.fixture()
def server(repo, tmp_path):
    proc = MlserveProcess(repo, log_path=tmp_path / "mlserve.log").wait_ready(60)
    yield proc
    assert proc.stop() == 0, proc.log()


def _versions_of(url: str, model: str = "m") -> list[tuple[str, str]]:
    return [(r.get("version"), r["state"]) for r in index(url) if r["name"] == model]


def _serves_only(url: str, version: int) -> bool:
    return _versions_of(url) == [(str(version), "READY")]


def _check_answers(answers, repo, references: dict[int, np.ndarray]) -> None:
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, first: {failed[0]}"
    for answer in answers:
        assert answer.version in references, f"answered by unknown version {answer.version}"
        np.testing.assert_array_equal(answer.output, references[answer.version])


def _metric(url: str, name: str, labels: dict[str, str]) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_zero_failed_requests_across_swaps_by_signal_and_api(server, repo):
    """Versions 2..5 arrive while six clients send requests; swaps alternate SIGHUP and the API."""
    swaps = []  # (version, time from which only it or newer may answer)
    with LoadGenerator(server.port, "m", X) as load:
        load.wait_answers(200)
        for version in (2, 3, 4, 5):
            write_version(repo, "m", version)
            if version % 2 == 0:
                server.signal(signal.SIGHUP)
                wait_until(lambda v=version: _serves_only(server.url, v), timeout=30, interval=0.02)
            else:
                assert post(f"{server.url}/v2/repository/index", "")[0] == 200  # returns after the pass
                assert _serves_only(server.url, version)
            swaps.append((version, time.monotonic()))
            load.wait_answers(250, since=swaps[-1][1])  # answered by this version alone
    answers = load.answers
    assert len(answers) > 1000, f"only {len(answers)} requests were sent"
    print(f"{len(answers)} requests, versions {sorted({a.version for a in answers})}")
    references = {v: reference(repo, "m", v, X) for v in range(1, 6)}
    assert len({r.tobytes() for r in references.values()}) == 5  # the versions really differ
    _check_answers(answers, repo, references)
    for version, swapped_at in swaps:
        stale = [a for a in answers if a.sent_at > swapped_at and a.version < version]
        assert not stale, f"{len(stale)} requests sent after v{version} took over were answered by older versions"
    last = [a for a in answers if a.sent_at > swaps[-1][1]]
    assert last and {a.version for a in last} == {5}
    assert {a.version for a in answers} == {1, 2, 3, 4, 5}
    log = server.log()
    assert "reconcile (signal)" in log and "reconcile (api 127.0.0.1)" in log


def test_corrupt_versions_are_rejected_while_the_old_one_serves(server, repo):
    with LoadGenerator(server.port, "m", X, num_threads=3) as load:
        load.wait_answers(60)
        truncated = write_version(repo, "m", 2)
        truncated.write_bytes(truncated.read_bytes()[:40])
        post(f"{server.url}/v2/repository/index", "")
        rows = dict(_versions_of(server.url))
        assert rows == {"1": "READY", "2": "UNAVAILABLE"}
        reason = next(r["reason"] for r in index(server.url) if r.get("version") == "2")
        assert reason.startswith("load failed")
        # model.toml says x is [-1, 4]; a version taking [-1, 3] fails its warm-up
        write_version(repo, "m", 3, width=3)
        post(f"{server.url}/v2/repository/index", "")
        rows = {r.get("version"): r for r in index(server.url) if r["name"] == "m"}
        assert rows["1"]["state"] == "READY" and rows["3"]["state"] == "UNAVAILABLE"
        assert rows["3"]["reason"].startswith("warmup failed")
        post(f"{server.url}/v2/repository/index", "")  # unchanged files are not tried again
        load.wait_answers(60, since=time.monotonic())
    _check_answers(load.answers, repo, {1: reference(repo, "m", 1, X)})
    assert len(load.answers) > 100
    assert _metric(server.url, "mlserve_model_load_failures_by_reason_total", {"model": "m", "reason": "load"}) == 1
    assert _metric(server.url, "mlserve_model_load_failures_by_reason_total", {"model": "m", "reason": "warmup"}) == 1
    log = server.log()
    assert "model m version 2 rejected" in log and "model m version 3 rejected" in log


def test_rollback_and_pin_under_load(server, repo):
    refs = {}
    write_version(repo, "m", 2)
    post(f"{server.url}/v2/repository/index", "")
    assert _serves_only(server.url, 2)
    with LoadGenerator(server.port, "m", X, num_threads=4) as load:
        load.wait_answers(50)
        status, state = post(f"{server.url}/admin/models/m/rollback")
        assert status == 200 and state["serving"] == 1 and state["pinned"] == 1, state
        rolled_back_at = time.monotonic()
        load.wait_answers(50, since=rolled_back_at)
        write_version(repo, "m", 3)
        post(f"{server.url}/v2/repository/index", "")  # v3 loads, but the rollback pin holds
        assert dict(_versions_of(server.url)) == {"1": "READY", "3": "READY"}
        load.wait_answers(50, since=time.monotonic())
        pin_sent_at = time.monotonic()
        status, state = post(f"{server.url}/admin/models/m/pin", '{"version": 3}')
        assert status == 200 and state["serving"] == 3
        pinned_at = time.monotonic()
        load.wait_answers(50, since=pinned_at)
        status, state = post(f"{server.url}/admin/models/m/unpin")
        assert status == 200 and state["serving"] == 3 and state["pinned"] is None
        load.wait_answers(50, since=time.monotonic())
    refs = {v: reference(repo, "m", v, X) for v in (1, 2, 3)}
    answers = load.answers
    _check_answers(answers, repo, refs)
    between = [a.version for a in answers if rolled_back_at < a.sent_at and a.done_at < pin_sent_at]
    assert between and set(between) == {1}
    assert {a.version for a in answers if a.sent_at > pinned_at} == {3}
    assert _serves_only(server.url, 3)
    log = server.log()
    assert "model m rolled back to version 1 (api 127.0.0.1)" in log
    assert "model m pinned to version 3 (api 127.0.0.1)" in log


def test_pin_and_rollback_refuse_bad_requests(server, repo):
    assert post(f"{server.url}/admin/models/m/rollback")[0] == 400  # nothing served before v1
    status, body = post(f"{server.url}/admin/models/m/pin", '{"version": 9}')
    assert status == 404 and "no version 9" in body["error"]
    status, body = post(f"{server.url}/admin/models/m/pin", '{"version": "x"}')
    assert status == 400 and "version" in body["error"]
    assert post(f"{server.url}/admin/models/nope/pin", '{"version": 1}')[0] == 404
    assert infer(server.url, "m", X)[1]["model_version"] == "1"


def test_triton_unload_and_load(server, repo):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    client.unload_model("m")
    assert not client.is_model_ready("m")
    status, body = infer(server.url, "m", X)
    assert status == 503
    post(f"{server.url}/v2/repository/index", "")  # a reload leaves an unloaded model alone
    assert [r["reason"] for r in index(server.url) if r["name"] == "m"][0].startswith("unloaded by request")
    write_version(repo, "m", 2)
    client.load_model("m")
    assert client.is_model_ready("m")
    status, body = infer(server.url, "m", X)
    assert status == 200 and body["model_version"] == "2"
    np.testing.assert_array_equal(np.asarray(body["outputs"][0]["data"], np.float32).reshape(X.shape),
                                  reference(repo, "m", 2, X))
    with pytest.raises(InferenceServerException):
        client.load_model("nope")
