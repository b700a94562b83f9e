"""The LLM backend: one Hugging Face folder loaded as tokenizer, model and KV pool on one device.
Generation itself is driven by the continuous batcher (mlserve/batching/llm_engine.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mlserve.engine.llm.graphs import GraphKind
from mlserve.engine.llm.memory import keep_freed_memory
from mlserve.engine.llm.runner import ModelRunner
from mlserve.engine.llm.tokenizer import LLMTokenizer
from mlserve.errors import InvalidInput, ModelLoadError
from mlserve.spec import LLMSettings, ModelConfig, ModelInfo

PLATFORM = "mlserve_llm"

log = logging.getLogger("mlserve.llm")


class LLMBackend:
    """Holds what a loaded generation model needs: settings, tokenizer, runner (model + KV tensors)."""

    def __init__(self, config: ModelConfig) -> None:
        self.settings: LLMSettings = config.llm
        self.tokenizer: LLMTokenizer | None = None
        self.runner: ModelRunner | None = None
        self.max_model_len = 0
        self.memory_cap_bytes: int | None = None
        """Set by placement before load on a GPU: the most this version may take there, KV pool included."""

    def load(self, path: Path, device: str) -> None:
        for name in ("config.json", "tokenizer.json"):
            if not (path / name).is_file():
                raise ModelLoadError(f"{path}: an LLM folder needs {name}")
        if not device.startswith("cuda"):
            keep_freed_memory()
        try:
            self.tokenizer = LLMTokenizer(path)
            self.runner = ModelRunner(path, device, self.settings, self.memory_cap_bytes)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        self.max_model_len = self._check_context(path)
        if self.settings.cuda_graphs and self.runner.device.type == "cuda":
            self._capture_graphs(path)

    def _capture_graphs(self, path: Path) -> None:
        """After the weights and the pool are on the device, so graph memory comes out of what is left."""
        sizes = self.settings.graph_batch_sizes
        started = time.perf_counter()
        try:
            self.runner.capture_decode_graphs(sizes, GraphKind.CUDA)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: capturing CUDA graphs for decode batch sizes {list(sizes)} failed "
                                 f"({exc}); set [llm] cuda_graphs = false to decode eagerly") from exc
        graphs = self.runner.graphs
        log.info("%s: captured %d CUDA graphs for decode (batch sizes %s, block-table widths %s) in %.2f s", path,
                 graphs.num_graphs, list(sizes), list(graphs.layout.widths), time.perf_counter() - started)

    def _check_context(self, path: Path) -> int:
        """One sequence of max_model_len must fit in the pool alone, or preemption could never make
        room for it: refuse rather than serve a shorter context than the one configured."""
        runner, settings = self.runner, self.settings
        context = settings.max_model_len or runner.shape.max_position
        if context > runner.shape.max_position:
            raise ModelLoadError(f"{path}: [llm] max_model_len {context} is over the model's context of "
                                 f"{runner.shape.max_position} tokens")
        pool_slots = runner.num_blocks * settings.block_size
        if pool_slots < context:
            raise ModelLoadError(
                f"{path}: the KV pool holds {pool_slots} tokens ({runner.num_blocks} blocks, "
                f"{runner.kv_bytes / 2**20:.1f} MiB), less than one sequence of max_model_len {context}; "
                "give [llm] kv_memory_fraction, kv_cache_mb or num_kv_blocks more, or set a smaller max_model_len")
        log.info("%s: KV pool of %d blocks (%d tokens, %.1f MiB): max context %d tokens, %d such sequences at once",
                 path, runner.num_blocks, pool_slots, runner.kv_bytes / 2**20, context, pool_slots // context)
        return context

    @property
    def eos_token_id(self) -> int | None:
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return self.tokenizer.eos_token_id
        return self.runner.shape.eos_token_id if self.runner else None

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs:
            raise InvalidInput("this is a generation model: use /v1/completions or /v1/chat/completions")
        return {}

    def unload(self) -> None:
        self.runner = None
        self.tokenizer = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(PLATFORM, (), (), max_batch_size=0)
