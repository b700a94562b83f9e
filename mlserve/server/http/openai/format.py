"""Pieces of OpenAI's answer shapes: usage, logprobs in the completion and chat forms."""

from __future__ import annotations

from typing import Any, Callable

from mlserve.dataplane import GenerationRun
from mlserve.server.http.openai.protocol import GenerationRequest


def usage(run: GenerationRun, completion_tokens: int) -> dict[str, int]:
    prompt = sum(len(ids) for ids in run.prompt_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def deadline_message(seconds: float | None) -> str:
    shown = f"{seconds * 1000:g} ms" if seconds is not None and seconds < 1 else f"{seconds:g} s"
    return f"timeout: the request's deadline of {shown} passed before it was answered"


def choice_logprobs(token_text: Callable[[int], str], req: GenerationRequest, events: list) -> dict[str, Any] | None:
    if req.params.logprobs is None:
        return None
    entries = [entry for event in events for entry in event.logprobs]
    if req.is_chat:
        return {"content": [
            {"token": token_text(t), "logprob": lp, "bytes": list(token_text(t).encode()),
             "top_logprobs": [{"token": token_text(i), "logprob": v, "bytes": list(token_text(i).encode())}
                              for i, v in top]}
            for t, lp, top in entries
        ], "refusal": None}
    offsets, offset = [], 0
    for t, _, _ in entries:
        offsets.append(offset)
        offset += len(token_text(t))
    # As OpenAI and vLLM: the sampled token is always among its top_logprobs (so up to logprobs + 1
    # entries, and exactly its own with logprobs 0).
    tops = [{**{token_text(i): v for i, v in top}, token_text(t): lp} for t, lp, top in entries]
    return {"tokens": [token_text(t) for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": tops, "text_offset": offsets}
