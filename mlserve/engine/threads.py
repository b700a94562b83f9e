"""torch's intra-op thread pool, which is the process's, not a model's (mlserve/process.py)."""

from __future__ import annotations

import torch

from mlserve.errors import ModelLoadError
from mlserve.process import current
from mlserve.spec.model import ModelConfig

MODEL_DEFAULT = ModelConfig.__dataclass_fields__["intra_op_threads"].default


def use_process_threads(model_threads: int, where: str) -> None:
    """Set torch's pool from `[server] torch_threads` (once: later calls find it set). A model.toml
    `intra_op_threads` other than the default and the server's is refused by name: torch cannot give
    one model its own pool, and the server would otherwise quietly run it with another count."""
    threads = current().torch_threads
    if model_threads != MODEL_DEFAULT and model_threads != threads:
        raise ModelLoadError(
            f"{where}: intra_op_threads = {model_threads} cannot apply to a torch model (torch has one "
            f"thread pool per process, now {threads or 'one per core'}); set [server] torch_threads instead")
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
