"""Requests whose tensors differ past the batch dimension (sentences of different lengths) are
batched only with their own kind: every concurrent answer equals onnxruntime's, none is a 500."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from tests.models import write_pooling_onnx
from tests.server.http import metric_value
from tests.server_process import serving

NUM_CLIENTS = 16
REQUESTS_PER_CLIENT = 5


@pytest.fixture(scope="module")
def pooling_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("varying")
    write_pooling_onnx(root / "pool" / "1" / "model.onnx")
    (root / "pool" / "model.toml").write_text("max_batch_size = 16\nmax_queue_delay_us = 20000\n")
    with serving(root, log_path=root / "log") as server:
        yield server, root / "pool" / "1" / "model.onnx"


def test_concurrent_sentences_of_different_lengths_get_their_own_answers(pooling_server):
    server, model_path = pooling_server
    rng = np.random.default_rng(7)
    sentences = [rng.integers(0, 1000, size=(1, int(rng.integers(3, 20))), dtype=np.int64)
                 for _ in range(NUM_CLIENTS * REQUESTS_PER_CLIENT)]

    def client_run(first: int) -> list[np.ndarray]:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        answers = []
        for ids in sentences[first::NUM_CLIENTS]:
            x = httpclient.InferInput("input_ids", list(ids.shape), "INT64")
            x.set_data_from_numpy(ids)
            answers.append(client.infer("pool", [x]).as_numpy("embedding"))
        return answers

    with concurrent.futures.ThreadPoolExecutor(NUM_CLIENTS) as pool:
        per_client = list(pool.map(client_run, range(NUM_CLIENTS)))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for first, answers in enumerate(per_client):
        for ids, answer in zip(sentences[first::NUM_CLIENTS], answers):
            expected = session.run(None, {"input_ids": ids})[0]
            np.testing.assert_allclose(answer, expected, rtol=1e-6, atol=1e-6)
    assert metric_value(server.url, "mlserve_requests_total", model="pool", code="500") == 0
    # Requests did share batches: more requests than batches ran.
    batches = metric_value(server.url, "mlserve_batch_requests_count", model="pool")
    requests = metric_value(server.url, "mlserve_batch_requests_sum", model="pool")
    assert requests == len(sentences) and batches < requests, (batches, requests)
