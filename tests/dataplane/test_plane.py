"""DataPlane in process, over a real loader and a real repository (no HTTP process: what is under test
here is the door every protocol calls, as KServe's test_dataplane.py tests its data plane): inference
and generation checked against onnxruntime and transformers run outside the server, a model's
metadata and readiness, a model in Triton's wording when unknown, the models in name order, and the
repository index as v2 and gRPC both answer it."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from mlserve.config import LimitsConfig, RegistryConfig
from mlserve.dataplane import DataPlane, token_limits
from mlserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.service import InferenceService
from mlserve.spec import GenerationRequest, SamplingParams
from mlserve.spec.infer import InferRequest
from tests.routing.models import write_scale_onnx


def _repo(root):
    for version in (1, 2):
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text("version_policy = { all = true }\n")
    write_scale_onnx(root / "a" / "1" / "model.onnx", 1.0)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (root / "badtoml" / "1").mkdir(parents=True)
    (root / "badtoml" / "model.toml").write_text("max_batch_size = 'many'\n")
    return root


def _with_plane(root, check, unload: str | None = None) -> None:
    """`check(plane)`, sync or async, over a loader that has scanned and loaded `root` (and then
    unloaded the model `unload`, which stays listed with no versions)."""

    async def scenario():
        loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), Metrics())
        await loader.reconcile()
        if unload is not None:
            await loader.control.unload(unload, "test")
        try:
            result = check(DataPlane(loader, InferenceService(loader)))
            if asyncio.iscoroutine(result):
                await result
        finally:
            await loader.close()

    asyncio.run(scenario())


def _copy(test_repo, root, *names):
    for name in names:
        shutil.copytree(test_repo / name, root / name)
    return root


# -- the model table -------------------------------------------------------------------------------


def test_models_are_found_by_name_and_listed_in_name_order(tmp_path):
    def check(plane: DataPlane) -> None:
        assert plane.model("m").name == "m" and plane.find("m") is plane.model("m")
        assert plane.find("nope") is None and plane.has("m") and not plane.has("nope")
        with pytest.raises(ModelNotFound, match=r"^Request for unknown model: 'nope' is not found$"):
            plane.model("nope")
        assert plane.names() == ["a", "broken", "m"] == [name for name, _ in plane.items()]
        assert plane.num_ready_versions() == 3
        assert [name for name, _ in plane.scan_errors()] == ["badtoml"]

    _with_plane(_repo(tmp_path), check)


def test_the_index_lists_versions_then_unreadable_folders_each_in_name_order(tmp_path):
    """A row with no version (an unloaded model, a folder that could not be read) has no `version`
    key: v2 answers the rows as they are, gRPC's message reads the missing field as ""."""

    def check(plane: DataPlane) -> None:
        rows = plane.index(ready_only=False)
        assert [(r["name"], r.get("version"), r["state"]) for r in rows] == [
            ("a", None, "UNAVAILABLE"), ("broken", "1", "UNAVAILABLE"), ("m", "1", "READY"), ("m", "2", "READY"),
            ("badtoml", None, "UNAVAILABLE"),
        ]
        assert all(set(r) == {"name", "state", "reason"} for r in rows if r["name"] in ("a", "badtoml"))
        assert "max_batch_size" in rows[-1]["reason"]
        assert [(r["name"], r["version"]) for r in plane.index(ready_only=True)] == [("m", "1"), ("m", "2")]

    _with_plane(_repo(tmp_path), check, unload="a")


# -- metadata and readiness -------------------------------------------------------------------------


def test_metadata_names_the_ready_versions_and_the_tensors_onnxruntime_reads(tmp_path, test_repo):
    def check(plane: DataPlane) -> None:
        session = ort.InferenceSession(str(tmp_path / "mlp" / "2" / "model.onnx"))
        metadata = plane.metadata("mlp", None)
        assert metadata.name == "mlp" and metadata.versions == ("1", "2")
        assert metadata.info.platform == "onnxruntime_onnx"
        assert [(s.name, s.datatype) for s in metadata.info.inputs] == [(i.name, "FP32") for i in session.get_inputs()]
        assert [s.name for s in metadata.info.outputs] == [o.name for o in session.get_outputs()]
        assert plane.pick("mlp", None).version == 2 and plane.pick("mlp", "1").version == 1
        with pytest.raises(ModelNotFound, match="loaded: 1, 2"):
            plane.metadata("mlp", "7")

    _with_plane(_copy(test_repo, tmp_path, "mlp"), check)


def test_readiness_of_a_model_and_of_each_version(tmp_path):
    def check(plane: DataPlane) -> None:
        assert plane.is_ready("m", None) and plane.is_ready("m", "1") and plane.is_ready("m", "2")
        assert not plane.is_ready("broken", None) and not plane.is_ready("broken", "1")
        assert not plane.is_ready("a", None)
        with pytest.raises(ModelNotFound):
            plane.is_ready("m", "3")
        with pytest.raises(ModelNotFound):
            plane.is_ready("nope", None)
        with pytest.raises(ModelNotReady):
            plane.metadata("broken", None)

    _with_plane(_repo(tmp_path), check, unload="a")


# -- inference ----------------------------------------------------------------------------------------


def test_infer_answers_what_onnxruntime_computes_for_the_version_asked(tmp_path, test_repo):
    x = np.random.default_rng(7).standard_normal((5, 768)).astype(np.float32)

    def expected(version: int) -> np.ndarray:
        session = ort.InferenceSession(str(tmp_path / "mlp" / str(version) / "model.onnx"))
        return session.run(None, {session.get_inputs()[0].name: x})[0]

    async def check(plane: DataPlane) -> None:
        name = plane.metadata("mlp", None).info.inputs[0].name
        assert not np.allclose(expected(1), expected(2))  # the versions differ, so the version is checked
        for version, want in ((None, 2), ("1", 1), ("2", 2)):
            answer = await plane.infer(InferRequest("mlp", version, {name: x}, {name: "FP32"}))
            assert answer.model == "mlp" and answer.version == str(want) and answer.req_id
            (output,) = answer.outputs.values()
            np.testing.assert_allclose(output, expected(want), rtol=1e-5, atol=1e-5)
        with pytest.raises(InvalidInput, match="must have shape"):
            await plane.infer(InferRequest("mlp", None, {name: x[:, :7]}, {name: "FP32"}))
        with pytest.raises(ModelNotFound):
            await plane.infer(InferRequest("nope", None, {name: x}, {name: "FP32"}))

    _with_plane(_copy(test_repo, tmp_path, "mlp"), check)


def test_the_hot_calls_are_the_services_own_methods(tmp_path):
    """The door adds no frame or await to inference: `infer` and `generate` are the service's bound
    methods themselves (the fast lane, v2 and gRPC call them once per request)."""

    def check(plane: DataPlane) -> None:
        assert plane.infer.__func__ is InferenceService.infer  # type: ignore[attr-defined]
        assert plane.generate.__func__ is InferenceService.generate  # type: ignore[attr-defined]

    _with_plane(_repo(tmp_path), check)


def test_statistics_count_what_the_data_plane_answered(tmp_path):
    x = np.ones((2, 3), dtype=np.float32)

    async def check(plane: DataPlane) -> None:
        for _ in range(3):
            answer = await plane.infer(InferRequest("m", "1", {"x": x}, {"x": "FP32"}))
            np.testing.assert_array_equal(answer.outputs["y"], x)
        stats = plane.stats("m", "1")
        assert stats.success.count == 3 and stats.inference_count == 6 and stats.fail.count == 0
        assert plane.stats("m", "2").success.count == 0

    _with_plane(_repo(tmp_path), check)


# -- generation -----------------------------------------------------------------------------------------


def test_generate_and_tokenize_match_transformers(tmp_path, test_repo):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.reference import hf_greedy

    folder = test_repo / "tiny-llama" / "1"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = "hello world, how are you today?"
    prompt_ids = tokenizer(prompt).input_ids

    async def check(plane: DataPlane) -> None:
        ids, max_len = await plane.tokenize("tiny-llama", prompt, None, True, 10_000)
        assert ids == prompt_ids and max_len == model.config.max_position_embeddings
        assert await plane.detokenize("tiny-llama", ids) == tokenizer.decode(ids, skip_special_tokens=True)
        assert [c.name for c in plane.cards()] == ["tiny-llama"] and plane.cards()[0].kind == "generate"
        request = GenerationRequest(
            "tiny-llama", (tuple(prompt_ids),), None, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
            max_tokens_given=True, stream=False, include_usage=False, is_chat=False,
            limits=token_limits(LimitsConfig()),
        )
        run = await plane.generate(request)
        tokens = [t for event in [e async for e in run.events()] for t in event.token_ids]
        assert tokens == hf_greedy(model, prompt_ids, 10)
        assert run.model == "tiny-llama" and run.version == "1"

    _with_plane(_copy(test_repo, tmp_path, "tiny-llama"), check)


# -- counting --------------------------------------------------------------------------------------


def test_requests_are_counted_per_protocol_with_bounded_labels(tmp_path):
    """A model the server does not hold counts as `_unknown` and a version it does not hold as "", so
    client-chosen names cannot grow the series; latency is kept for answered (200) requests only."""
    import time

    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client import generate_latest

    from mlserve.dataplane import RequestCounter

    metrics = Metrics()

    def check(plane: DataPlane) -> None:
        v2, grpc = RequestCounter(plane, metrics, "v2"), RequestCounter(plane, metrics, "grpc")
        started = time.monotonic()
        v2.count("m", "2", 200, started)
        v2.count("m", "2", 200, started)
        v2.count("m", "9", 400, started)
        v2.count("no-such-model", "1", 404, started)
        grpc.count("m", "1", 200, started)
        grpc.count("m", "1", 503, started)

    _with_plane(_repo(tmp_path), check)
    counts, latency_counts = {}, {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "mlserve_requests_total":
                counts[(labels["model"], labels["version"], labels["protocol"], labels["code"])] = sample.value
            elif sample.name == "mlserve_request_duration_seconds_count":
                latency_counts[(labels["model"], labels["version"])] = sample.value
    assert counts == {("m", "2", "v2", "200"): 2, ("m", "", "v2", "400"): 1, ("_unknown", "", "v2", "404"): 1,
                      ("m", "1", "grpc", "200"): 1, ("m", "1", "grpc", "503"): 1}
    assert {k: v for k, v in latency_counts.items() if v} == {("m", "2"): 2, ("m", "1"): 1}
