"""Turns scheduled chunks (token ids, positions, block tables) into tensors and runs one forward step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlserve.engine.llm.attention import AttentionMetadata, PrefillChunk
from mlserve.engine.llm.graphs import DecodeGraphs, GraphKind, GraphLayout, StepMode
from mlserve.engine.llm.loading import load_model, read_shape
from mlserve.engine.llm.memory import free_memory_bytes
from mlserve.engine.llm.model import ModelShape
from mlserve.spec import LLMSettings, SeqChunk


def pick_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def bytes_per_block(shape: ModelShape, block_size: int, dtype: torch.dtype) -> int:
    """K and V, every layer, `block_size` slots each."""
    return 2 * shape.num_layers * block_size * shape.num_kv_heads * shape.head_dim * (torch.finfo(dtype).bits // 8)


def num_blocks_for(shape: ModelShape, settings: LLMSettings, dtype: torch.dtype, free_bytes: int) -> int:
    """Blocks in the pool: as set (num_kv_blocks, kv_cache_mb), else kv_memory_fraction of
    `free_bytes`, but never more than max_num_seqs sequences of the full context need."""
    if settings.num_kv_blocks is not None:
        return settings.num_kv_blocks
    per_block = bytes_per_block(shape, settings.block_size, dtype)
    if settings.kv_cache_mb is not None:
        return max(1, int(settings.kv_cache_mb * 2**20) // per_block)
    context = settings.max_model_len or shape.max_position
    needed = settings.max_num_seqs * -(-context // settings.block_size)
    return max(1, min(needed, int(free_bytes * settings.kv_memory_fraction) // per_block))


class ModelRunner:
    """Owns the model, the KV cache tensors and the captured decode steps of one loaded version."""

    def __init__(self, version_dir: Path, device: str, settings: LLMSettings, memory_cap_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = pick_dtype(self.device)
        self.shape = read_shape(version_dir)
        self.block_size = settings.block_size
        self.model = load_model(version_dir, self.device, self.dtype)
        is_sized_by_fraction = settings.num_kv_blocks is None and settings.kv_cache_mb is None
        free = self._free_bytes(memory_cap_bytes) if is_sized_by_fraction else 0
        self.num_blocks = num_blocks_for(self.shape, settings, self.dtype, free)
        self.kv_bytes = self.num_blocks * bytes_per_block(self.shape, self.block_size, self.dtype)
        self.context_len = settings.max_model_len or self.shape.max_position
        # One block more than the pool: never handed out, it takes the padding rows of a graph replay.
        slots = (self.num_blocks + 1) * self.block_size
        kv_shape = (slots, self.shape.num_kv_heads, self.shape.head_dim)
        self.kv_caches = [
            (torch.zeros(kv_shape, dtype=self.dtype, device=self.device),
             torch.zeros(kv_shape, dtype=self.dtype, device=self.device))
            for _ in range(self.shape.num_layers)
        ]
        self.graphs: DecodeGraphs | None = None
        self.last_step_mode = StepMode.EAGER
        self.num_graph_steps = 0
        self.num_eager_steps = 0

    @torch.inference_mode()
    def capture_decode_graphs(self, sizes: tuple[int, ...], kind: GraphKind) -> None:
        """Capture a decode step per batch size in `sizes` (after the model and the pool exist);
        from then on decode-only steps of up to max(sizes) sequences replay them."""
        layout = GraphLayout(tuple(sorted(set(sizes))), -(-self.context_len // self.block_size), self.block_size,
                             self.num_blocks)
        graphs = DecodeGraphs(self._decode_forward, layout, self.device, kind)
        graphs.capture()
        self.graphs = graphs

    def _decode_forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata):
        return self.model.logits(self.model(input_ids, positions, self.kv_caches, meta))

    def _free_bytes(self, memory_cap_bytes: int | None) -> int:
        """Free memory on the device now, within what placement allows this version (the weights count)."""
        free = free_memory_bytes(str(self.device))
        if memory_cap_bytes is None:
            return free
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return max(0, min(free, memory_cap_bytes - weights))

    @torch.inference_mode()
    def run(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """One forward step over every chunk; logits [chunks needing them, vocab] in chunk order."""
        if self.graphs is not None and self.graphs.can_run(chunks):
            self.last_step_mode = StepMode.GRAPH
            self.num_graph_steps += 1
            return self.graphs.run(chunks)
        self.last_step_mode = StepMode.EAGER
        self.num_eager_steps += 1
        return self._run_eager(chunks)

    def _run_eager(self, chunks: list[SeqChunk]) -> torch.Tensor:
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

    def _metadata(self, chunks: list[SeqChunk]) -> AttentionMetadata:
        bs = self.block_size
        slot_parts, decode_rows, decode_tables, decode_lens, prefills = [], [], [], [], []
        row = 0
        for chunk in chunks:
            count, end = len(chunk.token_ids), chunk.start + len(chunk.token_ids)
            table = np.asarray(chunk.block_table, dtype=np.int64)
            positions = np.arange(chunk.start, end)
            slot_parts.append(table[positions // bs] * bs + positions % bs)
            if count == 1 and chunk.start > 0:
                decode_rows.append(row)
                decode_tables.append(table[: -(-end // bs)])
                decode_lens.append(end)
            else:
                prefills.append(self._prefill(row, chunk, table))
            row += count
        slot_mapping = self._tensor(np.concatenate(slot_parts))
        if not decode_rows:
            return AttentionMetadata(slot_mapping, None, None, None, tuple(prefills), bs)
        widest = max(len(t) for t in decode_tables)
        tables = np.zeros((len(decode_tables), widest), dtype=np.int64)
        for i, table in enumerate(decode_tables):
            tables[i, :len(table)] = table
        mask = np.arange(widest * bs)[None, :] < np.asarray(decode_lens)[:, None]  # [B, L]
        return AttentionMetadata(
            slot_mapping, self._tensor(np.asarray(decode_rows, dtype=np.int64)), self._tensor(tables),
            self._tensor(mask[:, None, None, :]), tuple(prefills), bs,
        )

    def _prefill(self, row: int, chunk: SeqChunk, table: np.ndarray) -> PrefillChunk:
        count = len(chunk.token_ids)
        if chunk.start == 0:
            return PrefillChunk(row, row + count, None, None)
        end = chunk.start + count
        table = table[: -(-end // self.block_size)]
        query_pos = np.arange(chunk.start, end)[:, None]
        mask = np.arange(len(table) * self.block_size)[None, :] <= query_pos  # [n, ctx]
        return PrefillChunk(row, row + count, self._tensor(table), self._tensor(mask))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
