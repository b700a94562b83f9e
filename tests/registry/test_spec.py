from __future__ import annotations

import asyncio

import pytest

from mlserve.errors import ModelLoadError
from mlserve.registry.local import LocalStore
from mlserve.registry.repository import read_entry, scan
from mlserve.spec import VersionPolicy, parse_model_config


def test_defaults_and_full_config():
    assert parse_model_config({}).batching.max_batch_size == 64
    config = parse_model_config({
        "backend": "torchscript", "device": "cuda:1", "max_batch_size": 8, "max_queue_delay_us": 10,
        "preferred_batch_sizes": [4, 8], "instances": 2, "version_policy": {"specific": [1, 3]},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "traffic": {"split": {"1": 100}},
    })
    assert config.backend == "torchscript" and config.device == "cuda:1"
    assert config.batching.preferred_batch_sizes == (4, 8)
    assert config.inputs[0].shape == (-1, 3)
    assert config.traffic.split == ((1, 100.0),)


@pytest.mark.parametrize("raw, needle", [
    ({"backend": "tensorflow"}, "backend"),
    ({"device": "tpu"}, "device"),
    ({"max_batch_size": "many"}, "max_batch_size"),
    ({"max_batch_size": -1}, "max_batch_size"),
    ({"max_batch_size": 4, "preferred_batch_sizes": [8]}, "preferred_batch_sizes"),
    ({"instances": 0}, "instances"),
    ({"version_policy": {"latest": 0}}, "version_policy"),
    ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}, "datatype"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "1"}]}, "shape"),
    ({"max_batch": 3}, "unknown key"),
])
def test_bad_model_toml_names_the_problem(raw, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        parse_model_config(raw)


def test_version_policy_selects():
    versions = [1, 2, 3, 5]
    assert VersionPolicy.parse(None).select(versions) == [5]
    assert VersionPolicy.parse({"latest": 2}).select(versions) == [3, 5]
    assert VersionPolicy.parse({"all": True}).select(versions) == versions
    assert VersionPolicy.parse({"specific": [1, 4, 5]}).select(versions) == [1, 5]


def test_scan_keeps_good_models_and_reports_bad_ones(tmp_path):
    (tmp_path / "good" / "1").mkdir(parents=True)
    (tmp_path / "good" / "2").mkdir()
    (tmp_path / "good" / "notaversion").mkdir()
    (tmp_path / "good" / "007").mkdir()
    (tmp_path / "Bad Name" / "1").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "toml" / "1").mkdir(parents=True)
    (tmp_path / "toml" / "model.toml").write_text("max_batch_size = [")
    result = asyncio.run(scan(LocalStore(tmp_path)))
    assert result.models["good"].versions == (1, 2)
    assert set(result.errors) == {"Bad Name", "empty", "toml"}
    assert "valid model name" in result.errors["Bad Name"]
    assert "no version folders" in result.errors["empty"]


def test_symlink_leaving_the_repository_is_refused(tmp_path):
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "sneaky").symlink_to(outside)
    with pytest.raises(Exception, match="leaves the model repository"):
        asyncio.run(read_entry(LocalStore(repo), "sneaky"))
    assert isinstance(ModelLoadError("x"), Exception)


@pytest.mark.parametrize("raw, message", [
    ({"intra_op_threads": 2000}, "intra_op_threads must lie in 0..256, got 2000"),
    ({"intra_op_threads": 100000}, "intra_op_threads must lie in 0..256"),
    ({"instances": 100000}, "instances must lie in 1..64"),
    ({"max_batch_size": 10**7}, "max_batch_size must lie in 0..65536"),
    ({"max_queue_size": 10**9}, "max_queue_size must lie in 1..1000000"),
    ({"max_queue_delay_us": 10**12}, "max_queue_delay_us must lie in 0..10000000"),
    ({"preferred_batch_sizes": [1] * 300}, "preferred_batch_sizes may hold at most 256 items"),
    ({"cache_size": 10**9}, "cache_size must lie in 0..1000000"),
    ({"shared_cache_ttl_s": -1}, "shared_cache_ttl_s must lie in 0..86400"),
    ({"shared_cache_ttl_s": "soon"}, "shared_cache_ttl_s"),
    ({"shared_cache_entries": 0}, "shared_cache_entries must lie in 1..10000000"),
    ({"shared_cache_max_bytes": 10**12}, "shared_cache_max_bytes must lie in 1..67108864"),
    ({"gpu_memory_mb": 1e300}, "gpu_memory_mb must lie in"),
    ({"warmup": {"batch_sizes": [10**9]}}, "[warmup] batch_sizes must lie in 1..65536"),
    ({"llm": {"num_kv_blocks": 10**10}}, "[llm] num_kv_blocks must lie in 1..16777216"),
    ({"llm": {"max_num_seqs": 10**6}}, "[llm] max_num_seqs must lie in 1..4096"),
    ({"llm": {"block_size": 10**6}}, "[llm] block_size must lie in 1..1024"),
    ({"drift": {"window": 10**10}}, "[drift] window must lie in 1..10000000"),
    ({"drift": {"window_s": float("inf")}}, "[drift] window_s must be a finite number"),
    ({"traffic": {"breaker": {"window": 10**9}}}, "[traffic.breaker] window must lie in 1..1000000"),
    ({"traffic": {"split": {"99999999999999999999999": 100}}}, "is not a version number"),
    ({"version_policy": {"latest": 10**6}}, "latest in 1..256"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1] * 40}]}, "at most 32 dimensions"),
])
def test_every_number_in_model_toml_is_bounded_and_the_key_named(raw, message):
    with pytest.raises(ValueError) as excinfo:
        parse_model_config(raw)
    assert message in str(excinfo.value)
