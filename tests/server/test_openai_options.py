"""The OpenAI sampling surface end to end with the `openai` client: n and best_of, lists of prompts,
echo, logit_bias, min_tokens, stop_token_ids and the penalties, each checked against a reference run
outside the server (transformers, or the same rule applied to transformers' logits)."""

from __future__ import annotations

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.server.http import call
from tests.server.openai_helpers import client, metric, wait_for_idle

MODEL = "tiny-llama"
PROMPT = "the cache keeps the keys and values of every token"


@pytest.fixture(scope="module")
def hf(llm_server):
    torch.set_num_threads(1)
    folder = llm_server.repo / MODEL / "1"
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def greedy_with_rule(model, prompt: list[int], steps: int, presence=0.0, frequency=0.0, repetition=1.0) -> list[int]:
    """Greedy decoding from transformers' logits with the penalties applied as OpenAI and vLLM state them."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1].clone()
            for token in set(ids):
                value = logits[token]
                logits[token] = value / repetition if value > 0 else value * repetition
            for token in set(out):
                logits[token] -= frequency * out.count(token) + presence
            out.append(int(logits.argmax()))
            ids.append(out[-1])
    return out


def ask(llm_server, **kwargs):
    return client(llm_server).completions.create(model=MODEL, **kwargs)


def test_penalties_follow_the_reference_rule(llm_server, hf):
    model, tokenizer = hf
    prompt = tokenizer(PROMPT).input_ids
    plain = greedy_with_rule(model, prompt, 24)
    for kwargs, rule in (
        (dict(frequency_penalty=1.5, presence_penalty=0.5), dict(frequency=1.5, presence=0.5)),
        (dict(extra_body={"repetition_penalty": 1.8, "ignore_eos": True}), dict(repetition=1.8)),
    ):
        extra = kwargs.pop("extra_body", {"ignore_eos": True})
        answer = ask(llm_server, prompt=prompt, max_tokens=24, temperature=0, extra_body=extra, **kwargs)
        expected = greedy_with_rule(model, prompt, 24, **rule)
        assert expected != plain  # the rule changes this generation, so the comparison means something
        assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
        assert len(set(expected)) >= len(set(plain))  # penalised output repeats itself no more


def test_logit_bias_forces_a_token_and_min_tokens_holds_eos_back(llm_server, hf):
    _, tokenizer = hf
    forced = tokenizer("world", add_special_tokens=False).input_ids[0]
    answer = ask(llm_server, prompt=PROMPT, max_tokens=5, temperature=0, logit_bias={str(forced): 100},
                 extra_body={"ignore_eos": True})
    assert answer.choices[0].text == tokenizer.decode([forced] * 5)
    eos = tokenizer.eos_token_id
    stops_at_once = ask(llm_server, prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={str(eos): 100})
    assert stops_at_once.usage.completion_tokens == 1 and stops_at_once.choices[0].finish_reason == "stop"
    held = ask(llm_server, prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={str(eos): 100},
               extra_body={"min_tokens": 4})
    assert held.usage.completion_tokens == 5 and held.choices[0].finish_reason == "stop"


def test_stop_token_ids_end_the_answer_without_their_text(llm_server, hf):
    model, tokenizer = hf
    prompt = tokenizer(PROMPT).input_ids
    plain = greedy_with_rule(model, prompt, 12)
    stop_at = 5
    stop_id = plain[stop_at]
    first = plain.index(stop_id)
    answer = ask(llm_server, prompt=prompt, max_tokens=12, temperature=0,
                 extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == first + 1
    assert answer.choices[0].text == tokenizer.decode(plain[:first], skip_special_tokens=True)


def test_n_samples_share_the_prompt_blocks_and_follow_their_seeds(llm_server, hf):
    _, tokenizer = hf
    prompt = tokenizer(PROMPT * 3).input_ids  # several full 16-token blocks
    wait_for_idle(llm_server, MODEL)
    hits = metric(llm_server, "mlserve_llm_prefix_cache_hit_tokens_total", MODEL)
    kwargs = dict(prompt=prompt, max_tokens=8, temperature=1.0, extra_body={"ignore_eos": True})
    both = ask(llm_server, n=3, seed=11, **kwargs)
    full_blocks = (len(prompt) - 1) // 16 * 16
    assert metric(llm_server, "mlserve_llm_prefix_cache_hit_tokens_total", MODEL) - hits >= 2 * full_blocks
    assert [c.index for c in both.choices] == [0, 1, 2]
    for j in range(3):
        alone = ask(llm_server, seed=11 + j, **kwargs)
        assert both.choices[j].text == alone.choices[0].text
    assert both.usage.completion_tokens == 24 and both.usage.prompt_tokens == len(prompt)
    streamed = list(ask(llm_server, n=3, seed=11, stream=True, **kwargs))
    for j in range(3):
        assert "".join(c.choices[0].text for c in streamed if c.choices[0].index == j) == both.choices[j].text
    wait_for_idle(llm_server, MODEL)


def test_best_of_returns_the_most_likely_candidate(llm_server):
    kwargs = dict(prompt=PROMPT, max_tokens=6, temperature=1.0, extra_body={"ignore_eos": True})
    best = ask(llm_server, best_of=3, n=1, seed=5, **kwargs)
    candidates = [ask(llm_server, seed=5 + j, logprobs=0, **kwargs).choices[0] for j in range(3)]
    top = max(candidates, key=lambda c: sum(c.logprobs.token_logprobs))
    assert best.choices[0].text == top.text and len(best.choices) == 1
    with pytest.raises(openai.BadRequestError, match="best_of"):
        ask(llm_server, best_of=2, n=1, stream=True, **kwargs)


def test_prompt_lists_and_echo(llm_server):
    prompts = ["hello world", "the sea is", "blocks and tokens"]
    together = ask(llm_server, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in together.choices] == list(range(6))
    for i, prompt in enumerate(prompts):
        alone = ask(llm_server, prompt=prompt, max_tokens=6, temperature=0)
        assert together.choices[2 * i].text == together.choices[2 * i + 1].text == alone.choices[0].text
    echoed = ask(llm_server, prompt=prompts[0], max_tokens=6, temperature=0, echo=True)
    prompt_text = call(f"{llm_server.url}/detokenize", {"model": MODEL, "tokens": call(
        f"{llm_server.url}/tokenize", {"model": MODEL, "prompt": prompts[0]}).body["tokens"]}).body["prompt"]
    assert echoed.choices[0].text == prompt_text + together.choices[0].text


def test_echo_cannot_amplify_a_small_body_into_a_large_answer(llm_server):
    """64 prompts x n 16 x echo: the echoed text alone would be many times the body; refused by name."""
    prompts = [list(range(10, 110))] * 64
    with pytest.raises(openai.BadRequestError, match="echo: 64 prompt"):
        ask(llm_server, prompt=prompts, max_tokens=1, n=16, echo=True)
    with pytest.raises(openai.BadRequestError, match="over the limit of 1048576"):
        ask(llm_server, prompt=["ab" * 600] * 64, max_tokens=1, n=16, echo=True)
    answer = ask(llm_server, prompt=prompts[:4], max_tokens=1, temperature=0, echo=True)
    assert len(answer.choices) == 4 and all(len(c.text) > 100 for c in answer.choices)


def test_chat_carries_refusal_and_rejects_what_it_does_not_honour(llm_server):
    api = client(llm_server)
    messages = [{"role": "user", "content": "hi"}]
    chat = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, n=2, temperature=0,
                                       user="someone")
    assert len(chat.choices) == 2 and chat.choices[0].message.refusal is None
    for kwargs, words in ((dict(stream_options={"include_usage": True}), "stream_options"),
                          (dict(extra_body={"echo": True}), "echo"),
                          (dict(extra_body={"guided_json": {}}), "guided_json"),
                          (dict(top_logprobs=2), "top_logprobs"),
                          (dict(logprobs=True, extra_body={"prompt_logprobs": 1}), "prompt_logprobs")):
        with pytest.raises(openai.BadRequestError, match=words):
            api.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, **kwargs)


def test_streamed_chat_choices_and_echo_match_whole_answers(llm_server):
    api = client(llm_server)
    messages = [{"role": "user", "content": "tell me"}]
    kwargs = dict(model=MODEL, messages=messages, max_tokens=6, temperature=1.0, seed=3, n=2)
    whole = api.chat.completions.create(**kwargs)
    chunks = list(api.chat.completions.create(stream=True, **kwargs))
    for j in range(2):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == j]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[j].message.content
        assert mine[-1].finish_reason == whole.choices[j].finish_reason
    echoed = ask(llm_server, prompt="hello world", max_tokens=5, temperature=0, echo=True)
    pieces = list(ask(llm_server, prompt="hello world", max_tokens=5, temperature=0, echo=True, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == echoed.choices[0].text
