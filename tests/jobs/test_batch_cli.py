"""`mlserve batch` as users run it: a real process over a real repository, checked against
onnxruntime run directly on the same artifact (tolerance 1e-5: batch boundaries may differ)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.jobs.helpers import batch_command, mlp_rows, read_jsonl, reference, run_batch, write_jsonl
from tests.registry.conftest import moto_server, s3_env  # noqa: F401 - fixtures shared with the S3 store tests
from tests.registry.s3util import upload
from tests.server_process import ROOT

TOL = dict(rtol=1e-5, atol=1e-5)


def write_input(path, x):
    if path.suffix == ".npz":
        np.savez(path, x=x)
    elif path.suffix == ".jsonl":
        write_jsonl(path, x)
    else:
        flat = pa.array(x.reshape(-1))
        pq.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])}), path,
                       row_group_size=1000)


def read_output(path):
    """(row indices, y) from any output format."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return data["row"], data["y"]
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
        return np.array([r["row"] for r in records]), np.array([r["y"] for r in records], np.float32)
    table = pq.read_table(path)
    return table.column("row").to_numpy(), np.array(table.column("y").to_pylist(), np.float32)


@pytest.mark.parametrize("src_kind,dst_kind", [("npz", "npz"), ("jsonl", "jsonl"), ("parquet", "parquet"),
                                               ("npz", "parquet")])
def test_outputs_equal_onnxruntime_on_every_row(jobs_repo, tmp_path, src_kind, dst_kind):
    x = mlp_rows(700)
    src, dst = tmp_path / f"in.{src_kind}", tmp_path / f"out.{dst_kind}"
    write_input(src, x)
    done = run_batch(jobs_repo, "mlp", src, dst, "--chunk-rows", "128")
    assert done.returncode == 0, done.stderr
    rows, y = read_output(dst)
    assert rows.tolist() == list(range(700))
    np.testing.assert_allclose(y, reference(jobs_repo / "mlp" / "2" / "model.onnx", x), **TOL)
    assert (tmp_path / f"out.{dst_kind}.errors.jsonl").read_bytes() == b""
    assert not (tmp_path / f"out.{dst_kind}.partial").exists()


def test_a_chosen_version_answers(jobs_repo, tmp_path):
    x = mlp_rows(50, seed=3)
    write_input(tmp_path / "in.npz", x)
    done = run_batch(jobs_repo, "mlp", tmp_path / "in.npz", tmp_path / "out.npz", "--version", "1")
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(read_output(tmp_path / "out.npz")[1],
                               reference(jobs_repo / "mlp" / "1" / "model.onnx", x), **TOL)


def test_bad_rows_go_to_the_errors_file_and_the_rest_are_answered(jobs_repo, tmp_path):
    x = mlp_rows(200, seed=1)
    bad = {3: b'{"x": [1, 2, 3]}', 64: b"{oops", 150: b'{"y": []}'}
    write_jsonl(tmp_path / "in.jsonl", x, bad)
    done = run_batch(jobs_repo, "mlp", tmp_path / "in.jsonl", tmp_path / "out.jsonl",
                     "--errors", str(tmp_path / "bad.jsonl"))
    assert done.returncode == 3, done.stderr  # finished, with failed rows
    errors = read_jsonl(tmp_path / "bad.jsonl")
    assert [e["row"] for e in errors] == [3, 64, 150]
    assert "shape [768], got [3]" in errors[0]["error"]
    assert "not valid JSON" in errors[1]["error"]
    assert "unknown input(s) ['y']" in errors[2]["error"]
    rows, y = read_output(tmp_path / "out.jsonl")
    keep = [i for i in range(200) if i not in bad]
    assert rows.tolist() == keep
    np.testing.assert_allclose(y, reference(jobs_repo / "mlp" / "2" / "model.onnx", x[keep]), **TOL)


def test_string_model_round_trips_text(jobs_repo, tmp_path):
    words = [["a", "bé", "c"], ["d", "e", "f"], ["", "x y", "z"]] * 5
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps({"x": w}) + b"\n" for w in words))
    done = run_batch(jobs_repo, "words", tmp_path / "in.jsonl", tmp_path / "out.parquet")
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("y").to_pylist() == words
    refused = run_batch(jobs_repo, "words", tmp_path / "in.jsonl", tmp_path / "out.npz")
    assert refused.returncode == 1 and "cannot hold the string output(s) ['y']" in refused.stderr


def test_refusals_name_the_problem_and_write_nothing(jobs_repo, tmp_path):
    write_input(tmp_path / "in.npz", mlp_rows(4))
    cases = [
        (("unbatched", tmp_path / "in.npz", tmp_path / "o.jsonl"), "max_batch_size 0"),
        (("mlp", tmp_path / "in.npz", tmp_path / "o.csv"), "must end in .npz, .jsonl, .parquet"),
        (("mlp", tmp_path / "missing.npz", tmp_path / "o.jsonl"), "is not a file"),
        (("nope", tmp_path / "in.npz", tmp_path / "o.jsonl"), "nope"),
        (("mlp", tmp_path / "in.npz", tmp_path / "o.jsonl", "--version", "7"), "no version 7"),
    ]
    for (model, src, dst, *extra), message in cases:
        done = run_batch(jobs_repo, model, src, dst, *extra)
        assert done.returncode == 1 and message in done.stderr, (model, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_a_finished_output_is_kept_and_another_run_needs_overwrite(jobs_repo, tmp_path):
    write_input(tmp_path / "a.npz", mlp_rows(30, seed=1))
    write_input(tmp_path / "b.npz", mlp_rows(30, seed=2))
    assert run_batch(jobs_repo, "mlp", tmp_path / "a.npz", tmp_path / "out.jsonl").returncode == 0
    first = (tmp_path / "out.jsonl").read_bytes()
    again = run_batch(jobs_repo, "mlp", tmp_path / "a.npz", tmp_path / "out.jsonl")
    assert again.returncode == 0 and "already complete" in again.stderr
    other = run_batch(jobs_repo, "mlp", tmp_path / "b.npz", tmp_path / "out.jsonl")
    assert other.returncode == 1 and "records another run" in other.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == first
    forced = run_batch(jobs_repo, "mlp", tmp_path / "b.npz", tmp_path / "out.jsonl", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "out.jsonl").read_bytes() != first


def wait_for_progress(checkpoint, proc, at_least, timeout=120.0):
    """Poll the checkpoint (replaced atomically) until `at_least` rows are committed; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        try:
            state = orjson.loads(checkpoint.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            state = None
        if state and state["rows_done"] >= at_least:
            return state
        time.sleep(0.002)
    raise TimeoutError(f"no {at_least} rows committed in {timeout} s")


@pytest.mark.parametrize("src_kind,dst_kind", [("npz", "jsonl"), ("parquet", "parquet")])
def test_kill_9_then_resume_gives_every_row_exactly_once(jobs_repo, tmp_path, src_kind, dst_kind):
    num_rows = 20000
    x = mlp_rows(num_rows, seed=7)
    src, dst = tmp_path / f"in.{src_kind}", tmp_path / f"out.{dst_kind}"
    write_input(src, x)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(batch_command(jobs_repo, "mlp", src, dst, "--chunk-rows", "256"), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = wait_for_progress(dst.with_name(dst.name + ".checkpoint.json"), proc, at_least=2048)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert state["state"] == "running" and state["rows_done"] < num_rows
    assert not dst.exists()  # only the partial output and the checkpoint are there

    resumed = run_batch(jobs_repo, "mlp", src, dst, "--chunk-rows", "256")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    rows, y = read_output(dst)
    assert rows.tolist() == list(range(num_rows))
    np.testing.assert_allclose(y, reference(jobs_repo / "mlp" / "2" / "model.onnx", x), **TOL)


def test_a_model_repository_on_s3_works_too(jobs_repo, tmp_path, moto_server, s3_env):
    """The same command with --models s3://... (a real moto S3 server on 127.0.0.1)."""
    upload(moto_server, "models", "repo/mlp", jobs_repo / "mlp", create=True)
    x = mlp_rows(100, seed=5)
    write_input(tmp_path / "in.npz", x)
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT), "MLSERVE_REGISTRY_CACHE_DIR": str(tmp_path / "cache")}
    command = batch_command("s3://models/repo", "mlp", tmp_path / "in.npz", tmp_path / "out.npz")
    done = subprocess.run([*command, "--s3-endpoint", moto_server], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(read_output(tmp_path / "out.npz")[1],
                               reference(jobs_repo / "mlp" / "2" / "model.onnx", x), **TOL)


def test_batch_refuses_torchscript_from_an_untrusted_repository_and_runs_it_when_trusted(tmp_path):
    """TorchScript can run code when loaded: `mlserve batch` applies the server's trust rule."""
    from mlserve.examples import MLP_TS_TOML, write_mlp_torchscript

    repo = tmp_path / "repo"
    write_mlp_torchscript(repo / "mlp_ts" / "1" / "model.pt", seed=1)
    (repo / "mlp_ts" / "model.toml").write_text(MLP_TS_TOML.replace("trusted = true\n", ""))
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    write_input(src, mlp_rows(10))

    refused = run_batch(repo, "mlp_ts", src, dst)
    assert refused.returncode == 1
    assert "not trusted" in refused.stderr and "--trust-repository" in refused.stderr
    assert not dst.exists() and not (tmp_path / "out.npz.partial").exists()

    trusted = run_batch(repo, "mlp_ts", src, dst, "--trust-repository")
    assert trusted.returncode == 0, trusted.stderr
    assert read_output(dst)[1].shape == (10, 10)
