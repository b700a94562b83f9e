"""open_version, the one way to open a version (registry/opening.py): typed runtimes, the trust rule
applied before any file is read, and the loader serving a generation version with its engine and no
batcher. Real models in real folders."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from mlserve.config import RegistryConfig
from mlserve.errors import InvalidInput, ModelLoadError
from mlserve.examples import MLP_TS_TOML, write_mlp_torchscript
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.registry.opening import (Alone, BatchedRuntime, GenerativeRuntime, OpenStage, Trust, VersionFiles,
                                      open_version)
from mlserve.routing.service import InferenceService
from mlserve.spec.infer import InferRequest
from mlserve.spec import ModelConfig, read_model_config

MAX_BYTES = RegistryConfig().max_artifact_bytes


def _files(root: Path, model: str, trust: Trust = Trust()) -> VersionFiles:
    toml = root / model / "model.toml"
    config = read_model_config(toml) if toml.is_file() else ModelConfig()
    return VersionFiles(f"{model}/1", config, root / model / "1", trust, MAX_BYTES)


def test_a_generation_version_opens_as_a_generative_runtime_with_typed_fields(test_repo):
    runtime = asyncio.run(open_version(_files(test_repo, "tiny-llama"), Alone("cpu")))
    try:
        assert isinstance(runtime, GenerativeRuntime)
        assert runtime.device == "cpu" and runtime.backend_name == "llm"
        assert runtime.max_model_len > 0 and runtime.max_seq_length == runtime.max_model_len
        assert runtime.vocab_size >= runtime.tokenizer.vocab_size  # the model's width: the one checked
        ids = runtime.tokenizer.encode("hello there", add_special_tokens=False)
        assert ids and max(ids) < runtime.vocab_size and runtime.tokenizer.decode(ids) == "hello there"
    finally:
        runtime.close()


def test_a_tensor_version_opens_warmed_up_as_a_batched_runtime(test_repo):
    runtime = asyncio.run(open_version(_files(test_repo, "identity_fp32"), Alone("auto")))
    try:
        assert isinstance(runtime, BatchedRuntime)
        assert runtime.device == "cpu"  # auto with no GPU
        assert runtime.figures.warmup_runs >= 1 and runtime.vocab_size is None
        assert [s.name for s in runtime.info.inputs]
    finally:
        runtime.close()


def test_untrusted_torchscript_is_refused_before_it_is_loaded_and_opens_when_trusted(tmp_path):
    write_mlp_torchscript(tmp_path / "mlp_ts" / "1" / "model.pt", seed=1)
    (tmp_path / "mlp_ts" / "model.toml").write_text(MLP_TS_TOML.replace("trusted = true\n", ""))
    stage = OpenStage()
    with pytest.raises(ModelLoadError, match="not trusted.*--trust-repository"):
        asyncio.run(open_version(_files(tmp_path, "mlp_ts"), Alone("cpu"), stage=stage))
    assert stage.name == "load"
    runtime = asyncio.run(open_version(_files(tmp_path, "mlp_ts", Trust(model=True)), Alone("cpu")))
    runtime.close()
    assert isinstance(runtime, BatchedRuntime) and runtime.backend_name == "torchscript"


def test_the_loader_serves_a_generation_version_on_its_engine_without_a_batcher(test_repo, tmp_path):
    shutil.copytree(test_repo / "tiny-llama", tmp_path / "tiny-llama")

    async def run():
        loader = HotSwapLoader(LocalStore(tmp_path), RegistryConfig(models=str(tmp_path)), Metrics())
        try:
            await loader.reconcile("startup")
            sv = loader.models["tiny-llama"].versions[1]
            serving = sv.serving
            seen = (sv.is_ready, type(serving).__name__, isinstance(serving.runtime, GenerativeRuntime),
                    sv.vocab_size == serving.vocab_size == serving.runtime.vocab_size,
                    sv.max_seq_length == serving.max_model_len == serving.engine.max_model_len)
            with pytest.raises(InvalidInput, match="generation model.*/v1/completions"):
                await InferenceService(loader).infer(InferRequest("tiny-llama", None, {}, {}))
            return seen
        finally:
            await loader.close()

    assert asyncio.run(run()) == (True, "GenerativeServing", True, True, True)
