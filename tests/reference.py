"""Reference generations with Hugging Face transformers, and prompts built to share prefixes."""

from __future__ import annotations

import random

import torch


def hf_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    """`generate(do_sample=False)` for exactly max_tokens new tokens (EOS does not stop it). The
    attention mask is given, so a BOS that shares the pad id is not taken for padding."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=model.config.eos_token_id,
        )
    return out[0, len(prompt):].tolist()


def mixed_prompts(vocab_size: int, count: int, seed: int = 0) -> list[list[int]]:
    """Prompts of many lengths (1 to ~150 tokens); every third one extends a shared 40-token prefix."""
    rng = random.Random(seed)
    shared = [rng.randrange(3, vocab_size) for _ in range(40)]
    prompts = []
    for i in range(count):
        tail = [rng.randrange(3, vocab_size) for _ in range(rng.choice((1, 3, 9, 16, 17, 33, 70, 150)))]
        prompts.append(shared + tail[:20] if i % 3 == 0 else tail)
    return prompts
