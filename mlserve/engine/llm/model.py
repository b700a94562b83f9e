"""Decoder-only transformers (Llama family and GPT-2) whose attention reads a paged KV cache.
Module names follow the Hugging Face checkpoints, so their safetensors load as they are."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlserve.engine.llm.attention import AttentionMetadata, paged_attention
from mlserve.engine.llm.checkpoint import (
    LLAMA_FAMILY, attention_window, check_gpt2_config, check_llama_config, rope_theta,
)

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The few numbers of config.json the engine needs."""

    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position: int
    norm_eps: float
    rope_theta: float
    tie_embeddings: bool
    eos_token_id: int | None
    qkv_bias: bool = False
    """q, k and v projections carry biases (Qwen2; Llama with attention_bias)."""
    o_bias: bool = False
    """The output projection carries a bias (Llama with attention_bias)."""

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> ModelShape:
        """Refuses (ValueError naming the key) any setting that changes the math and is not implemented."""
        model_type = config.get("model_type")
        if model_type in LLAMA_FAMILY:
            check_llama_config(config)
            heads = config["num_attention_heads"]
            max_position = config.get("max_position_embeddings", 2048)
            window = attention_window(config)
            attention_bias = bool(config.get("attention_bias"))
            return cls(
                "llama", config["vocab_size"], config["hidden_size"], config["num_hidden_layers"], heads,
                config.get("num_key_value_heads") or heads,
                config.get("head_dim") or config["hidden_size"] // heads, config["intermediate_size"],
                min(max_position, window) if window else max_position, config.get("rms_norm_eps", 1e-6),
                rope_theta(config), bool(config.get("tie_word_embeddings", False)),
                _first(config.get("eos_token_id")), model_type == "qwen2" or attention_bias, attention_bias,
            )
        if model_type == "gpt2":
            check_gpt2_config(config)
            hidden, heads = config["n_embd"], config["n_head"]
            return cls(
                "gpt2", config["vocab_size"], hidden, config["n_layer"], heads, heads, hidden // heads,
                config.get("n_inner") or 4 * hidden, config["n_positions"], config.get("layer_norm_epsilon", 1e-5),
                0.0, True, _first(config.get("eos_token_id")),
            )
        raise ValueError(f"unsupported model_type {model_type!r}: this engine runs {', '.join(LLAMA_FAMILY)} and gpt2")


def _first(value: Any) -> int | None:
    return value[0] if isinstance(value, list) and value else value


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embedding, rotate-half layout, angles computed in fp32."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden_size, s.num_heads * s.head_dim, bias=s.qkv_bias)
        self.k_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=s.qkv_bias)
        self.v_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=s.qkv_bias)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, s.hidden_size, bias=s.o_bias)

    def forward(self, x, cos, sin, kv: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata):
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = paged_attention(q, k, v, kv[0], kv[1], meta, 1.0 / math.sqrt(self.head_dim))
        return self.o_proj(out.reshape(tokens, -1))


class LlamaMLP(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden_size, s.norm_eps)
        self.self_attn = LlamaAttention(s)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.norm_eps)
        self.mlp = LlamaMLP(s)

    def forward(self, x, cos, sin, kv, meta):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(LlamaLayer(s) for _ in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, s.norm_eps)
        self.rotary = Rotary(s.head_dim, s.rope_theta)


class LlamaForCausalLM(nn.Module):
    """Llama, Mistral and Qwen2 checkpoints (attention biases and sliding windows as ModelShape says)."""

    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.shape = s
        self.model = LlamaBody(s)
        self.lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)

    def forward(self, input_ids, positions, kv_caches: KVCaches, meta: AttentionMetadata) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = self.model.rotary(positions, x.dtype)
        for layer, kv in zip(self.model.layers, kv_caches):
            x = layer(x, cos, sin, kv, meta)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # [S, vocab]

    def tie_weights(self) -> None:
        self.lm_head.weight = self.model.embed_tokens.weight
