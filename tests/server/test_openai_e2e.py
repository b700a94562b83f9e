"""End to end: a real mlserve process and the official `openai` client; greedy outputs checked token
for token against Hugging Face `generate` on the same tiny checkpoints."""

from __future__ import annotations

import concurrent.futures

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.reference import hf_greedy, mixed_prompts
from tests.server.openai_helpers import client, metric, wait_for_idle

MODELS = ("tiny-llama", "tiny-gpt2")


@pytest.fixture(scope="module")
def reference(test_repo):
    """name -> (transformers model, transformers tokenizer), read from the served folders."""
    torch.set_num_threads(1)
    return {
        name: (
            AutoModelForCausalLM.from_pretrained(test_repo / name / "1", dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(test_repo / name / "1"),
        )
        for name in MODELS
    }


def test_models_lists_the_generation_models(server):
    ids = {m.id for m in client(server).models.list().data}
    assert set(MODELS) <= ids
    assert "mlp" not in ids


@pytest.mark.parametrize("name", MODELS)
def test_concurrent_greedy_completions_match_transformers(server, reference, name):
    model, tokenizer = reference[name]
    prompts = mixed_prompts(len(tokenizer), 16, seed=3)
    api = client(server)

    def ask(prompt):
        return api.completions.create(model=name, prompt=prompt, max_tokens=16, temperature=0, logprobs=0,
                                      extra_body={"ignore_eos": True})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, prompts))
    for prompt, answer in zip(prompts, answers):
        expected = hf_greedy(model, prompt, 16)
        assert answer.choices[0].logprobs.tokens == [tokenizer.decode([t]) for t in expected]
        assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
        assert answer.usage.prompt_tokens == len(prompt) and answer.usage.completion_tokens == 16
        assert answer.choices[0].finish_reason == "length"
    wait_for_idle(server, name)


def test_text_prompt_and_chat_match_transformers(server, reference):
    model, tokenizer = reference["tiny-llama"]
    api = client(server)
    prompt = "hello world, how are you today?"
    answer = api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0)
    ids = tokenizer(prompt).input_ids
    expected = _until_eos(hf_greedy(model, ids, 12), tokenizer.eos_token_id)
    assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert answer.usage.prompt_tokens == len(ids)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the weather like?"}]
    chat = api.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=10, temperature=0)
    chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    chat_ids = chat_ids["input_ids"] if hasattr(chat_ids, "keys") else chat_ids
    expected = _until_eos(hf_greedy(model, chat_ids, 10), tokenizer.eos_token_id)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert chat.usage.prompt_tokens == len(chat_ids)


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("name", MODELS)
def test_streaming_gives_the_same_text_as_a_whole_answer(server, name):
    api = client(server)
    messages = [{"role": "user", "content": "hi"}]
    whole = api.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0)
    chunks = list(api.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    pieces = list(api.completions.create(model=name, prompt="hello", max_tokens=16, temperature=0, stream=True))
    plain = api.completions.create(model=name, prompt="hello", max_tokens=16, temperature=0)
    assert "".join(p.choices[0].text for p in pieces) == plain.choices[0].text
    assert pieces[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_seed_stop_and_max_tokens(server):
    api = client(server)
    kwargs = dict(model="tiny-gpt2", prompt="the sea is", max_tokens=30, temperature=1.0, top_p=0.9,
                  extra_body={"ignore_eos": True, "top_k": 40})
    first = api.completions.create(seed=99, **kwargs).choices[0].text
    assert api.completions.create(seed=99, **kwargs).choices[0].text == first
    greedy = api.completions.create(model="tiny-gpt2", prompt="the sea is", max_tokens=30, temperature=0,
                                    extra_body={"ignore_eos": True}).choices[0]
    stop = greedy.text[10:13]
    cut = api.completions.create(model="tiny-gpt2", prompt="the sea is", max_tokens=30, temperature=0, stop=[stop],
                                 extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == greedy.text[: greedy.text.index(stop)]
    short = api.completions.create(model="tiny-gpt2", prompt="the sea is", max_tokens=3, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs, status, words", [
    (dict(model="no-such-model", prompt="hi"), 404, "no-such-model"),
    (dict(model="mlp", prompt="hi"), 400, "not a generation model"),
    (dict(model="tiny-llama", prompt="hi", max_tokens=0), 400, "max_tokens"),
    (dict(model="tiny-llama", prompt="hi", max_tokens=100000), 400, "max_tokens"),
    (dict(model="tiny-llama", prompt="hello " * 600), 400, "context"),
    (dict(model="tiny-llama", prompt="hi", temperature="hot"), 400, "temperature"),
    (dict(model="tiny-llama", prompt=7), 400, "prompt"),
    (dict(model="tiny-llama", prompt="hi", n=0), 400, "n must be"),
    (dict(model="tiny-llama", prompt="hi", extra_body={"min_p": 0.1}), 400, "min_p"),
    (dict(model="tiny-llama", prompt="hi", extra_body={"prompt_logprobs": 1}), 400, "prompt_logprobs"),
    (dict(model="tiny-llama", prompt="hi", logit_bias={"999999": 5}), 400, "token ids"),
    (dict(model="tiny-llama", prompt="hi", stop=[""]), 400, "stop"),
])
def test_bad_requests_get_openai_errors(server, kwargs, status, words):
    with pytest.raises(openai.APIStatusError) as caught:
        client(server).completions.create(**kwargs)
    assert caught.value.status_code == status
    assert words in caught.value.body["message"]
    assert caught.value.body["type"] in ("invalid_request_error", "not_found_error")


def test_bad_chat_messages_are_rejected(server):
    with pytest.raises(openai.BadRequestError, match="messages"):
        client(server).chat.completions.create(model="tiny-llama", messages=[])
    with pytest.raises(openai.BadRequestError, match="role"):
        client(server).chat.completions.create(model="tiny-llama", messages=[{"role": "robot", "content": "x"}])


def test_generation_metrics_are_exported(server):
    client(server).completions.create(model="tiny-llama", prompt="hello", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert metric(server, "mlserve_llm_time_to_first_token_seconds_count", "tiny-llama") >= 1
    assert metric(server, "mlserve_llm_inter_token_latency_seconds_count", "tiny-llama") >= 4
    assert metric(server, "mlserve_llm_generation_tokens_total", "tiny-llama") >= 5
    assert metric(server, "mlserve_llm_prompt_tokens_total", "tiny-llama") >= 2
    assert metric(server, "mlserve_llm_steps_total", "tiny-llama") >= 5  # a prefill and 4 decodes, graph or eager
    wait_for_idle(server, "tiny-llama")
    assert metric(server, "mlserve_llm_kv_blocks_free", "tiny-llama") > 0


def test_the_llms_are_ready_in_the_v2_repository_index(server):
    import json
    import urllib.request

    req = urllib.request.Request(f"{server.url}/v2/repository/index", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        rows = json.loads(resp.read())
    states = {(r["name"], r.get("version")): r["state"] for r in rows}
    assert states[("tiny-llama", "1")] == "READY" and states[("tiny-gpt2", "1")] == "READY"
