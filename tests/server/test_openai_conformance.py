"""What OpenAI's and vLLM's clients send and expect, with the official `openai` client against a real
server: the defaults and nulls clients send are taken, logprobs have the spec's shape.

The server is started with `python -m mlserve` from a working directory that holds a `triton/`
folder (a Triton model repository, say): it must not shadow the `triton` package torch imports.
"""

from __future__ import annotations

import openai
import pytest

from tests.models import copy_models
from tests.server.http import call
from tests.server.openai_helpers import client
from tests.server_process import serving

MODEL = "tiny-llama"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(examples, tmp_path_factory):
    repo = copy_models(examples, tmp_path_factory.mktemp("llm-repo"), ("tiny-llama", "tiny-gpt2"))
    workdir = tmp_path_factory.mktemp("workdir")
    (workdir / "triton" / "simple" / "1").mkdir(parents=True)  # a namespace package named `triton`
    with serving(repo, log_path=tmp_path_factory.mktemp("logs") / "log", cwd=workdir) as proc:
        yield proc


def test_llm_models_load_beside_a_triton_folder_in_the_working_directory(server):
    index = call(f"{server.url}/v2/repository/index", {"reload": False}).body
    assert {row["name"]: row["state"] for row in index} == {"tiny-llama": "READY", "tiny-gpt2": "READY"}, index


def test_chat_takes_the_defaults_and_nulls_clients_send(server):
    api = client(server)
    for kwargs in (dict(response_format={"type": "text"}), dict(tools=[], tool_choice="none"),
                   dict(extra_body={"response_format": None, "tools": None, "tool_choice": None,
                                    "parallel_tool_calls": None})):
        answer = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0, **kwargs)
        assert answer.choices[0].message.content is not None


@pytest.mark.parametrize("kwargs, name", [
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
    (dict(tool_choice="required"), "tool_choice"),
])
def test_chat_refuses_values_that_would_change_the_answer(server, kwargs, name):
    with pytest.raises(openai.BadRequestError, match=name):
        client(server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, **kwargs)


def test_completion_logprobs_zero_carries_the_sampled_token(server):
    api = client(server)
    zero = api.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0, logprobs=0,
                                 extra_body={"ignore_eos": True}).choices[0]
    assert len(zero.logprobs.top_logprobs) == 5
    for token, logprob, top in zip(zero.logprobs.tokens, zero.logprobs.token_logprobs, zero.logprobs.top_logprobs):
        assert top == {token: logprob}
    two = api.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=1.0, seed=7,
                                 logprobs=2, extra_body={"ignore_eos": True}).choices[0]
    for token, logprob, top in zip(two.logprobs.tokens, two.logprobs.token_logprobs, two.logprobs.top_logprobs):
        assert top[token] == logprob and 1 <= len(top) <= 3


def test_chat_logprobs_carry_refusal_null(server):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "temperature": 0, "logprobs": True,
            "top_logprobs": 1}
    answer = call(f"{server.url}/v1/chat/completions", body).body
    logprobs = answer["choices"][0]["logprobs"]
    assert "refusal" in logprobs and logprobs["refusal"] is None and len(logprobs["content"]) == 3
    parsed = client(server).chat.completions.create(**body)
    assert parsed.choices[0].logprobs.refusal is None
