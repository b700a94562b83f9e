"""An optimize run yields to live load: the server stops its child while the models serve and
continues it once they are quiet, and says so in the job's view and on /metrics."""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time

import numpy as np

from mlserve.optimize.yielding import LoadSignal
from tests.optimize.models import write_data, write_torchscript
from tests.processes import wait_gone
from tests.server.http import call, infer_body, metric_value
from tests.server_process import MlserveProcess, serving

TICK = 0.02


def _first(samples: list[tuple[float, bool]], wanted: bool) -> float:
    return next(t for t, loaded in samples if loaded is wanted)


def test_the_load_signal_stops_runs_under_load_and_clears_only_after_a_quiet_period():
    load = LoadSignal(window_s=1.0, busy_share=0.05, quiet_s=1.0)
    assert load.sample(False, 0.0) is False
    busy = [(k * TICK, load.sample(True, k * TICK)) for k in range(1, 151)]  # serving from 0 to 3 s
    # the share of time serving, decayed over 1 s: 1 - e^-t after t seconds of it
    assert _first(busy, True) == min(k * TICK for k in range(1, 151) if 1 - math.exp(-k * TICK) >= 0.05)
    assert all(loaded for t, loaded in busy if t >= _first(busy, True))
    share = 1 - math.exp(-3.0)
    quiet = [(3.0 + k * TICK, load.sample(False, 3.0 + k * TICK)) for k in range(1, 400)]
    below = min(3.0 + k * TICK for k in range(1, 400) if share * math.exp(-k * TICK) < 0.05)
    cleared = _first(quiet, False)
    assert below + 1.0 - 1e-9 <= cleared <= below + 1.0 + TICK + 1e-9, (below, cleared)
    assert all(not loaded for t, loaded in quiet if t >= cleared)
    assert load.sample(True, cleared + TICK) is False, "one short request does not stop runs again"


def _repo(tmp_path):
    repo = tmp_path / "models"
    folder = write_torchscript(repo)
    shutil.copy(write_data(tmp_path / "val.npz"), folder / "val.npz")
    return repo


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of a process: T when stopped."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def _until(what, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not seen in {timeout} s")
        time.sleep(0.05)
    return value


class LiveLoad:
    """Closed-loop clients keeping the server's model busy until stopped."""

    def __init__(self, url: str, num_clients: int = 4) -> None:
        self._url, self._stop = url, threading.Event()
        body = infer_body(np.ones((32, 16), dtype=np.float32))
        self.num_answered = 0
        self._threads = [threading.Thread(target=self._client, args=(body,), daemon=True) for _ in range(num_clients)]

    def _client(self, body) -> None:
        while not self._stop.is_set():
            try:
                answer = call(f"{self._url}/v2/models/tiny/versions/1/infer", body)
            except OSError:  # the server was killed
                return
            assert answer.status == 200, answer.body
            self.num_answered += 1

    def __enter__(self) -> LiveLoad:
        for thread in self._threads:
            thread.start()
        _until("the first answers under load", lambda: self.num_answered >= 8)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _job(url: str, job_id: str) -> dict:
    return call(f"{url}/admin/jobs/{job_id}").body


def test_a_run_is_stopped_under_live_load_and_continues_when_the_load_ends(tmp_path):
    repo = _repo(tmp_path)
    with serving(repo, log_path=tmp_path / "server.log") as server:
        with LiveLoad(server.url):
            answer = call(f"{server.url}/admin/models/tiny/optimize",
                          {"passes": ["int8_dynamic"], "data": "val.npz", "timing_s": 0.2, "max_top1_drop": 0.05})
            assert answer.status == 202, answer.body
            job_id, pid = answer.body["id"], answer.body["pid"]
            waiting = _until("the run waiting for live load",
                             lambda: (j := _job(server.url, job_id))["waiting"] == "live load" and j)
            assert waiting["state"] == "running"
            _until("the child stopped", lambda: _process_state(pid) == "T")
            assert metric_value(server.url, "mlserve_optimize_job_waiting", job=job_id, model="tiny") == 1.0
            progress = len(_job(server.url, job_id)["progress"])
            stopped_for = _until("a second stopped", lambda: (j := _job(server.url, job_id))["paused_s"] >= 1.0 and j)
            assert _process_state(pid) == "T" and len(stopped_for["progress"]) == progress, "it ran while stopped"
        _until("the child continued", lambda: _job(server.url, job_id)["waiting"] is None)
        done = _until("the run's end", lambda: (j := _job(server.url, job_id))["state"] != "running" and j)
        assert done["state"] == "succeeded" and done["published_version"] == 2, done
        assert done["paused_s"] >= 1.0 and done["waiting"] is None
        assert metric_value(server.url, "mlserve_optimize_job_waiting", job=job_id, model="tiny") == 0.0


def test_a_stopped_child_dies_with_a_killed_server(tmp_path):
    """kill -9 of the server while it holds the child stopped: a stopped child runs no lifeline
    thread, so the kernel's parent-death signal (SIGKILL) must end it."""
    repo = _repo(tmp_path)
    server = MlserveProcess(repo, log_path=tmp_path / "server.log").wait_ready()
    pid = None
    try:
        with LiveLoad(server.url, num_clients=2):
            answer = call(f"{server.url}/admin/models/tiny/optimize",
                          {"passes": ["int8_dynamic"], "data": "val.npz", "timing_s": 0.2})
            assert answer.status == 202, answer.body
            pid = answer.body["pid"]
            _until("the child stopped", lambda: _process_state(pid) == "T")
            server.signal(signal.SIGKILL)
            server.proc.wait(30)
        assert wait_gone([pid]) == [], "the stopped optimize worker outlived the server"
    finally:
        server.stop()
        if pid is not None and wait_gone([pid], 0):
            os.kill(pid, signal.SIGKILL)


def test_time_stopped_does_not_count_against_the_time_limit_and_a_stopped_run_can_be_cancelled(tmp_path):
    """The run gets going first (its first progress line comes after it may be stopped), then load
    holds it stopped for longer than its whole time limit: it is still running, and a cancel ends it."""
    repo = _repo(tmp_path)
    limit_s = 15.0
    with serving(repo, log_path=tmp_path / "server.log",
                 env={"MLSERVE_JOBS_OPTIMIZE_TIMEOUT_S": str(limit_s)}) as server:
        answer = call(f"{server.url}/admin/models/tiny/optimize",
                      {"passes": ["int8_dynamic"], "data": "val.npz", "timing_s": 10})
        assert answer.status == 202, answer.body
        job_id, pid = answer.body["id"], answer.body["pid"]
        _until("the run's first progress", lambda: _job(server.url, job_id)["progress"])
        with LiveLoad(server.url):
            held = _until("longer stopped than the time limit",
                          lambda: (j := _job(server.url, job_id))["paused_s"] >= limit_s + 1 and j)
            assert held["state"] == "running" and held["waiting"] == "live load", held
            cancelled = call(f"{server.url}/admin/jobs/{job_id}", method="DELETE")
            assert cancelled.status == 200 and cancelled.body["state"] == "cancelled", cancelled.body
            assert wait_gone([pid]) == [], "the stopped child did not end when cancelled"
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "model.toml"]
