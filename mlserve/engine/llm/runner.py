"""Turns scheduled chunks (token ids, positions, block tables) into tensors and runs one forward step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlserve.engine.llm.attention import AttentionMetadata, PrefillChunk
from mlserve.engine.llm.loading import load_model, read_shape
from mlserve.engine.llm.model import ModelShape
from mlserve.engine.llm.settings import LLMSettings


@dataclass(frozen=True, slots=True)
class SeqChunk:
    """The tokens of one sequence computed in this step, from position `start`."""

    req_id: str
    token_ids: tuple[int, ...]
    start: int
    block_table: tuple[int, ...]
    needs_logits: bool
    """The chunk reaches the sequence's last token, so its next token is sampled."""


def pick_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def num_blocks_for(shape: ModelShape, settings: LLMSettings, dtype: torch.dtype) -> int:
    """Blocks that fit in the memory budget: K and V, every layer, `block_size` slots each."""
    if settings.num_kv_blocks is not None:
        return settings.num_kv_blocks
    bytes_per_block = 2 * shape.num_layers * settings.block_size * shape.num_kv_heads * shape.head_dim
    bytes_per_block *= torch.finfo(dtype).bits // 8
    return max(1, int(settings.kv_cache_mb * 2**20) // bytes_per_block)


class ModelRunner:
    """Owns the model and the KV cache tensors of one loaded version."""

    def __init__(self, version_dir: Path, device: str, settings: LLMSettings) -> None:
        self.device = torch.device(device)
        self.dtype = pick_dtype(self.device)
        self.shape = read_shape(version_dir)
        self.block_size = settings.block_size
        self.model = load_model(version_dir, self.device, self.dtype)
        self.num_blocks = num_blocks_for(self.shape, settings, self.dtype)
        slots = self.num_blocks * self.block_size
        kv_shape = (slots, self.shape.num_kv_heads, self.shape.head_dim)
        self.kv_caches = [
            (torch.zeros(kv_shape, dtype=self.dtype, device=self.device),
             torch.zeros(kv_shape, dtype=self.dtype, device=self.device))
            for _ in range(self.shape.num_layers)
        ]

    @torch.inference_mode()
    def run(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """One forward step over every chunk; logits [chunks needing them, vocab] in chunk order."""
        input_ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long)
        positions = torch.from_numpy(np.concatenate([
            np.arange(c.start, c.start + len(c.token_ids)) for c in chunks
        ]))
        meta = self._metadata(chunks)
        hidden = self.model(input_ids.to(self.device), positions.to(self.device), self.kv_caches, meta)
        ends = np.cumsum([len(c.token_ids) for c in chunks]) - 1
        rows = [int(end) for end, c in zip(ends, chunks) if c.needs_logits]
        if not rows:
            return torch.empty(0, self.shape.vocab_size)
        return self.model.logits(hidden[torch.tensor(rows, device=self.device)]).cpu()

    def _slots(self, chunk: SeqChunk, length: int) -> np.ndarray:
        """Flat cache slots of positions 0..length-1 of a sequence."""
        table = np.asarray(chunk.block_table, dtype=np.int64)
        slots = (table[:, None] * self.block_size + np.arange(self.block_size)[None, :]).reshape(-1)
        return slots[:length]

    def _metadata(self, chunks: list[SeqChunk]) -> AttentionMetadata:
        slot_parts, decode_rows, decode_slots, prefills = [], [], [], []
        row = 0
        for chunk in chunks:
            count, end = len(chunk.token_ids), chunk.start + len(chunk.token_ids)
            context = self._slots(chunk, end)
            slot_parts.append(context[chunk.start:end])
            if count == 1 and chunk.start > 0:
                decode_rows.append(row)
                decode_slots.append(context)
            else:
                prefills.append(self._prefill(row, chunk, context))
            row += count
        to_dev = lambda array: torch.from_numpy(array).to(self.device)  # noqa: E731
        slot_mapping = to_dev(np.concatenate(slot_parts))
        if not decode_rows:
            return AttentionMetadata(slot_mapping, None, None, None, tuple(prefills))
        longest = max(len(s) for s in decode_slots)
        padded = np.zeros((len(decode_slots), longest), dtype=np.int64)
        mask = np.zeros((len(decode_slots), 1, 1, longest), dtype=bool)
        for i, slots in enumerate(decode_slots):
            padded[i, :len(slots)] = slots
            mask[i, 0, 0, :len(slots)] = True
        return AttentionMetadata(
            slot_mapping, to_dev(np.asarray(decode_rows, dtype=np.int64)), to_dev(padded), to_dev(mask), tuple(prefills)
        )

    def _prefill(self, row: int, chunk: SeqChunk, context: np.ndarray) -> PrefillChunk:
        count = len(chunk.token_ids)
        key_slots = torch.from_numpy(context).to(self.device)
        if chunk.start == 0:
            return PrefillChunk(row, row + count, key_slots, None)
        query_pos = np.arange(chunk.start, chunk.start + count)[:, None]
        mask = np.arange(len(context))[None, :] <= query_pos  # [n, ctx]
        return PrefillChunk(row, row + count, key_slots, torch.from_numpy(mask).to(self.device))
