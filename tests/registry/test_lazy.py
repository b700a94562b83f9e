"""Many models with --lazy and a budget: listed at start, loaded on first request, least recently
used idle ones evicted, memory (resident models) within the budget throughout."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np

from tests.registry.helpers import WIDTH, index, infer, reference, write_model
from tests.registry.test_hot_swap import _metric
from tests.server_process import MlserveProcess

NUM_MODELS = 40
BUDGET = 5


def _name(i: int) -> str:
    return f"m{i:03d}"


def test_lazy_models_load_on_first_request_and_stay_within_budget(tmp_path):
    repo = tmp_path / "repo"
    for i in range(NUM_MODELS):
        write_model(repo, _name(i), [i + 1])  # each model's only version has its own weights
    server = MlserveProcess(repo, "--lazy", "--max-loaded-models", str(BUDGET),
                            log_path=tmp_path / "mlserve.log").wait_ready(60)
    try:
        rows = index(server.url)
        assert len(rows) == NUM_MODELS and all(r["reason"].startswith("not loaded") for r in rows)
        assert _metric(server.url, "mlserve_loaded_models", {}) == 0
        x = np.random.default_rng(11).standard_normal((2, WIDTH)).astype(np.float32)
        expected = {i: reference(repo, _name(i), i + 1, x) for i in range(NUM_MODELS)}
        peaks, stop = [], threading.Event()

        def watch():
            while not stop.is_set():
                peaks.append(_metric(server.url, "mlserve_loaded_models", {}))

        def call(i: int):
            status, body = infer(server.url, _name(i), x)
            assert status == 200, body
            assert body["model_version"] == str(i + 1)
            np.testing.assert_array_equal(np.asarray(body["outputs"][0]["data"], np.float32).reshape(x.shape),
                                          expected[i])

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(call, [0, 0, 0, 0]))  # at once: one load, four answers
                assert server.log().count("model m000 version 1 ready (request") == 1
                list(pool.map(call, list(range(NUM_MODELS)) * 2))  # every model, twice
        finally:
            stop.set()
            watcher.join()
        assert peaks and max(peaks) <= BUDGET, f"resident models peaked at {max(peaks)}"
        assert _metric(server.url, "mlserve_model_evictions_total", {}) >= NUM_MODELS - BUDGET
        ready = [r for r in index(server.url) if r["state"] == "READY"]
        assert 1 <= len(ready) <= BUDGET
        assert "cold start: 40 model(s) listed, 0 version(s) ready" in server.log()
    finally:
        assert server.stop() == 0, server.log()
