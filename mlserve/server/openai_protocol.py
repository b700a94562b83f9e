"""OpenAI request bodies -> validated generation requests; every bad field is a 400 that names it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlserve.engine.llm.sequence import SamplingParams
from mlserve.errors import InvalidInput

MAX_STOP_STRINGS = 4
UNSUPPORTED_TRUE = ("echo",)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One decoded /v1/completions or /v1/chat/completions body."""

    model: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...] | None
    messages: tuple[dict[str, str], ...] | None
    params: SamplingParams
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    is_chat: bool


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidInput(f"{key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _integer(body: dict, key: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidInput(f"{key} must be an integer {bounds}, got {value!r}")
    return value


def _bool(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{key} must be true or false, got {value!r}")
    return value


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value) or len(value) > MAX_STOP_STRINGS:
        raise InvalidInput(f"stop must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings")
    return tuple(value)


def _prompt(body: dict) -> tuple[str | None, tuple[int, ...] | None]:
    """A string, a list of token ids, or a one-element list of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return None, tuple(prompt)
    raise InvalidInput("prompt must be a string or a list of token ids (one prompt per request)")


def parse_messages(body: dict) -> tuple[dict[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise InvalidInput(f"messages[{i}] needs a role of system, developer, user or assistant")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{i}].content must be a string")
        out.append({"role": message["role"], "content": content})
    return tuple(out)


def _logprobs(body: dict, is_chat: bool) -> int | None:
    if is_chat:
        if not _bool(body, "logprobs"):
            return None
        return _integer(body, "top_logprobs", 0, 0, 20)
    return _integer(body, "logprobs", None, 0, 20)


def _check_unsupported(body: dict) -> None:
    if _integer(body, "n", 1, 1) != 1:
        raise InvalidInput("n must be 1: one choice per request")
    for key in UNSUPPORTED_TRUE:
        if body.get(key):
            raise InvalidInput(f"{key} is not supported")
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, 0.0, -2.0, 2.0) != 0.0:
            raise InvalidInput(f"{key} is not supported; leave it at 0")


def parse_generation(body: Any, is_chat: bool) -> GenerationRequest:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model must be a non-empty string")
    _check_unsupported(body)
    prompt, prompt_ids, messages = None, None, None
    if is_chat:
        messages = parse_messages(body)
    else:
        prompt, prompt_ids = _prompt(body)
    key = "max_completion_tokens" if is_chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, None, 1)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInput(f"seed must be an integer, got {seed!r}")
    top_k = _integer(body, "top_k", 0, -1)
    params = SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else 16,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        top_k=max(top_k, 0), seed=seed, stop=_stop(body), logprobs=_logprobs(body, is_chat),
        ignore_eos=_bool(body, "ignore_eos"),
    )
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidInput("stream_options must be an object")
    return GenerationRequest(
        model, prompt, prompt_ids, messages, params, max_tokens is not None, _bool(body, "stream"),
        bool(options.get("include_usage")), is_chat,
    )
