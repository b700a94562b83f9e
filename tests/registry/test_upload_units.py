"""The upload writer's pure parts: model.toml written back, file paths that may not leave a version."""

from __future__ import annotations

import asyncio
import threading
import tomllib

import pytest

from mlserve.errors import Conflict, InvalidInput
from mlserve.registry.local import LocalStore
from mlserve.registry.repository import read_entry
from mlserve.registry.store import verify_checksums
from mlserve.spec import parse_model_config
from mlserve.registry.upload import Upload, check_file_path, checked_toml, take_back, toml_text, write_upload

DESIGN_EXAMPLE = {
    "backend": "onnx", "device": "cpu", "max_batch_size": 64, "max_queue_delay_us": 2000,
    "preferred_batch_sizes": [16, 32, 64], "max_queue_size": 1024, "instances": 1, "intra_op_threads": 1,
    "version_policy": {"latest": 1},
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 768]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}, {"name": "s", "datatype": "BYTES", "shape": [-1]}],
    "traffic": {"split": {"1": 90, "2": 10}, "sticky_key": "header:X-User-Id",
                "shadow": {"version": "3", "percent": 100}, "fallback": "previous"},
    "drift": {"reference": "reference.npz", "window": 10000, "psi_warn": 0.1, "psi_alert": 0.25},
}


def test_model_toml_round_trips():
    text = toml_text(DESIGN_EXAMPLE)
    assert tomllib.loads(text) == DESIGN_EXAMPLE
    assert checked_toml(DESIGN_EXAMPLE) == text
    parse_model_config(tomllib.loads(text))


def test_a_table_that_is_not_a_model_config_is_refused():
    with pytest.raises(InvalidInput, match="max_batch_size"):
        checked_toml({"max_batch_size": -1})


@pytest.mark.parametrize("spec", [
    "1/../x", "1//x", "1/.hidden", "0/model.onnx", "01/model.onnx", "v1/model.onnx", "1/", "1/a\\\\b",
    "1/SHA256SUMS", "/1/model.onnx", "1/./model.onnx", "1/mlserve-upload.json", "²/model.onnx",
    "99999999999999999999999/model.onnx",
])
def test_paths_that_could_leave_the_version_are_refused(spec):
    with pytest.raises(InvalidInput):
        check_file_path(spec)


def test_plain_paths_are_taken():
    assert check_file_path("2/model.onnx") == (2, "model.onnx")
    assert check_file_path("12/tokenizer/vocab.json") == (12, "tokenizer/vocab.json")


def test_a_rollback_leaves_a_model_folder_another_upload_wrote_into(tmp_path):
    """Upload A made the model folder; upload B landed version 2 in it; taking A back removes only
    A's version, never the folder with B's version in it."""
    first = write_upload(tmp_path, Upload("m", {1: {"model.onnx": b"a"}}), None, uploaded_by="api a")
    assert first.created_model
    second = write_upload(tmp_path, Upload("m", {2: {"model.onnx": b"b"}}), None, uploaded_by="api b")
    assert not second.created_model
    take_back(first)
    assert not (tmp_path / "m" / "1").exists() and (tmp_path / "m" / "2" / "model.onnx").read_bytes() == b"b"
    lone = write_upload(tmp_path, Upload("n", {1: {"model.onnx": b"c"}}), None)
    take_back(lone)
    assert not (tmp_path / "n").exists()  # a folder it made and nobody else wrote into goes with it


def test_of_racing_writers_of_one_version_exactly_one_wins(tmp_path):
    """Eight threads write version 1 of a new model at once: one lands whole, the others get
    Conflict (409) and leave nothing behind."""
    barrier, outcomes = threading.Barrier(8), []

    def write(n: int) -> None:
        barrier.wait()
        try:
            write_upload(tmp_path, Upload("m", {1: {"model.onnx": bytes([n]) * 1000, f"extra{n}.txt": b"x"}}), None)
            outcomes.append(n)
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [o for o in outcomes if o != "conflict"]
    assert len(outcomes) == 8 and len(winners) == 1, outcomes
    folder = tmp_path / "m" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", f"extra{winners[0]}.txt", "model.onnx"]
    verify_checksums(folder)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["1"]  # no staging folder left


@pytest.mark.parametrize("name", ["99999999999999999999999", "9223372036854775808", "٣", "²", "0", "007"])
def test_version_folders_out_of_range_are_skipped_at_scan(tmp_path, caplog, name):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / name).mkdir()
    with caplog.at_level("WARNING", logger="mlserve.registry"):
        entry = asyncio.run(read_entry(LocalStore(tmp_path), "m"))
    assert entry.versions == (1,)
    assert name in caplog.text


def test_the_largest_version_is_taken():
    assert check_file_path(f"{2**63 - 1}/model.onnx") == (2**63 - 1, "model.onnx")
    with pytest.raises(InvalidInput, match="version folder"):
        check_file_path(f"{2**63}/model.onnx")
