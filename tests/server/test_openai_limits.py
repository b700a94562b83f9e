"""The server's token caps ([limits] in mlserve.toml) apply to the OpenAI routes and vLLM's /tokenize."""

from __future__ import annotations

import shutil
import threading
import time

import openai
import pytest

from tests.server.http import call
from tests.server_process import MlserveProcess


@pytest.fixture(scope="module")
def capped(test_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("capped")
    shutil.copytree(test_repo / "tiny-llama", root / "models" / "tiny-llama")
    config = root / "mlserve.toml"
    config.write_text("[limits]\nmax_prompt_tokens = 6\nmax_generation_tokens = 4\ngeneration_budget_tokens = 20\n")
    server = MlserveProcess(root / "models", "--config", str(config), log_path=root / "log").wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_generation_tokens_over_the_cap_get_400(capped):
    with pytest.raises(openai.BadRequestError, match="max_tokens 5 is over the limit of 4"):
        _client(capped).completions.create(model="tiny-llama", prompt="hi", max_tokens=5)
    ok = _client(capped).completions.create(model="tiny-llama", prompt="hi", max_tokens=4)
    assert ok.usage.completion_tokens <= 4


def test_prompt_tokens_over_the_cap_get_413(capped):
    with pytest.raises(openai.APIStatusError) as caught:
        _client(capped).completions.create(model="tiny-llama", prompt=list(range(3, 13)), max_tokens=1)
    assert caught.value.status_code == 413 and "over the limit of 6" in str(caught.value)


def test_a_prompt_too_long_to_be_within_the_token_cap_is_refused_before_tokenizing(capped):
    """6 tokens of at most 64 characters: 385 characters can never fit, whatever they tokenize to."""
    with pytest.raises(openai.APIStatusError) as caught:
        _client(capped).completions.create(model="tiny-llama", prompt="a" * 385, max_tokens=1)
    assert caught.value.status_code == 413 and "385 characters" in str(caught.value)
    with pytest.raises(openai.APIStatusError) as caught:
        _client(capped).chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "b" * 400}], max_tokens=1)
    assert caught.value.status_code == 413 and "characters" in str(caught.value)


def test_tokenize_over_the_character_cap_is_a_413_json_error(capped):
    """/tokenize applies the cap the generation routes apply, to a prompt and to a chat's contents."""
    answer = call(f"{capped.url}/tokenize", {"model": "tiny-llama", "prompt": "a" * 385})
    assert answer.status == 413 and "385 characters" in answer.body["error"]["message"], answer.body
    chat = [{"role": "user", "content": "b" * 200}, {"role": "user", "content": "c" * 200}]
    answer = call(f"{capped.url}/tokenize", {"model": "tiny-llama", "messages": chat})
    assert answer.status == 413 and "400 characters" in answer.body["error"]["message"], answer.body
    assert call(f"{capped.url}/tokenize", {"model": "tiny-llama", "prompt": "a" * 20}).status == 200


def test_a_request_over_the_generation_budget_is_refused_naming_the_product(capped):
    """3 prompts x best_of 4 x 4 tokens = 48 tokens: each limit holds, the product is over the budget of 20."""
    with pytest.raises(openai.BadRequestError) as caught:
        _client(capped).completions.create(model="tiny-llama", prompt=["hi", "yo", "ok"], n=1, best_of=4,
                                           max_tokens=4)
    message = str(caught.value)
    assert "3 prompt(s) x 4 sequence(s) x 4 max_tokens = 48 tokens" in message
    assert "generation budget of 20" in message and "generation_budget_tokens" in message
    ok = _client(capped).completions.create(model="tiny-llama", prompt=["hi", "yo"], n=2, max_tokens=4)
    assert len(ok.choices) == 4


@pytest.fixture(scope="module")
def roomy(test_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("roomy")
    shutil.copytree(test_repo / "tiny-llama", root / "models" / "tiny-llama")
    config = root / "mlserve.toml"
    config.write_text("[limits]\nmax_prompt_tokens = 100000\ngeneration_budget_tokens = 16\n")
    server = MlserveProcess(root / "models", "--config", str(config), log_path=root / "log").wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def test_health_answers_while_a_long_text_is_tokenized(roomy):
    """4 M characters (within a cap of 6.4 M) take seconds to tokenize; the event loop stays free
    meanwhile, so /health answers at once throughout."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(answer=call(
        f"{roomy.url}/tokenize", {"model": "tiny-llama", "prompt": "hello world " * 350_000}, timeout=120)))
    worker.start()
    slowest = 0.0
    probes = 0
    while worker.is_alive():
        started = time.monotonic()
        assert call(f"{roomy.url}/health", timeout=30).status == 200
        slowest = max(slowest, time.monotonic() - started)
        probes += 1
    worker.join()
    assert result["answer"].status == 200 and result["answer"].body["count"] > 350_000
    assert probes > 3 and slowest < 1.0, (probes, slowest)


def test_a_chat_without_max_tokens_gets_its_share_of_the_budget(roomy):
    """n = 8 sequences share a budget of 16 tokens: each may generate 2, and the request is not refused."""
    answer = _client(roomy).chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], n=8, extra_body={"ignore_eos": True})
    assert len(answer.choices) == 8 and answer.usage.completion_tokens == 16
