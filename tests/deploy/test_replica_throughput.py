"""Two replicas behind nginx answer at least 1.5x the requests of one, on a machine with cores to
spare (each replica runs its model on one intra-op thread; the client and nginx need a core too)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.deploy.cluster import SteadyLoad, load_replicas_module
from tests.models import write_slow_onnx
from tests.server_process import ROOT

CORES = len(os.sched_getaffinity(0))
pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)"),
    pytest.mark.skipif(CORES < 3, reason=f"needs 3 cores to compare 1 and 2 replicas; this machine has {CORES}"),
]
SECONDS = 6.0


def _throughput(models, num_replicas: int, workdir) -> float:
    replicas = load_replicas_module().Replicas(
        ["--models", str(models)], num_replicas=num_replicas, workdir=workdir, env={"PYTHONPATH": str(ROOT)})
    replicas.start()
    try:
        with SteadyLoad(replicas.url, "slow", num_threads=8, pause_s=0.0, max_s=SECONDS + 30) as load:
            load.wait_for(8)
            start, first = time.monotonic(), load.total
            time.sleep(SECONDS)  # a fixed measuring window over a load that is already running
            done = load.total - first
            elapsed = time.monotonic() - start
        assert not load.failures, load.failures[:5]
    finally:
        assert replicas.stop() == [0] * num_replicas
    return done / elapsed


def test_two_replicas_answer_at_least_one_and_a_half_times_one(tmp_path):
    write_slow_onnx(tmp_path / "repo" / "slow" / "1" / "model.onnx", width=3, depth=2000)
    (tmp_path / "repo" / "slow" / "model.toml").write_text("max_batch_size = 0\n")
    one = _throughput(tmp_path / "repo", 1, tmp_path / "one")
    two = _throughput(tmp_path / "repo", 2, tmp_path / "two")
    print(f"requests/s through nginx: 1 replica {one:.0f}, 2 replicas {two:.0f} ({two / one:.2f}x) on {CORES} cores")
    assert two >= 1.5 * one
