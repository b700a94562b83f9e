"""Text <-> token ids with the `tokenizers` library, and the chat template from tokenizer_config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


_LONG_TEXT_CHARS = 4096
"""Texts this long are encoded with the GIL released; shorter ones cost less than the release."""


class LLMTokenizer:
    """The model's tokenizer.json plus its special tokens and chat template."""

    def __init__(self, version_dir: Path) -> None:
        self._tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
        config_path = version_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.chat_template: str | None = config.get("chat_template")
        self._template = None
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, with the BOS the tokenizer's post-processor adds unless told not to
        (a rendered chat template carries its own). `encode_batch` releases the GIL while it runs
        (`encode` holds it throughout), so a long text tokenized on a thread leaves the event loop free."""
        if len(text) < _LONG_TEXT_CHARS:
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, token_ids: list[int]) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        """Render messages with the model's Jinja chat template, ending with the assistant's turn."""
        if not self.chat_template:
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        if self._template is None:
            import jinja2.sandbox

            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(self.chat_template)
        return self._template.render(
            messages=messages, add_generation_prompt=True,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None
