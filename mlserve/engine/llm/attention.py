"""Attention that reads K/V through block tables: write this step's K/V into their slots, then gather
each sequence's blocks (whole blocks, one index per block) and run torch SDPA over them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """Query rows [start, end) of the flat batch. With `block_table` None the chunk is a whole prompt
    from position 0 and attends causally to its own fresh K/V; otherwise it reads its blocks under `mask`."""

    start: int
    end: int
    block_table: torch.Tensor | None  # [num_blocks] long
    mask: torch.Tensor | None  # [n, num_blocks * block_size] bool, True = may attend


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Where one step's tokens go in the KV pool and which blocks each query reads."""

    slot_mapping: torch.Tensor  # [T] long: flat slot of each new token
    decode_rows: torch.Tensor | None  # [B] long: rows of single-token sequences
    decode_block_tables: torch.Tensor | None  # [B, max_blocks] long, padded with block 0
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size] bool
    prefills: tuple[PrefillChunk, ...]
    block_size: int


def _gather(cache: torch.Tensor, block_table: torch.Tensor, block_size: int) -> torch.Tensor:
    """cache [slots, Hkv, D], block_table [..., nb] -> [..., nb * block_size, Hkv, D]."""
    blocks = cache.view(-1, block_size, *cache.shape[1:])
    picked = blocks.index_select(0, block_table.reshape(-1))
    return picked.view(*block_table.shape[:-1], block_table.shape[-1] * block_size, *cache.shape[1:])


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
) -> torch.Tensor:
    """q [T, H, D], k/v [T, Hkv, D], caches [slots, Hkv, D] -> out [T, H, D]."""
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        q_b = q.index_select(0, meta.decode_rows).unsqueeze(2)  # [B, H, 1, D]
        k_b = _gather(k_cache, meta.decode_block_tables, meta.block_size).transpose(1, 2)  # [B, Hkv, L, D]
        v_b = _gather(v_cache, meta.decode_block_tables, meta.block_size).transpose(1, 2)
        o_b = _sdpa(q_b, k_b, v_b, meta.decode_mask, scale)  # [B, H, 1, D]
        out.index_copy_(0, meta.decode_rows, o_b.squeeze(2))
    for chunk in meta.prefills:
        q_p = q[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if chunk.block_table is None:
            k_p = k[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)  # [1, Hkv, n, D]
            v_p = v[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)
        else:
            k_p = _gather(k_cache, chunk.block_table, meta.block_size).transpose(0, 1).unsqueeze(0)  # [1, Hkv, ctx, D]
            v_p = _gather(v_cache, chunk.block_table, meta.block_size).transpose(0, 1).unsqueeze(0)
        o_p = _sdpa(q_p, k_p, v_p, chunk.mask, scale, is_causal=chunk.block_table is None)
        out[chunk.start:chunk.end] = o_p.squeeze(0).transpose(0, 1)
    return out


def _sdpa(q, k, v, mask, scale: float, is_causal: bool = False) -> torch.Tensor:
    """Grouped-query attention: SDPA maps each group of query heads onto its shared K/V head."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
