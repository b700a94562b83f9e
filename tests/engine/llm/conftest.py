from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def hf_models(test_repo):
    """The example LLMs loaded with Hugging Face transformers: the reference implementation."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return {
        name: AutoModelForCausalLM.from_pretrained(test_repo / name / "1", dtype=torch.float32).eval()
        for name in ("tiny-llama", "tiny-gpt2")
    }
