"""A batch job behind three real replicas, nginx and one real redis-server, all sharing one batch
folder: submitted through nginx, seen from every replica, its replica killed with SIGKILL mid-job, and
finished by another from the checkpoint, every output row once."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from mlserve.examples import write_identity_onnx
from tests.deploy.cluster import call_json, load_replicas_module, poll
from tests.jobs.helpers import read_jsonl, write_jsonl
from tests.server_process import ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (Debian package redis-server)"),
]
ROWS = 6000


def test_a_job_whose_replica_is_killed_completes_on_another(tmp_path):
    repo, batch = tmp_path / "repo", tmp_path / "batch"
    write_identity_onnx(repo / "one" / "1" / "model.onnx", "FP32")
    (repo / "one" / "model.toml").write_text("max_batch_size = 1\n")  # one row a batch: a job of some seconds
    batch.mkdir()
    x = np.arange(ROWS * 3, dtype=np.float32).reshape(ROWS, 3)
    write_jsonl(batch / "in.jsonl", x)
    replicas = load_replicas_module().Replicas(
        ["--models", str(repo), "--batch-dir", str(batch)], num_replicas=3, workdir=tmp_path / "replicas",
        state="redis", env={"PYTHONPATH": str(ROOT), "MLSERVE_LIMITS_SHUTDOWN_DELAY_S": "0.2",
                            "MLSERVE_JOBS_LEASE_S": "2", "MLSERVE_JOBS_SCAN_S": "0.5", "MLSERVE_JOBS_CHUNK_ROWS": "20"},
    )
    replicas.start()
    killed = None
    try:
        status, job = call_json(f"{replicas.url}/v2/batch/jobs", {"model": "one", "input": "in.jsonl",
                                                             "output": "out.jsonl"}, "POST")
        assert status == 201, job
        url = f"/v2/batch/jobs/{job['id']}"
        poll(lambda: call_json(replicas.url + url)[1].get("rows_done", 0) >= 200, timeout=60)
        views = [call_json(r.url + url) for r in replicas.replicas]  # every replica sees it, from the store
        assert all(s == 200 and v["state"] == "running" for s, v in views), views
        owner_pid = int(views[0][1]["owner"].rpartition(":")[2])
        killed = next(r for r in replicas.replicas if r.proc.pid == owner_pid)
        assert views[0][1]["rows_done"] < ROWS, "the job ended before its replica could be killed"
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait(10)
        started = time.monotonic()
        poll(lambda: call_json(replicas.url + url)[1].get("state") == "done", timeout=120, interval=0.3)
        status, done = call_json(replicas.url + url)
        assert done["owner"] != views[0][1]["owner"] and done["rows_done"] == ROWS, done
        print(f"taken over and finished {time.monotonic() - started:.1f} s after the kill")
    finally:
        codes = replicas.stop()
    assert [c for r, c in zip(replicas.replicas, codes) if r is not killed] == [0, 0], _logs(replicas.workdir)
    out = read_jsonl(batch / "out.jsonl")
    assert [r["row"] for r in out] == list(range(ROWS))  # none lost, none twice
    np.testing.assert_array_equal(np.array([r["y"] for r in out], np.float32), x)


def _logs(workdir: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(workdir.glob("*.log")))
