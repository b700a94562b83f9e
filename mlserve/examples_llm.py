"""Writes the tiny example LLMs (Llama and GPT-2, random weights) in the Hugging Face layout, with a
byte-level BPE tokenizer trained here on a small built-in text. Needs `transformers` (the dev extra)
to write them; serving them does not."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = """\
The model server loads every version of every model from one folder and answers over HTTP.
A request waits in a queue, joins a batch, runs on the engine, and its answer goes back to the client.
Language models write one token at a time. Each new token needs the keys and values of every token
before it, so the server keeps them in a cache of fixed-size blocks and frees each block when its
sequence ends. Sequences that start with the same words share the blocks of that prefix.
hello world, hello there, how are you today? I am fine, thank you. What is the weather like?
It is sunny and warm; the sky is blue and the sea is calm. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.
"""

LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GPT2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
VOCAB_SIZE = 512
CONTEXT = 512
LLM_TOML = """\
# A tiny random-weight LLM for trying the OpenAI-compatible routes.
[llm]
block_size = 16
kv_cache_mb = 16
max_num_seqs = 64
max_num_batched_tokens = 512
"""


def train_tokenizer(special_tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tokenizer


def _write_tokenizer(folder: Path, tokenizer, config: dict) -> None:
    tokenizer.save(str(folder / "tokenizer.json"))
    base = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": CONTEXT, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps({**base, **config}, indent=2))


def write_tiny_llama(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenizers.processors import TemplateProcessing

    tokenizer = train_tokenizer(["<s>", "</s>", "<unk>"])
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT, initializer_range=0.1,
        bos_token_id=tokenizer.token_to_id("<s>"), eos_token_id=tokenizer.token_to_id("</s>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    _quiet()
    model.save_pretrained(folder, safe_serialization=True)
    _write_tokenizer(folder, tokenizer, {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "chat_template": LLAMA_CHAT_TEMPLATE,
    })


def write_tiny_gpt2(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer(["<|endoftext|>"])
    eos = tokenizer.token_to_id("<|endoftext|>")
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(), n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT,
        initializer_range=0.1, bos_token_id=eos, eos_token_id=eos,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    _quiet()
    model.save_pretrained(folder, safe_serialization=True)
    _write_tokenizer(folder, tokenizer, {
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": GPT2_CHAT_TEMPLATE,
    })


def write_llm_examples(root: Path) -> list[str]:
    """tiny-llama and tiny-gpt2, version 1 each, with an [llm] section in model.toml."""
    for name, writer in (("tiny-llama", write_tiny_llama), ("tiny-gpt2", write_tiny_gpt2)):
        folder = root / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        writer(folder)
        (root / name / "model.toml").write_text(LLM_TOML)
    return [f"wrote {root / name}" for name in ("tiny-llama", "tiny-gpt2")]


def _quiet() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
