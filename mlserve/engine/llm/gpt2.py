"""GPT-2 with a paged KV cache; module names follow the Hugging Face checkpoint."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlserve.engine.llm.attention import AttentionMetadata, paged_attention
from mlserve.engine.llm.model import KVCaches, ModelShape


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight stored [in, out]."""

    def __init__(self, size_in: int, size_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size_in, size_out))
        self.bias = nn.Parameter(torch.zeros(size_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class GPT2Attention(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.num_heads, self.head_dim = s.num_heads, s.head_dim
        self.c_attn = Conv1D(s.hidden_size, 3 * s.hidden_size)
        self.c_proj = Conv1D(s.hidden_size, s.hidden_size)

    def forward(self, x, kv, meta: AttentionMetadata):
        tokens = x.shape[0]
        q, k, v = self.c_attn(x).view(tokens, 3, self.num_heads, self.head_dim).unbind(1)
        out = paged_attention(q, k.contiguous(), v.contiguous(), kv[0], kv[1], meta, 1.0 / math.sqrt(self.head_dim))
        return self.c_proj(out.reshape(tokens, -1))


class GPT2MLP(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.c_fc = Conv1D(s.hidden_size, s.intermediate_size)
        self.c_proj = Conv1D(s.intermediate_size, s.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(s.hidden_size, eps=s.norm_eps)
        self.attn = GPT2Attention(s)
        self.ln_2 = nn.LayerNorm(s.hidden_size, eps=s.norm_eps)
        self.mlp = GPT2MLP(s)

    def forward(self, x, kv, meta):
        x = x + self.attn(self.ln_1(x), kv, meta)
        return x + self.mlp(self.ln_2(x))


class GPT2Body(nn.Module):
    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.wte = nn.Embedding(s.vocab_size, s.hidden_size)
        self.wpe = nn.Embedding(s.max_position, s.hidden_size)
        self.h = nn.ModuleList(GPT2Block(s) for _ in range(s.num_layers))
        self.ln_f = nn.LayerNorm(s.hidden_size, eps=s.norm_eps)


class GPT2LMHeadModel(nn.Module):
    """GPT-2: learned positions, LayerNorm, GELU MLP, output projection tied to the embedding."""

    def __init__(self, s: ModelShape) -> None:
        super().__init__()
        self.shape = s
        self.transformer = GPT2Body(s)
        self.lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)

    def forward(self, input_ids, positions, kv_caches: KVCaches, meta: AttentionMetadata) -> torch.Tensor:
        x = self.transformer.wte(input_ids) + self.transformer.wpe(positions)  # [T, hidden]
        for block, kv in zip(self.transformer.h, kv_caches):
            x = block(x, kv, meta)
        return self.transformer.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # [S, vocab]

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.wte.weight
