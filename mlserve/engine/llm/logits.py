"""Logit processors: min_tokens, logit_bias and the presence, frequency and repetition penalties,
applied to one row of logits before a token is chosen."""

from __future__ import annotations

import torch

from mlserve.spec import SamplingParams


def process_row(row: torch.Tensor, p: SamplingParams, prompt_ids: list[int], output_ids: list[int],
                eos_token_id: int | None) -> torch.Tensor:
    """row [vocab] fp32 -> a new row; the input is left as it was (its logprobs are reported raw)."""
    row = row.clone()
    if len(output_ids) < p.min_tokens:
        stops = list(p.stop_token_ids) + ([eos_token_id] if eos_token_id is not None and not p.ignore_eos else [])
        if stops:
            row[torch.tensor(stops)] = float("-inf")
    if p.logit_bias:
        ids = torch.tensor([i for i, _ in p.logit_bias])
        row[ids] += torch.tensor([b for _, b in p.logit_bias], dtype=row.dtype)
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        values = row[seen]
        row[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and output_ids:
        counts = torch.bincount(torch.tensor(output_ids), minlength=row.shape[0])[: row.shape[0]].to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    return row
