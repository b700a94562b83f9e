"""A mid-size random-weight Llama for the generation benchmark: 12 layers, hidden 768, 12 heads (about
100M parameters with the embeddings), where arithmetic rather than Python overhead dominates a step."""

from __future__ import annotations

from pathlib import Path


def write_mid_llama(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mlserve.examples_llm import write_tiny_llama

    write_tiny_llama(folder, seed)  # the tokenizer and its files; the weights are replaced below
    tiny = LlamaConfig.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=tiny.vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048, initializer_range=0.02,
        bos_token_id=tiny.bos_token_id, eos_token_id=tiny.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    for stale in folder.glob("*.safetensors"):
        stale.unlink()
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
