"""Automatic optimization, end to end on a real server: a version uploaded through Triton's load
API into a model whose model.toml says `[optimize] on_new_version = true` is optimized with no
further request; a gate that cannot be met publishes nothing and says why; a restart neither
repeats a finished run nor loses an interrupted one; the published version never triggers a run."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from mlserve.optimize import PASSES
from mlserve.spec import parse_model_config
from mlserve.spec.optimize import PASS_NAMES
from tests.optimize.models import write_data, write_onnx, write_torchscript
from tests.optimize.runs import wait_finished_run
from tests.server.http import call, infer_body, output
from tests.server_process import serving

SECTION = """
[optimize]
on_new_version = true
passes = ["int8_dynamic"]
data = "val.npz"
objective = "size"
max_top1_drop = 0.2
timing_s = 0.05
"""


def _artifacts(tmp_path: Path) -> tuple[bytes, bytes]:
    """An ONNX MLP 16-64-64-4 and its validation inputs, as upload contents."""
    folder = write_onnx(tmp_path / "made", "mlp")
    return (folder / "model.onnx").read_bytes(), write_data(tmp_path / "val.npz").read_bytes()


def _repo(tmp_path: Path, section: str) -> Path:
    repo = tmp_path / "models"
    (repo / "auto").mkdir(parents=True)
    (repo / "auto" / "model.toml").write_text("max_batch_size = 32\n" + section)
    return repo


def _upload(url: str, version: int, model: bytes, data: bytes, file: str = "model.onnx") -> None:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    client.load_model("auto", files={f"file:{version}/{file}": model, f"file:{version}/val.npz": data})


def _runs(url: str) -> dict:
    answer = call(f"{url}/admin/models/auto/optimize")
    assert answer.status == 200, answer.body
    return answer.body


def _ready_versions(url: str) -> list[str]:
    index = call(f"{url}/v2/repository/index", {}).body
    return sorted(m["version"] for m in index if m["name"] == "auto" and m["state"] == "READY")


def test_uploaded_version_is_optimized_once_and_a_restart_does_not_run_it_again(tmp_path):
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION)
    with serving(repo, log_path=tmp_path / "server.log") as server:
        _upload(server.url, 1, model, data)
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["source_version"] == 1, run
        assert run["published_version"] == 2 and run["winner"] == "int8_dynamic"
        assert [r["name"] for r in run["rows"]] == ["source", "int8_dynamic"]
        assert run["deployment"]["loaded"] is True and run["attempts"] == 1
        job = call(f"{server.url}/admin/jobs/{run['job_id']}").body
        assert job["trigger"] == "new_version" and job["published_version"] == 2
        assert "2" in _ready_versions(server.url)
        x = np.load(tmp_path / "val.npz")["x"][:4]
        answer = call(f"{server.url}/v2/models/auto/versions/2/infer", infer_body(x))
        assert answer.status == 200 and output(answer).shape == (4, 4)
        lineage = json.loads((repo / "auto" / "2" / "optimization.json").read_text())
        assert lineage["source_version"] == 1 and lineage["passes"] == ["int8_dynamic"]
        # The version the optimizer published did not trigger a run of its own (it loaded before
        # the run was recorded as finished, so its arrival has been seen by now).
        assert [r["source_version"] for r in _runs(server.url)["runs"]] == [1]
        overview = call(f"{server.url}/status").body
        auto = next(m for m in overview["models"] if m["name"] == "auto")
        assert auto["optimize"][0]["state"] == "published"
    record = repo / ".mlserve-optimize" / "auto" / "1.json"
    before = record.read_text()
    with serving(repo, log_path=tmp_path / "again.log") as server:
        runs = _runs(server.url)["runs"]
        assert [(r["source_version"], r["state"]) for r in runs] == [(1, "published")]
        assert _ready_versions(server.url) == ["2"]
    assert record.read_text() == before
    assert sorted(p.name for p in (repo / "auto").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_a_gate_that_cannot_be_met_publishes_nothing_and_says_why(tmp_path):
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION + "min_gain = 100.0\n")
    with serving(repo, log_path=tmp_path / "server.log") as server:
        _upload(server.url, 1, model, data)
        run = wait_finished_run(server.url)
        assert run["state"] == "no_winner" and run["published_version"] is None, run
        assert "min-gain 100" in run["reason"] and run["winner"] is None
        assert [r["name"] for r in run["rows"]] == ["source", "int8_dynamic"]
        assert _ready_versions(server.url) == ["1"]
    assert sorted(p.name for p in (repo / "auto").iterdir() if p.name.isdigit()) == ["1"]


def _interrupted(repo: Path, attempts: int) -> None:
    """A ledger as a server killed mid-run leaves it."""
    folder = repo / ".mlserve-optimize" / "auto"
    folder.mkdir(parents=True)
    record = {"model": "auto", "source_version": 1, "state": "running", "attempts": attempts, "job_id": "gone",
              "published_version": None, "winner": None, "reason": "", "rows": [], "deployment": None,
              "queued_at": 0.0, "finished_at": None}
    (folder / "1.json").write_text(json.dumps(record))


@pytest.mark.parametrize("attempts, state", [(1, "published"), (2, "failed")])
def test_a_run_a_stop_interrupted_starts_once_more_never_twice(tmp_path, attempts, state):
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION)
    (repo / "auto" / "1").mkdir()
    (repo / "auto" / "1" / "model.onnx").write_bytes(model)
    (repo / "auto" / "1" / "val.npz").write_bytes(data)
    _interrupted(repo, attempts)
    with serving(repo, log_path=tmp_path / "server.log") as server:
        run = wait_finished_run(server.url)
        assert run["state"] == state and run["attempts"] == 2, run
        if state == "failed":
            assert "interrupted 2 times" in run["reason"]
            assert _ready_versions(server.url) == ["1"]
        else:
            assert run["published_version"] == 2


def test_optimize_section_is_typed_and_bounded():
    config = parse_model_config({"optimize": {"on_new_version": True, "rollout": [10, 100], "passes": ["prune"]}})
    assert config.optimize.to_body(3)["rollout"] == {"steps": [10.0, 100.0], "interval_s": 60.0}
    for bad, named in [({"bogus": 1}, "bogus"), ({"passes": ["nope"]}, "nope"), ({"min_gain": 1000}, "min_gain"),
                       ({"rollout": [50, 10]}, "rollout"), ({"data": "../x.npz"}, "data"),
                       ({"timing_s": "x"}, "timing_s"), ({"calibration_rows": 10**9}, "calibration_rows")]:
        with pytest.raises(ValueError, match=named):
            parse_model_config({"optimize": bad})
    assert set(PASS_NAMES) == set(PASSES)


def test_with_rollout_steps_the_winner_becomes_a_canary(tmp_path):
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION + "rollout = [10, 100]\nrollout_interval_s = 3600\n")
    with serving(repo, log_path=tmp_path / "server.log") as server:
        _upload(server.url, 1, model, data)
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["published_version"] == 2, run
        rollout = _runs(server.url)["rollout"]
        assert rollout["version"] == "2" and rollout["status"] == "running" and rollout["percent"] == 10, rollout
        assert run["deployment"]["rollout"]["version"] == "2"


def test_with_rollout_steps_and_traffic_the_rollout_splits_and_ends_with_no_further_request(tmp_path):
    """The whole flow with nothing but an upload and traffic: the optimized version is published and
    becomes the canary; the split sends requests to both versions (the source stays loaded although
    the version policy serves only the newest); the rollout ends on its own, promoted or, if the
    canary's p99 over a step's few requests breached 1.5x the stable's on a busy machine, rolled back;
    afterwards every unversioned request is answered by the version the outcome names."""
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION + "rollout = [50, 100]\nrollout_interval_s = 1\n")
    x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    with serving(repo, log_path=tmp_path / "server.log") as server:
        _upload(server.url, 1, model, data)
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["published_version"] == 2, run
        deadline, rollout, answered_by = time.monotonic() + 120, {}, set()
        while time.monotonic() < deadline:
            for _ in range(10):  # the canary step passes on requests, not on time alone
                answer = call(f"{server.url}/v2/models/auto/infer", infer_body(x))
                assert answer.status == 200, answer.body
                answered_by.add(answer.body["model_version"])
            rollout = _runs(server.url)["rollout"]
            if rollout["status"] != "running":
                break
        assert rollout["version"] == "2" and rollout["status"] in ("promoted", "rolled_back"), rollout
        assert answered_by == {"1", "2"}  # the split sent requests to both while it ran
        expected = "2" if rollout["status"] == "promoted" else "1"
        after = {call(f"{server.url}/v2/models/auto/infer", infer_body(x)).body["model_version"] for _ in range(20)}
        assert after == {expected}, rollout


TS_SECTION = """
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 16]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 4]
""" + SECTION


def _torchscript(tmp_path: Path) -> bytes:
    return (write_torchscript(tmp_path / "made_ts", "mlp") / "model.pt").read_bytes()


def test_pytorch_upload_is_exported_and_optimized_where_the_server_trusts_uploads(tmp_path):
    model, data = _torchscript(tmp_path), write_data(tmp_path / "val.npz").read_bytes()
    repo = _repo(tmp_path, TS_SECTION)
    with serving(repo, "--trust-uploads", log_path=tmp_path / "server.log") as server:
        _upload(server.url, 1, model, data, "model.pt")
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["published_version"] == 2, run
        assert [r["name"] for r in run["rows"]] == ["source", "export", "int8_dynamic"]
        assert run["winner"] == "int8_dynamic"


def test_a_version_present_at_start_is_optimized_under_trust_repository(tmp_path):
    """model.toml does not say trusted: the server's --trust-repository reaches the job's child."""
    repo = _repo(tmp_path, TS_SECTION)
    folder = repo / "auto" / "1"
    folder.mkdir()
    (folder / "model.pt").write_bytes(_torchscript(tmp_path))
    write_data(folder / "val.npz")
    with serving(repo, "--trust-repository", log_path=tmp_path / "server.log") as server:
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["published_version"] == 2, run


def test_a_stop_mid_run_leaves_it_queued_and_the_next_start_finishes_it_once(tmp_path):
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION.replace("timing_s = 0.05", "timing_s = 5.0"))
    with serving(repo, log_path=tmp_path / "server.log") as server:
        _upload(server.url, 1, model, data)
        deadline = time.monotonic() + 60
        while [r["state"] for r in _runs(server.url)["runs"][:1]] != ["running"]:  # queued after the load
            assert time.monotonic() < deadline, _runs(server.url)
            time.sleep(0.05)
    record = json.loads((repo / ".mlserve-optimize" / "auto" / "1.json").read_text())
    assert record["state"] == "running" and record["attempts"] == 1, record
    assert sorted(p.name for p in (repo / "auto").iterdir() if p.name.isdigit()) == ["1"]
    with serving(repo, log_path=tmp_path / "again.log") as server:
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["attempts"] == 2 and run["published_version"] == 2, run
    assert sorted(p.name for p in (repo / "auto").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_a_version_a_reload_finds_is_optimized(tmp_path):
    """`mlserve push` or a copy into the repository, then SIGHUP: the same arrival as an upload."""
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION)
    with serving(repo, log_path=tmp_path / "server.log") as server:
        staging = repo / "auto" / ".incoming"
        staging.mkdir()
        (staging / "model.onnx").write_bytes(model)
        (staging / "val.npz").write_bytes(data)
        staging.rename(repo / "auto" / "1")
        server.proc.send_signal(signal.SIGHUP)
        run = wait_finished_run(server.url)
        assert run["state"] == "published" and run["published_version"] == 2, run


def test_a_run_another_server_recorded_is_not_run_again(tmp_path):
    """Servers sharing a repository (and so the ledger): the one that records a run first runs it."""
    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION)
    with serving(repo, log_path=tmp_path / "server.log") as server:
        _interrupted(repo, 1)  # what the other server wrote while this one was already up
        _upload(server.url, 1, model, data)
        deadline = time.monotonic() + 30
        while "already recorded by another server" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert _runs(server.url)["runs"] == []
    assert sorted(p.name for p in (repo / "auto").iterdir() if p.name.isdigit()) == ["1"]


def test_the_status_page_shows_the_outcome(tmp_path):
    from selenium.webdriver.common.by import By

    from tests.ui.browser import chromium, console_errors

    model, data = _artifacts(tmp_path)
    repo = _repo(tmp_path, SECTION + "min_gain = 100.0\n")
    with serving(repo, log_path=tmp_path / "server.log") as server:
        _upload(server.url, 1, model, data)
        wait_finished_run(server.url)
        with chromium() as driver:
            driver.get(server.url + "/")
            deadline = time.monotonic() + 20
            found = []
            while not found:
                assert time.monotonic() < deadline, driver.page_source[-2000:]
                found = driver.find_elements(By.CSS_SELECTOR, "section[data-model=auto] .optimize [data-source-version='1']")
                time.sleep(0.1)
            assert "no winner" in found[0].text and "min-gain 100" in found[0].text
            assert console_errors(driver) == []
