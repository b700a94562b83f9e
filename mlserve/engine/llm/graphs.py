"""Decode steps replayed from steps captured at load, one per batch size, over static input buffers of
fixed shapes: on CUDA a step then costs one host-to-device copy and one graph launch instead of a
launch per kernel.

A decode-only step (every chunk one token at a position > 0) of n sequences, n no more than the
largest captured size, is padded up to the next captured size. Padding rows read and write only the
reserved block the runner keeps past the end of the pool (the BlockManager never hands it out) and
attend to its first slot alone, so they change no real row: every op of the forward is row-wise
except attention, and attention reads each row's own blocks.

Attention gathers every key slot a row's block table names, so a step's cost grows with the table's
width. Each batch size is captured at several widths (powers of two from 4 blocks, then the width of
max_model_len) and a step replays the narrowest that holds its longest sequence: a long max_model_len
does not make every short decode attend over all of it. The mask (key position <= query position) is
computed inside the step from the positions, so table entries past a sequence's end, filled with the
reserved block, are never read."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum, auto
from functools import partial
from typing import Callable

import torch

from mlserve.engine.llm.attention import AttentionMetadata
from mlserve.spec import SeqChunk

DecodeForward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]
"""(input_ids [B], positions [B], metadata) -> logits [B, vocab]: the model's forward and head."""


# CUDA allows one capture underway per process; models load on several loader threads at once.
_CAPTURE_LOCK = threading.Lock()


class GraphKind(Enum):
    CUDA = auto()
    """A torch.cuda.CUDAGraph per batch size, all sharing one graph memory pool."""
    STATIC = auto()
    """The eager forward called on the same static buffers: the padded path without a graph (CPU)."""


class StepMode(Enum):
    """How one engine step's forward ran; the values are the metric's `mode` label."""

    EAGER = "eager"
    GRAPH = "graph"


@dataclass(frozen=True, slots=True)
class GraphLayout:
    """The fixed shapes every captured step shares."""

    sizes: tuple[int, ...]
    """Captured batch sizes, ascending."""
    max_blocks: int
    """Widest block table: max_model_len in blocks."""
    block_size: int
    reserved_block: int
    """A block past the pool's last one; padding rows write and read only this block."""

    @property
    def widths(self) -> tuple[int, ...]:
        """Block-table widths captured per size: powers of two from 4 blocks, then max_blocks."""
        widths, width = [], 4
        while width < self.max_blocks:
            widths.append(width)
            width *= 2
        return (*widths, self.max_blocks)


class _CudaReplay:
    """One captured CUDA graph and the logits tensor its replay overwrites."""

    def __init__(self, graph: torch.cuda.CUDAGraph, logits: torch.Tensor) -> None:
        self.graph, self.logits = graph, logits

    def __call__(self) -> torch.Tensor:
        # A graph launches on the current stream of the current device: make that the model's device.
        with torch.cuda.device(self.logits.device):
            self.graph.replay()
        return self.logits


class DecodeGraphs:
    """The static input buffers and one captured step per batch size; runs decode-only steps on them."""

    def __init__(self, forward: DecodeForward, layout: GraphLayout, device: torch.device, kind: GraphKind) -> None:
        self.layout, self.device, self.kind = layout, device, kind
        self._forward = forward
        rows, width = layout.sizes[-1], layout.max_blocks
        # One flat buffer (ids, positions, slots, then the [rows, width] block tables) so a step is one copy.
        flat = 3 * rows + rows * width
        self._device_buf = torch.zeros(flat, dtype=torch.long, device=device)
        is_cuda = device.type == "cuda"
        self._host_buf = torch.zeros(flat, dtype=torch.long, pin_memory=True) if is_cuda else self._device_buf
        self._host = _Views(self._host_buf.numpy(), rows, width)
        self._ids, self._positions, self._slots, self._tables = _Views(self._device_buf, rows, width).parts()
        self._key_positions = torch.arange(width * layout.block_size, device=device)  # [L]
        self._rows = torch.arange(rows, device=device)
        self._steps: dict[tuple[int, int], Callable[[], torch.Tensor]] = {}
        """(batch size, block-table width) -> the captured step."""
        self.num_padded_rows = 0
        """Padding rows computed so far (the cost of replaying a size above the batch)."""
        self.last_width = 0
        """Block-table width of the last replayed step."""

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.layout.sizes

    def capture(self) -> None:
        """Capture every size at every width, largest first, so the smaller graphs reuse the larger ones'
        pool memory. The buffers hold padding only, so warm-up and capture write nothing but the
        reserved block."""
        self._fill([], self.sizes[-1])
        shapes = [(size, width) for size in reversed(self.sizes) for width in reversed(self.layout.widths)]
        if self.kind is GraphKind.STATIC:
            self._steps = {shape: partial(self._step, *shape) for shape in shapes}
            return
        self._device_buf.copy_(self._host_buf)
        with _CAPTURE_LOCK, torch.cuda.device(self.device):
            pool, stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream(self.device)
            for shape in shapes:
                self._steps[shape] = self._capture_one(*shape, pool, stream)
            torch.cuda.synchronize(self.device)

    @property
    def num_graphs(self) -> int:
        return len(self._steps)

    def can_run(self, chunks: list[SeqChunk]) -> bool:
        return bool(self._steps) and 0 < len(chunks) <= self.sizes[-1] and all(
            len(c.token_ids) == 1 and c.start > 0 and len(c.block_table) <= self.layout.max_blocks for c in chunks
        )

    def run(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """Logits [chunks needing them, vocab] on the CPU, in chunk order, as the eager step returns them."""
        size = next(s for s in self.sizes if s >= len(chunks))
        bs = self.layout.block_size
        needed = max(c.start // bs + 1 for c in chunks)  # blocks up to each row's own position
        self.last_width = next(w for w in self.layout.widths if w >= needed)
        self.num_padded_rows += size - len(chunks)
        self._fill(chunks, size)
        if self._host_buf is not self._device_buf:
            self._device_buf.copy_(self._host_buf, non_blocking=True)
        logits = self._steps[(size, self.last_width)]()  # [size, vocab]
        wanted = [i for i, c in enumerate(chunks) if c.needs_logits]
        if len(wanted) == len(chunks):
            return logits[:len(chunks)].cpu()
        return logits[torch.tensor(wanted, dtype=torch.long, device=self.device)].cpu()

    def _fill(self, chunks: list[SeqChunk], size: int) -> None:
        """Rows [0, len(chunks)) get the chunks, rows up to `size` padding (token 0 at position 0)."""
        ids, positions, slots, tables = self._host.parts()
        bs, reserved = self.layout.block_size, self.layout.reserved_block
        ids[:size], positions[:size], slots[:size], tables[:size] = 0, 0, reserved * bs, reserved
        for row, chunk in enumerate(chunks):
            table = chunk.block_table
            ids[row], positions[row] = chunk.token_ids[0], chunk.start
            slots[row] = table[chunk.start // bs] * bs + chunk.start % bs
            tables[row, :len(table)] = table

    def _step(self, size: int, width: int) -> torch.Tensor:
        """The forward over the first `size` rows of the static buffers, their tables cut to `width` blocks."""
        positions = self._positions[:size]
        keys = self._key_positions[:width * self.layout.block_size]  # [L]
        mask = keys[None, :] <= positions[:, None]  # [size, L]
        meta = AttentionMetadata(
            self._slots[:size], self._rows[:size], self._tables[:size, :width], mask[:, None, None, :], (),
            self.layout.block_size,
        )
        return self._forward(self._ids[:size], positions, meta)

    def _capture_one(self, size: int, width: int, pool, stream: torch.cuda.Stream) -> _CudaReplay:
        """Warm up outside the capture (lazy kernel and workspace set-up), on the capture's side stream
        as torch asks; capture thread_local, since other models keep serving from other threads."""
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._step(size, width)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            logits = self._step(size, width)
        return _CudaReplay(graph, logits)


class _Views:
    """ids [R], positions [R], slots [R] and block tables [R, W] as views of one flat buffer."""

    def __init__(self, flat, rows: int, width: int) -> None:
        self._parts = (flat[:rows], flat[rows:2 * rows], flat[2 * rows:3 * rows],
                       flat[3 * rows:].reshape(rows, width))

    def parts(self):
        return self._parts

