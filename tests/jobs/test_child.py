"""Jobs in a child process (`[batching] background_process = true`, jobs/child.py): over real HTTP
on a real server, the job's output against onnxruntime, the child's CPU priority, cancel and resume,
a child that dies; the refusals at load; and the reason a job in a child shows, on a real
DynamicBatcher."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from mlserve.errors import ModelLoadError
from mlserve.examples import MLP_TOML, write_mlp_onnx
from mlserve.jobs.sharing import WAITING_FOR_LIVE
from mlserve.spec import parse_model_config
from tests.jobs.helpers import mlp_rows, reference
from tests.jobs.test_background_thread import _open
from tests.jobs.test_batch_cli import TOL, read_output
from tests.jobs.test_sharing import behind_a_running_batch, setup
from tests.server.http import call
from tests.server_process import MlserveProcess, serving

SCHED_IDLE = 5
NUM_ROWS = 30_000


@pytest.fixture(scope="module")
def child_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("child_repo")
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(MLP_TOML + "background_process = true\n")
    return root


@pytest.fixture(scope="module")
def child_server(child_repo, tmp_path_factory):
    batch = tmp_path_factory.mktemp("batch")
    np.savez(batch / "in.npz", x=mlp_rows(NUM_ROWS, seed=21))
    with serving(child_repo, "--batch-dir", str(batch), log_path=tmp_path_factory.mktemp("log") / "m.log") as p:
        yield p, batch


def children(pid: int) -> list[int]:
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def job_child(server_pid: int, lowered: bool = False, timeout: float = 60.0) -> int:
    """The job's child process, stopped (SIGSTOP) the moment it is seen (with `lowered`, the
    moment it has lowered its CPU priority, which it does before it opens the model), so the job
    cannot end before the test has looked at it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(server_pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                is_lowered = policy_and_nice(pid)[0] == SCHED_IDLE
            except FileNotFoundError:
                continue
            if b"mlserve.jobs.child" in cmdline and (is_lowered or not lowered):
                os.kill(pid, signal.SIGSTOP)
                return pid
        time.sleep(0.0005)
    raise TimeoutError("no child process for the job")


def policy_and_nice(pid: int) -> tuple[int, int]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[38]), int(fields[16])  # policy (field 41), nice (field 19)


def allowed_cpus(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def wait_for(url: str, job_id: str, states: tuple[str, ...], rows: bool = False, timeout: float = 120.0) -> dict:
    """The job once in one of `states` (with `rows`, once it has also committed rows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(f"{url}/v2/batch/jobs/{job_id}").body
        if job["state"] in states and (job["rows_done"] or not rows):
            return job
        time.sleep(0.002 if rows else 0.02)
    raise TimeoutError(f"job {job_id} never reached {states}: {job}")


def gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the /proc checks need Linux")
def test_a_job_runs_in_a_child_at_the_lowest_priority_is_cancelled_with_it_and_resumes_to_the_reference(
        child_server, child_repo):
    server, batch = child_server
    job = {"model": "mlp", "input": "in.npz", "output": "out.npz"}
    created = call(f"{server.url}/v2/batch/jobs", job)
    assert created.status == 201, created.body
    pid = job_child(server.proc.pid, lowered=True)
    policy, nice = policy_and_nice(pid)
    assert policy == SCHED_IDLE, (policy, nice)
    server_cpus = allowed_cpus(server.proc.pid)
    if len(server_cpus) > 1:  # the first CPU is left to live work
        assert allowed_cpus(pid) == server_cpus - {min(server_cpus)}
    os.kill(pid, signal.SIGCONT)
    running = wait_for(server.url, created.body["id"], ("running",), rows=True)
    assert 0 < running["rows_done"] < NUM_ROWS, running
    cancelled = call(f"{server.url}/v2/batch/jobs/{created.body['id']}", method="DELETE")
    assert cancelled.status == 200, cancelled.body
    assert wait_for(server.url, created.body["id"], ("cancelled",))["state"] == "cancelled"
    assert gone(pid), "the cancelled job's child still runs"

    again = call(f"{server.url}/v2/batch/jobs", job)  # the same output, no overwrite: a resume
    assert again.status == 201, again.body
    done = wait_for(server.url, again.body["id"], ("done", "failed"))
    assert done["state"] == "done" and done["rows_done"] == NUM_ROWS and done["rows_failed"] == 0, done
    rows, y = read_output(batch / "out.npz")
    with np.load(batch / "in.npz") as data:
        x = data["x"]
    assert rows.tolist() == list(range(NUM_ROWS))
    np.testing.assert_allclose(y, reference(child_repo / "mlp" / "1" / "model.onnx", x), **TOL)
    assert not [c for c in children(server.proc.pid) if not gone(c, 5.0)], "a child outlived its job"


def test_a_child_that_dies_fails_its_job_by_name_and_the_server_serves_on(child_server):
    server, batch = child_server
    created = call(f"{server.url}/v2/batch/jobs",
                   {"model": "mlp", "input": "in.npz", "output": "killed.npz", "overwrite": True})
    assert created.status == 201, created.body
    os.kill(job_child(server.proc.pid), signal.SIGKILL)
    failed = wait_for(server.url, created.body["id"], ("failed", "done"))
    assert failed["state"] == "failed" and "exit code -9" in failed["reason"], failed
    answer = call(f"{server.url}/v2/models/mlp/infer",
                  {"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 768}]})
    assert answer.status == 200, answer.body


def test_background_process_is_refused_at_load_where_no_child_can_run_it(tmp_path):
    with pytest.raises(ModelLoadError, match="background_process = true.*max_batch_size 0"):
        _open(tmp_path, MLP_TOML.replace("max_batch_size = 64", "max_batch_size = 0")
              + "background_process = true\n")
    with pytest.raises(ValueError, match="background_thread and background_process"):
        parse_model_config({"max_batch_size": 8, "background_thread": True, "background_process": True})


def test_a_job_in_a_child_reads_waiting_while_live_rows_fill_whole_batches():
    """max_batch_size 8: a batch formed with 8 live rows waiting says live load fills the engine;
    one formed with 3 does not."""
    async def main(live):
        model, batcher, job = setup()
        assert job.process_status() == ""
        first, queued = await behind_a_running_batch(model, batcher, live)
        model.gate.set()
        await asyncio.gather(first, *queued)
        status = job.process_status()
        await batcher.stop()
        return status

    assert asyncio.run(main([(2, 4), (3, 4)])) == WAITING_FOR_LIVE
    assert asyncio.run(main([(2, 3)])) == ""


def test_a_child_whose_server_is_killed_stops_instead_of_writing_on(child_repo, tmp_path):
    """A server killed with SIGKILL leaves no child behind: a restarted server resumes the job from
    its checkpoint, and a child still writing the same files would race it."""
    np.savez(tmp_path / "in.npz", x=mlp_rows(NUM_ROWS, seed=22))
    server = MlserveProcess(child_repo, "--batch-dir", str(tmp_path), log_path=tmp_path / "m.log").wait_ready()
    try:
        created = call(f"{server.url}/v2/batch/jobs", {"model": "mlp", "input": "in.npz", "output": "out.npz"})
        assert created.status == 201, created.body
        pid = job_child(server.proc.pid, lowered=True)
        os.kill(pid, signal.SIGCONT)
        running = wait_for(server.url, created.body["id"], ("running",), rows=True)
        assert running["rows_done"] < NUM_ROWS, running
        server.proc.kill()
        server.proc.wait()
    finally:
        if server.proc.poll() is None:
            server.stop()
    assert gone(pid), "the child of a killed server still runs"
