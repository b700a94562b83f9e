"""The [llm] section of a model's model.toml, as one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlserve.spec.table import between, parse_table


@dataclass(frozen=True, slots=True)
class LLMSettings:
    """Sizes of the KV pool and of each engine step."""

    block_size: int = field(default=16, metadata=between(1, 1024))
    """Token slots per KV block."""
    kv_memory_fraction: float = field(default=0.5, metadata=between(0, 1))
    """Share of the device's free memory, once the weights are in, the KV pool may take; the pool
    never grows past max_num_seqs sequences of max_model_len. Used unless kv_cache_mb or
    num_kv_blocks is set."""
    kv_cache_mb: float | None = field(default=None, metadata=between(0, 16 * 2**20))
    """Memory budget of the KV pool in MiB (overrides kv_memory_fraction)."""
    num_kv_blocks: int | None = field(default=None, metadata=between(1, 2**24))
    """Set the pool size in blocks directly (overrides kv_cache_mb and kv_memory_fraction)."""
    max_num_seqs: int = field(default=64, metadata=between(1, 4096))
    """Sequences in the running batch at most."""
    max_num_batched_tokens: int = field(default=512, metadata=between(1, 2**20))
    """Tokens computed per step at most (decodes count one each; prefills are chunked to fit)."""
    max_model_len: int | None = field(default=None, metadata=between(2, 2**20))
    """Prompt plus output tokens per sequence at most; defaults to the model's context length."""
    max_waiting: int = field(default=1024, metadata=between(1, 1_000_000))
    """Requests waiting for a place in the running batch before new ones get 429."""
    cuda_graphs: bool = True
    """On a CUDA device, capture decode steps as CUDA graphs at load (per size of
    cuda_graph_batch_sizes and per block-table width) and replay them for decode-only steps of up to
    that many sequences; steps with prompt tokens and larger batches run eagerly. CPU devices always
    run eagerly."""
    cuda_graph_batch_sizes: tuple[int, ...] = field(default=(1, 2, 4, 8, 16, 32, 64, 128), metadata=between(1, 4096))
    """Decode batch sizes to capture, each capped at max_num_seqs; a step of n sequences replays the
    smallest captured size >= n, the extra rows being padding."""

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_waiting"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"[llm] {name} must be a positive integer, got {value!r}")
        if self.num_kv_blocks is not None and (not isinstance(self.num_kv_blocks, int) or self.num_kv_blocks < 1):
            raise ValueError(f"[llm] num_kv_blocks must be a positive integer, got {self.num_kv_blocks!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"[llm] max_model_len must be an integer >= 2, got {self.max_model_len!r}")
        if self.kv_cache_mb is not None and (not isinstance(self.kv_cache_mb, (int, float)) or self.kv_cache_mb <= 0):
            raise ValueError(f"[llm] kv_cache_mb must be a positive number, got {self.kv_cache_mb!r}")
        self._check_graphs()
        fraction = self.kv_memory_fraction
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
            raise ValueError(f"[llm] kv_memory_fraction must be a number in (0, 1], got {fraction!r}")

    def _check_graphs(self) -> None:
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"[llm] cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        sizes = self.cuda_graph_batch_sizes
        if not isinstance(sizes, (tuple, list)) or not sizes or not all(_is_positive_int(s) for s in sizes):
            shown = list(sizes) if isinstance(sizes, (tuple, list)) else sizes
            raise ValueError(f"[llm] cuda_graph_batch_sizes must be a non-empty list of positive integers "
                             f"(cuda_graphs = false turns graphs off), got {shown!r}")

    @property
    def graph_batch_sizes(self) -> tuple[int, ...]:
        """cuda_graph_batch_sizes capped at max_num_seqs, ascending, without repeats."""
        return tuple(sorted({min(s, self.max_num_seqs) for s in self.cuda_graph_batch_sizes}))

    @classmethod
    def parse(cls, raw: Any) -> LLMSettings:
        """From model.toml's [llm] table (None = all defaults); ValueError names the bad key."""
        return parse_table(cls, raw, "[llm]")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
