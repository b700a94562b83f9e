"""The server's token caps ([limits] in mlserve.toml) apply to the OpenAI routes."""

from __future__ import annotations

import shutil

import openai
import pytest

from tests.server_process import MlserveProcess


@pytest.fixture(scope="module")
def capped(test_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("capped")
    shutil.copytree(test_repo / "tiny-llama", root / "models" / "tiny-llama")
    config = root / "mlserve.toml"
    config.write_text("[limits]\nmax_prompt_tokens = 6\nmax_generation_tokens = 4\n")
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
