"""End to end with the official `openai` client: /v1/embeddings on all-MiniLM-L6-v2 checked against
sentence-transformers, /v1/models[/{id}], /health, /version, /tokenize and /detokenize."""

from __future__ import annotations

import base64
import concurrent.futures

import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from tests.server.http import call
from tests.server.openai_helpers import client

EMBEDDER = "all-minilm-l6-v2"
MIN_COSINE = 0.999  # the bar; float32 on the same weights lands within about 1e-6


@pytest.fixture(scope="module")
def sentence_model(llm_server):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(llm_server.repo / EMBEDDER / "1"), device="cpu")


def sentences(count: int) -> list[str]:
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box jugs of ünïcode 字".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 23)) for i in range(count)]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_embeddings_match_sentence_transformers_on_200_sentences(llm_server, sentence_model):
    texts = sentences(200)
    api = client(llm_server)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent requests share batches
        answers = list(pool.map(lambda chunk: api.embeddings.create(model=EMBEDDER, input=chunk),
                                [texts[i:i + 25] for i in range(0, 200, 25)]))
    ours = np.array([d.embedding for a in answers for d in a.data])
    reference = sentence_model.encode(texts, batch_size=64)
    assert ours.shape == (200, 384)
    assert cosine(ours, reference).min() >= MIN_COSINE
    usage = sum(a.usage.prompt_tokens for a in answers)
    assert usage == sum(len(sentence_model.tokenizer(t)["input_ids"]) for t in texts)


def test_embedding_inputs_and_formats(llm_server, sentence_model):
    api = client(llm_server)
    text = "served embeddings, checked"
    reference = sentence_model.encode([text])[0]
    as_float = api.embeddings.create(model=EMBEDDER, input=text, encoding_format="float")
    raw = call(f"{llm_server.url}/v1/embeddings", {"model": EMBEDDER, "input": [text], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(raw.body["data"][0]["embedding"]), dtype="<f4")
    ids = sentence_model.tokenizer(text)["input_ids"]
    by_ids = api.embeddings.create(model=EMBEDDER, input=ids, encoding_format="float")
    by_id_lists = api.embeddings.create(model=EMBEDDER, input=[ids, ids[:3]], encoding_format="float")
    for vector in (as_float.data[0].embedding, decoded, by_ids.data[0].embedding, by_id_lists.data[0].embedding):
        assert cosine(np.asarray(vector), reference) >= MIN_COSINE
    assert cosine(np.asarray(by_id_lists.data[1].embedding), sentence_model.encode(
        [sentence_model.tokenizer.decode(ids[1:2])])[0]) < 0.999  # a 3-token id list is its own input
    assert [d.index for d in by_id_lists.data] == [0, 1] and by_id_lists.usage.prompt_tokens == len(ids) + 3
    same = api.embeddings.create(model=EMBEDDER, input=text, dimensions=384, encoding_format="float")
    assert np.allclose(same.data[0].embedding, as_float.data[0].embedding, atol=1e-6)


def test_v2_infer_serves_the_same_embedder(llm_server, sentence_model):
    text = "the same model over the v2 protocol"
    answer = call(f"{llm_server.url}/v2/models/{EMBEDDER}/infer", {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": [text, "another one"]}]})
    assert answer.status == 200, answer.body
    out = {o["name"]: o for o in answer.body["outputs"]}
    vectors = np.asarray(out["embedding"]["data"], dtype=np.float32).reshape(out["embedding"]["shape"])
    assert cosine(vectors, sentence_model.encode([text, "another one"])).min() >= MIN_COSINE


@pytest.mark.parametrize("body, status, words", [
    ({"model": EMBEDDER, "input": "x", "dimensions": 64}, 400, "dimensions"),
    ({"model": EMBEDDER, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": EMBEDDER, "input": "x", "truncate_prompt_tokens": 3}, 400, "truncate_prompt_tokens"),
    ({"model": EMBEDDER, "input": [[1, 2], 7]}, 400, "input[1]"),
    ({"model": EMBEDDER, "input": [[99999999]]}, 400, "token ids"),
    ({"model": EMBEDDER, "input": []}, 400, "input"),
    ({"model": "nope", "input": "x"}, 404, "nope"),
    ({"model": "tiny-llama", "input": "x"}, 400, "not an embedding model"),
])
def test_bad_embedding_requests_get_openai_errors(llm_server, body, status, words):
    answer = call(f"{llm_server.url}/v1/embeddings", body)
    assert answer.status == status
    assert words in answer.body["error"]["message"]


def test_models_retrieve_health_and_version(llm_server):
    api = client(llm_server)
    listed = {m.id: m for m in api.models.list().data}
    assert {"tiny-llama", "tiny-gpt2", EMBEDDER} <= set(listed) and "mlp" not in listed
    card = api.models.retrieve("tiny-llama")
    assert card.id == "tiny-llama" and card.owned_by == "mlserve" and card.root == "tiny-llama"
    assert card.max_model_len == listed["tiny-llama"].max_model_len > 0
    assert api.models.retrieve(EMBEDDER).max_model_len == 256
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("mlp")
    assert call(f"{llm_server.url}/health").status == 200
    from mlserve import __version__

    assert call(f"{llm_server.url}/version").body == {"version": __version__}


def test_tokenize_and_detokenize_agree_with_transformers(llm_server):
    tokenizer = AutoTokenizer.from_pretrained(llm_server.repo / "tiny-llama" / "1")
    text = "hello world, how are you?"
    answer = call(f"{llm_server.url}/tokenize", {"model": "tiny-llama", "prompt": text}).body
    assert answer["tokens"] == tokenizer(text).input_ids and answer["count"] == len(answer["tokens"])
    assert answer["max_model_len"] > 0
    bare = call(f"{llm_server.url}/tokenize", {"model": "tiny-llama", "prompt": text, "add_special_tokens": False})
    assert bare.body["tokens"] == tokenizer(text, add_special_tokens=False).input_ids
    messages = [{"role": "user", "content": "hi there"}]
    chat = call(f"{llm_server.url}/tokenize", {"model": "tiny-llama", "messages": messages}).body
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert chat["tokens"] == list(expected)
    back = call(f"{llm_server.url}/detokenize", {"model": "tiny-llama", "tokens": answer["tokens"]}).body
    assert back["prompt"] == tokenizer.decode(answer["tokens"], skip_special_tokens=True)
    refused = call(f"{llm_server.url}/detokenize", {"model": "tiny-llama", "tokens": [10**9]})
    assert refused.status == 400 and "token ids" in refused.body["error"]["message"]
    odd = call(f"{llm_server.url}/tokenize", {"model": "tiny-llama", "prompt": "x", "return_token_strs": True})
    assert odd.status == 400 and "return_token_strs" in odd.body["error"]["message"]


def test_a_token_payload_of_broken_ids_is_a_400_and_leaves_the_breaker_closed(llm_server):
    """A token-id element (mark byte + INT32 ids) whose length is not a whole number of ids is the
    client's error: 400 naming the input, 40 times over, and the version's breaker stays closed."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from tests.server.http import metric_value

    client_ = httpclient.InferenceServerClient(llm_server.url.removeprefix("http://"))
    for _ in range(40):
        bad = httpclient.InferInput("text", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"\x00\x01\x02\x03\x04\x05"], dtype=object), binary_data=True)
        with pytest.raises(InferenceServerException) as caught:
            client_.infer(EMBEDDER, [bad])
        assert caught.value.status() == "400" and "input 'text'" in caught.value.message(), caught.value
    assert metric_value(llm_server.url, "mlserve_breaker_state", model=EMBEDDER, version="1") == 0
    good = httpclient.InferInput("text", [1], "BYTES")
    good.set_data_from_numpy(np.array([b"still served"], dtype=object), binary_data=True)
    assert client_.infer(EMBEDDER, [good]).as_numpy("embedding").shape == (1, 384)
