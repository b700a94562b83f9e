"""Attention that reads K/V through block tables: write this step's K/V into their slots, then gather
each sequence's slots and run torch SDPA over them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """Query rows [start, end) of the flat batch attend to `key_slots` under `mask`."""

    start: int
    end: int
    key_slots: torch.Tensor  # [ctx] long
    mask: torch.Tensor | None  # [n, ctx] bool, True = may attend; None = plain causal from position 0


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Where one step's tokens go in the KV pool and which slots each query reads."""

    slot_mapping: torch.Tensor  # [T] long: flat slot of each new token
    decode_rows: torch.Tensor | None  # [B] long: rows of single-token sequences
    decode_slots: torch.Tensor | None  # [B, L] long: their key slots, padded with slot 0
    decode_mask: torch.Tensor | None  # [B, 1, 1, L] bool
    prefills: tuple[PrefillChunk, ...]


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
        k_b = k_cache[meta.decode_slots].transpose(1, 2)  # [B, Hkv, L, D]
        v_b = v_cache[meta.decode_slots].transpose(1, 2)
        o_b = _sdpa(q_b, k_b, v_b, meta.decode_mask, scale)  # [B, H, 1, D]
        out.index_copy_(0, meta.decode_rows, o_b.squeeze(2))
    for chunk in meta.prefills:
        q_p = q[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        k_p = k_cache[chunk.key_slots].transpose(0, 1).unsqueeze(0)  # [1, Hkv, ctx, D]
        v_p = v_cache[chunk.key_slots].transpose(0, 1).unsqueeze(0)
        o_p = _sdpa(q_p, k_p, v_p, chunk.mask, scale, is_causal=chunk.mask is None)
        out[chunk.start:chunk.end] = o_p.squeeze(0).transpose(0, 1)
    return out


def _sdpa(q, k, v, mask, scale: float, is_causal: bool = False) -> torch.Tensor:
    """Grouped-query attention: SDPA maps each group of query heads onto its shared K/V head."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
