"""`mlserve push` copies only the pushed folder's own plain files: a symbolic link (to a system file
or a folder outside) or a FIFO is refused by name and nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlserve.examples import write_mlp_onnx
from tests.server_process import ROOT


def _push(repo: Path, artifact: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mlserve", "push", "--models", str(repo), "--name", "m",
                           str(artifact)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


def _version(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    write_mlp_onnx(folder / "model.onnx", seed=1)
    return folder


@pytest.mark.parametrize("kind", ["file link", "folder link", "fifo"])
def test_push_refuses_links_and_special_files_by_name(repo, tmp_path, kind):
    folder = _version(tmp_path, "v")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the bucket")
    if kind == "file link":
        (folder / "extra.txt").symlink_to("/etc/hostname")
    elif kind == "folder link":
        (folder / "extra.txt").symlink_to(outside, target_is_directory=True)
    else:
        os.mkfifo(folder / "extra.txt")
    pushed = _push(repo, folder)
    assert pushed.returncode == 2 and "extra.txt" in pushed.stderr, pushed.stderr
    assert list(repo.iterdir()) == []


def test_push_of_plain_files_still_writes_the_version(repo, tmp_path):
    folder = _version(tmp_path, "v")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("kept")
    pushed = _push(repo, folder)
    assert pushed.returncode == 0, pushed.stderr
    assert (repo / "m" / "1" / "sub" / "notes.txt").read_text() == "kept"
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
