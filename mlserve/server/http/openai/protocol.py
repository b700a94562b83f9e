"""OpenAI request bodies -> validated generation requests; every bad field is a 400 that names it."""

from __future__ import annotations

from typing import Any

import orjson

from mlserve.errors import InvalidInput
from mlserve.spec import GenerationRequest, SamplingParams

MAX_STOP_STRINGS = 4
MAX_PROMPTS = 64
MAX_CHOICES = 16
MAX_LOGIT_BIAS = 300
MAX_ECHO_CHARS = 1 << 20
"""Most prompt text `echo` may copy into one answer (every prompt, once per returned choice), so a
small body cannot ask for a response many times its size."""
ECHO_CHARS_PER_TOKEN = 16
"""What a token-id prompt counts per token against MAX_ECHO_CHARS (its text is known only later)."""
_COMMON_KEYS = frozenset({
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "seed", "logprobs",
    # vLLM's sampling extras
    "top_k", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos", "prompt_logprobs",
})
COMPLETION_KEYS = _COMMON_KEYS | {"prompt", "echo", "best_of", "suffix"}
CHAT_KEYS = _COMMON_KEYS | {"messages", "max_completion_tokens", "top_logprobs"}
CHAT_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "response_format": ({"type": "text"},), "tools": ([],), "tool_choice": ("none",), "parallel_tool_calls": (True,),
}
"""Chat parameters mlserve does not implement, taken only as null or the value that changes
nothing (clients send these); any other value is refused by name."""


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


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompts(body: dict) -> tuple[str | tuple[int, ...], ...]:
    """A string, a list of token ids, or a list of either (several prompts in one request)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _token_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise InvalidInput("prompt must be a string, a list of token ids, or a non-empty list of those")
    if len(prompt) > MAX_PROMPTS:
        raise InvalidInput(f"prompt: at most {MAX_PROMPTS} prompts per request, got {len(prompt)}")
    out: list[str | tuple[int, ...]] = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            out.append(item)
        elif _token_ids(item):
            out.append(tuple(item))
        else:
            raise InvalidInput(f"prompt[{i}] must be a string or a non-empty list of token ids")
    return tuple(out)


def _check_echo(prompts: tuple[str | tuple[int, ...], ...], n: int) -> None:
    num_chars = n * sum(len(p) if isinstance(p, str) else len(p) * ECHO_CHARS_PER_TOKEN for p in prompts)
    if num_chars > MAX_ECHO_CHARS:
        raise InvalidInput(f"echo: {len(prompts)} prompt(s) x n {n} would echo about {num_chars} characters, over "
                           f"the limit of {MAX_ECHO_CHARS}; send fewer or shorter prompts, a lower n, or no echo")


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    value = body.get("logit_bias")
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise InvalidInput(f"logit_bias must be an object of up to {MAX_LOGIT_BIAS} token id -> bias entries")
    out = []
    for key, bias in value.items():
        if not str(key).isdigit() or isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                or not -100 <= bias <= 100:
            raise InvalidInput(f"logit_bias: {key!r} -> {bias!r}; keys are token ids, biases numbers in [-100, 100]")
        out.append((int(key), float(bias)))
    return tuple(out)


def _stop_token_ids(body: dict) -> tuple[int, ...]:
    value = body.get("stop_token_ids")
    if value is None or value == []:
        return ()
    if not _token_ids(value) or min(value) < 0:
        raise InvalidInput("stop_token_ids must be a list of non-negative token ids")
    return tuple(value)


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
            if body.get("top_logprobs") is not None:
                raise InvalidInput("top_logprobs needs logprobs: true")
            return None
        return _integer(body, "top_logprobs", 0, 0, 20)
    return _integer(body, "logprobs", None, 0, 20)


def _check_defaults(body: dict) -> None:
    for key, defaults in CHAT_DEFAULTS.items():
        value = body.get(key)
        if value is not None and value not in defaults:
            shown = " or ".join(orjson.dumps(d).decode() for d in defaults)
            raise InvalidInput(f"{key} is not supported: only null or {shown} (the default) is taken")


def _check_keys(body: dict, is_chat: bool) -> None:
    known = CHAT_KEYS | CHAT_DEFAULTS.keys() if is_chat else COMPLETION_KEYS
    if is_chat:
        _check_defaults(body)
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise InvalidInput(f"unsupported parameter(s): {', '.join(unknown)}")
    if body.get("prompt_logprobs") is not None:
        raise InvalidInput("prompt_logprobs is not supported; leave it out")
    if body.get("suffix"):
        raise InvalidInput("suffix is not supported; leave it out")
    if body.get("echo") and body.get("logprobs") is not None:
        raise InvalidInput("echo with logprobs needs prompt logprobs, which are not supported")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise InvalidInput("stream_options is only allowed with stream: true")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise InvalidInput("user must be a string")


def _choices(body: dict, stream: bool) -> tuple[int, int | None]:
    n = _integer(body, "n", 1, 1, MAX_CHOICES)
    best_of = _integer(body, "best_of", None, 1, MAX_CHOICES)
    if best_of is not None and best_of < n:
        raise InvalidInput(f"best_of ({best_of}) must be >= n ({n})")
    if best_of is not None and best_of > n and stream:
        raise InvalidInput("best_of > n cannot be streamed: the best are known only at the end")
    return n, (best_of if best_of is not None and best_of > n else None)


def _sampling(body: dict, is_chat: bool, max_tokens: int | None) -> SamplingParams:
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInput(f"seed must be an integer, got {seed!r}")
    top_k = _integer(body, "top_k", 0, -1)
    min_tokens = _integer(body, "min_tokens", 0, 0, max_tokens)
    max_tokens = max_tokens if max_tokens is not None else 16
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        top_k=max(top_k, 0), seed=seed, stop=_stop(body), logprobs=_logprobs(body, is_chat),
        ignore_eos=_bool(body, "ignore_eos"),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        logit_bias=_logit_bias(body), min_tokens=min_tokens, stop_token_ids=_stop_token_ids(body),
    )


def parse_generation(body: Any, is_chat: bool) -> GenerationRequest:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model must be a non-empty string")
    _check_keys(body, is_chat)
    stream = _bool(body, "stream")
    n, best_of = _choices(body, stream)
    prompts, messages = (), None
    if is_chat:
        messages = parse_messages(body)
    else:
        prompts = _prompts(body)
        if _bool(body, "echo"):
            _check_echo(prompts, n)
    key = "max_completion_tokens" if is_chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, None, 1)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidInput("stream_options must be an object with at most include_usage")
    return GenerationRequest(
        model, prompts, messages, _sampling(body, is_chat, max_tokens), max_tokens is not None, stream,
        bool(options.get("include_usage")), is_chat, n, best_of, _bool(body, "echo"),
    )
