"""Every load path within the memory budget: startup, admin load and pin evict idle models or say
why they cannot; a generating LLM is busy, so it is never evicted mid-stream."""

from __future__ import annotations

import asyncio
import json

from mlserve.batching.llm_engine import LLMEngine
from mlserve.config import RegistryConfig
from mlserve.engine.llm.sequence import SamplingParams
from mlserve.registry.budget import Budget
from mlserve.registry.opening import Alone, Trust, VersionFiles, open_version
from mlserve.registry.repository import ModelEntry
from mlserve.registry.served import ServedModel, ServedVersion, VersionState
from mlserve.registry.serving import GenerativeServing
from mlserve.spec import ModelConfig
from tests.registry.helpers import index, post, write_model, write_version
from tests.server_process import serving


def test_a_generating_llm_is_busy_and_never_the_eviction_victim(test_repo):
    config = ModelConfig(backend="llm")
    files = VersionFiles("tiny-llama/1", config, test_repo / "tiny-llama" / "1", Trust(),
                         RegistryConfig().max_artifact_bytes)
    llm = ServedModel(ModelEntry("tiny-llama", config, (1,)))
    incoming = ServedModel(ModelEntry("other", ModelConfig(), (1,)))
    budget = Budget(max_models=1)

    async def main():
        runtime = await open_version(files, Alone("cpu"), warm=False)
        engine = LLMEngine(runtime.backend, "tiny-llama-1")
        generative = GenerativeServing(runtime, engine)
        llm.versions[1] = ServedVersion("tiny-llama", 1, VersionState.READY, serving=generative, num_bytes=1)
        handle = engine.submit([5, 6, 7], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
        assert not llm.is_idle and budget.victim([llm, incoming], incoming) is None
        engine.start()
        try:
            # (busy while generating is the check above, before the engine starts: once it runs it may
            # finish the request before this loop has read its first tokens, so no check in between)
            while (event := await asyncio.wait_for(handle.queue.get(), 60)).finish_reason is None:
                assert event.error is None
            assert llm.is_idle and budget.victim([llm, incoming], incoming) is llm
        finally:
            await generative.stop()
            runtime.close()

    asyncio.run(main())


def _resident(url: str) -> set[tuple[str, str]]:
    return {(r["name"], r["version"]) for r in index(url) if r["state"] == "READY"}


def test_startup_admin_load_and_pin_stay_within_max_loaded_mb(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "a", [1, 2])  # policy: latest, so version 2 serves
    write_model(repo, "b", [1])
    write_version(repo, "c", 1, width=8192)  # alone over the budget
    size = max(sum(f.stat().st_size for f in (repo / m / "1").iterdir()) for m in ("a", "b"))
    budget_mb = 2.5 * size / 2**20  # room for two small versions, not three
    with serving(repo, "--max-loaded-mb", f"{budget_mb:.9f}", log_path=tmp_path / "mlserve.log") as server:
        assert _resident(server.url) == {("a", "2"), ("b", "1")}  # c does not fit: not loaded at start

        status, body = post(f"{server.url}/admin/models/a/pin", json.dumps({"version": 1}))
        assert status == 200, body
        assert _resident(server.url) == {("a", "1"), ("a", "2")}  # b (idle) made room

        status, body = post(f"{server.url}/v2/repository/models/c/load")
        assert status == 400 and "more than the whole --max-loaded-mb budget" in body["error"], body
        assert _resident(server.url) == {("a", "1"), ("a", "2")}  # the refusal changed nothing

        status, body = post(f"{server.url}/v2/repository/models/b/load")
        assert status == 200, body
        assert _resident(server.url) == {("b", "1")}  # a (two versions, idle) made room
