"""The start-up sweep: staging a crashed writer left (kill -9 mid-upload or mid-publish) is removed
when the next server starts, with a model folder that held nothing else; staging a live writer may
still be using is kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mlserve.examples import MLP_TOML, write_mlp_onnx
from tests.server.http import call
from tests.server_process import serving


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _staging(path, age_s: float) -> None:
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"half an upload")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_start_removes_a_crashed_writers_staging_and_the_empty_model_it_created(tmp_path):
    repo = tmp_path / "models"
    write_mlp_onnx(repo / "mlp" / "1" / "model.onnx", seed=1)
    (repo / "mlp" / "model.toml").write_text(MLP_TOML)
    mlp = repo / "mlp"
    stale = [mlp / ".upload-2-0badc0de", mlp / f".optimize-3-{_dead_pid()}", repo / "newmodel" / ".upload-1-0123abcd"]
    for path in stale:
        _staging(path, 3600)
    toml_tmp = mlp / ".model.toml.deadbeef"
    toml_tmp.write_text("max_batch_size = 8\n")
    os.utime(toml_tmp, (time.time() - 3600,) * 2)
    kept = [mlp / ".upload-4-feedface", mlp / f".optimize-5-{os.getpid()}"]  # a live writer's, maybe
    _staging(kept[0], 0)
    _staging(kept[1], 3600)
    (repo / "empty").mkdir()  # not an upload's: left alone
    with serving(repo, log_path=tmp_path / "m.log") as server:
        names = {m["name"] for m in call(f"{server.url}/v2/repository/index", {}).body}
        assert "newmodel" not in names and "mlp" in names, names
        assert call(f"{server.url}/v2/models/mlp/ready").status == 200
    assert [p for p in [*stale, toml_tmp, repo / "newmodel"] if p.exists()] == []
    assert all(p.is_dir() for p in kept) and (repo / "empty").is_dir()
    assert sorted(p.name for p in mlp.iterdir() if not p.name.startswith(".")) == ["1", "model.toml"]
